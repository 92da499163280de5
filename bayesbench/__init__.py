"""bayesbench: benchmark Bayesian and uncertainty-aware transformers."""

__version__ = "0.1.0"
