"""Real observations: Breakthrough Listen filterbank / HDF5 cadences read through blimpy."""
