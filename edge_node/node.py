"""The edge node: buffer, forwarder and ingest server in one nursery.

Shutdown order (SIGTERM or :meth:`EdgeNode.stop`): the HTTP server stops accepting and lets
requests in progress finish (up to ``drain_timeout_s``) while the writer still commits them; then
whatever is still queued is committed (shielded) and the remaining tasks are cancelled. A send to
central in progress records its ack even while being cancelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HyperConfig

from . import __version__
from .aggregate.roll_stage import RollupStage, register_metrics
from .alerts.service import AlertService, builtin_group
from .api import create_app
from .buffer import BufferService, open_buffer
from .config import EdgeConfig
from .errors import ConfigError
from .forward import Forwarder
from .host import HostCollector
from .ingest import IngestHandler
from .metrics import Registry
from .scrape import Scraper
from .sdnotify import sd_notify, watchdog
from .selfmon import register_process_metrics
from .status import StatusService
from .tls import ServerTLS, TLSError, serve

log = logging.getLogger("fleet_edge.node")

#: the running node's process id, in the data directory (``fleet-edge reload`` signals it)
PIDFILE = "fleet-edge.pid"


#: config sections and keys a reload applies at once; the others need a restart
LIVE = ("log_level", "central", "ingest", "scrape", "aggregate", "alerts", "host", "clock")


@dataclass
class EdgeNode:
    """A running node: where it listens and its parts (for tests, the demo and status)."""

    cfg: EdgeConfig
    buffer: BufferService
    forwarder: Forwarder
    registry: Registry
    config_path: str | None = None
    url: str = ""
    urls: list[str] = field(default_factory=list)  # the TLS listener's first, the plain one's
    server_tls: ServerTLS | None = None  # the listener's, with [tls] cert_file
    alerts: AlertService | None = None
    aggregation: RollupStage | None = None  # stream aggregation inside the buffer's roll
    host: HostCollector | None = None
    scraper: Scraper | None = None
    ingest: IngestHandler | None = None
    status: StatusService | None = None
    client: httpx.AsyncClient | None = None
    last_reload: dict[str, Any] | None = None
    stop_event: trio.Event = field(default_factory=trio.Event)
    _nursery: trio.Nursery | None = None
    _alerts_scope: trio.CancelScope | None = None
    _alerts_done: trio.Event = field(default_factory=trio.Event)
    _alert_inputs: bytes = b""
    _host_scope: trio.CancelScope | None = None
    _scrape_scope: trio.CancelScope | None = None  # the running scraper's
    _reload_lock: trio.Lock = field(default_factory=trio.Lock)

    def stop(self) -> None:
        self.stop_event.set()

    # -- parts that a reload may replace -------------------------------------------------------

    def _make_alerts(self, cfg: EdgeConfig, parts: tuple[list[Any], Any, bytes]
                     ) -> AlertService | None:
        """The alert service for ``parts`` (:func:`alert_parts`), observing the buffer; the
        caller seeds its recent data from the buffer (on the store's thread once the buffer
        runs)."""
        groups, hooks, self._alert_inputs = parts
        if not groups:
            return None
        svc = AlertService(groups, hooks, cfg.node_id, cfg.data_dir, self.registry,
                           max_series=cfg.alerts.max_series, client=self.client,
                           forward=self.buffer.write, labels_of=self.buffer.labels_of,
                           snapshot_interval_s=cfg.alerts.snapshot_interval_s)
        # observing before seeding: a batch both committed before the seed read and observed
        # after it is one sample at one timestamp, which the recent store keeps once
        self.buffer.observe(svc.observe)
        return svc

    async def _start_alerts(self) -> None:
        svc = self.alerts
        if svc is None or self._nursery is None:
            return
        scope = self._alerts_scope = trio.CancelScope()
        done = self._alerts_done = trio.Event()

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await svc.run(task_status=task_status)
            finally:
                done.set()

        await self._nursery.start(run)

    async def _stop_alerts(self) -> None:
        svc = self.alerts
        if svc is None:
            return
        if self._alerts_scope is not None:
            self._alerts_scope.cancel()
            await self._alerts_done.wait()  # its tasks are out before its database closes
        self.buffer.unobserve(svc.observe)
        await svc.close()
        self.alerts = None

    def _spawn(self, run: Callable[[], Awaitable[None]]) -> trio.CancelScope:
        """Run ``run()`` in the node's nursery, in a scope of its own (to stop just it)."""
        assert self._nursery is not None
        scope = trio.CancelScope()

        async def scoped() -> None:
            with scope:
                await run()

        self._nursery.start_soon(scoped)
        return scope

    def _start_scraper(self) -> None:
        """Run the scraper while it has targets (started, or stopped, by a reload too); a
        running one keeps going, with the new settings from its next round."""
        scraper = self.scraper
        if scraper is None or self._nursery is None:
            return
        running = self._scrape_scope
        if not scraper.enabled:
            if running is not None:
                running.cancel()
                self._scrape_scope = None
            return
        if running is None:
            self._scrape_scope = self._spawn(scraper.run)

    def _start_host(self) -> None:
        """Collect the host's metrics per ``[host]`` (started, stopped or changed by a reload
        too: a running collector keeps its CPU baseline and takes the new settings)."""
        cfg = self.cfg
        if not cfg.host.enabled or self._nursery is None:
            if self._host_scope is not None:
                self._host_scope.cancel()
                self._host_scope = None
            self.host = None
            return
        device = cfg.host.device or cfg.node_id
        if self.host is not None:
            self.host.configure(device, cfg.host.interval_s)
            return
        self.host = HostCollector(self.buffer, device, [cfg.data_dir, "/"], cfg.host.interval_s)
        self._host_scope = self._spawn(self.host.run)

    async def set_aggregation(self, rules: list[Any], checkpoint_interval_s: float) -> None:
        """Run ``rules`` inside the buffer's roll (none: no stream aggregation); the state of
        rules that did not change carries on (see :meth:`BufferService.set_stage`)."""
        stage = RollupStage(rules, self.buffer.labels_of,
                            checkpoint_interval_s=checkpoint_interval_s) if rules else None
        await self.buffer.set_stage(stage)
        self.aggregation = stage
        if stage is not None:
            register_metrics(self.registry, lambda: self.aggregation)

    # -- reload --------------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and the files it names (SIGHUP, ``fleet-edge reload``).

        An invalid config is refused, logged and the old one kept. Changes to the sections in
        :data:`LIVE` (and to ``buffer.max_disk_mb``) apply at once; buffered data, the
        aggregation state of unchanged rules and the alert state are kept. Changes to other
        keys (node_id, listen, data_dir, the rest of ``[buffer]``, ``[status]``) are logged as
        needing a restart and not applied. Returns what happened (also ``last_reload``).
        """
        async with self._reload_lock:
            result = await self._reload()
        self.last_reload = result
        return result

    async def _reload(self) -> dict[str, Any]:
        at = time.time()
        if not self.config_path:
            return {"at": at, "ok": False, "error": "the node was not started from a file",
                    "applied": [], "needs_restart": []}
        try:
            # everything is read and checked before anything changes
            new = await trio.to_thread.run_sync(EdgeConfig.from_toml, self.config_path)
            rules = await trio.to_thread.run_sync(new.aggregation_rules)
            alerts = await trio.to_thread.run_sync(alert_parts, new)
        except ConfigError as exc:
            log.error("reload refused, the running config is kept: %s", exc)
            return {"at": at, "ok": False, "error": str(exc), "applied": [],
                    "needs_restart": []}
        done: list[str] = []
        try:
            return await self._apply(new, rules, alerts, at, done)
        except Exception as exc:  # a failing part must not take the node down
            log.exception("reload failed part-way (switched: %s); the other parts keep "
                          "running as before", ", ".join(done) or "nothing")
            return {"at": at, "ok": False, "error": f"applying failed: {exc}", "applied": done,
                    "needs_restart": []}

    async def _apply(self, new: EdgeConfig, rules: list[Any],
                     alerts: tuple[list[Any], Any, bytes], at: float, done: list[str]
                     ) -> dict[str, Any]:
        """Switch to ``new``: the parts that may fail (they do I/O) first, then the plain
        settings; ``done`` collects what has switched (for the report of a failure)."""
        old = self.cfg
        applied, restart = plan_reload(old, new)
        keep = {k: getattr(old, k) for k in restart if "." not in k}
        buffer_cfg = dataclasses.replace(old.buffer, max_disk_mb=new.buffer.max_disk_mb)
        cfg = dataclasses.replace(new, **keep, buffer=buffer_cfg)
        agg = self.aggregation
        current = [r.fingerprint for r in agg.rules] if agg else []
        if ([r.fingerprint for r in rules] != current or
                (agg is not None
                 and cfg.aggregate.checkpoint_interval_s != agg.checkpoint_interval_s)):
            await self.set_aggregation(rules, cfg.aggregate.checkpoint_interval_s)
            done.append("aggregate")
        if alerts[2] != self._alert_inputs:
            await self._stop_alerts()
            svc = self.alerts = self._make_alerts(cfg, alerts)
            if svc is not None:
                await self.buffer.with_recent_metrics(svc.seed_from_buffer)
            await self._start_alerts()
            done.append("alerts")
        if self.ingest is not None:
            self.ingest.apply(cfg)  # also re-reads the device tokens file
        self.cfg = cfg
        if "log_level" in applied:
            logging.getLogger().setLevel(cfg.log_level.upper())
        if "central" in applied:
            self.forwarder.apply(cfg)
        elif self.forwarder.refresh_client(cfg):  # the same settings, renewed files
            applied.append("central.tls")
        if self.server_tls is not None and "tls" not in restart:
            try:  # renewed files at the same paths are read again too
                if self.server_tls.reload(cfg.tls_files()) and "tls" not in applied:
                    applied.append("tls")
            except TLSError as exc:
                log.error("reload: the listener keeps its certificate: %s", exc)
        if self.scraper is not None:
            self.scraper.ingest = cfg.ingest
            if self.scraper.cfg != cfg.scrape:
                self.scraper.cfg = cfg.scrape
                self.scraper.reload()
                self._start_scraper()
        if "buffer.max_disk_mb" in applied:
            self.buffer.max_bytes = int(cfg.buffer.max_disk_mb * 1024 * 1024)
        if "host" in applied:
            self._start_host()
        done += [a for a in applied if a not in done]
        if restart:
            log.warning("reload: %s changed; that takes a restart (the running values are "
                        "kept)", ", ".join(restart))
        log.info("config reloaded from %s: %s", self.config_path,
                 ", ".join(done) or "nothing changed")
        return {"at": at, "ok": True, "error": None, "applied": done,
                "needs_restart": restart}


def plan_reload(old: EdgeConfig, new: EdgeConfig) -> tuple[list[str], list[str]]:
    """(what a reload applies, what needs a restart) between two configs (sans-IO)."""
    applied: list[str] = []
    restart: list[str] = []
    for f in dataclasses.fields(EdgeConfig):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if f.name in LIVE:
            applied.append(f.name)
        elif f.name == "tls":  # other files at once; on/off, client_certs, plain_listen: not
            same = (bool(a.cert_file), a.client_certs, a.plain_listen) == (
                bool(b.cert_file), b.client_certs, b.plain_listen)
            (applied if same else restart).append("tls")
        elif f.name == "buffer":
            if a.max_disk_mb != b.max_disk_mb:
                applied.append("buffer.max_disk_mb")
            rest = [g.name for g in dataclasses.fields(a)
                    if g.name != "max_disk_mb" and getattr(a, g.name) != getattr(b, g.name)]
            restart += [f"buffer.{n}" for n in rest]
        else:
            restart.append(f.name)
    return applied, restart


def alert_parts(cfg: EdgeConfig) -> tuple[list[Any], Any, bytes]:
    """(rule groups incl. the built-in ones, hooks, :func:`alert_inputs`) of ``cfg``.

    Raises:
        ConfigError: naming the file, rule or hook that is wrong.
    """
    digest = alert_inputs(cfg)  # before reading: a file changed meanwhile is read next time
    groups = cfg.alert_rule_groups()
    if cfg.alerts.builtin_rules:
        groups.append(builtin_group(cfg.alerts, cfg.clock.max_ahead_s))
    return groups, cfg.alert_hooks(), digest


def alert_inputs(cfg: EdgeConfig) -> bytes:
    """What the alert service is built from: the ``[alerts]`` settings, node_id and the bytes
    of the rule and hooks files (a reload rebuilds the service only when these change)."""
    h = hashlib.sha256(repr((cfg.node_id, cfg.data_dir, dataclasses.astuple(cfg.alerts)))
                       .encode())
    paths = [p.strip() for p in cfg.alerts.rule_files.split(",") if p.strip()]
    for p in [*paths, cfg.alerts.hooks_file]:
        if p:
            try:
                h.update(Path(p).read_bytes())
            except OSError as exc:
                h.update(str(exc).encode())
    return h.digest()


async def run_edge_node(cfg: EdgeConfig, *, client: httpx.AsyncClient | None = None,
                        config_path: str | None = None,
                        task_status: trio.TaskStatus[EdgeNode] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Run a node until its ``stop()`` is called; ``task_status.started`` gets the handle.
    ``config_path`` is the file :meth:`EdgeNode.reload` re-reads."""
    registry = Registry("fleet_edge")
    registry.gauge("build_info", "Version of this edge node.", ("version", "node_id"),
                   callback=lambda: {(__version__, cfg.node_id): 1.0})
    register_process_metrics(registry, cfg.data_dir)
    # leave room for the batch envelope and the series definitions that may ride along
    buffer = await open_buffer(cfg.db_path, cfg.buffer, registry,
                               max_segment_bytes=int(cfg.central.max_batch_bytes * 0.75))
    server_tls = ServerTLS(cfg.tls_files()) if cfg.tls.cert_file else None
    if server_tls is not None:
        server_tls.register_metrics(registry, "devices")
    forwarder = Forwarder(cfg, buffer, client, registry)  # its own client for central's TLS
    own_client = client is None
    if client is None:  # for the alert hooks (webhooks: the system's trust store)
        client = httpx.AsyncClient(timeout=cfg.central.timeout_s)
    node = EdgeNode(cfg=cfg, buffer=buffer, forwarder=forwarder, registry=registry,
                    config_path=config_path, client=client, server_tls=server_tls)
    await node.set_aggregation(cfg.aggregation_rules(), cfg.aggregate.checkpoint_interval_s)
    node.alerts = node._make_alerts(cfg, alert_parts(cfg))
    if node.alerts is not None:  # the buffer's tasks are not running yet
        await buffer.with_recent_metrics(node.alerts.seed_from_buffer)
    status = node.status = StatusService(node, cfg.status.step_s, cfg.status.history_hours)
    pidfile = Path(cfg.data_dir) / PIDFILE
    try:
        app = create_app(node)
        node.ingest = app.ingest
        hc = HyperConfig()
        hc.graceful_timeout = cfg.drain_timeout_s
        hc.accesslog = None
        hc.errorlog = logging.getLogger("fleet_edge.http")
        hc.keep_alive_timeout = 75
        # devices post every few seconds for months: don't make them reconnect every 1,000
        hc.keep_alive_max_requests = 1_000_000
        stop = trio.Event()
        served = trio.Event()

        async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(app, hc, listen=[cfg.listen], tls=server_tls,
                            plain_listen=[cfg.tls.plain_listen] if cfg.tls.plain_listen else [],
                            shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                served.set()

        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await nursery.start(buffer.serve)
            nursery.start_soon(forwarder.run)
            await node._start_alerts()
            binds = await nursery.start(serve_http)
            node.url, node.urls = binds[0], binds
            node.scraper = Scraper(cfg.scrape, cfg.ingest, buffer, registry)
            node._start_scraper()
            node._start_host()
            nursery.start_soon(status.run)
            log.info("edge node %s listening on %s, forwarding to %s", cfg.node_id,
                     " and ".join(binds), cfg.central.url)
            for warning in cfg.security_warnings():
                log.warning("%s", warning)
            await trio.to_thread.run_sync(pidfile.write_text, f"{os.getpid()}\n")
            sd_notify("READY=1")
            nursery.start_soon(watchdog)
            task_status.started(node)
            await node.stop_event.wait()
            log.info("stopping: no new requests; finishing those in progress")
            sd_notify("STOPPING=1")
            status.stopping = True
            if node._scrape_scope is not None:
                node._scrape_scope.cancel()
            stop.set()
            # serve() returns once in-flight requests finished (bounded by graceful_timeout)
            with trio.move_on_after(node.cfg.drain_timeout_s + 1):
                await served.wait()
            await buffer.close()
            with trio.CancelScope(shield=True):
                await status.save()
            with trio.CancelScope(shield=True):
                async with node._reload_lock:  # not while a reload swaps the alert service
                    await node._stop_alerts()  # its tasks end, then its state is saved
            app.ingest.devices.close()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await forwarder.aclose()
            if own_client:
                await client.aclose()
        await buffer.aclose()
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        log.info("edge node %s stopped", cfg.node_id)


@asynccontextmanager
async def open_edge_node(cfg: EdgeConfig, *, client: httpx.AsyncClient | None = None,
                         config_path: str | None = None) -> AsyncIterator[EdgeNode]:
    """``async with open_edge_node(cfg) as node:`` runs a node for the block's duration."""
    async with trio.open_nursery() as nursery:
        node: EdgeNode = await nursery.start(partial(run_edge_node, cfg, client=client,
                                                     config_path=config_path))
        try:
            yield node
        finally:
            node.stop()
