"""fleetd-edge central: receives edge batches and writes them to the storage backends.

The data path: :mod:`.app` authenticates and decodes a batch (:mod:`edge_node.wire`),
:mod:`.pipeline` applies it once (dedup, sinks, then the state commit), :mod:`.router` turns it
into a :class:`~central.model.Job` with trusted labels, and :mod:`.sinks` write it. The README's
Layout section has every module.
"""

from edge_node import __version__

__all__ = ["__version__"]
