"""What a service process does around its main task, shared by ``fleet-edge`` and
``fleet-central``: find the error that stopped start-up, stop gracefully on SIGTERM/SIGINT,
tune the garbage collector for a long-running allocation-heavy service."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVarTuple

import trio

Ts = TypeVarTuple("Ts")


def startup_error(exc: BaseException, kinds: tuple[type[BaseException], ...]
                  ) -> BaseException | None:
    """The first exception of ``kinds`` in ``exc`` (through exception groups), if any."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = startup_error(inner, kinds)
            if found is not None:
                return found
    return None


async def stop_on_signal(stop: Callable[[], None], logger: str) -> None:
    """Wait for SIGTERM or SIGINT, then call ``stop`` (a graceful shutdown) once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger(logger).info("%s received: draining and shutting down",
                                           signal.Signals(signum).name)
            stop()
            return


def quiet_libraries(level: str) -> None:
    """At any level but debug, the HTTP client libraries log warnings only: one INFO line per
    request sent (a batch to central, a write to a backend) is noise."""
    if level.lower() != "debug":
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def cli_exit(fn: Callable[[], int]) -> int:
    """``fn()``'s exit code; a reader that went away (``fleet-edge status | head``) ends the
    command quietly with 141 (128 + SIGPIPE, as other tools do), not with a traceback."""
    try:
        code = fn()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own final flush must not fail
        return 141


def tune_gc() -> None:
    """Collect garbage less often: ingest allocates many short-lived containers per request,
    and the default threshold (700) made the collector ~10% of the CPU under load. Objects
    alive after startup are frozen out of collections altogether."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_reporting(fn: Callable[[*Ts], Awaitable[object]], *args: *Ts,
                  expected: tuple[type[BaseException], ...], prefix: str) -> int:
    """``trio.run(fn, *args)``: 0 when it returns; an ``expected`` error (found through
    exception groups, e.g. the listen address in use) printed as one line ``prefix: error`` on
    stderr, 1. Anything else propagates with its traceback."""
    try:
        trio.run(fn, *args)
    except (Exception, BaseExceptionGroup) as exc:
        leaf = startup_error(exc, expected)
        if leaf is None:
            raise
        if isinstance(leaf, BrokenPipeError):  # the reader went away: cli_exit ends quietly
            raise BrokenPipeError from None
        print(f"{prefix}: {leaf}", file=sys.stderr)
        return 1
    return 0
