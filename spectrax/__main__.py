import sys

from spectrax.cli import main

sys.exit(main())
