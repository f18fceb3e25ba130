"""fleetd agent request parsing (sans-IO): fuzzing and timestamps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.config import IngestConfig
from edge_node.protocols import fleetd_agent
from tests.strategies import refused_cleanly

CFG = IngestConfig()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["application/proto", "application/json",
                                                 "text/plain", None]))
def test_register_fuzz_only_4xx_escapes(body: bytes, ctype: str | None) -> None:
    refused_cleanly(lambda: fleetd_agent.parse_register(body, ctype))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["device_id", "metric_name", "value", "timestamp", "metadata", "x"]),
        c, max_size=5)).map(lambda d: __import__("json").dumps(d).encode())))
def test_telemetry_fuzz_only_4xx_escapes(body: bytes) -> None:
    refused_cleanly(lambda: fleetd_agent.parse_telemetry(body, CFG, 1_795_839_600_000))


def test_rfc3339_offsets() -> None:
    _, batch = fleetd_agent.parse_telemetry(
        b'{"device_id": "d", "metric_name": "m", "value": 1, '
        b'"timestamp": "2026-11-28T06:20:00.250+02:00"}', CFG, 0)
    assert batch.metric_ts == [1_795_839_600_250]
