"""``python -m edge_node.cli``: the same as the ``fleet-edge`` command."""

import sys

from . import main

sys.exit(main())
