"""Run central: the store plus the HTTP app in one nursery, with graceful shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio_asyncio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from edge_node.sdnotify import sd_notify, watchdog

from .app import create_app
from .pipeline import Pipeline

log = logging.getLogger("fleet_central.server")


@dataclass
class CentralHandle:
    url: str
    pipeline: Pipeline
    stop_event: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stop_event.set()


@asynccontextmanager
async def _asyncio_if(needed: bool) -> AsyncIterator[None]:
    if needed:
        async with trio_asyncio.open_loop():
            yield
    else:
        yield


async def run_central(pipeline: Pipeline, listen: str, *, graceful_s: float = 10.0,
                      task_status: trio.TaskStatus[CentralHandle] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Serve until ``handle.stop()``; ``task_status.started`` gets the handle."""
    async with _asyncio_if(pipeline.needs_asyncio):
        await _serve(pipeline, listen, graceful_s, task_status)


async def _serve(pipeline: Pipeline, listen: str, graceful_s: float,
                 task_status: trio.TaskStatus[CentralHandle]) -> None:
    await pipeline.open()
    try:
        app = create_app(pipeline, pipeline.registry)
        hc = HyperConfig()
        hc.bind = [listen]
        hc.graceful_timeout = graceful_s
        hc.accesslog = None
        hc.errorlog = logging.getLogger("fleet_central.http")
        hc.keep_alive_timeout = 75
        hc.keep_alive_max_requests = 1_000_000  # one edge node sends batches for months
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(
                app, hc, shutdown_trigger=stop.wait, task_status=task_status))
            maintenance = trio.CancelScope()
            nursery.start_soon(_maintain, pipeline, maintenance)
            handle = CentralHandle(url=binds[0], pipeline=pipeline)
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
