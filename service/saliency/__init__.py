"""saliency: an inference-time explanation service for PyTorch image models."""

__version__ = "0.1.0"
