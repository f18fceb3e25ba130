"""fleetd-edge: the edge node of a device fleet (ingest, durable buffer, forwarding).

The data path, by package: :mod:`.api` and :mod:`.ingest` take device requests, which
:mod:`.protocols` parse; :mod:`.buffer` commits them durably and rolls them into segments,
running :mod:`.aggregate` inside the roll, while :mod:`.alerts` observes every commit;
:mod:`.forward` ships the segments to central in :mod:`.wire`'s format. :mod:`.node` wires the
parts together; :mod:`.cli` is ``fleet-edge``. The README's Layout section has every module.
"""

__version__ = "0.1.0"
