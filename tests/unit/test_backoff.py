"""Retry delays and the forwarder's decision table (sans-IO)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_node.backoff import Backoff, parse_retry_after
from edge_node.forward import ACK, DEAD_LETTER, RESEND, RETRY, classify


@given(st.integers(0, 200), st.floats(0.01, 5), st.floats(5, 600))
def test_delays_stay_within_the_cap(n: int, initial: float, cap: float) -> None:
    b = Backoff(initial, cap, random.Random(n))
    for _ in range(n % 40):
        d = b.next_delay()
        assert 0 <= d <= cap


def test_delays_grow_then_reset() -> None:
    b = Backoff(1.0, 60.0, random.Random(1))
    early = max(Backoff(1.0, 60.0, random.Random(i)).next_delay() for i in range(50))
    for _ in range(10):
        b.next_delay()
    late = b.next_delay()
    assert early <= 1.0 and late > 1.0
    b.reset()
    assert b.next_delay() <= 1.0


def test_retry_after_is_honoured() -> None:
    b = Backoff(0.5, 60.0, random.Random(0))
    assert 30 <= b.next_delay(30.0) <= 30.5
    assert 600 <= b.next_delay(3600.0) <= 600.5


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", 0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


@pytest.mark.parametrize(("status", "body", "action"), [
    (200, {"status": "applied"}, ACK),
    (204, None, ACK),
    (409, {"missing_series": [1, 2]}, RESEND),
    (409, {"error": "?"}, RETRY),
    (400, {"error": "bad"}, DEAD_LETTER),
    (413, None, DEAD_LETTER),
    (422, None, DEAD_LETTER),
    (401, None, RETRY),
    (403, None, RETRY),
    (429, None, RETRY),
    (500, None, RETRY),
    (503, None, RETRY),
])
def test_classify(status: int, body: object, action: str) -> None:
    assert classify(status, body, None, 0).action == action


def test_classify_keeps_retry_after_and_missing() -> None:
    v = classify(503, {"error": "down"}, "12", 0)
    assert v.retry_after_s == 12.0 and v.reason == "down"
    assert classify(409, {"missing_series": [3]}, None, 0).missing == (3,)
