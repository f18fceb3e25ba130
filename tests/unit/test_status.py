"""Sans-IO parts of the status page, host metrics and reload planning (plain pytest +
hypothesis)."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from edge_node.config import EdgeConfig
from edge_node.host import HostReadings, host_samples
from edge_node.metrics import Registry
from edge_node.node import plan_reload
from edge_node.status import FULL_RATIO, History, drain_eta, readiness


def _cfg(**over: object) -> EdgeConfig:
    data: dict[str, object] = {"node_id": "gw", "data_dir": "/tmp/x",
                               "central": {"url": "http://c:9400", "api_key": "k"}}
    data.update(over)
    return EdgeConfig.from_mapping(data, env={})


def test_rates_come_from_counter_deltas_and_a_reset_starts_afresh() -> None:
    h = History(step_s=10, capacity=100)
    assert h.add(0, {"ingest_rows_per_s": 100, "buffer_bytes": 5})["ingest_rows_per_s"] is None
    assert h.add(10, {"ingest_rows_per_s": 600, "buffer_bytes": 6}) == {
        "ingest_rows_per_s": 50.0, "buffer_bytes": 6}
    assert h.add(20, {"ingest_rows_per_s": 30})["ingest_rows_per_s"] is None  # restarted
    assert h.add(30, {"ingest_rows_per_s": 130})["ingest_rows_per_s"] == 10.0
    assert h.add(30, {"ingest_rows_per_s": 140})["ingest_rows_per_s"] is None  # no time passed
    assert h.latest("ingest_rows_per_s") == 10.0
    cols = h.series()
    assert cols["t"] == [0, 10, 20, 30, 30]
    assert cols["figures"]["ingest_rows_per_s"] == [None, 50.0, None, 10.0, None]
    assert cols["figures"]["buffer_bytes"] == [5, 6, None, None, None]


@given(st.lists(st.floats(0, 1e12), min_size=1, max_size=60), st.integers(2, 20))
def test_history_keeps_the_newest_capacity_points(values: list[float], cap: int) -> None:
    h = History(step_s=1, capacity=cap)
    for i, v in enumerate(values):
        h.add(float(i), {"buffer_bytes": v})
    assert [p["buffer_bytes"] for _, p in h.points] == values[-cap:]


def test_history_survives_a_restart_and_ignores_a_damaged_file() -> None:
    h = History(step_s=30, capacity=4)
    for t in (100.0, 130.0, 160.0, 190.0):
        h.add(t, {"ingest_rows_per_s": t, "pending_rows": 1})
    text = h.dump()
    again = History(step_s=30, capacity=4)
    assert again.load(text, now=200.0) == 4
    assert list(again.points) == list(h.points)
    # points older than the span (capacity x step before now) are dropped
    assert History(step_s=30, capacity=4).load(text, now=250.0) == 3
    for bad in ("", "{", "[]", json.dumps({"points": [[1, 2]]}), json.dumps({"points": 5})):
        assert History(step_s=30, capacity=4).load(bad, now=200.0) == 0


def test_drain_eta() -> None:
    assert drain_eta(1000, 10, 110) == 10.0
    assert drain_eta(1000, None, 100) == 10.0
    assert drain_eta(1000, 100, 100) is None  # not shrinking
    assert drain_eta(1000, 10, None) is None
    assert drain_eta(0, 0, 100) is None


def test_readiness_needs_central_only_when_the_buffer_is_about_full() -> None:
    assert readiness(True, False, 0.5, False, 1000) == []  # WAN down: normal at the edge
    assert readiness(True, False, FULL_RATIO, True, 1000) == []  # full but draining
    full = readiness(True, False, 0.99, False, 1000)
    assert len(full) == 1 and "99%" in full[0] and "central is unreachable" in full[0]
    assert readiness(True, False, 0.99, False, 0) == []  # nothing waits for central
    assert readiness(False, True, 0, True, 0) == ["the buffer is not open", "shutting down"]
    # a full data disk: not ready whatever central does (new data gets 503)
    assert readiness(True, False, 0.1, True, 0, "the buffer's disk is full (...)") == [
        "the buffer's disk is full (...)"]


def test_host_samples_use_node_exporter_names_and_the_gateway_labels() -> None:
    r = HostReadings(
        cpu_times=[{"user": 10.0, "idle": 90.0}, {"user": 5.0, "idle": 95.0}],
        load=(0.5, 0.25, 0.1), memory={"total": 8e9, "available": 6e9, "free": 1e9},
        swap={"total": 0.0, "free": 0.0},
        filesystems={"/var/lib": {"total": 1e11, "free": 4e10}},
        disks={"sda": {"read_bytes": 1.0, "write_bytes": 2.0}},
        nics={"eth0": {"bytes_recv": 3.0, "bytes_sent": 4.0, "errin": 0.0, "errout": 1.0}},
        temperatures=[("coretemp", "Package id 0", 51.0)],
        battery={"percent": 80.0, "plugged": 1.0}, boot_time=1.7e9,
        process={"cpu_seconds_total": 2.5})
    got = {(lab.pop("__name__"), tuple(sorted(lab.items()))): v
           for lab, v in host_samples(r, {"device": "gw-1", "role": "gateway"})}
    base = (("device", "gw-1"), ("role", "gateway"))

    def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted((*base, *extra.items())))

    assert got[key("node_cpu_seconds_total", cpu="1", mode="user")] == 5.0
    assert got[key("node_cpu_count")] == 2
    assert got[key("node_load5")] == 0.25
    assert got[key("node_memory_MemAvailable_bytes")] == 6e9
    assert got[key("node_filesystem_avail_bytes", mountpoint="/var/lib")] == 4e10
    assert got[key("node_disk_written_bytes_total", disk="sda")] == 2.0
    assert got[key("node_network_transmit_errs_total", interface="eth0")] == 1.0
    assert got[key("node_hwmon_temp_celsius", chip="coretemp", sensor="Package id 0")] == 51.0
    assert got[key("node_power_supply_capacity")] == 80.0
    assert got[key("fleet_edge_process_cpu_seconds_total")] == 2.5
    r.clock_synced = False
    assert ({"device": "gw-1", "role": "gateway", "__name__": "node_timex_sync_status"}, 0.0
            ) in host_samples(r, {"device": "gw-1", "role": "gateway"})
    # nothing is reported that was not read (a VM has no temperatures, no battery)
    assert host_samples(HostReadings(), {"device": "gw"}) == []


def test_reload_plan_names_what_needs_a_restart() -> None:
    old = _cfg()
    assert plan_reload(old, old) == ([], [])
    new = _cfg(log_level="debug", listen="0.0.0.0:9301",
               buffer={"max_disk_mb": 2048, "queue_size": 64},
               alerts={"device_offline_after_s": 60.0}, status={"step_s": 10.0})
    applied, restart = plan_reload(old, new)
    assert applied == ["log_level", "buffer.max_disk_mb", "alerts"]
    assert restart == ["listen", "buffer.queue_size", "status"]
    assert dataclasses.replace(new, listen=old.listen).listen == "127.0.0.1:9300"


def test_a_registry_part_registered_again_keeps_counting() -> None:
    r = Registry("x")
    c = r.counter("n_total", "n", ("kind",))
    c.inc(3, "a")
    again = r.counter("n_total", "n", ("kind",))
    assert again is c and r.value("n_total") == 3
    r.gauge("g", "g", callback=lambda: 1.0)
    r.gauge("g", "g", callback=lambda: 2.0)
    assert r.value("g") == 2.0
    r.counter("by_total", "b", ("protocol",)).inc(2, "influx")
    r.metrics["x_by_total"].inc(1, "loki")
    assert r.by_label("by_total", "protocol") == {"influx": 2.0, "loki": 1.0}
    assert r.value("by_total", protocol="loki") == 1.0
    assert r.value("missing") == 0.0 and r.by_label("missing", "x") == {}


def test_the_drain_eta_honours_the_link_cap() -> None:
    from edge_node.status import capped_eta

    assert capped_eta(None, 1000, 3_600_000, 1000.0) == 3600.0  # not measured yet: the cap
    assert capped_eta(10.0, 1000, 3_600_000, 1000.0) == 3600.0  # faster than the cap allows
    assert capped_eta(7200.0, 1000, 3_600_000, 1000.0) == 7200.0  # slower than the cap
    assert capped_eta(10.0, 1000, 3_600_000, 0) == 10.0  # no cap
    assert capped_eta(None, 0, 0, 1000.0) is None  # nothing waiting
