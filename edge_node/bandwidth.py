"""The link to central as a budget: a token bucket of bytes per second, with live data first.

Metered cellular and satellite links cost per byte, and a backlog drained at full speed would
starve everything else on the link. ``central.max_bytes_per_s`` caps what the forwarder sends;
``central.live_share`` of the bucket is kept for the live lane, so after a long outage fresh
data still goes out within seconds while the backlog drains in what is left.

:class:`Bucket` is the sans-IO core (the caller passes the time); :class:`Link` waits on it
with Trio. A send waits until its bytes are earned (a batch larger than the bucket waits until
that much has accrued), so the link never carries more than the rate allows over the time a
batch takes to earn.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Bucket:
    """Two token buckets over one rate: ``share`` of it for the live lane, the rest for the
    backlog, which also gets whatever the live lane leaves unused (its bucket overflowing).
    A big backlog batch waits on the backlog's bucket only: live data never waits behind it."""

    def __init__(self, rate: float, share: float, now: float, burst_s: float = 1.0) -> None:
        self.live_rate, self.bulk_rate = rate * share, rate * (1 - share)
        self.live_burst = self.live_rate * burst_s
        self.bulk_burst = rate * burst_s  # the live lane's unused share banks here too
        self.live, self.bulk = self.live_burst, self.bulk_burst
        self.at = now
        # a send bigger than its bucket lets the bucket bank up to its size while it waits
        self.want_live = self.want_bulk = 0.0

    def _refill(self, now: float) -> None:
        dt, self.at = max(0.0, now - self.at), now
        live_cap = max(self.live_burst, self.want_live)
        live = self.live + dt * self.live_rate
        spill = max(0.0, live - live_cap)
        self.live = min(live, live_cap)
        self.bulk = min(max(self.bulk_burst, self.want_bulk),
                        self.bulk + dt * self.bulk_rate + spill)

    def _side(self, live: bool) -> str:
        return "live" if live and self.live_rate > 0 else "bulk"

    def wait(self, n: int, live: bool, now: float) -> float:
        """Seconds until ``n`` bytes may go on the ``live`` lane or the backlog's (0: now; a
        later call says again: the backlog's refill includes the live lane's overflow)."""
        self._refill(now)
        if self._side(live) == "live":
            self.want_live = float(n)
            return max(0.0, (n - self.live) / self.live_rate)
        self.want_bulk = need = float(n)
        if self.bulk >= need:
            return 0.0
        # the backlog's own rate, plus the live share once the live bucket is full (it spills)
        fill = (max(self.live_burst, self.want_live) - self.live) / self.live_rate \
            if self.live_rate else 0.0
        own = self.bulk + fill * self.bulk_rate
        if own >= need or self.live_rate == 0:
            return (need - self.bulk) / max(self.bulk_rate, 1e-9)
        return fill + (need - own) / (self.bulk_rate + self.live_rate)

    def take(self, n: int, live: bool, now: float) -> None:
        self._refill(now)
        if self._side(live) == "live":
            self.live -= n
            self.want_live = 0.0
        else:
            self.bulk -= n
            self.want_bulk = 0.0


class Link:
    """The forwarder's cap: ``await link.send_allowed(nbytes, live=...)`` before each send;
    no cap (rate 0) never waits."""

    def __init__(self, rate: float, live_share: float, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.clock = clock
        self.rate, self.share = rate, live_share
        self.bucket = Bucket(rate, live_share, clock()) if rate > 0 else None
        self.waited_s = 0.0  # time sends waited for the cap (the metrics read it)

    async def send_allowed(self, nbytes: int, *, live: bool) -> None:
        b = self.bucket
        if b is None:
            return
        # under a millisecond is now (float rounding must not make it sleep for ever)
        while (w := b.wait(nbytes, live, self.clock())) > 0.001:
            self.waited_s += w
            await trio.sleep(w)
        b.take(nbytes, live, self.clock())
