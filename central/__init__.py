"""fleetd-edge central: receives edge batches and writes them to the storage backends."""

from edge_node import __version__

__all__ = ["__version__"]
