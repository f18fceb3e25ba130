"""The Trio shell of local alerting: feeding, evaluation loops, the durable outbox, hooks.

- Committed samples (and log lines) of series some rule reads go into the in-memory
  :class:`RecentStore` as they are committed; the node's own metrics and every known device's
  last-seen time are added at each evaluation, so the built-in rules are plain PromQL.
- Each group is evaluated on its interval, aligned to the wall clock. Its alert state and the
  notifications its transitions cause commit together to ``alerts.sqlite3`` (so a restart
  neither re-fires nor forgets, and no notification is lost or queued twice).
- One delivery task per hook sends what the outbox holds, retrying with backoff until it goes
  through. Delivery is at-least-once: a crash between sending and recording the success sends
  again (the webhook payload's ``groupKey`` and alert fingerprints let receivers dedupe).
- The recent samples are snapshotted every 30 s and on shutdown and loaded on start, so rules
  over ranges (rate over 10 minutes) work right after a restart.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import trio
import zstandard

from ..backoff import Backoff
from ..metrics import Registry
from ..model import DEVICE_LABEL, NAME_LABEL, IngestBatch
from ..wire import Columns
from .notify import (
    Hook,
    HooksConfig,
    alertmanager_alerts,
    dedup_key,
    exec_env,
    group_key,
    parse_rfc3339_ms,
    webhook_payload,
)
from .promql import (
    LOOKBACK_MS,
    MatrixSelector,
    Node,
    VectorSelector,
    children,
)
from .rules import Alert, AlertingRule, Event, RuleEngine, RuleGroup, parse_rule_groups
from .store import RecentStore

log = logging.getLogger("fleet_edge.alerts")

CENTRAL_HOOK = "central"
#: the series of each known device's last-seen time (what DeviceOffline reads)
LAST_SEEN = "fleet_edge_device_last_seen_timestamp_seconds"
DELIVERED_RETENTION_MS = 7 * 86_400_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), saved_ms INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recent (id INTEGER PRIMARY KEY CHECK (id = 1),
    saved_ms INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, site TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL, dedup TEXT NOT NULL UNIQUE,
    group_key TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    delivered_ms INTEGER, last_error TEXT, last_result TEXT);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(hook, delivered_ms, next_ms);
"""


class AlertDB:
    """Blocking access to ``alerts.sqlite3`` (one call at a time, from a worker thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                    timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        self.snapshot_ms = 0  # when the recent samples were last snapshotted (set by load)

    def close(self) -> None:
        self.conn.close()

    def load(self) -> tuple[dict[str, Any], bytes | None, dict[str, tuple[str, int]]]:
        row = self.conn.execute("SELECT doc FROM state WHERE id=1").fetchone()
        state = json.loads(row[0]) if row else {}
        snap = self.conn.execute("SELECT blob, saved_ms FROM recent WHERE id=1").fetchone()
        devices = {d: (s, int(t)) for d, s, t in
                   self.conn.execute("SELECT device, site, last_seen_ms FROM devices")}
        self.snapshot_ms = int(snap[1]) if snap else 0
        return state, snap[0] if snap else None, devices

    def commit(self, now_ms: int, state: dict[str, Any],
               notifications: Iterable[tuple[str, str, str, str, str]],
               devices: dict[str, tuple[str, int]] | None = None) -> int:
        """Save the alert state, the devices seen since the last commit, and queue
        notifications (hook, dedup, group, status, payload), in one transaction; returns how
        many notifications were new."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR REPLACE INTO state(id, saved_ms, doc) VALUES (1, ?, ?)",
                      (now_ms, json.dumps(state)))
            if devices:
                _upsert_devices(c, devices)
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO outbox(hook, dedup, group_key, status, payload, "
                "created_ms, next_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*n, now_ms, now_ms) for n in notifications])
            queued = c.total_changes - before
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return queued

    def save_recent(self, now_ms: int, blob: bytes,
                    devices: dict[str, tuple[str, int]]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR REPLACE INTO recent(id, saved_ms, blob) VALUES (1, ?, ?)",
                      (now_ms, blob))
            _upsert_devices(c, devices)
            c.execute("DELETE FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < ?",
                      (now_ms - DELIVERED_RETENTION_MS,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def due(self, hook: str, now_ms: int, limit: int = 20) -> list[tuple[int, str, int]]:
        """The hook's oldest undelivered notifications that are due, in order: a notification
        waiting for a retry holds back the ones queued after it (a receiver never sees a
        resolution before the alert)."""
        out = []
        for i, p, a, nxt in self.conn.execute(
                "SELECT id, payload, attempts, next_ms FROM outbox WHERE hook=? AND "
                "delivered_ms IS NULL ORDER BY id LIMIT ?", (hook, limit)):
            if nxt > now_ms:
                break
            out.append((int(i), p, int(a)))
        return out

    def next_due_ms(self, hook: str) -> int | None:
        row = self.conn.execute("SELECT next_ms FROM outbox WHERE hook=? AND delivered_ms IS "
                                "NULL ORDER BY id LIMIT 1", (hook,)).fetchone()
        return None if row is None else int(row[0])

    def delivered(self, row_id: int, now_ms: int, result: str) -> None:
        self.conn.execute("UPDATE outbox SET delivered_ms=?, attempts=attempts+1, last_result=? "
                          "WHERE id=?", (now_ms, result[:2000], row_id))

    def failed(self, row_id: int, next_ms: int, error: str) -> None:
        self.conn.execute("UPDATE outbox SET attempts=attempts+1, next_ms=?, last_error=? "
                          "WHERE id=?", (next_ms, error[:2000], row_id))

    def forget_device(self, device: str) -> None:
        self.conn.execute("DELETE FROM devices WHERE device = ?", (device,))

    def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("id", "hook", "status", "group_key", "created_ms", "attempts", "delivered_ms",
                "last_error", "last_result")
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(
            f"SELECT {', '.join(cols)} FROM outbox ORDER BY id DESC LIMIT ?", (limit,))]


def _upsert_devices(c: sqlite3.Connection, devices: dict[str, tuple[str, int]]) -> None:
    c.executemany("INSERT INTO devices(device, site, last_seen_ms) VALUES (?, ?, ?) "
                  "ON CONFLICT(device) DO UPDATE SET site=excluded.site, "
                  "last_seen_ms=max(last_seen_ms, excluded.last_seen_ms)",
                  [(d, s, t) for d, (s, t) in devices.items()])


def builtin_group(cfg: Any) -> RuleGroup:
    """The alerting rules of the fleetd data architecture, as PromQL over the node's own
    series (``fleet_edge_*``) and its devices' last-seen times."""
    drop = 1 - cfg.ingest_drop_ratio
    doc = {"groups": [{"name": "fleet-edge-builtin", "interval": f"{int(cfg.builtin_interval_s)}s",
                       "rules": [
        {"alert": "DeviceOffline",
         "expr": f"time() - {LAST_SEEN} > "
                 f"{cfg.device_offline_after_s:g}",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "device {{ $labels.device }} has sent nothing for "
                                    "{{ $value | humanizeDuration }}"}},
        {"alert": "IngestionRateDrop",
         "expr": f'sum(rate(fleet_edge_committed_total{{kind="metrics"}}[10m])) < {drop:g} * '
                 f'sum(rate(fleet_edge_committed_total{{kind="metrics"}}[10m] offset 10m))',
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "samples ingested dropped more than "
                                    f"{cfg.ingest_drop_ratio:.0%} against the 10 minutes "
                                    "before"}},
        {"alert": "StorageAlmostFull",
         "expr": f"fleet_edge_buffer_bytes / fleet_edge_buffer_disk_budget_bytes > "
                 f"{cfg.storage_used_ratio:g} or 1 - fleet_edge_data_disk_free_bytes / "
                 f"fleet_edge_data_disk_total_bytes > {cfg.storage_used_ratio:g}",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "storage {{ $value | humanizePercentage }} used"}},
        {"alert": "ForwardFailures",
         "expr": f"sum(rate(fleet_edge_forward_errors_total[10m])) / "
                 f"sum(rate(fleet_edge_forward_attempts_total[10m])) > "
                 f"{cfg.forward_failure_ratio:g}",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $value | humanizePercentage }} of the sends to "
                                    "central fail"}},
        {"alert": "ForwardBacklogOld",
         "expr": f"fleet_edge_backlog_age_seconds > {cfg.backlog_age_s:g}",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "the oldest unforwarded data is "
                                    "{{ $value | humanizeDuration }} old"}},
    ]}]}
    return parse_rule_groups(doc, "built-in")[0]


def _reach(node: Node) -> tuple[int, set[str] | None]:
    """How far back ``node`` reads (ms) and the metric names it reads (None: any)."""
    if isinstance(node, VectorSelector):
        return node.offset_ms + LOOKBACK_MS, ({node.name} if node.name else None)
    if isinstance(node, MatrixSelector):
        v = node.vector
        return v.offset_ms + node.range_ms, ({v.name} if v.name else None)
    reach, names = 0, set()
    any_name = False
    for k in children(node):
        r, n = _reach(k)
        reach = max(reach, r)
        if n is None:
            any_name = True
        else:
            names |= n
    return reach, (None if any_name else names)


class AlertService:
    """Everything local alerting does while the node runs."""

    def __init__(self, groups: list[RuleGroup], hooks: HooksConfig, node_id: str,
                 data_dir: str | os.PathLike[str], registry: Registry, *,
                 max_series: int = 200_000, clock: Callable[[], float] = time.time,
                 client: httpx.AsyncClient | None = None, inline: bool = False,
                 forward: Callable[[IngestBatch], Awaitable[None]] | None = None,
                 labels_of: Callable[[int], tuple[tuple[str, str], ...] | None] | None = None,
                 snapshot_interval_s: float = 300.0) -> None:
        """Args:
            clock: wall-clock seconds (tests pass one that follows Trio's virtual clock).
            inline: run database calls on the Trio thread (tests on ``autojump_clock``, which
                would jump while a worker thread works).
        """
        self.inline = inline
        self.snapshot_interval_s = snapshot_interval_s
        self.labels_of = labels_of
        self.groups = groups
        self.forward = forward
        # forwarding to central is one more hook, through the same durable outbox: an event
        # reaches central even if the WAN was down when it happened
        self.hooks = (HooksConfig(hooks.route, (*hooks.hooks, Hook(CENTRAL_HOOK, "central")))
                      if forward is not None else hooks)
        self.node_id = node_id
        self.registry = registry
        self.clock = clock
        self._client = client
        reach = LOOKBACK_MS
        names: set[str] | None = set()
        for g in groups:
            for rule in g.rules:
                rr, n = _reach(rule.expr)
                reach = max(reach, rr)
                if n is None or names is None:
                    names = None
                else:
                    names |= n
        self.wanted = names  # metric names the rules read (None: everything)
        self.store = RecentStore(retention_ms=reach + 2 * LOOKBACK_MS, max_series=max_series)
        self.engine = RuleEngine(groups, self.store, {"node": node_id})
        self.devices: dict[str, tuple[str, int]] = {}
        # group key -> [last notified ms (0: never), repeat no, first unnotified change ms]
        self.notified: dict[str, list[int]] = {}
        self.db = AlertDB(Path(data_dir) / "alerts.sqlite3")
        self.limiter = trio.CapacityLimiter(1)
        self._wakes: dict[str, trio.Event] = {}
        self._dirty: set[str] = set()  # devices seen since the last commit
        self._inbox: list[IngestBatch] = []  # committed batches not yet in the store
        self._inbox_lock = threading.Lock()
        self._lock = threading.Lock()  # the store and the engine (evaluation thread)
        self._active: list[Alert] = []  # the last evaluation's pending and firing alerts
        self.eval_limiter = trio.CapacityLimiter(1)
        state, snap, devices = self.db.load()
        self.engine.load_state(state.get("engine", {}))
        # (saved before the route timers: [last, repeat])
        self.notified = {k: [*v, 0][:3] for k, v in state.get("notified", {}).items()}
        self.devices = devices
        if snap:
            self._load_snapshot(snap)
        self._active = list(self.engine.active())
        self.evaluations = 0
        r = registry
        self.m_evals = r.counter("alert_evaluations_total", "Rule group evaluations.", ("group",))
        self.m_eval_s = r.histogram("alert_evaluation_seconds", "Time to evaluate a group.",
                                    ("group",))
        self.m_notifications = r.counter("alert_notifications_total",
                                         "Notifications delivered or failed, by hook.",
                                         ("hook", "outcome"))
        r.gauge("alerts_active", "Pending and firing alerts.", ("state",),
                callback=lambda: {(s,): float(sum(a.state == s for a in self._active))
                                  for s in ("pending", "firing")})
        r.gauge("alert_recent_series", "Series kept in memory for the rules.",
                callback=lambda: float(len(self.store)))

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.inline:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- feeding ------------------------------------------------------------------------------

    def observe(self, batch: IngestBatch) -> None:
        """Note a committed batch: the rules' data takes its samples and log lines at the
        next evaluation (on the evaluation thread); the devices it names are seen now."""
        if batch.metric_values or (batch.log_lines and self.engine.log_filters):
            with self._inbox_lock:
                self._inbox.append(batch)
        devices = self.devices
        # a device is seen when its data arrives (its own clock may be off)
        now = self.now_ms()
        for keys in (batch.metric_keys, batch.hb_keys, batch.log_keys):
            last_key = None
            for key in keys:
                if key is last_key:
                    continue
                last_key = key
                site = dev = None
                for k, val in key:
                    if k == DEVICE_LABEL:
                        dev = val
                    elif k == "site":
                        site = val
                if dev is not None:
                    seen = devices.get(dev)
                    if seen is None or seen[1] != now or (site and seen[0] != site):
                        devices[dev] = (site or (seen[0] if seen else ""), now)
                        self._dirty.add(dev)

    def _drain(self) -> None:
        """Move what :meth:`observe` queued into the recent store (evaluation thread)."""
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
        wanted = self.wanted
        add = self.store.add
        for batch in inbox:
            for key, t, v in zip(batch.metric_keys, batch.metric_ts, batch.metric_values,
                                 strict=True):
                if wanted is None or _name(key) in wanted:
                    add(key, t, v)
            if batch.log_lines and self.engine.log_filters:
                self.engine.feed_logs(batch.log_keys, batch.log_ts, batch.log_lines)

    def _self_series(self, now: int) -> None:
        """The node's own metrics and its devices' last-seen times, as samples at ``now``."""
        add = self.store.add
        for m in self.registry.metrics.values():
            if self.wanted is not None and m.name not in self.wanted:
                continue
            for labels, v in m.samples().items():
                key = tuple(sorted([(NAME_LABEL, m.name),
                                    *zip(m.labelnames, labels, strict=True)]))
                add(key, now, float(v))
        if self.wanted is None or LAST_SEEN in self.wanted:
            for dev, (site, t) in list(self.devices.items()):  # observe() may add meanwhile
                add(((NAME_LABEL, LAST_SEEN), (DEVICE_LABEL, dev), ("site", site)), now,
                    t / 1000)

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluate_sync(self, group: RuleGroup, now: int
                       ) -> tuple[list[Event], list[tuple[str, str, str, str, str]],
                                  dict[str, Any]]:
        """The CPU part of an evaluation, off the Trio thread: the store and the engine are
        touched only here (and by the snapshot), under ``_lock``."""
        with self._lock:
            self._drain()
            self._self_series(now)
            events = self.engine.evaluate(group, now)
            notes = self._notifications(events, now)
            state = {"engine": self.engine.to_state(), "notified": dict(self.notified)}
            self._active = list(self.engine.active())
        return events, notes, state

    def seed_from_buffer(self, read: Callable[[int], Iterable[Columns]]) -> int:
        """Add the buffer's metric rows newer than the last snapshot (what a crash kept out
        of it; with the WAN down, everything since): call once, before :meth:`run`.

        ``read(since_ms)`` yields the buffer's metric rows that may be newer than ``since_ms``.
        """
        since = self.db.snapshot_ms or self.now_ms() - self.store.retention_ms
        rows = read(since)
        labels_of = self.labels_of
        wanted = self.wanted
        n = 0
        for cols in rows:
            assert cols.values is not None
            keep = cols.ts > since
            for sid, t, v in zip(cols.series[keep].tolist(), cols.ts[keep].tolist(),
                                 cols.values[keep].tolist(), strict=True):
                key = labels_of(sid) if labels_of else None
                if key is not None and (wanted is None or _name(key) in wanted):
                    self.store.add(key, t, v)
                    n += 1
        if n:
            log.info("alert rules: %d recent samples seeded from the buffer", n)
        return n

    async def evaluate(self, group: RuleGroup) -> list[Event]:
        now = self.now_ms()
        t0 = time.perf_counter()
        if self.inline:
            await trio.lowlevel.checkpoint()
            events, notes, state = self._evaluate_sync(group, now)
        else:
            events, notes, state = await trio.to_thread.run_sync(
                self._evaluate_sync, group, now, limiter=self.eval_limiter)
        self.m_evals.inc(1, group.name)
        self.m_eval_s.observe(time.perf_counter() - t0, group.name)
        # known devices are saved with the state: after a crash, a device that went silent
        # before it is still known (and still offline)
        seen = {d: self.devices[d] for d in self._dirty}
        self._dirty = set()
        queued = await self._db(self.db.commit, now, state, notes, seen)
        if queued:
            for ev in self._wakes.values():
                ev.set()
        for e in events:
            log.warning("alert %s %s %s", e.alert.rule, e.kind.upper(),
                        json.dumps(e.alert.labels, sort_keys=True))
        self.evaluations += 1
        return events

    def _notifications(self, events: list[Event], now: int
                       ) -> list[tuple[str, str, str, str, str]]:
        """What to queue, by notification group, with Alertmanager's timers: a group with
        a change waits ``group_wait`` from its first change if it was never notified, else
        ``group_interval`` from its last notification; a group still firing with no change is
        re-sent after ``repeat_interval``. A notification carries the group's firing alerts
        and those resolved since its last one (or since its first change)."""
        route = self.hooks.route
        firing: dict[str, list[Alert]] = {}
        for a in self.engine.active():
            if a.state == "firing":
                firing.setdefault(group_key(a, route), []).append(a)
        notified = self.notified  # group -> [last notified ms (0: never), repeat no, changed ms]
        for e in events:
            g = group_key(e.alert, route)
            st = notified.setdefault(g, [0, 0, 0])
            if not st[2]:
                st[2] = now
        out: list[tuple[str, str, str, str, str]] = []
        resolved: dict[str, list[Alert]] | None = None
        for g in sorted(set(firing) | {g for g, st in notified.items() if st[2]}):
            last, repeat, changed = notified.get(g) or (0, 0, 0)
            if changed:
                wait_from, wait = ((last, route.group_interval_ms) if last
                                   else (changed, route.group_wait_ms))
                if now - wait_from < wait:
                    continue
                repeat = 0
            elif last and g in firing and now - last >= route.repeat_interval_ms:
                repeat += 1
            else:
                continue
            if resolved is None:
                resolved = {}
                for a in self.engine.resolved():
                    resolved.setdefault(group_key(a, route), []).append(a)
            since = last or changed
            alerts = [*firing.get(g, []),
                      *(a for a in resolved.get(g, []) if a.resolved_at_ms >= since)]
            if g in firing:
                notified[g] = [now, repeat, 0]
            else:
                notified.pop(g, None)  # all resolved: the group ends with this notification
            if not alerts:
                continue
            for h in self.hooks.hooks:
                payload = webhook_payload(g, alerts, h.name)
                out.append((h.name, dedup_key(h.name, g, alerts, repeat), g, payload["status"],
                            json.dumps(payload)))
        return out

    async def _group_loop(self, group: RuleGroup) -> None:
        iv = group.interval_ms
        while True:
            now = self.now_ms()
            await trio.sleep(max(0.0, (iv - now % iv) / 1000))
            try:
                await self.evaluate(group)
            except Exception:  # a broken rule must not stop the others
                log.exception("evaluating group %s failed", group.name)

    # -- delivery -----------------------------------------------------------------------------

    async def _deliver_loop(self, hook: Hook) -> None:
        backoff = Backoff(initial_s=1.0, cap_s=300.0)
        while True:
            # a fresh event before looking: a notification queued meanwhile wakes us
            self._wakes[hook.name] = wake = trio.Event()
            due = await self._db(self.db.due, hook.name, self.now_ms())
            failed = False
            for row_id, payload, attempts in due:
                try:
                    result = await self._send(hook, json.loads(payload))
                except Exception as exc:  # every failure is retried, with backoff
                    delay = backoff.next_delay()
                    err = f"{type(exc).__name__}: {exc}"
                    log.warning("hook %s failed (attempt %d): %s; retry in %.0fs", hook.name,
                                attempts + 1, err, delay)
                    self.m_notifications.inc(1, hook.name, "failed")
                    await self._db(self.db.failed, row_id, self.now_ms() + int(delay * 1000),
                                   err)
                    failed = True
                    break
                backoff.reset()
                self.m_notifications.inc(1, hook.name, "delivered")
                await self._db(self.db.delivered, row_id, self.now_ms(), result)
            if due and not failed:
                continue  # there may be more
            nxt = await self._db(self.db.next_due_ms, hook.name)
            wait = 60.0 if nxt is None else max(0.05, (nxt - self.now_ms()) / 1000)
            with trio.move_on_after(wait):
                await wake.wait()

    async def _send(self, hook: Hook, payload: dict[str, Any]) -> str:
        if hook.type == "central":
            assert self.forward is not None
            batch = alert_batch(payload, self.now_ms())
            await self.forward(batch)
            return f"{batch.n_alerts} alert events committed for central"
        if hook.type == "exec":
            return await self._exec(hook, payload)
        if hook.type == "log":
            line = json.dumps(payload, sort_keys=True)
            await self._db(_append_line, hook.path, line)
            return "written"
        client = self._client or httpx.AsyncClient()
        try:
            if hook.type == "webhook":
                body: Any = payload
                url = hook.url
            else:
                body = alertmanager_alerts(_alerts_of(payload))
                url = hook.url + "/api/v2/alerts"
            with trio.fail_after(hook.timeout_s):
                resp = await client.post(url, json=body)
        finally:
            if self._client is None:
                await client.aclose()
        if resp.status_code >= 300:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return f"HTTP {resp.status_code}"

    async def _exec(self, hook: Hook, payload: dict[str, Any]) -> str:
        data = json.dumps(payload).encode()
        env = {**os.environ, **exec_env(payload)}
        with trio.fail_after(hook.timeout_s):
            proc = await trio.run_process(list(hook.command), stdin=data, capture_stdout=True,
                                          capture_stderr=True, check=False, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}: "
                               f"{proc.stderr.decode('utf-8', 'replace')[-300:]}")
        return f"exit status 0: {proc.stdout.decode('utf-8', 'replace')[-300:]}"

    # -- snapshots ----------------------------------------------------------------------------

    def _snapshot(self) -> bytes:
        doc = [[[x for kv in s.labels for x in kv], s.ts, s.vals]
               for s in self.store.series.values()]
        return zstandard.compress(msgpack.packb(doc), 3)

    def _load_snapshot(self, blob: bytes) -> None:
        try:
            doc = msgpack.unpackb(zstandard.decompress(blob), raw=False)
        except (ValueError, zstandard.ZstdError) as exc:
            log.error("the recent-samples snapshot is unreadable (%s); starting empty", exc)
            return
        for flat, ts, vals in doc:
            key = tuple(zip(flat[0::2], flat[1::2], strict=True))
            for t, v in zip(ts, vals, strict=True):
                self.store.add(key, t, v)

    def _snapshot_sync(self, now: int) -> bytes:
        with self._lock:
            self._drain()
            self.store.trim(now)
            return self._snapshot()

    async def save_snapshot(self) -> None:
        now = self.now_ms()
        if self.inline:
            blob = self._snapshot_sync(now)
        else:
            blob = await trio.to_thread.run_sync(self._snapshot_sync, now,
                                                 limiter=self.eval_limiter)
        await self._db(self.db.save_recent, now, blob, dict(self.devices))

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(self.snapshot_interval_s)
            await self.save_snapshot()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as n:
            for g in self.groups:
                n.start_soon(self._group_loop, g)
            for h in self.hooks.hooks:
                n.start_soon(self._deliver_loop, h)
            n.start_soon(self._snapshot_loop)
            task_status.started()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.save_snapshot()
            finally:
                await self._db(self.db.close)

    async def forget_device(self, device: str) -> dict[str, Any] | None:
        """Stop tracking a decommissioned device (it is no longer offline; its DeviceOffline
        alert resolves at the next evaluation). None if it is not known. Data it sends later
        makes it known again."""
        known = self.devices.pop(device, None)
        if known is None:
            return None
        self._dirty.discard(device)

        def drop() -> None:
            with self._lock:
                self.store.drop(LAST_SEEN, device=device)

        if self.inline:
            drop()
        else:
            await trio.to_thread.run_sync(drop, limiter=self.eval_limiter)
        await self._db(self.db.forget_device, device)
        log.info("device %s forgotten (last seen %s ms)", device, known[1])
        return {"device": device, "site": known[0], "last_seen_ms": known[1]}

    async def recent_notifications(self, limit: int = 50) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._db(self.db.outbox, limit)
        for r in rows:
            r["group"] = json.loads(r.pop("group_key"))
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, as Prometheus' /api/v1/alerts lists them."""
        return [{"labels": a.labels, "annotations": a.annotations, "state": a.state,
                 "activeAt": a.active_at_ms / 1000, "value": repr(a.value)}
                for a in sorted(self._active, key=lambda a: (a.rule, a.fingerprint))]


def alert_batch(payload: dict[str, Any], now_ms: int) -> IngestBatch:
    """A notification's alerts as rows of the ``alerts`` data class: series = the alert's
    labels (named ``ALERTS``, as Prometheus names its alert series), line = the event."""
    b = IngestBatch()
    for d in payload.get("alerts", []):
        labels = {k: v for k, v in d["labels"].items() if k != NAME_LABEL}
        b.alert_keys.append(tuple(sorted({**labels, NAME_LABEL: "ALERTS"}.items())))
        b.alert_ts.append(now_ms)
        b.alert_lines.append(json.dumps(d, sort_keys=True).encode())
    return b


def _name(key: tuple[tuple[str, str], ...]) -> str:
    for k, v in key:
        if k == NAME_LABEL:
            return v
    return ""


def _alerts_of(payload: dict[str, Any]) -> list[Alert]:
    out = []
    for d in payload.get("alerts", []):
        a = Alert(d["labels"].get("alertname", ""), d["labels"], d["annotations"],
                  "resolved" if d["status"] == "resolved" else "firing", 0, 0.0)
        a.fired_at_ms = parse_rfc3339_ms(d["startsAt"])
        a.resolved_at_ms = parse_rfc3339_ms(d.get("endsAt", ""))
        out.append(a)
    return out


def _append_line(path: str, line: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


__all__ = ["AlertDB", "AlertService", "AlertingRule", "builtin_group"]
