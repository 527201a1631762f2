"""fastai training: Transforms, the DataBlock, callbacks and the training loop. Importing the package registers
fastai's `show_batch`, `show_results` and `plot_top_losses` for cadences (`show.py`)."""

from seti_fastai.learn import show  # noqa: F401  (registers the @dispatch show functions)
