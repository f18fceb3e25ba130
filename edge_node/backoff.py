"""Retry delays (sans-IO): exponential backoff with full jitter, honouring ``Retry-After``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

# A server may ask for a longer pause than our own backoff cap; we wait at most this long, so a
# bogus Retry-After (a day) cannot park a site's uplink.
MAX_RETRY_AFTER_S = 600.0


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


@dataclass
class Backoff:
    """Delay before retry ``n``: uniform in [0, min(cap, initial * 2**n)], or Retry-After.

    A server's ``Retry-After`` is honoured (up to ``MAX_RETRY_AFTER_S``), plus a little jitter
    so a fleet of edge nodes does not come back in lock-step.
    """

    initial_s: float = 0.5
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self, retry_after_s: float | None = None) -> float:
        ceiling = min(self.cap_s, self.initial_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        if retry_after_s is not None:
            return min(MAX_RETRY_AFTER_S, retry_after_s) + self.rng.uniform(0, self.initial_s)
        return self.rng.uniform(self.initial_s / 2, max(self.initial_s / 2, ceiling))

    def reset(self) -> None:
        self.failures = 0
