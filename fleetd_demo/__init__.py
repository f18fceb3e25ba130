"""The end-to-end demo: central (embedded SQLite), an edge node and simulated devices in one
process, checking that every row a device was told was accepted is stored at central exactly
once (``fleet-edge demo``, ``scripts/demo``).

Why a package of its own: the demo runs both services, so it imports both, and neither service
package may depend on the other's internals: edge_node never imports central (a test keeps it
so), and central uses only edge_node's wire protocol and a few shared utilities. Here, beside
both, it can wire them together without making either depend on the other. ``fleet-edge demo``
does not import it either: it runs ``python -m fleetd_demo`` with its arguments.

Modules:

- ``cli``: the demo's options (``fleet-edge demo --help``) and ``main``
- ``run``: ``run_demo``: central, the edge node and the devices started, run, drained, the
  rows counted at each stage and the summary printed
- ``simulate``: the simulated devices (gauges, counters, logs, heartbeats)
"""

from .cli import main
from .run import run_demo

__all__ = ["main", "run_demo"]
