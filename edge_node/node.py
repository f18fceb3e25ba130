"""The edge node: buffer, forwarder and ingest server in one nursery.

Shutdown order (SIGTERM or :meth:`EdgeNode.stop`): the HTTP server stops accepting and lets
requests in progress finish (up to ``drain_timeout_s``) while the writer still commits them; then
whatever is still queued is committed (shielded) and the remaining tasks are cancelled. A send to
central in progress records its ack even while being cancelled.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from . import __version__
from .alerts.service import AlertService, builtin_group
from .buffer import Store
from .config import EdgeConfig
from .forward import Forwarder
from .ingest import create_app
from .metrics import Registry
from .scrape import Scraper
from .selfmon import register_process_metrics
from .writer import BufferService

log = logging.getLogger("fleet_edge.node")


@dataclass
class EdgeNode:
    """A running node: where it listens and its parts (for tests, the demo and status)."""

    cfg: EdgeConfig
    url: str
    buffer: BufferService
    forwarder: Forwarder
    registry: Registry
    alerts: AlertService | None = None
    stop_event: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stop_event.set()


def sd_notify(message: str) -> None:
    """Tell systemd about our state when run as a ``Type=notify`` unit (no-op otherwise)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


async def watchdog() -> None:
    """Ping systemd's watchdog (``WatchdogSec=``) from the Trio loop at half its period: if
    the loop stalls, the pings stop and systemd restarts the node. A no-op without it."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return
    period = max(int(usec) / 1e6 / 2, 0.05)
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(period)


async def run_edge_node(cfg: EdgeConfig, *, client: httpx.AsyncClient | None = None,
                        task_status: trio.TaskStatus[EdgeNode] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Run a node until its ``stop()`` is called; ``task_status.started`` gets the handle."""
    store = await trio.to_thread.run_sync(
        lambda: Store(cfg.db_path, synchronous=cfg.buffer.synchronous))
    registry = Registry("fleet_edge")
    registry.gauge("build_info", "Version of this edge node.", ("version", "node_id"),
                   callback=lambda: {(__version__, cfg.node_id): 1.0})
    # leave room for the batch envelope and the series definitions that may ride along
    register_process_metrics(registry, cfg.data_dir)
    buffer = BufferService(store, cfg.buffer, registry,
                           max_segment_bytes=int(cfg.central.max_batch_bytes * 0.75),
                           rules=cfg.aggregation_rules(),
                           checkpoint_interval_s=cfg.aggregate.checkpoint_interval_s)
    own_client = client is None
    if client is None:
        client = httpx.AsyncClient(timeout=cfg.central.timeout_s)
    alert_groups = cfg.alert_rule_groups()
    if cfg.alerts.builtin_rules:
        alert_groups.append(builtin_group(cfg.alerts))
    alerts = None
    if alert_groups:
        alerts = AlertService(alert_groups, cfg.alert_hooks(), cfg.node_id, cfg.data_dir,
                              registry, max_series=cfg.alerts.max_series, client=client,
                              forward=buffer.write, labels_of=store.labels_of)
        alerts.seed_from_buffer(store.recent_metrics)
        buffer.observers.append(alerts.observe)
    try:
        forwarder = Forwarder(cfg, buffer, client, registry)
        def health() -> dict[str, Any]:
            st = buffer.stats_cache
            return {"version": __version__, "central_connected": forwarder.connected,
                    "last_forward_error": forwarder.last_error or None,
                    "pending_rows": sum(st.pending.values()),
                    "backlog_age_s": round(buffer.backlog_age(), 3),
                    "buffer_bytes": st.used_bytes, "dead_letters": st.dead_letters}

        app = create_app(cfg, buffer, registry, health, alerts)
        hc = HyperConfig()
        hc.bind = [cfg.listen]
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
                await serve(app, hc,  # type: ignore[arg-type]  # see EdgeApp.__call__
                            shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                served.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(buffer.serve)
            nursery.start_soon(forwarder.run)
            if alerts is not None:
                await nursery.start(alerts.run)
            binds = await nursery.start(serve_http)
            scraper = Scraper(cfg.scrape, cfg.ingest, buffer, registry)
            scraping = trio.CancelScope()
            if scraper.enabled:
                async def scrape() -> None:
                    with scraping:
                        await scraper.run()

                nursery.start_soon(scrape)
            node = EdgeNode(cfg=cfg, url=binds[0], buffer=buffer, forwarder=forwarder,
                            registry=registry, alerts=alerts)
            log.info("edge node %s listening on %s, forwarding to %s", cfg.node_id, binds[0],
                     cfg.central.url)
            sd_notify("READY=1")
            nursery.start_soon(watchdog)
            task_status.started(node)
            await node.stop_event.wait()
            log.info("stopping: no new requests; finishing those in progress")
            sd_notify("STOPPING=1")
            scraping.cancel()
            stop.set()
            # serve() returns once in-flight requests finished (bounded by graceful_timeout)
            with trio.move_on_after(cfg.drain_timeout_s + 1):
                await served.wait()
            await buffer.close()
            if alerts is not None:
                await alerts.close()
            app.ingest.devices.close()
            nursery.cancel_scope.cancel()
    finally:
        if own_client:
            with trio.CancelScope(shield=True):
                await client.aclose()
        await trio.to_thread.run_sync(store.close)
        log.info("edge node %s stopped", cfg.node_id)


@asynccontextmanager
async def open_edge_node(cfg: EdgeConfig, *, client: httpx.AsyncClient | None = None
                         ) -> AsyncIterator[EdgeNode]:
    """``async with open_edge_node(cfg) as node:`` runs a node for the block's duration."""
    async with trio.open_nursery() as nursery:
        node: EdgeNode = await nursery.start(partial(run_edge_node, cfg, client=client))
        try:
            yield node
        finally:
            node.stop()
