"""``python -m mlodsl`` runs the command line."""
import sys

from mlodsl.cli import main

sys.exit(main())
