"""Built-in datasets, one per file. See :mod:`bayesbench.data.base` for the interface."""
