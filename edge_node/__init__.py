"""fleetd-edge: the edge node of a device fleet (ingest, durable buffer, forwarding)."""

__version__ = "0.1.0"
