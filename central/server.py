"""Run central: the store plus the HTTP app in one nursery, with graceful shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from .app import create_app
from .sinks.base import Store

log = logging.getLogger("fleet_central.server")


@dataclass
class CentralHandle:
    url: str
    store: Store
    stop_event: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stop_event.set()


async def run_central(store: Store, listen: str, *, graceful_s: float = 10.0,
                      task_status: trio.TaskStatus[CentralHandle] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Serve until ``handle.stop()``; ``task_status.started`` gets the handle."""
    await store.open()
    try:
        app = create_app(store)
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
            handle = CentralHandle(url=binds[0], store=store)
            log.info("central listening on %s (store: %s)", binds[0], store.name)
            task_status.started(handle)
            await handle.stop_event.wait()
            stop.set()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
