"""The per-device active-series limit (sans-IO)."""

from __future__ import annotations

import pytest

from edge_node.errors import TooManySeries
from edge_node.limits import SeriesLimiter
from edge_node.model import IngestBatch


def _batch(device: str, names: list[str]) -> IngestBatch:
    keys = [(("__name__", n), ("device", device)) if device else (("__name__", n),)
            for n in names]
    return IngestBatch(metric_keys=keys, metric_ts=[0] * len(keys),
                       metric_values=[1.0] * len(keys))


def test_a_device_past_its_limit_is_refused_and_nothing_is_recorded() -> None:
    lim = SeriesLimiter(max_series=3, ttl_s=60)
    lim.admit(_batch("d1", ["a", "b"]), now_s=0)
    lim.admit(_batch("d1", ["a", "b", "c"]), now_s=1)  # one new: 3, at the limit
    with pytest.raises(TooManySeries, match="'d1' would have 5 active series"):
        lim.admit(_batch("d1", ["d", "e"]), now_s=2)
    assert lim.active("d1") == 3
    lim.admit(_batch("d2", ["a", "b", "c"]), now_s=2)  # other devices have their own budget
    lim.admit(_batch("", [f"m{i}" for i in range(10)]), now_s=2)  # no device: not limited


def test_series_not_seen_within_the_ttl_stop_counting() -> None:
    lim = SeriesLimiter(max_series=2, ttl_s=60)
    lim.admit(_batch("d1", ["a", "b"]), now_s=0)
    lim.admit(_batch("d1", ["b"]), now_s=50)
    lim.admit(_batch("d1", ["c"]), now_s=100)  # "a" expired (last seen at 0)
    assert lim.active("d1") == 2
    with pytest.raises(TooManySeries):
        lim.admit(_batch("d1", ["d"]), now_s=105)  # "b" (50) and "c" (100) are still active


def test_zero_means_no_limit() -> None:
    SeriesLimiter(max_series=0, ttl_s=1).admit(_batch("d", [str(i) for i in range(100)]), 0)
