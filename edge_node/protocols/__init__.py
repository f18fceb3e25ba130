"""The ingest protocols (sans-IO): a decompressed request body in, an
:class:`~edge_node.model.IngestBatch` out, within the ``[ingest]`` limits, or a 4xx naming the
bad field. Nothing is stored here; :mod:`edge_node.ingest` writes what they return.

Modules:

- :mod:`.decode`: content encodings with hard size limits; a schema decoder's errors as fields
- :mod:`.common`: the label rules and the series builder every protocol shares
- :mod:`.native`: ``POST /api/v1/ingest``, JSON or msgpack, row and columnar forms
- :mod:`.prometheus_text`: Prometheus text exposition
- :mod:`.protobuf`, :mod:`.remote_write`: a minimal protobuf reader; Prometheus remote write
- :mod:`.influx`: Influx line protocol v1 and v2
- :mod:`.loki_push`: Loki push, JSON or protobuf
- :mod:`.fleetd_agent`: the fleetd agent's Register and telemetry calls

Import from the modules (``from edge_node.protocols import influx``): each protocol loads only
what it needs (msgspec, cramjam).
"""
