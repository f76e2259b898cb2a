"""The tests' synthetic datasets come from the package (the demo uses the same generator)."""
from autoseg.data.synthetic import case_id, make_synthetic_dataset

__all__ = ["case_id", "make_synthetic_dataset"]
