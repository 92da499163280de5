"""Uncertainty methods, one per file. See :mod:`bayesbench.methods.base` for the interface."""
