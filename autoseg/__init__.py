"""autoseg: self-configuring medical image segmentation.

Nothing heavy happens at import time: torch and SimpleITK are imported by the modules that need them.
"""
__version__ = "0.1.0"
