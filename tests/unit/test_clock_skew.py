"""Device clocks (sans-IO): which requests are skewed, the offset, and each policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.clock_skew import ClockSkewTracker, parse_policies
from edge_node.config import ClockConfig
from edge_node.errors import ClockSkewed
from edge_node.model import IngestBatch, series_key

NOW = 1_795_839_600_000
DAY = 86_400_000


def request(device: str, stamps: list[int], *, edge_stamped: int = 0) -> IngestBatch:
    """``stamps`` as the device's samples, plus ``edge_stamped`` rows the edge stamped NOW."""
    key = series_key({"__name__": "temp_c", "device": device})
    ts = [*stamps, *([NOW] * edge_stamped)]
    return IngestBatch(metric_keys=[key] * len(ts), metric_ts=ts,
                       metric_values=[1.0] * len(ts))


def tracker(**cfg: object) -> ClockSkewTracker:
    return ClockSkewTracker(ClockConfig(**cfg))  # type: ignore[arg-type]


def test_a_right_clock_costs_nothing_and_is_not_tracked() -> None:
    t = tracker()
    assert t.check(request("pump-1", [NOW - 30_000, NOW - 5]), "native", NOW) == []
    assert t.devices == {} and t.offsets() == {}


def test_a_clock_two_days_ahead_is_corrected_to_the_receive_time() -> None:
    t = tracker()
    b = request("pump-1", [NOW + 2 * DAY - 30_000, NOW + 2 * DAY], edge_stamped=1)
    (skew,) = t.check(b, "native", NOW)
    assert (skew.device, skew.offset_ms, skew.policy, skew.rows) == ("pump-1", 2 * DAY,
                                                                     "correct", 3)
    assert b.metric_ts == [NOW - 30_000, NOW, NOW]  # the edge-stamped row stays as it was
    assert t.offsets() == {"pump-1": 2 * DAY / 1000}
    assert t.rows["correct"] == 3


def test_a_clock_reset_to_1970_is_corrected() -> None:
    t = tracker()
    b = request("meter-3", [60_000, 90_000])  # 1970-01-01T00:01:30
    (skew,) = t.check(b, "native", NOW)
    assert skew.offset_ms == 90_000 - NOW
    assert b.metric_ts == [NOW - 30_000, NOW]


def test_a_replay_of_buffered_data_is_not_a_wrong_clock() -> None:
    """A right clock, offline for two weeks, sends what it buffered: old, but true."""
    t = tracker()
    b = request("pump-1", [NOW - 14 * DAY + i * 30_000 for i in range(100)])
    before = list(b.metric_ts)
    assert t.check(b, "native", NOW) == []
    assert b.metric_ts == before and t.devices == {}


def test_a_fast_clocks_replay_is_corrected_by_what_its_live_data_showed() -> None:
    t = tracker()
    live = request("pump-1", [NOW + DAY])
    t.check(live, "native", NOW)
    # then it sends data its fast clock stamped while offline: old-looking, still a day off
    replay = request("pump-1", [NOW + DAY - 3 * DAY, NOW + DAY - 2 * DAY])
    (skew,) = t.check(replay, "native", NOW + 1000)
    assert skew.offset_ms == DAY
    assert replay.metric_ts == [NOW - 3 * DAY, NOW - 2 * DAY]


def test_a_fixed_clock_ends_the_watch() -> None:
    t = tracker()
    t.check(request("pump-1", [NOW + DAY]), "native", NOW)
    fresh = request("pump-1", [NOW + 60_000 - 10])
    assert t.check(fresh, "native", NOW + 60_000) == []  # NTP caught up: stamped right
    assert fresh.metric_ts == [NOW + 60_000 - 10] and t.offsets() == {}


def test_reject_names_the_device_and_its_offset_and_changes_nothing() -> None:
    t = tracker(policy="reject")
    b = request("pump-1", [NOW + 2 * DAY])
    with pytest.raises(ClockSkewed) as caught:
        t.check(b, "native", NOW)
    assert caught.value.status == 422
    assert "pump-1" in caught.value.message and "+172,800 s" in caught.value.message
    assert caught.value.field == "ts"
    assert b.metric_ts == [NOW + 2 * DAY]


def test_accept_keeps_the_timestamps_but_counts_and_reports() -> None:
    t = tracker(policy="accept")
    b = request("pump-1", [NOW + 2 * DAY])
    (skew,) = t.check(b, "native", NOW)
    assert skew.policy == "accept" and b.metric_ts == [NOW + 2 * DAY]
    assert t.rows["accept"] == 1 and t.offsets() == {"pump-1": 2 * DAY / 1000}


def test_policies_per_device_then_protocol_then_default() -> None:
    t = tracker(policy="correct", protocol_policies="remote_write=accept",
                device_policies="pump-7=reject")
    assert t.policy_for("pump-7", "remote_write") == "reject"
    assert t.policy_for("pump-1", "remote_write") == "accept"
    assert t.policy_for("pump-1", "native") == "correct"
    assert parse_policies(" a = accept , b=reject,") == {"a": "accept", "b": "reject"}


def test_only_the_skewed_device_of_a_shared_request_is_shifted() -> None:
    t = tracker()
    a = series_key({"__name__": "t", "device": "good"})
    b = series_key({"__name__": "t", "device": "fast"})
    batch = IngestBatch(metric_keys=[a, b, a, b], metric_ts=[NOW - 10, NOW + DAY, NOW - 5,
                                                             NOW + DAY + 1],
                        metric_values=[1.0] * 4)
    (skew,) = t.check(batch, "prometheus_text", NOW)
    assert skew.device == "fast" and skew.offset_ms == DAY + 1
    assert batch.metric_ts == [NOW - 10, NOW - 1, NOW - 5, NOW]


@settings(max_examples=200)
@given(offset=st.integers(-2 * DAY, 40 * 365 * DAY), n=st.integers(1, 50),
       spacing=st.integers(1, 60_000))
def test_corrected_data_never_lands_in_the_future(offset: int, n: int, spacing: int) -> None:
    """Whatever the device's clock says, after `correct` no sample is more than max_ahead past
    the receive time, and the spacing between samples is kept."""
    t = tracker()
    stamps = [NOW + offset - i * spacing for i in range(n)]
    b = request("dev", stamps)
    t.check(b, "native", NOW)
    assert max(b.metric_ts) <= NOW + 300_000
    assert [x - y for x, y in zip(b.metric_ts, b.metric_ts[1:], strict=False)] == \
        [spacing] * (n - 1)


@settings(max_examples=200)
@given(age=st.integers(0, 4 * 365 * DAY), n=st.integers(1, 30))
def test_a_right_clocks_past_data_is_never_touched(age: int, n: int) -> None:
    """Any replay of true past data (after 2020) passes unchanged."""
    t = tracker()
    stamps = [NOW - age - i * 1000 for i in range(n)]
    if min(stamps) < 1_577_836_800_000:  # before 2020: a reset clock by definition
        return
    b = request("dev", list(stamps))
    assert t.check(b, "native", NOW) == [] and b.metric_ts == stamps


def test_a_1970_device_with_an_edge_stamped_row_is_still_seen() -> None:
    """A row the edge stamped (no timestamp sent) must not hide the device's own 1970 ones."""
    t = tracker()
    b = request("meter-3", [60_000, 90_000], edge_stamped=1)
    (skew,) = t.check(b, "influx_v1", NOW)
    assert skew.offset_ms == 90_000 - NOW and b.metric_ts == [NOW - 30_000, NOW, NOW]


def test_a_flagged_device_is_forgotten_after_the_window() -> None:
    t = tracker(window_s=600)
    t.check(request("pump-1", [NOW + DAY]), "native", NOW)
    assert t.offsets(NOW + 1000) == {"pump-1": DAY / 1000}
    assert t.offsets(NOW + 601_000) == {}  # silent since: no longer reported (nor alerted)
    # a true past replay after the window is left alone, not shifted by the old offset
    replay = request("pump-1", [NOW - 2 * DAY])
    assert t.check(replay, "native", NOW + 601_000) == [] and replay.metric_ts == [NOW - 2 * DAY]
    assert t.devices == {}


def test_rows_of_no_device_are_judged_per_request() -> None:
    t = tracker()
    ahead = IngestBatch(metric_keys=[series_key({"__name__": "t"})], metric_ts=[NOW + DAY],
                        metric_values=[1.0])
    (skew,) = t.check(ahead, "remote_write", NOW)
    assert skew.device == "" and ahead.metric_ts == [NOW]
    past = IngestBatch(metric_keys=[series_key({"__name__": "t"})], metric_ts=[NOW - DAY],
                       metric_values=[1.0])
    assert t.check(past, "remote_write", NOW) == [] and past.metric_ts == [NOW - DAY]
    assert t.devices == {}  # another sender's past data is not shifted by the first one's
