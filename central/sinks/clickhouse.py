"""Reporting rollups to ClickHouse over its HTTP interface.

Every metrics batch becomes one-minute partial aggregates per series (``central.rollup``),
inserted as ``JSONEachRow`` into ``metric_rollups_1m``; the view ``metric_rollups_1m_v`` merges
the partials into exact per-minute figures. Edge rollups (the nodes' stream-aggregation outputs)
go to ``edge_rollups``, one row per output series and window (view ``edge_rollups_v``).

Versions: the DDL uses only what ClickHouse 18.16 has (MergeTree family, custom partitioning).
Newer features are switched on by the detected ``version()``: ``TTL`` (>= 19.6) for retention
(older servers: central drops expired day partitions itself) and insert-deduplication tokens
(>= 22.2) on top of the ReplacingMergeTree that collapses a re-inserted batch on any version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from edge_node.durations import parse_duration
from edge_node.rollup_names import split_output_name
from edge_node.runtime import Clock

from ..alert_rows import alert_events
from ..errors import SchemaOutdated
from ..migrations import load
from ..model import Job
from ..rollup import minute_rollups
from .http import is_up, new_client, request

log = logging.getLogger("fleet_central.clickhouse")

TABLE = "metric_rollups_1m"
EDGE_TABLE = "edge_rollups"
ALERT_TABLE = "alert_history"


def migrations() -> list[tuple[int, str, str]]:
    return load("clickhouse")


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split(".")[:3] if p.isdigit())


def render(template: str, db: str, version: tuple[int, ...], retention_days: int) -> list[str]:
    """The statements of one migration for this server version."""
    def ttl(column: str) -> str:
        return (f"TTL {column} + INTERVAL {retention_days} DAY"
                if retention_days and version >= (19, 6) else "")

    settings = ("SETTINGS non_replicated_deduplication_window = 10000"
                if version >= (22, 2) else "")
    sql = (template.replace("{db}", db).replace("{ttl}", ttl("window_start"))
           .replace("{ttl_starts_at}", ttl("starts_at")).replace("{settings}", settings))
    body = "\n".join(ln for ln in sql.splitlines() if not ln.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";")]


def series_hash(labels: dict[str, str]) -> int:
    """A stable 64-bit id of a label set (ClickHouse sort key)."""
    canon = json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(canon, digest_size=8).digest(), "little")


def rollup_rows(job: Job, cutoff_ms: int) -> list[bytes]:
    """``JSONEachRow`` lines of this batch's one-minute rollups."""
    r = minute_rollups(job, cutoff_ms)
    if not len(r):
        return []
    stamps = np.datetime_as_string(r.window_ms.astype("datetime64[ms]"), unit="s")
    per_sid: dict[int, tuple[str, str, str, str, int, str]] = {}
    for sid in job.sids:
        lbl = job.labels[sid]
        per_sid[sid] = (lbl.get("site", ""), lbl.get("device", ""), lbl.get("__name__", ""),
                        json.dumps(lbl, sort_keys=True), series_hash(lbl), lbl["org"])
    batch = job.token
    out = []
    for sid, stamp, cnt, sm, mn, mx, last, last_ts in zip(
            r.sids.tolist(), stamps.tolist(), r.count.tolist(), r.sum.tolist(), r.min.tolist(),
            r.max.tolist(), r.last.tolist(), r.last_ts.tolist(), strict=True):
        site, device, metric, labels, h, org = per_sid[sid]
        out.append(json.dumps({
            "org": org, "node": job.node.node_id, "site": site, "device": device,
            "metric": metric, "series_hash": h, "labels": labels,
            "window_start": stamp.replace("T", " "), "batch": batch, "count_part": cnt,
            "sum_part": sm, "min_part": mn, "max_part": mx, "last_part": last,
            "last_ts_ms": last_ts}).encode())
    return out


def edge_rollup_rows(job: Job, cutoff_ms: int) -> tuple[list[bytes], int]:
    """``JSONEachRow`` lines of an edge rollups batch, and how many rows are not edge outputs.

    The output name says the rest: ``<metric>:<interval>[_by_...|_without_...]_<output>``;
    the row's timestamp is its window's end.
    """
    assert job.values is not None
    out: list[bytes] = []
    bad = 0
    ts, vals = job.ts.tolist(), job.values.tolist()
    for sid, a, b in job.series():
        lbl = job.labels[sid]
        parts = split_output_name(lbl.get("__name__", ""))
        try:
            interval_ms = parse_duration(parts[1].split("_", 1)[0]) if parts else 0
        except ValueError:
            interval_ms = 0
        if parts is None or interval_ms <= 0:
            bad += b - a
            continue
        metric, rule, output = parts
        try:
            q = float(lbl.get("quantile", "0"))
        except ValueError:
            q = 0.0
        common = {"org": lbl["org"], "node": job.node.node_id, "site": lbl.get("site", ""),
                  "device": lbl.get("device", ""), "metric": metric, "rule": rule,
                  "interval_s": interval_ms // 1000, "output": output, "quantile": q,
                  "series_hash": series_hash(lbl), "labels": json.dumps(lbl, sort_keys=True)}
        for t, v in zip(ts[a:b], vals[a:b], strict=True):
            start = t - interval_ms
            if start < cutoff_ms or v != v or v in (float("inf"), float("-inf")):
                bad += start >= cutoff_ms  # NaN/Inf are not representable; expired are counted
                continue
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start // 1000))
            out.append(json.dumps({**common, "window_start": stamp, "value": v}).encode())
    return out, bad


def alert_history_rows(job: Job) -> list[bytes]:
    """``JSONEachRow`` lines of an alerts batch (one per alert, state and start)."""
    events, _ = alert_events(job)

    def stamp(ms: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) if ms else \
            "1970-01-01 00:00:00"

    return [json.dumps({
        "org": e.org, "node": e.node, "site": e.site, "device": e.device,
        "alertname": e.alertname, "severity": e.severity, "fingerprint": e.fingerprint,
        "status": e.status, "starts_at": stamp(e.starts_ms), "ends_at": stamp(e.ends_ms),
        "labels": json.dumps(e.labels, sort_keys=True),
        "annotations": json.dumps(e.annotations, sort_keys=True)}).encode() for e in events]


class ClickHouseSink:
    """Metric rollups, edge rollups and alert history into ClickHouse.

    Args:
        url: the HTTP interface.
        database: created by ``migrate``.
        retention_days: rows older than this are not written (and expire); 0 keeps everything.
        timeout_s: per request.
        retry_after_s: what a 503 tells the edge while ClickHouse is down.
        clock: wall-clock seconds (the ``applied_at`` of each migration).
    """

    name = "clickhouse"
    kinds = frozenset({"metrics", "rollups", "alerts"})
    stores_rows = False  # rollups are derived; the raw rows live in VictoriaMetrics

    def __init__(self, url: str, *, database: str = "fleetd_analytics", retention_days: int = 0,
                 timeout_s: float = 15.0, retry_after_s: int = 5,
                 clock: Clock = time.time) -> None:
        self.url = url.rstrip("/") + "/"
        self.db = database
        self.retention_days = retention_days
        self.clock = clock
        self.retry_after_s = retry_after_s
        self.client = new_client(timeout_s)
        self.version: tuple[int, ...] = ()

    async def query(self, sql: str, body: bytes = b"", **params: str) -> str:
        """Run one statement (``body`` is the data of an INSERT); returns the response text."""
        if body:
            resp = await request(self.client, self.name, "POST", self.url, content=body,
                                 params={"query": sql, **params},
                                 retry_after_s=self.retry_after_s, rejects=False)
        else:
            resp = await request(self.client, self.name, "POST", self.url,
                                 content=sql.encode(), params=params,
                                 retry_after_s=self.retry_after_s, rejects=False)
        return resp.text

    async def server_version(self) -> tuple[int, ...]:
        if not self.version:
            self.version = parse_version(await self.query("SELECT version()"))
        return self.version

    async def schema_version(self) -> int:
        exists = await self.query(f"EXISTS TABLE {self.db}.schema_migrations")
        if exists.strip() != "1":
            return 0
        return int((await self.query(
            f"SELECT max(version) FROM {self.db}.schema_migrations")).strip() or 0)

    async def migrate(self) -> list[str]:
        """Create/upgrade the database and tables; returns the names of applied migrations."""
        version = await self.server_version()
        await self.query(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        await self.query(f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations "
                         "(version UInt32, name String, applied_at DateTime) "
                         "ENGINE = MergeTree() ORDER BY version")
        current = await self.schema_version()
        done = []
        for num, name, template in migrations():
            if num <= current:
                continue
            for stmt in render(template, self.db, version, self.retention_days):
                await self.query(stmt)
            await self.query(f"INSERT INTO {self.db}.schema_migrations FORMAT JSONEachRow",
                             json.dumps({"version": num, "name": name,
                                         "applied_at": int(self.clock())}).encode())
            done.append(name)
        return done

    async def open(self) -> None:
        try:
            current = await self.schema_version()
            await self.server_version()
        except Exception as exc:
            log.warning("ClickHouse at %s not reachable yet (%s); batches get 503 until it is",
                        self.url, exc)
            return
        latest = migrations()[-1][0]
        if current < latest:
            raise SchemaOutdated(
                f"ClickHouse database {self.db!r} is at schema version {current}, this build "
                f"needs {latest}: run 'fleet-central migrate'")

    async def close(self) -> None:
        await self.client.aclose()

    async def ready(self) -> bool:
        return await is_up(self.client, self.url + "ping")

    async def write(self, job: Job) -> None:
        cutoff = job.cutoff(self.retention_days)
        if cutoff and (expired := int((job.ts < cutoff).sum())):
            job.expired[self.name] = expired
        table = TABLE
        if job.kind == "alerts":
            rows = alert_history_rows(job)
            table = ALERT_TABLE
        elif job.kind == "rollups":
            rows, bad = edge_rollup_rows(job, cutoff)
            if bad:
                job.unrepresentable[self.name] = bad
            table = EDGE_TABLE
        else:
            rows = rollup_rows(job, cutoff)
        if not rows:
            return
        params: dict[str, str] = {}
        if await self.server_version() >= (22, 2):
            params["insert_deduplication_token"] = job.token
        await self.query(f"INSERT INTO {self.db}.{table} FORMAT JSONEachRow",
                         b"\n".join(rows), **params)

    async def expire(self, now_s: float) -> list[str]:
        """Drop day partitions older than the retention (servers without TTL)."""
        if not self.retention_days or await self.server_version() >= (19, 6):
            return []
        cutoff = time.strftime("%Y%m%d", time.gmtime(now_s - self.retention_days * 86400))
        dropped = []
        for table in (TABLE, EDGE_TABLE, ALERT_TABLE):
            parts = (await self.query(
                f"SELECT DISTINCT partition FROM system.parts WHERE database = '{self.db}' AND "
                f"table = '{table}' AND active AND partition < '{cutoff}'")).split()
            for p in parts:
                await self.query(f"ALTER TABLE {self.db}.{table} DROP PARTITION {p}")
            dropped += [f"{table}:{p}" for p in parts]
        return dropped
