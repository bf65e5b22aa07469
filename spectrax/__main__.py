import sys

from spectrax.cli import main

__all__ = []

sys.exit(main())
