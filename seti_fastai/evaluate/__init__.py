"""Inference, calibration, metrics and reports."""
