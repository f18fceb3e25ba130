"""Per-batch leases: one attempt of a batch applies at a time, on any central instance.

Why: the dedup mark is checked before the sink writes and committed after them. Without a lease,
an edge that retries while central's first attempt is still waiting on a slow backend (the link
to the edge dropped meanwhile) gets a second attempt that finds no mark and writes the batch
again; a backend without dedup of its own then stores it twice. With the lease, the second
attempt waits for the first and then finds the mark: a duplicate, nothing written.

Two layers, both keyed by ``(node, epoch, seq)``:

- :class:`LocalLeases`: attempts inside this process queue on a Trio lock (no polling, no
  database round trip); this alone covers the embedded SQLite store, which one central process
  serves.
- the state store's ``lease`` (PostgreSQL: a claimed row in ``batch_leases`` with an expiry
  taken from the database's clock, renewed while the apply runs): attempts on other instances
  behind a load balancer.

A lease is never held longer than :class:`LeaseTimes` ``.hold_s``: the holder cancels its own
apply at that bound (the edge is answered 503 and retries). A PostgreSQL lease whose holder
crashed is not renewed, expires within ``ttl_s`` and is taken over; a holder that finds its
lease taken over (it could not renew in time) stops its apply unacknowledged.

What remains is a sink write whose outcome is unknown (a timed-out request the backend still
carries out, a crash between a sink's write and its mark): the backends' own dedup covers that
window, see the README's delivery table.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .errors import SinkUnavailable

Key = tuple[str, str, int]  # (node_id, epoch, seq)


@dataclass(frozen=True)
class LeaseTimes:
    """How long one attempt may hold a batch, how long a store lease lives unrenewed, and how
    long another attempt waits.

    ``hold_s`` bounds the whole apply (state lookups, every sink write, the commit). A store
    lease lives ``ttl_s`` and its holder renews it every ``ttl_s / 3`` while it works, so a
    holder that was ``kill -9``'d (or lost its database) frees the batch within ``ttl_s``, and a
    live one keeps it for at most ``hold_s``.
    """

    hold_s: float = 30.0
    ttl_s: float = 5.0

    @classmethod
    def for_sink_timeout(cls, sink_timeout_s: float) -> LeaseTimes:
        # the sink writes run concurrently (one sink timeout); the state lookups and the commit
        # get as much again
        return cls(hold_s=2 * sink_timeout_s, ttl_s=min(5.0, sink_timeout_s))

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @property
    def wait_s(self) -> float:
        """How long an attempt waits for a lease: a live holder's ``hold_s``, or a dead one's
        ``ttl_s`` (plus one ``ttl_s`` for the round trips)."""
        return self.hold_s + 2 * self.ttl_s


def holder_token() -> str:
    """Names one attempt (unique across instances); only its holder may release a lease."""
    return uuid.uuid4().hex


def busy(key: Key, waited_s: float, retry_after_s: int = 5) -> SinkUnavailable:
    node, epoch, seq = key
    return SinkUnavailable("central", f"batch {epoch}/{seq} of node {node!r} is still being "
                           f"applied by another attempt (waited {waited_s:.0f} s)",
                           retry_after_s)


class LocalLeases:
    """The in-process layer: one Trio lock per batch being applied, dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[Key, trio.Lock] = {}
        self._users: dict[Key, int] = {}

    def __len__(self) -> int:
        """Batches being applied or waited for (0 when idle: nothing leaks)."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Key, wait_s: float) -> AsyncIterator[bool]:
        """Hold ``key``'s lease for the body; waits at most ``wait_s`` for another holder.
        Yields whether it had to wait (another attempt of the batch was being applied).

        Raises:
            SinkUnavailable: still held by another attempt after ``wait_s`` (503, retry).
        """
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = trio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        try:
            waited = lock.locked()
            with trio.move_on_after(wait_s) as waiting:
                await lock.acquire()
            if waiting.cancelled_caught:
                raise busy(key, wait_s)
            try:
                yield waited
            finally:
                lock.release()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


async def claim_polling(try_claim: Callable[[], Awaitable[bool]], key: Key, wait_s: float,
                        retry_after_s: int = 5) -> bool:
    """Call ``try_claim`` until it returns True (a store lease taken), backing off from 20 ms to
    250 ms between tries; at most ``wait_s`` in all. Returns whether it had to wait.

    Raises:
        SinkUnavailable: not claimed within ``wait_s`` (or from ``try_claim``: store down).
    """
    delay = 0.02
    deadline = trio.current_time() + wait_s
    waited = False
    while not await try_claim():
        if trio.current_time() + delay > deadline:
            raise busy(key, wait_s, retry_after_s)
        waited = True
        await trio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return waited
