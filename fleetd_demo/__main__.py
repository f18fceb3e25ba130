"""``python -m fleetd_demo``: what ``fleet-edge demo`` runs."""

import sys

from .cli import main

sys.exit(main())
