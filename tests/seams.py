"""Test implementations of the seams in :mod:`edge_node.runtime`.

:class:`InlineRunner` calls blocking functions on the Trio thread: under ``autojump_clock`` a
real worker thread would let the virtual clock jump ahead while it works. :func:`virtual_clock`
is a wall clock that follows Trio's (virtual) clock from ``t0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import trio

from edge_node.runtime import Clock

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class InlineRunner:
    """A :class:`edge_node.runtime.Runner` that runs each call on the Trio thread."""

    async def __call__(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)


def virtual_clock(t0: float) -> Clock:
    """Wall-clock seconds ``t0 + trio.current_time()`` (inside a Trio run only)."""
    return lambda: t0 + trio.current_time()
