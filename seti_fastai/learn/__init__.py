"""fastai training: Transforms, the DataBlock, callbacks and the training loop."""
