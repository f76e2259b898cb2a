"""The autoseg version: one place, importable by every layer without loading the package's API."""
__version__ = "0.1.0"
