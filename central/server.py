"""Run central: the store plus the HTTP app in one nursery, with graceful shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio_asyncio
from hypercorn.config import Config as HyperConfig

from edge_node.sdnotify import sd_notify, watchdog
from edge_node.tls import ServerTLS, TLSError, serve

from .app import create_app
from .audit import Audit
from .keys import KeyPolicy, KeyService
from .pipeline import Pipeline

log = logging.getLogger("fleet_central.server")


@dataclass
class CentralHandle:
    url: str
    pipeline: Pipeline
    tls: ServerTLS | None = None
    stop_event: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stop_event.set()

    def reload_tls(self) -> None:
        """Re-read the certificate, key and client CA (SIGHUP): new connections use them,
        open ones keep theirs. Files that do not load are logged and the old ones kept."""
        if self.tls is None:
            log.info("SIGHUP: no TLS configured, nothing to reload")
            return
        try:
            changed = self.tls.reload()
        except TLSError as exc:
            log.error("SIGHUP: keeping the current certificate: %s", exc)
            return
        log.info("SIGHUP: TLS files re-read; certificate %s (%s, expires %s)",
                 "replaced" if changed else "unchanged", self.tls.cert.subject,
                 time.strftime("%Y-%m-%d", time.gmtime(self.tls.cert.not_after_s)))


@asynccontextmanager
async def _asyncio_if(needed: bool) -> AsyncIterator[None]:
    if needed:
        async with trio_asyncio.open_loop():
            yield
    else:
        yield


async def run_central(pipeline: Pipeline, listen: str, *, graceful_s: float = 10.0,
                      tls: ServerTLS | None = None, key_policy: KeyPolicy | None = None,
                      task_status: trio.TaskStatus[CentralHandle] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Serve until ``handle.stop()`` (HTTPS with ``tls``); ``task_status.started`` gets the
    handle."""
    async with _asyncio_if(pipeline.needs_asyncio):
        await _serve(pipeline, listen, graceful_s, tls, key_policy or KeyPolicy(), task_status)


async def _serve(pipeline: Pipeline, listen: str, graceful_s: float, tls: ServerTLS | None,
                 key_policy: KeyPolicy, task_status: trio.TaskStatus[CentralHandle]) -> None:
    await pipeline.open()
    try:
        if tls is not None:
            tls.register_metrics(pipeline.registry, "central")
        audit = Audit(pipeline.state, pipeline.clock)
        keys = KeyService(pipeline.state, key_policy, audit, pipeline.clock)
        app = create_app(pipeline, pipeline.registry, tls=tls, keys=keys)
        hc = HyperConfig()
        hc.graceful_timeout = graceful_s
        hc.accesslog = None
        hc.errorlog = logging.getLogger("fleet_central.http")
        hc.keep_alive_timeout = 75
        hc.keep_alive_max_requests = 1_000_000  # one edge node sends batches for months
        stop, served = trio.Event(), trio.Event()

        async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(app, hc, listen=[listen], tls=tls, shutdown_trigger=stop.wait,
                            task_status=task_status)
            finally:
                served.set()

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_http)
            maintenance = trio.CancelScope()
            nursery.start_soon(_maintain, pipeline, maintenance)
            auditing = trio.CancelScope()

            async def write_audit() -> None:
                with auditing:
                    await audit.run()

            nursery.start_soon(write_audit)
            handle = CentralHandle(url=binds[0], pipeline=pipeline, tls=tls)
            log.info("central listening on %s (state: %s, sinks: %s)", binds[0],
                     pipeline.state.name, ", ".join(s.name for s in pipeline.sinks) or "none")
            sd_notify("READY=1")
            watching = trio.CancelScope()

            async def ping() -> None:
                with watching:
                    await watchdog()

            nursery.start_soon(ping)
            task_status.started(handle)
            await handle.stop_event.wait()
            sd_notify("STOPPING=1")
            watching.cancel()
            maintenance.cancel()
            stop.set()
            await served.wait()  # the last requests are answered (bounded by graceful_s)
            auditing.cancel()  # its final flush writes what they left
    finally:
        await pipeline.close()


MAINTAIN_EVERY_S = 3600.0


async def _maintain(pipeline: Pipeline, scope: trio.CancelScope) -> None:
    """Retention (partition drops) at start and then hourly, until ``scope`` is cancelled."""
    with scope:
        while True:
            try:
                await pipeline.maintain(pipeline.clock())
            except Exception:
                log.exception("retention maintenance failed; retrying in an hour")
            await trio.sleep(MAINTAIN_EVERY_S)
