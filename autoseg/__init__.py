"""autoseg: self-configuring medical image segmentation.

Nothing heavy happens at import time: torch and SimpleITK are imported by the modules that need them.
``from autoseg import Predictor`` loads the prediction API on first use.
"""
from .version import __version__

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from .inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'autoseg' has no attribute {name!r}")
