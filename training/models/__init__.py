"""Model definitions, one per file."""

from .deepfm import DeepFM

__all__ = ["DeepFM"]
