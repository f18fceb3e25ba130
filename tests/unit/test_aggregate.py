"""Stream aggregation core: rules, naming, golden outputs (vmagent's documented semantics,
computed by hand: the Debian vmagent 1.79 has no stream aggregation), and properties."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.aggregate import (
    Aggregator,
    Emitted,
    load_rules_file,
    parse_duration,
    parse_rules,
    split_output_name,
)
from edge_node.errors import RuleError
from edge_node.model import SeriesKey

MIN = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % (60 * MIN)  # an hour boundary


def key(name: str, **labels: str) -> SeriesKey:
    return tuple(sorted({"__name__": name, **labels}.items()))


class Feed:
    """A tiny harness: series by label sets, rows in, outputs out as {name{labels}: value}."""

    def __init__(self, rules: list[dict[str, Any]], created_ms: int = 0,
                 states: dict[str, Any] | None = None,
                 keys: dict[int, SeriesKey] | None = None) -> None:
        self.rules = parse_rules(rules)
        self.keys: dict[int, SeriesKey] = keys if keys is not None else {}
        self.ids: dict[SeriesKey, int] = {k: i for i, k in self.keys.items()}
        self.agg = Aggregator(self.rules, self.keys.get, created_ms, states)

    def sid(self, k: SeriesKey) -> int:
        if k not in self.ids:
            self.ids[k] = len(self.ids) + 1
            self.keys[self.ids[k]] = k
        return self.ids[k]

    def push(self, rows: list[tuple[SeriesKey, int, float]], now: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        sids = np.array([self.sid(k) for k, _, _ in rows], np.int64)
        ts = np.array([t for _, t, _ in rows], np.int64)
        vals = np.array([v for _, _, v in rows], np.float64)
        return self.agg.ingest(sids, ts, vals, int(ts.min()) if now is None else now)

    def flush(self, now: int) -> dict[tuple[str, int], float]:
        out, _ = self.agg.flush(now)
        return render(out)


def render(out: Emitted) -> dict[tuple[str, int], float]:
    res = {}
    for k, t, v in zip(out.keys, out.ts, out.values, strict=True):
        d = dict(k)
        name = d.pop("__name__")
        inner = ",".join(f"{a}={b}" for a, b in sorted(d.items()))
        res[(f"{name}{{{inner}}}", t)] = v
    return res


# -- rules ----------------------------------------------------------------------------------------

def test_durations() -> None:
    assert parse_duration("1m30s") == 90_000
    assert parse_duration("1h") == 3_600_000
    assert parse_duration("250ms") == 250
    for bad in ("", "5", "5x", "m5", "1m 30s"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


@pytest.mark.parametrize(("rule", "field", "why"), [
    ({"interval": "1m", "outputs": ["avg"]}, "rules[0].match", "required"),
    ({"match": "cpu", "outputs": ["avg"]}, "rules[0].interval", "required"),
    ({"match": "cpu", "interval": "1m"}, "rules[0].outputs", "required"),
    ({"match": "cpu{", "interval": "1m", "outputs": ["avg"]}, "rules[0].match", "position"),
    ({"match": "cpu", "interval": "soon", "outputs": ["avg"]}, "rules[0].interval", "duration"),
    ({"match": "cpu", "interval": "500ms", "outputs": ["avg"]}, "rules[0].interval", "1s"),
    ({"match": "cpu", "interval": "1m", "outputs": ["median"]}, "rules[0].outputs", "median"),
    ({"match": "cpu", "interval": "1m", "outputs": ["quantiles(1.5)"]}, "rules[0].outputs",
     "between 0 and 1"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "by": ["a"], "without": ["b"]},
     "rules[0].by", "not both"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "by": ["a-b"]}, "rules[0].by",
     "label names"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "staleness": "30s"},
     "rules[0].staleness", "at least the interval"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "keep_raw": "no"},
     "rules[0].keep_raw", "true or false"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "colour": "red"},
     "rules[0].colour", "unknown key"),
    ({"match": "cpu", "interval": "1m", "outputs": ["avg"], "dedup_interval": "1m"},
     "rules[0].dedup_interval", "vmagent option"),
])
def test_rule_errors_name_the_field(rule: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(RuleError) as exc:
        parse_rules([rule])
    assert exc.value.key == field
    assert why in str(exc.value)


def test_duplicate_names_refused() -> None:
    r = {"match": "cpu", "interval": "1m", "outputs": ["avg"]}
    assert [x.name for x in parse_rules([r, r])] == ["cpu:1m", "cpu:1m#2"]
    with pytest.raises(RuleError, match="duplicate rule name"):
        parse_rules([{**r, "name": "x"}, {**r, "name": "x"}])


def test_vmagent_yaml_file_loads(tmp_path: Any) -> None:
    p = tmp_path / "aggr.yaml"
    p.write_text("""
- match: 'http_requests_total{env="prod"}'
  interval: 5m
  without: [instance]
  outputs: [total, increase]
- match:
  - cpu_usage
  - '{__name__=~"node_.*_seconds"}'
  interval: 1m
  by: [site]
  staleness_interval: 10m
  outputs: ["quantiles(0.5, 0.9, 0.99)", avg]
  keep_raw: false
""")
    rules = load_rules_file(str(p))
    assert [r.suffix for r in rules] == ["5m_without_instance", "1m_by_site"]
    assert rules[1].quantiles == (0.5, 0.9, 0.99) and not rules[1].keep_raw
    assert rules[1].staleness_ms == 600_000
    t = tmp_path / "aggr.toml"
    t.write_text('[[rules]]\nmatch = "cpu"\ninterval = "1m"\noutputs = ["max"]\n')
    assert load_rules_file(str(t))[0].outputs == ("max",)
    (tmp_path / "bad.yaml").write_text("- match: [\n")
    with pytest.raises(RuleError, match="not valid YAML"):
        load_rules_file(str(tmp_path / "bad.yaml"))


def test_names_like_vmagent_and_split_back() -> None:
    f = Feed([
        {"match": "cpu", "interval": "1m", "outputs": ["avg"]},
        {"match": "cpu", "interval": "5m", "by": ["site", "rack"], "outputs": ["max"]},
        {"match": "cpu", "interval": "1m", "without": ["core"], "outputs": ["quantiles(0.9)"]},
    ])
    f.push([(key("cpu", site="a", rack="r1", core="0", device="d"), T0 + 1000, 5.0)])
    out = f.flush(T0 + 10 * MIN)
    assert set(out) == {
        ("cpu:1m_avg{core=0,device=d,rack=r1,site=a}", T0 + MIN),
        ("cpu:5m_by_rack_site_max{rack=r1,site=a}", T0 + 5 * MIN),
        ("cpu:1m_without_core_quantiles{device=d,quantile=0.9,rack=r1,site=a}", T0 + MIN),
    }
    assert split_output_name("ns:cpu:5m_by_rack_site_max") == ("ns:cpu", "5m_by_rack_site", "max")
    assert split_output_name("x:1m_increase_prometheus") == ("x", "1m", "increase_prometheus")
    assert split_output_name("x:1m_count_samples") == ("x", "1m", "count_samples")
    assert split_output_name("plain_metric") is None


# -- golden: same input, same output as vmagent's documented semantics ------------------------

def test_golden_gauge_outputs_by_site() -> None:
    f = Feed([{"match": "temp", "interval": "1m", "by": ["site"],
               "outputs": ["count_samples", "sum_samples", "min", "max", "avg", "last",
                           "stddev", "stdvar", "count_series"]}])
    a1, a2, b1 = (key("temp", site="a", device="d1"), key("temp", site="a", device="d2"),
                  key("temp", site="b", device="d3"))
    f.push([(a1, T0 + 1_000, 20.0), (a2, T0 + 2_000, 24.0), (a1, T0 + 31_000, 22.0),
            (b1, T0 + 5_000, 30.0), (a2, T0 + 59_999, 26.0),
            (a1, T0 + MIN, 99.0)])  # next window
    out = f.flush(T0 + MIN + 10_000)
    end = T0 + MIN
    # site a: 20, 24, 22, 26 -> mean 23, population variance (9+1+1+9)/4 = 5
    assert out[("temp:1m_by_site_count_samples{site=a}", end)] == 4
    assert out[("temp:1m_by_site_sum_samples{site=a}", end)] == 92
    assert out[("temp:1m_by_site_min{site=a}", end)] == 20
    assert out[("temp:1m_by_site_max{site=a}", end)] == 26
    assert out[("temp:1m_by_site_avg{site=a}", end)] == 23
    assert out[("temp:1m_by_site_last{site=a}", end)] == 26
    assert out[("temp:1m_by_site_stdvar{site=a}", end)] == pytest.approx(5)
    assert out[("temp:1m_by_site_stddev{site=a}", end)] == pytest.approx(math.sqrt(5))
    assert out[("temp:1m_by_site_count_series{site=a}", end)] == 2
    assert out[("temp:1m_by_site_count_series{site=b}", end)] == 1
    assert out[("temp:1m_by_site_stddev{site=b}", end)] == 0
    assert all(t == end for _, t in out)  # the 99 waits for its own window


def test_golden_counters_with_reset() -> None:
    """vmagent: on a drop the new value is the increase; *_prometheus ignores a new series'
    first sample; total runs on across windows, increase restarts every window."""
    f = Feed([{"match": "req_total", "interval": "1m",
               "outputs": ["increase", "increase_prometheus", "total", "total_prometheus"]}])
    c = key("req_total", device="d1")
    f.push([(c, T0 + 0, 10.0), (c, T0 + 10_000, 15.0), (c, T0 + 20_000, 3.0),
            (c, T0 + 30_000, 8.0)])
    f.push([(c, T0 + MIN + 5_000, 12.0)])
    out = f.flush(T0 + 3 * MIN)
    w1, w2 = T0 + MIN, T0 + 2 * MIN
    n = "req_total:1m_{}{{device=d1}}"
    assert out[(n.format("increase_prometheus"), w1)] == 5 + 3 + 5
    assert out[(n.format("increase"), w1)] == 10 + 5 + 3 + 5  # first sample from 0
    assert out[(n.format("increase_prometheus"), w2)] == 4
    assert out[(n.format("total_prometheus"), w1)] == 13
    assert out[(n.format("total_prometheus"), w2)] == 17
    assert out[(n.format("total"), w2)] == 27


def test_golden_first_samples_ignored_right_after_rule_creation() -> None:
    # vmagent ignores new series' first samples for one staleness interval after it starts
    # (it cannot tell new series from old ones); we do so after the rule is first created
    f = Feed([{"match": "req_total", "interval": "1m", "outputs": ["increase"]}],
             created_ms=T0)
    f.push([(key("req_total", device="d1"), T0 + 1000, 100.0)])
    f.push([(key("req_total", device="d1"), T0 + 2000, 101.0)])
    f.push([(key("req_total", device="d2"), T0 + 3 * MIN, 7.0)])  # past staleness (2m)
    out = f.flush(T0 + 10 * MIN)
    assert out[("req_total:1m_increase{device=d1}", T0 + MIN)] == 1
    assert out[("req_total:1m_increase{device=d2}", T0 + 4 * MIN)] == 7


def test_golden_rates() -> None:
    """rate per series = increase / (its last sample - its last sample before the window);
    rate_avg averages over series, rate_sum adds them (vmagent's rate_avg / rate_sum)."""
    f = Feed([{"match": "bytes_total", "interval": "1m", "without": ["device"],
               "outputs": ["rate_avg", "rate_sum"]}])
    a, b = key("bytes_total", device="a"), key("bytes_total", device="b")
    f.push([(a, T0 + 0, 0.0), (a, T0 + 30_000, 300.0), (b, T0 + 10_000, 50.0),
            (b, T0 + 50_000, 250.0)])
    f.push([(a, T0 + 90_000, 900.0)])
    out = f.flush(T0 + 3 * MIN)
    # window 1: a 300/30s = 10/s, b 200/40s = 5/s
    assert out[("bytes_total:1m_without_device_rate_sum{}", T0 + MIN)] == pytest.approx(15)
    assert out[("bytes_total:1m_without_device_rate_avg{}", T0 + MIN)] == pytest.approx(7.5)
    # window 2: only a: 600 over 60 s since its last sample in window 1
    assert out[("bytes_total:1m_without_device_rate_avg{}", T0 + 2 * MIN)] == pytest.approx(10)


def test_quantiles_within_stated_error() -> None:
    f = Feed([{"match": "lat", "interval": "1m", "by": ["site"],
               "outputs": ["quantiles(0.5, 0.9, 0.99)"], "quantile_error": 0.01}])
    rng = np.random.default_rng(7)
    vals = rng.lognormal(3, 1, 5000)
    rows = [(key("lat", site="s", device=f"d{i % 50}"), T0 + int(i * 10), float(v))
            for i, v in enumerate(vals)]
    f.push(rows)
    out = f.flush(T0 + 2 * MIN)
    srt = np.sort(vals)
    for q in (0.5, 0.9, 0.99):
        exact = srt[math.floor(q * (len(vals) - 1))]
        est = out[(f"lat:1m_by_site_quantiles{{quantile={q:g},site=s}}", T0 + MIN)]
        assert abs(est - exact) <= 0.01 * exact


def test_late_samples_counted_and_kept_raw() -> None:
    f = Feed([{"match": "cpu", "interval": "1m", "outputs": ["count_samples"],
               "keep_raw": False, "grace": "5s"}])
    c = key("cpu", device="d")
    covered, keep = f.push([(c, T0 + 1000, 1.0)], now=T0 + 2000)
    assert covered.tolist() == [True] and keep.tolist() == [False]
    f.flush(T0 + MIN + 5_000)
    covered, keep = f.push([(c, T0 + 2000, 2.0), (c, T0 + MIN + 1, 3.0)], now=T0 + MIN + 6000)
    assert covered.tolist() == [False, True]
    assert keep.tolist() == [True, False]  # the late one still leaves the site, raw
    summary = f.agg.summary()[0]
    assert summary["late_samples"] == 1 and summary["samples"] == 2
    # within grace the window is still open
    f2 = Feed([{"match": "cpu", "interval": "1m", "outputs": ["count_samples"], "grace": "5s"}])
    f2.push([(c, T0 + 1000, 1.0)])
    f2.push([(c, T0 + 2000, 1.0)], now=T0 + MIN + 4_000)
    assert f2.flush(T0 + MIN + 5_000) == {("cpu:1m_count_samples{device=d}", T0 + MIN): 2}


def test_keep_raw_any_rule_wanting_raw_wins_and_nan_ignored() -> None:
    f = Feed([{"match": "cpu", "interval": "1m", "outputs": ["avg"], "keep_raw": False},
              {"match": 'cpu{device="x"}', "interval": "5m", "outputs": ["max"]}])
    covered, keep = f.push([(key("cpu", device="x"), T0, 1.0), (key("cpu", device="y"), T0, 2.0),
                            (key("mem", device="y"), T0, 3.0),
                            (key("cpu", device="y"), T0 + 1, math.nan)])
    assert covered.tolist() == [True, True, False, False]
    assert keep.tolist() == [True, False, True, True]
    out = f.flush(T0 + 10 * MIN)
    assert out[("cpu:1m_avg{device=y}", T0 + MIN)] == 2.0


def test_staleness_forgets_counter_state() -> None:
    f = Feed([{"match": "c_total", "interval": "1m", "outputs": ["increase", "total"],
               "staleness": "2m"}])
    c = key("c_total", device="d")
    f.push([(c, T0 + 1000, 5.0), (c, T0 + 2000, 6.0)])
    f.flush(T0 + 2 * MIN)
    quiet = f.flush(T0 + 4 * MIN)
    assert quiet == {}  # no windows were open
    f.push([(c, T0 + 10 * MIN, 4.0)])  # back after 10 minutes: a new series
    out = f.flush(T0 + 12 * MIN)
    assert out[("c_total:1m_increase{device=d}", T0 + 11 * MIN)] == 4.0
    assert out[("c_total:1m_total{device=d}", T0 + 11 * MIN)] == 4.0  # total restarted


# -- properties -------------------------------------------------------------------------------

ALL = ["count_samples", "sum_samples", "min", "max", "avg", "last", "stddev", "count_series",
       "increase", "increase_prometheus", "total", "total_prometheus", "rate_sum", "rate_avg",
       "quantiles(0.5, 0.9)"]
RULES = [{"match": "m", "interval": "1m", "by": ["site"], "outputs": ALL},
         {"match": 'm{site="a"}', "interval": "5m", "without": ["site"], "outputs": ALL}]


@st.composite
def counter_streams(draw: st.DrawFn) -> list[tuple[SeriesKey, int, float]]:
    """Counters of a few devices with resets, in time order per device."""
    rows = []
    for d in range(draw(st.integers(1, 4))):
        k = key("m", site=draw(st.sampled_from(["a", "b"])), device=f"d{d}")
        t = T0 + draw(st.integers(0, 30_000))
        v = 0.0
        for _ in range(draw(st.integers(1, 25))):
            if draw(st.booleans()) and draw(st.booleans()):
                v = float(draw(st.integers(0, 5)))  # reset
            else:
                v += float(draw(st.integers(0, 100)))
            rows.append((k, t, v))
            t += draw(st.integers(1, 70_000))
    return sorted(rows, key=lambda r: r[1])


def run(rows: list[tuple[SeriesKey, int, float]], cuts: list[int], shuffle_seed: int,
        restart_at: int | None = None) -> dict[tuple[str, int], float]:
    f = Feed(RULES)
    out: dict[tuple[str, int], float] = {}
    bounds = [0, *sorted(set(c % (len(rows) + 1) for c in cuts)), len(rows)]
    rng = np.random.default_rng(shuffle_seed)
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        chunk = rows[a:b]
        if not chunk:
            continue
        now = chunk[0][1]
        order = rng.permutation(len(chunk))
        f.push([chunk[i] for i in order], now=now)
        out.update(f.flush(now))
        if restart_at is not None and n == restart_at:
            saved = msgpack.unpackb(msgpack.packb(f.agg.states()), strict_map_key=False)
            f = Feed(RULES, states=saved, keys=f.keys)
    out.update(f.flush(rows[-1][1] + 60 * MIN))
    return out


@settings(max_examples=60, deadline=None)
@given(counter_streams(), st.lists(st.integers(0, 10_000), max_size=6), st.integers(0, 99),
       st.integers(0, 6))
def test_chunking_order_and_restarts_change_nothing(rows: list[tuple[SeriesKey, int, float]],
                                                    cuts: list[int], seed: int,
                                                    restart: int) -> None:
    """Partials merge associatively: any split into requests, any order within them, and a
    save/restore of the whole state in between give the outputs of one uninterrupted pass."""
    whole = run(rows, [], 0)
    assert run(rows, cuts, seed) == pytest.approx(whole, rel=1e-9, abs=1e-9)
    assert run(rows, cuts, seed, restart_at=restart) == pytest.approx(whole, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(counter_streams(), st.lists(st.integers(0, 10_000), max_size=4))
def test_increase_across_resets_matches_reference(rows: list[tuple[SeriesKey, int, float]],
                                                  cuts: list[int]) -> None:
    ref: dict[tuple[str, int], float] = defaultdict(float)
    last: dict[SeriesKey, float] = {}
    for k, t, v in rows:
        end = t - t % MIN + MIN
        site = dict(k)["site"]
        if k in last:
            prev = last[k]
            ref[(f"m:1m_by_site_increase_prometheus{{site={site}}}", end)] += \
                v - prev if v >= prev else v
        else:
            ref[(f"m:1m_by_site_increase_prometheus{{site={site}}}", end)] += 0.0
        last[k] = v
    got = {k: v for k, v in run(rows, cuts, 1).items()
           if k[0].startswith("m:1m_by_site_increase_prometheus")}
    # the aggregator also reports 0 for fresh groups in windows without samples
    assert {k: v for k, v in got.items() if k in ref or v} == pytest.approx(dict(ref))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(
    st.floats(allow_nan=False, width=64), st.sampled_from([0.0, -0.0, 1e-310, -2.5]))),
    min_size=1, max_size=200))
def test_group_sketches_equal_sketching_each_group_alone(rows: list[tuple[int, float]]) -> None:
    """The vectorised per-group sketch update matches one DDSketch per group."""
    from edge_node.aggregate.sketch import DDSketch

    f = Feed([{"match": "m", "interval": "1m", "by": ["g"], "outputs": ["quantiles(0.5)"]}])
    f.push([(key("m", g=str(g)), T0 + i, v) for i, (g, v) in enumerate(rows)])
    st_ = f.agg.rules[0]
    (win,) = st_.windows.values()
    for grp in {g for g, _ in rows}:
        want = DDSketch(0.01)
        want.add_many(np.array([v for g, v in rows if g == grp]))
        gid = st_.group_index[(("__name__", "m"), ("g", str(grp)))]
        assert win.sketch(gid) == want


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200_000), st.floats(width=64)),
                min_size=1, max_size=60))
def test_any_values_never_break_the_aggregator(rows: list[tuple[int, int, float]]) -> None:
    """NaN, infinities and huge values: no exception, no warning, state still serialises."""
    f = Feed(RULES)
    f.push([(key("m", site="a", device=f"d{d}"), T0 + t, v) for d, t, v in rows], now=T0)
    msgpack.packb(f.agg.states())
    f.flush(T0 + 60 * MIN)


def test_equal_timestamps_give_the_same_outputs_in_any_order() -> None:
    """Ties (several series of a group, or one series, at one timestamp) are broken by value,
    so a replay in another row order reproduces every output."""
    rules = [{"match": "m", "interval": "1m", "by": ["site"],
              "outputs": ["last", "increase_prometheus", "total_prometheus"]}]
    rows = [(key("m", site="a", device="d1"), T0 + 1000, 5.0),
            (key("m", site="a", device="d2"), T0 + 1000, 9.0),
            (key("m", site="a", device="d1"), T0 + 2000, 7.0),
            (key("m", site="a", device="d1"), T0 + 2000, 6.0),
            (key("m", site="a", device="d2"), T0 + 2000, 7.0)]
    results = []
    for perm in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        f = Feed(rules)
        f.push([rows[i] for i in perm])
        results.append(f.flush(T0 + 2 * MIN))
    assert results[0] == results[1] == results[2]
    assert results[0][("m:1m_by_site_last{site=a}", T0 + MIN)] == 7.0
