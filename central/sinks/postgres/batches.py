"""Applying a batch in PostgreSQL: the dedup lookup, per-sink marks, and the one-transaction
commit.

The commit's first statement inserts the batch's (node, epoch, seq) mark into ``applied``: a
concurrent instance applying the same batch waits on that row and then finds it taken, so each
batch is applied once however many central instances run. :func:`prepare` computes everything
the transaction writes before a connection is taken (sans-IO); :func:`write_commit` writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from edge_node.wire import VALUE_KINDS

from ...alert_rows import AlertEvent, alert_events
from ...model import Job, Pending
from .partitions import to_datetime as _dt


async def lookup(conn: asyncpg.Connection, nid: str, epoch: str, seq: int, need_dict: bool
                 ) -> tuple[bool, dict[int, dict[str, str]] | None, set[str]]:
    """(applied before?, the stored series dictionary when ``need_dict``, sinks that took it)."""
    if await conn.fetchval("SELECT 1 FROM applied WHERE node_id = $1 AND epoch = $2 "
                           "AND seq = $3", nid, epoch, seq):
        return True, None, set()
    known = None
    if need_dict:
        known = {r[0]: json.loads(r[1]) for r in await conn.fetch(
            "SELECT sid, labels::text FROM series WHERE node_id = $1 AND epoch = $2",
            nid, epoch)}
    marks = {r[0] for r in await conn.fetch(
        "SELECT sink FROM sink_marks WHERE node_id = $1 AND epoch = $2 AND seq = $3",
        nid, epoch, seq)}
    return False, known, marks


async def insert_mark(conn: asyncpg.Connection, nid: str, epoch: str, seq: int, sink: str
                    ) -> None:
    await conn.execute(
        "INSERT INTO sink_marks(node_id, epoch, seq, sink) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING", nid, epoch, seq, sink)


@dataclass
class Commit:
    """What one batch's transaction writes: ``records`` go to ``table`` (``""``: none)."""

    job: Job
    pending: Pending
    low_watermark: int
    table: str
    columns: list[str]
    records: list[tuple[Any, ...]]
    #: timestamps of the kept rows (the partitions they need)
    stamps: list[int]
    alerts: list[AlertEvent]
    devices: list[tuple[str, str, int, int]]
    hb_labels: dict[str, dict[str, str]]


def rows(job: Job, keep_kind: bool, cutoff_ms: int
         ) -> tuple[str, list[str], list[tuple[Any, ...]], int]:
    """(table, columns, records, expired) for this batch's time-series rows."""
    if job.kind != "heartbeats" and not keep_kind:
        return "", [], [], 0
    sids = job.sid_column().tolist()
    tss = job.ts.tolist()
    org, nid = job.node.org, job.node.node_id
    keep = [t >= cutoff_ms for t in tss]
    expired = keep.count(False)
    if job.kind == "heartbeats":
        return ("device_status", ["org", "device", "node_id", "ts", "status"],
                [(org, job.labels[s].get("device", ""), nid, _dt(t), "heartbeat")
                 for s, t, k in zip(sids, tss, keep, strict=True) if k], expired)
    if job.kind in VALUE_KINDS and job.values is not None:  # rollups are series too
        return ("samples", ["org", "node_id", "epoch", "sid", "ts", "value"],
                [(org, nid, job.epoch, s, _dt(t), v) for s, t, v, k in
                 zip(sids, tss, job.values.tolist(), keep, strict=True) if k], expired)
    if job.kind == "logs" and job.lines is not None:
        return ("logs", ["org", "node_id", "epoch", "sid", "ts", "line"],
                [(org, nid, job.epoch, s, _dt(t), ln.decode("utf-8", "replace"))
                 for s, t, ln, k in zip(sids, tss, job.lines, keep, strict=True) if k],
                expired)
    return "", [], [], 0


def prepare(job: Job, pending: Pending, keep_kind: bool, low_watermark: int, cutoff_ms: int
            ) -> tuple[Commit, int]:
    """The commit of ``job``, and how many of its rows are older than ``cutoff_ms``."""
    table, columns, records, expired = rows(job, keep_kind, cutoff_ms)
    stamps = job.ts[job.ts >= cutoff_ms].tolist() if records else []
    alerts = alert_events(job)[0] if job.kind == "alerts" and keep_kind else []
    # alert labels name the device they are about, not one that reported
    devices = job.device_rows() if job.kind != "alerts" else []
    hb_labels = {}
    if job.kind == "heartbeats":
        for sid in job.sids:
            lbl = job.labels[sid]
            if "device" in lbl:
                hb_labels[lbl["device"]] = {
                    k: v for k, v in lbl.items()
                    if k not in ("__name__", "org", "node", "site", "device")}
    return Commit(job, pending, low_watermark, table, columns, records, stamps, alerts,
                  devices, hb_labels), expired


async def write_commit(conn: asyncpg.Connection, c: Commit) -> bool:
    """Write ``c`` in one transaction; ``False`` if another instance applied it first."""
    job, pending, alerts, devices = c.job, c.pending, c.alerts, c.devices
    nid, epoch, org = job.node.node_id, job.epoch, job.node.org
    async with conn.transaction():
        won = await conn.fetchval(
            "INSERT INTO applied(node_id, epoch, seq, kind, rows) VALUES "
            "($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
            nid, epoch, job.seq, job.kind, job.rows)
        if not won:
            return False
        if pending.new_defs:
            await conn.execute(
                "INSERT INTO series(node_id, epoch, sid, org, labels) SELECT $1, $2, "
                "u.sid, $3, u.labels::jsonb FROM unnest($4::bigint[], $5::text[]) "
                "AS u(sid, labels) ON CONFLICT DO NOTHING", nid, epoch, org,
                [sid for sid, _ in pending.new_defs],
                [json.dumps(lbl, sort_keys=True) for _, lbl in pending.new_defs])
        if c.records:
            await conn.copy_records_to_table(c.table, records=c.records, columns=c.columns)
        if alerts:
            await conn.execute(
                "INSERT INTO alert_events (org, node_id, fingerprint, status, starts_at, "
                "ends_at, alertname, severity, device, site, labels, annotations) "
                "SELECT $1, $2, u.fp, u.st, u.s, u.e, u.an, u.sev, u.dev, u.site, "
                "u.lb::jsonb, u.ann::jsonb FROM unnest($3::text[], $4::text[], "
                "$5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[], "
                "$9::text[], $10::text[], $11::text[], $12::text[]) AS "
                "u(fp, st, s, e, an, sev, dev, site, lb, ann) ON CONFLICT DO NOTHING",
                org, nid, [a.fingerprint for a in alerts], [a.status for a in alerts],
                [_dt(a.starts_ms) for a in alerts],
                [_dt(a.ends_ms) if a.ends_ms else None for a in alerts],
                [a.alertname for a in alerts], [a.severity for a in alerts],
                [a.device for a in alerts], [a.site for a in alerts],
                [json.dumps(a.labels, sort_keys=True) for a in alerts],
                [json.dumps(a.annotations, sort_keys=True) for a in alerts])
        if devices:
            names = [d[0] for d in devices]
            await conn.execute(
                "INSERT INTO devices AS d (org, device, name, node_id, site, labels, "
                "first_seen, last_seen) SELECT $1, u.device, u.device, $2, u.site, "
                "u.labels::jsonb, u.first_seen, u.last_seen FROM unnest($3::text[], "
                "$4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[]) AS "
                "u(device, site, labels, first_seen, last_seen) "
                "ON CONFLICT (org, device) DO UPDATE SET "
                "first_seen = least(d.first_seen, excluded.first_seen), "
                "last_seen = greatest(d.last_seen, excluded.last_seen), "
                "node_id = excluded.node_id, site = excluded.site, "
                "labels = d.labels || excluded.labels",
                org, nid, names, [d[1] for d in devices],
                [json.dumps(c.hb_labels.get(d, {})) for d in names],
                [_dt(d[2]) for d in devices], [_dt(d[3]) for d in devices])
        await conn.execute(
            "DELETE FROM applied WHERE node_id = $1 AND epoch = $2 AND seq < $3",
            nid, epoch, c.low_watermark)
        await conn.execute(
            "DELETE FROM sink_marks WHERE node_id = $1 AND epoch = $2 AND "
            "(seq = $3 OR seq < $4)", nid, epoch, job.seq, c.low_watermark)
        await conn.execute("UPDATE nodes SET last_seen_ms = $1 WHERE node_id = $2",
                           job.now_ms, nid)
    return True
