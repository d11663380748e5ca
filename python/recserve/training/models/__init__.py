"""Model definitions, one per file."""

from .dcnv2 import DCNv2
from .deepfm import DeepFM
from .mlp import MLP
from .wide_deep import WideDeep

__all__ = ["MLP", "DCNv2", "DeepFM", "WideDeep"]
