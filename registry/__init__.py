"""modeldepot: an offline mirror and registry for Hugging Face models and datasets."""

__version__ = "0.1.0"
