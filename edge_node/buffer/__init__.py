"""The durable buffer: everything a device was told was accepted, until central acknowledges it.

One SQLite file in WAL mode::

    series_blocks(first_id, last_id, blob)
                                         the node's series dictionary, a block per commit that
                                         met new series (:mod:`.series`)
    series_unacked(id)                   series whose definition central has not confirmed
    journal(id, kind, n, created_ms, blob)
                                         what ingest committed, one row per group commit and
                                         kind, raw columns: durable at once, cheap to write
                                         (:mod:`.journal`)
    segments(seq, kind, n, min_ts, max_ts, created_ms, attempts, size, summarised, blob)
                                         journal rows rolled into compressed columnar segments
                                         (:mod:`edge_node.wire`), shipped to central unchanged;
                                         ``summarised``: raw metrics that stream-aggregation
                                         rollups cover (compacted first under disk pressure)
    agg_state(fingerprint, name, saved_ms, log_id, blob)
                                         each aggregation rule's state at its last checkpoint,
                                         which included the replay log up to ``log_id``
    agg_log(id, now_ms, n, blob)         the samples aggregated since, as segments (replayed
                                         on start)
    dead_letters(seq, kind, n, reason, failed_ms, blob)
                                         segments central refused as malformed: kept, counted
    counters(name, value)                persistent counts (drops, dead letters, acks)
    meta(key, value)                     the buffer's epoch (a random id, part of every batch)

Modules, in the order data passes through them:

- :mod:`.journal`   the journal row codec (sans-IO)
- :mod:`.series`    the series dictionary, the one owner of series key <-> id (sans-IO)
- :mod:`.store`     the SQL store: schema and every statement (blocking, one thread)
- :mod:`.stage`     the contract with a stage that sees metric rows as they roll (sans-IO)
- :mod:`.roll`      journal -> segments, through the stage; its outputs and checkpoints
- :mod:`.merge`     small backlogged segments -> dense ones
- :mod:`.budget`    the disk-budget policy: what goes first when the disk is full (sans-IO)
- :mod:`.service`   the Trio service: group commit, upkeep tasks, the API the node uses
- :mod:`.salvage`   ``fleet-edge buffer check | salvage`` and the offline dead-letter tools

Only :class:`BufferService` is used by the running node; the offline tools (the CLI's
``buffer`` and ``dead-letters`` commands) use :mod:`.salvage`.
"""

from .budget import DROP_ORDER, plan_drops
from .journal import pack_journal_rows, unpack_journal
from .salvage import (
    Report,
    check,
    drop_dead_letters,
    list_dead_letters,
    requeue_dead_letters,
    salvage,
)
from .series import SeriesDictionary
from .service import BufferService, Writer, open_buffer
from .stage import RollStage, StageOutput
from .store import BufferStats, PendingSegment, Store

__all__ = [
    "DROP_ORDER",
    "BufferService",
    "BufferStats",
    "PendingSegment",
    "Report",
    "RollStage",
    "SeriesDictionary",
    "StageOutput",
    "Store",
    "Writer",
    "check",
    "drop_dead_letters",
    "list_dead_letters",
    "open_buffer",
    "pack_journal_rows",
    "plan_drops",
    "requeue_dead_letters",
    "salvage",
    "unpack_journal",
]
