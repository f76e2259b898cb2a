"""The tests' synthetic datasets come from the package (the demo uses the same generator)."""
from autoseg.data.synthetic import *  # noqa: F401,F403
from autoseg.data.synthetic import case_id, make_synthetic_dataset  # noqa: F401
