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
- The recent samples are snapshotted every ``snapshot_interval_s`` and on shutdown and loaded
  on start, so rules over ranges (rate over 10 minutes) work right after a restart.

The parts it drives live apart: the SQL in :mod:`.db`, the grouping timers in
:mod:`.grouping`, sending to each kind of hook in :mod:`.delivery`, the built-in rules in
:mod:`.builtin`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import trio

from ..backoff import Backoff
from ..errors import is_disk_full
from ..metrics import Registry
from ..model import DEVICE_LABEL, NAME_LABEL, IngestBatch
from ..runtime import Clock, Runner, ThreadRunner, clock_ms
from ..wire import Columns
from .builtin import LAST_SEEN, builtin_group
from .db import AlertDB, load_recent, pack_recent
from .delivery import CENTRAL_HOOK, Forward, send
from .grouping import GroupTimers, Notification
from .notify import Hook, HooksConfig
from .promql import LOOKBACK_MS, MatrixSelector, Node, VectorSelector, children
from .rules import Alert, AlertingRule, Event, RuleEngine, RuleGroup
from .store import RecentStore

log = logging.getLogger("fleet_edge.alerts")


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
                 max_series: int = 200_000, clock: Clock = time.time,
                 client: httpx.AsyncClient | None = None, runner: Runner | None = None,
                 forward: Forward | None = None,
                 labels_of: Callable[[int], tuple[tuple[str, str], ...] | None] | None = None,
                 snapshot_interval_s: float = 300.0) -> None:
        """Args:
            clock: wall-clock seconds (tests pass one that follows Trio's virtual clock).
            runner: where blocking work runs: the database calls and the evaluations (the
                store and the engine). By default each gets its own ``ThreadRunner(1)``, so
                a slow commit does not hold up an evaluation; a runner given runs both (tests
                on ``autojump_clock`` pass one that runs them on the Trio thread).
        """
        # the database's one thread, and the store's and engine's
        self.runner: Runner = ThreadRunner(1) if runner is None else runner
        self.eval_runner: Runner = ThreadRunner(1) if runner is None else runner
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
        self.db = AlertDB(Path(data_dir) / "alerts.sqlite3")
        self._wakes: dict[str, trio.Event] = {}
        self._dirty: set[str] = set()  # devices seen since the last commit
        self._inbox: list[IngestBatch] = []  # committed batches not yet in the store
        self._inbox_lock = threading.Lock()
        self._lock = threading.Lock()  # the store and the engine (evaluation thread)
        self._active: list[Alert] = []  # the last evaluation's pending and firing alerts
        state, snap, devices = self.db.load()
        self.engine.load_state(state.get("engine", {}))
        self.timers = GroupTimers(self.hooks.route, self.hooks.hooks, state.get("notified", {}))
        self.devices = devices
        if snap:
            load_recent(self.store, snap)
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

    def now_ms(self) -> int:
        return clock_ms(self.clock)

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
                       ) -> tuple[list[Event], list[Notification], dict[str, Any]]:
        """The CPU part of an evaluation, off the Trio thread: the store and the engine are
        touched only here (and by the snapshot), under ``_lock``."""
        with self._lock:
            self._drain()
            self._self_series(now)
            events = self.engine.evaluate(group, now)
            notes = self.timers.notifications(events, self.engine.active(),
                                              self.engine.resolved, now)
            state = {"engine": self.engine.to_state(), "notified": self.timers.to_state()}
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
        events, notes, state = await self.eval_runner(self._evaluate_sync, group, now)
        self.m_evals.inc(1, group.name)
        self.m_eval_s.observe(time.perf_counter() - t0, group.name)
        # known devices are saved with the state: after a crash, a device that went silent
        # before it is still known (and still offline)
        seen = {d: self.devices[d] for d in self._dirty}
        self._dirty = set()
        queued = await self.runner(self.db.commit, now, state, notes, seen)
        if queued:
            for ev in self._wakes.values():
                ev.set()
        for e in events:
            log.warning("alert %s %s %s", e.alert.rule, e.kind.upper(),
                        json.dumps(e.alert.labels, sort_keys=True))
        self.evaluations += 1
        return events

    async def _group_loop(self, group: RuleGroup) -> None:
        iv = group.interval_ms
        while True:
            now = self.now_ms()
            await trio.sleep(max(0.0, (iv - now % iv) / 1000))
            try:
                await self.evaluate(group)
            except Exception as exc:  # a broken rule must not stop the others
                if is_disk_full(exc):  # a state the buffer reports; no traceback each round
                    log.warning("evaluating group %s: alert state not saved, the data disk "
                                "is full", group.name)
                else:
                    log.exception("evaluating group %s failed", group.name)

    # -- delivery -----------------------------------------------------------------------------

    async def _deliver_loop(self, hook: Hook) -> None:
        backoff = Backoff(initial_s=1.0, cap_s=300.0)
        while True:
            # a fresh event before looking: a notification queued meanwhile wakes us
            self._wakes[hook.name] = wake = trio.Event()
            due = await self.runner(self.db.due, hook.name, self.now_ms())
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
                    await self.runner(self.db.failed, row_id,
                                      self.now_ms() + int(delay * 1000), err)
                    failed = True
                    break
                backoff.reset()
                self.m_notifications.inc(1, hook.name, "delivered")
                await self.runner(self.db.delivered, row_id, self.now_ms(), result)
            if due and not failed:
                continue  # there may be more
            nxt = await self.runner(self.db.next_due_ms, hook.name)
            wait = 60.0 if nxt is None else max(0.05, (nxt - self.now_ms()) / 1000)
            with trio.move_on_after(wait):
                await wake.wait()

    async def _send(self, hook: Hook, payload: dict[str, Any]) -> str:
        return await send(hook, payload, client=self._client, forward=self.forward,
                          runner=self.runner, clock=self.clock)

    # -- snapshots ----------------------------------------------------------------------------

    def _snapshot_sync(self, now: int) -> bytes:
        with self._lock:
            self._drain()
            self.store.trim(now)
            return pack_recent(self.store)

    async def save_snapshot(self) -> None:
        now = self.now_ms()
        blob = await self.eval_runner(self._snapshot_sync, now)
        await self.runner(self.db.save_recent, now, blob, dict(self.devices))

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
                await self.runner(self.db.close)

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

        await self.eval_runner(drop)
        await self.runner(self.db.forget_device, device)
        log.info("device %s forgotten (last seen %s ms)", device, known[1])
        return {"device": device, "site": known[0], "last_seen_ms": known[1]}

    async def recent_notifications(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.runner(self.db.outbox, limit)
        for r in rows:
            r["group"] = json.loads(r.pop("group_key"))
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, as Prometheus' /api/v1/alerts lists them."""
        return [{"labels": a.labels, "annotations": a.annotations, "state": a.state,
                 "activeAt": a.active_at_ms / 1000, "value": repr(a.value)}
                for a in sorted(self._active, key=lambda a: (a.rule, a.fingerprint))]


def _name(key: tuple[tuple[str, str], ...]) -> str:
    for k, v in key:
        if k == NAME_LABEL:
            return v
    return ""


__all__ = ["AlertDB", "AlertService", "AlertingRule", "builtin_group"]
