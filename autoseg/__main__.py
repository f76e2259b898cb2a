"""`python -m autoseg`: the same command line as `autoseg` (torchrun needs a module to launch)."""
import sys

from .cli import main

sys.exit(main())
