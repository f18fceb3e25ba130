"""The two seams every service takes the same way: what time it is, and where blocking work runs.

**Time.** A :data:`Clock` is a function returning wall-clock seconds (``time.time``). Every
class that stamps, ages or schedules by the wall clock takes ``clock: Clock = time.time`` and
reads the time only through it; tests pass a clock that follows Trio's virtual clock
(``lambda: T0 + trio.current_time()``), so a five-minute timeout runs in milliseconds under
``autojump_clock``. Intervals between events use Trio's own clock (``trio.sleep``,
``trio.current_time()``), which the same fixture controls.

**Blocking work.** A :class:`Runner` runs a blocking call (SQLite, a file write) somewhere it
cannot stall the event loop and returns its result. Production code uses a
:class:`ThreadRunner`: a worker thread, at most ``limit`` calls at a time; ``limit=1`` makes
it the one owner thread a SQLite connection needs. Tests on a virtual clock pass a runner that
calls the function on the Trio thread (``autojump_clock`` would jump ahead while a real thread
works); that runner lives with the tests (``tests/seams.py``), not here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: wall-clock seconds since the epoch; ``time.time`` in production
Clock = Callable[[], float]


def wall_clock() -> float:
    """The production :data:`Clock`."""
    return time.time()


def clock_ms(clock: Clock) -> int:
    """``clock()`` in whole milliseconds (the unit of every stored timestamp)."""
    return int(clock() * 1000)


class Runner(Protocol):
    """Runs a blocking call off the event loop; ``await runner(fn, *args)`` is ``fn(*args)``."""

    async def __call__(self, fn: Callable[[*Ts], T], *args: *Ts) -> T: ...


class ThreadRunner:
    """Blocking calls on Trio's worker threads, at most ``limit`` at a time.

    Args:
        limit: calls in flight at once; 1 serialises them, as one SQLite connection needs.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limiter = trio.CapacityLimiter(limit)

    async def __call__(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
