"""Central's sans-IO parts: settings, routing labels, sink encodings, rollups, schema rendering."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.config import Settings
from central.errors import MissingSeries, SettingsError
from central.model import NodeInfo, pending_from
from central.rollup import WINDOW_MS, minute_rollups
from central.router import make_job, trusted_labels
from central.sinks.clickhouse import migrations as ch_migrations
from central.sinks.clickhouse import parse_version, render, rollup_rows
from central.sinks.loki import encode_push
from central.sinks.postgres import migrations as pg_migrations
from central.sinks.postgres import partition_name
from central.sinks.postgres import render as pg_render
from central.sinks.valkey import update_args
from central.sinks.victoriametrics import encode_import, encode_text, import_url
from edge_node.wire import Batch, Columns

NODE = NodeInfo("gw-1", "acme", 0, site="plant-7")


def _job(series: list[int], ts: list[int], values: list[float] | None = None,
         lines: list[bytes] | None = None, labels: dict[int, dict[str, str]] | None = None,
         kind: str = "metrics", now: int = 10**13):
    cols = Columns(kind, np.array(series, dtype=np.int64), np.array(ts, dtype=np.int64),
                   np.array(values, dtype=np.float64) if values is not None else None, lines)
    labels = labels or {s: {"__name__": f"m{s}", "device": f"d{s}"} for s in set(series)}
    return make_job(NODE, Batch("gw-1", 5, kind, b"", len(series), epoch="e"), cols, labels,
                    now)


# -- settings ----------------------------------------------------------------------------------


def test_settings_default_to_the_embedded_store() -> None:
    s = Settings.from_env({})
    assert (s.database_url, s.victoria_metrics_url, s.clickhouse_database) == (
        "", "", "fleetd_analytics")
    assert "state+devices+status: sqlite; metrics: sqlite" in s.describe()


@pytest.mark.parametrize(("env", "named"), [
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"VICTORIA_METRICS_URL": "vm:8428"}, "VICTORIA_METRICS_URL"),
    ({"DATABASE_POOL_SIZE": "many"}, "DATABASE_POOL_SIZE"),
    ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
    ({"TIMESCALE_CHUNK_INTERVAL": "fortnight"}, "TIMESCALE_CHUNK_INTERVAL"),
    ({"VALKEY_ADDR": "localhost"}, "VALKEY_ADDR"),
    ({"CLICKHOUSE_DATABASE": "x; DROP"}, "CLICKHOUSE_DATABASE"),
    ({"FLEET_CENTRAL_SINK_TIMOUT_S": "3"}, "FLEET_CENTRAL_SINK_TIMOUT_S"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(("env", "named"), [
    ({"FLEET_CENTRAL_TLS_CERT": "/c.pem"}, "only FLEET_CENTRAL_TLS_CERT is set"),
    ({"FLEET_CENTRAL_TLS_CLIENT_CERTS": "maybe"}, "FLEET_CENTRAL_TLS_CLIENT_CERTS='maybe'"),
    ({"FLEET_CENTRAL_TLS_CLIENT_CERTS": "required"}, "needs FLEET_CENTRAL_TLS_CERT"),
])
def test_bad_tls_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_a_client_ca_makes_client_certificates_required_unless_said_otherwise() -> None:
    tls = {"FLEET_CENTRAL_TLS_CERT": "/c.pem", "FLEET_CENTRAL_TLS_KEY": "/k.pem",
           "FLEET_CENTRAL_TLS_CLIENT_CA": "/ca.pem"}
    files = Settings.from_env(tls).tls_files()
    assert files is not None and files.client_certs == "required"
    files = Settings.from_env(tls | {"FLEET_CENTRAL_TLS_CLIENT_CERTS": "optional"}).tls_files()
    assert files is not None and files.client_certs == "optional"
    assert Settings.from_env({}).tls_files() is None


def test_settings_accept_the_architecture_forms() -> None:
    s = Settings.from_env({"VALKEY_ADDR": "redis://cache:6379", "TIMESCALE_CHUNK_INTERVAL":
                           "6 hours", "VICTORIA_METRICS_URL": "http://vm:8428/"})
    assert (s.valkey_addr, s.chunk_seconds, s.victoria_metrics_url) == (
        "cache:6379", 21600, "http://vm:8428")


# -- routing -----------------------------------------------------------------------------------


def test_trusted_labels_cannot_name_another_tenant() -> None:
    got = trusted_labels(NODE, {"__name__": "x", "org": "evil", "node": "n", "device": "d"})
    assert got == {"__name__": "x", "org": "acme", "node": "gw-1", "site": "plant-7",
                   "device": "d", "exported_org": "evil", "exported_node": "n"}
    assert trusted_labels(NODE, {"site": "own"})["site"] == "own"


def test_job_groups_rows_by_series_in_time_order() -> None:
    job = _job([2, 1, 2, 1], [30, 20, 10, 40], [1.0, 2.0, 3.0, 4.0])
    assert job.series() == [(1, 0, 2), (2, 2, 4)]
    assert job.ts.tolist() == [20, 40, 10, 30]
    assert job.values is not None and job.values.tolist() == [2.0, 4.0, 3.0, 1.0]
    assert job.devices() == {"d1": (20, 40), "d2": (10, 30)}


def test_pending_names_every_missing_series() -> None:
    batch = Batch("gw-1", 1, "metrics", b"", 0, series_defs=[(3, {"a": "b"})])
    with pytest.raises(MissingSeries) as exc:
        pending_from({1: {"x": "y"}}, batch, [1, 2, 3, 4], set())
    assert exc.value.missing == [2, 4]
    p = pending_from({1: {"x": "y"}}, batch, [1, 3], {"loki"})
    assert (p.new_defs, p.done_sinks) == ([(3, {"a": "b"})], {"loki"})


# -- VictoriaMetrics ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "want"), [
    ("http://vm:8428", "http://vm:8428/api/v1/import"),
    ("http://vm:8428/", "http://vm:8428/api/v1/import"),
    ("http://vminsert:8480/insert/42/prometheus/", "http://vminsert:8480/insert/42/prometheus/api/v1/import"),
    ("http://vminsert:8480/insert/42", "http://vminsert:8480/insert/42/prometheus/api/v1/import"),
    ("http://proxy/api/v1/import", "http://proxy/api/v1/import"),
])
def test_import_url_forms(url: str, want: str) -> None:
    assert import_url(url) == want


def test_import_lines_carry_one_series_each_and_skip_what_vm_cannot_hold() -> None:
    job = _job([1, 1, 1, 2], [5, 6, 7, 8], [1.5, math.inf, 2.0, math.nan], now=10)
    chunks, n, expired, nonfinite = encode_import(job, cutoff_ms=6)
    lines = [json.loads(x) for x in b"".join(chunks).splitlines()]
    assert lines == [{"metric": {"__name__": "m1", "device": "d1", "org": "acme",
                                 "node": "gw-1", "site": "plant-7"},
                      "values": [2.0], "timestamps": [7]}]
    assert (n, expired, nonfinite) == (1, 1, 2)


# -- Loki --------------------------------------------------------------------------------------


def test_import_body_is_the_same_however_it_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    import central.sinks.victoriametrics as vm

    job = _job([1, 1, 2, 3, 3, 3], [1, 2, 3, 4, 5, 6], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    whole = b"".join(encode_import(job, 0)[0])
    monkeypatch.setattr(vm, "CHUNK_SERIES", 1)
    chunks = encode_import(job, 0)[0]
    assert len(chunks) == 3 and b"".join(chunks) == whole
    assert [json.loads(c)["values"] for c in chunks] == [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]


def test_live_batches_become_text_lines_with_escaped_labels() -> None:
    labels = {1: {"__name__": "temp_c", "device": 'a"b\\c\nd'}, 2: {"__name__": "up"}}
    job = _job([2, 1], [7, 5], [1.5, -2.0], labels=labels, now=10)
    chunks, n, expired, nonfinite = encode_text(job, 0)  # type: ignore[misc]
    assert b"".join(chunks) == (b'\ntemp_c{device="a\\"b\\\\c\\nd",org="acme",node="gw-1",'
                                b'site="plant-7"} -2.0 5\nup{org="acme",node="gw-1",'
                                b'site="plant-7"} 1.5 7\n')
    assert (n, expired, nonfinite) == (2, 0, 0)
    # several samples of one series, or a name the text format cannot carry: JSON lines
    assert encode_text(_job([1, 1], [1, 2], [1.0, 2.0]), 0) is None
    odd = {1: {"__name__": "x", "dotted.name": "v"}}
    assert encode_text(_job([1], [1], [1.0], labels=odd), 0) is None


def test_loki_streams_keep_few_labels_and_put_the_rest_in_metadata() -> None:
    labels = {1: {"__name__": "log", "device": "d1", "level": "warn", "pid": "17"}}
    job = _job([1, 1], [2, 1], lines=[b"second", b"first"], labels=labels, kind="logs")
    doc = json.loads(encode_push(job, 0, metadata=True).body)
    assert doc == {"streams": [{"stream": {"org": "acme", "node": "gw-1", "site": "plant-7",
                                           "device": "d1", "level": "warn"},
                                "values": [["1000000", "first", {"pid": "17"}],
                                           ["2000000", "second", {"pid": "17"}]]}]}
    plain = json.loads(encode_push(job, 0, metadata=False).body)
    assert plain["streams"][0]["values"][0] == ["1000000", "first pid=17"]


# -- rollups -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 5 * WINDOW_MS),
                          st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=60))
def test_rollups_match_a_reference_computation(rows: list[tuple[int, int, float]]) -> None:
    job = _job([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    got = minute_rollups(job)
    ref: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for sid, ts, v in rows:
        ref.setdefault((sid, ts // WINDOW_MS * WINDOW_MS), []).append((ts, v))
    assert len(got) == len(ref)
    for i in range(len(got)):
        pts = ref[(int(got.sids[i]), int(got.window_ms[i]))]
        vals = [v for _, v in pts]
        assert int(got.count[i]) == len(pts)
        assert math.isclose(float(got.sum[i]), sum(vals), rel_tol=1e-9, abs_tol=1e-6)
        assert (float(got.min[i]), float(got.max[i])) == (min(vals), max(vals))
        assert int(got.last_ts[i]) == max(t for t, _ in pts)
        assert float(got.last[i]) in [v for t, v in pts if t == int(got.last_ts[i])]


def test_rollups_split_into_parts_merge_to_the_whole() -> None:
    """Partials of two batches merge (sum counts/sums, min, max) to the rollup of both."""
    rng = np.random.default_rng(7)
    ts = np.sort(rng.integers(0, 3 * WINDOW_MS, 40))
    vals = rng.normal(size=40)
    whole = minute_rollups(_job([1] * 40, ts.tolist(), vals.tolist()))
    a = minute_rollups(_job([1] * 15, ts[:15].tolist(), vals[:15].tolist()))
    b = minute_rollups(_job([1] * 25, ts[15:].tolist(), vals[15:].tolist()))
    for i, w in enumerate(whole.window_ms.tolist()):
        parts = [(r, j) for r in (a, b) for j in range(len(r)) if int(r.window_ms[j]) == w]
        assert sum(int(r.count[j]) for r, j in parts) == int(whole.count[i])
        assert math.isclose(sum(float(r.sum[j]) for r, j in parts), float(whole.sum[i]))
        assert min(float(r.min[j]) for r, j in parts) == float(whole.min[i])


def test_rollup_rows_are_clickhouse_json() -> None:
    job = _job([1, 1], [WINDOW_MS + 1, WINDOW_MS + 2], [1.0, 3.0])
    (row,) = [json.loads(r) for r in rollup_rows(job, 0)]
    assert row["window_start"] == "1970-01-01 00:01:00"
    assert (row["count_part"], row["sum_part"], row["last_part"], row["batch"]) == (
        2, 4.0, 3.0, "gw-1:e:5")


# -- schemas -----------------------------------------------------------------------------------


def test_clickhouse_ddl_uses_newer_features_only_where_the_server_has_them() -> None:
    (_, _, tmpl), *_ = ch_migrations()
    old = " ".join(render(tmpl, "db", parse_version("18.16.1"), retention_days=30))
    ttl = " ".join(render(tmpl, "db", parse_version("19.6.2.11"), retention_days=30))
    new = " ".join(render(tmpl, "db", parse_version("24.3.1"), retention_days=30))
    assert "TTL" not in old and "non_replicated_deduplication_window" not in old
    assert "TTL window_start + INTERVAL 30 DAY" in ttl
    assert "non_replicated_deduplication_window" in new
    assert "TTL" not in " ".join(render(tmpl, "db", (24, 3), retention_days=0))


def test_postgres_schema_renders_for_both_partitioning_modes() -> None:
    (_, _, tmpl), *_ = pg_migrations()
    native = pg_render(tmpl, timescale=False, server_version=150004)
    ts = pg_render(tmpl, timescale=True, server_version=140010)
    assert native.count(") PARTITION BY RANGE (ts);") == 3 and "security_invoker" in native
    assert ") PARTITION BY" not in ts and "security_invoker" not in ts
    assert "{" not in native.replace("'{}'", "")
    assert partition_name("samples", 1_795_824_000) == "samples_p202611280000"


def test_valkey_update_args_carry_newest_value_per_series() -> None:
    job = _job([1, 1, 2], [5, 9, 7], [1.0, 2.0, 3.0], now=100)
    args = update_args(job, ttl_ms=50)
    assert args[:4] == [50, 100, "fleetd:acme:online:", 2]
    assert args[4:8] == ["d1", 9, "d2", 7]
    assert args[9:11] == [9, "2.0"] and args[12:14] == [7, "3.0"]


def test_a_device_clock_running_ahead_never_pushes_last_seen_into_the_future() -> None:
    year_2100 = 4_102_444_800_000
    now = 1_795_839_600_000
    job = _job([1, 1, 2], [now - 5, year_2100, now - 1], [1.0, 2.0, 3.0], now=now)
    rows = {d: (first, last) for d, _, first, last in job.device_rows()}
    assert rows == {"d1": (now - 5, now), "d2": (now - 1, now - 1)}  # d1's 2100 is now
    args = update_args(job, ttl_ms=300_000)
    assert args[4:8] == ["d1", now, "d2", now - 1]  # Valkey's online key: TTL at most 300 s
    assert args[9] == now  # d1's latest value is stamped now, so the next real one replaces it
