"""recstack: the systems side of deep-learning recommendation models."""

__version__ = "0.1.0"
