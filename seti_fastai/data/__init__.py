"""Reading the Kaggle layout, folds and the synthetic set: numpy and pandas only."""
