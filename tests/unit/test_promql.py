"""The PromQL subset: parser errors that name the unsupported part, evaluation, and golden
results from the real Prometheus engine (``promtool test rules`` from Debian's prometheus 2.42
checks our answers for the same input series)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_node.alerts.promql import Evaluator, Sample, parse
from edge_node.alerts.store import RecentStore
from edge_node.errors import PromQLError
from tests.tools import need

MIN = 60_000


def _stale() -> float:
    import struct

    return struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # type: ignore[no-any-return]


# input series: labels, then one value per minute from t=0 (None: no sample, "stale": marker)
SERIES: list[tuple[dict[str, str], list[Any]]] = [
    ({"__name__": "req_total", "job": "api", "instance": "a"},
     [0, 10, 20, 35, 50, 5, 15, 30, 42, 60, 61, 90, 120, 150, 151, 160]),
    ({"__name__": "req_total", "job": "api", "instance": "b"},
     [100, 110, None, 130, 140, 150, None, None, 180, 190, 200, 210, 5, 10, 20, 30]),
    ({"__name__": "req_total", "job": "db", "instance": "c"},
     [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
    ({"__name__": "temp", "job": "api", "instance": "a"},
     [20.5, 21, 22.5, 21.5, 23, 24, 25.5, 22, 21, 20, 19.5, 18, 30, 31, 29, 28]),
    ({"__name__": "temp", "job": "db", "instance": "c"},
     [40, 41, 42, 43, 44, 45, "stale", None, None, None, None, None, None, None, None, None]),
    ({"__name__": "up", "job": "api", "instance": "a"}, [1] * 16),
    ({"__name__": "up", "job": "api", "instance": "b"}, [1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0,
                                                         0, 0, 1, 1]),
    ({"__name__": "up", "job": "db", "instance": "c"}, [1] * 6 + ["stale"]),
]

EXPRESSIONS = [
    "up", "up == 0", 'up{job="api"} offset 2m', 'up{instance=~"a|c"}', 'up{job!="api"}',
    "rate(req_total[5m])", "increase(req_total[10m])", "rate(req_total[3m] offset 1m)",
    "delta(temp[5m])", "increase(req_total[2m])",
    "avg_over_time(temp[5m])", "min_over_time(temp[10m])", "max_over_time(temp[10m])",
    "sum_over_time(up[10m])", "count_over_time(temp[10m])", "last_over_time(temp[10m])",
    "quantile_over_time(0.9, temp[10m])", "quantile_over_time(0.5, req_total[6m])",
    "absent_over_time(nothere[5m])", 'absent_over_time(nothere{job="x"}[5m])',
    "absent_over_time(temp[5m])", 'absent(nothere{job="x", instance=~"y"})', "absent(up)",
    "sum by (job) (rate(req_total[5m]))", "avg without (instance) (temp)", "count(up)",
    "max by (job) (temp)", "min(temp)", "sum(up) by (job)", "count without (instance) (up)",
    "temp * 2 + 1", "-temp ^ 2", "temp / 0", "temp % 7", "temp ^ 2 / 4",
    "temp > bool 22", "temp > 22", "temp <= 21", "temp != 20", "22 < temp",
    "temp - ignoring(job) temp", "rate(req_total[5m]) / on(instance) up",
    "up and temp", "temp unless up == 0", "up or temp", "up and on(instance) (temp > 21)",
    "vector(1)", "vector(time())", "vector(scalar(count(up)))", "abs(temp - 25)",
    "sum(rate(req_total[5m])) > bool 1", "(up == 0) * on(instance) temp",
]
TIMES_MIN = [3, 6, 9, 12, 15]


def make_store() -> RecentStore:
    stale = _stale()
    store = RecentStore(retention_ms=3 * 3600_000)
    for labels, values in SERIES:
        key = tuple(sorted(labels.items()))
        for i, v in enumerate(values):
            if v is None:
                continue
            store.add(key, i * MIN, stale if v == "stale" else float(v))
    return store


def ours(expr: str, t_min: int) -> list[Sample]:
    res = Evaluator(make_store()).instant(parse(expr), t_min * MIN)
    assert isinstance(res, list)
    return res


def _promtool_values(values: list[Any]) -> str:
    return " ".join("_" if v is None else "stale" if v == "stale" else repr(float(v))
                    for v in values)


def _labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
    name = dict(labels).get("__name__", "")
    return f"{name}{{{inner}}}"


def test_answers_match_the_prometheus_engine(tmp_path: Path) -> None:
    """Write our results as the expected samples of a promtool unit test over the same input:
    promtool (Prometheus 2.42's engine) passes it only if every value and label set agrees."""
    need("promtool", "apt-get install prometheus")
    tests = []
    for expr in EXPRESSIONS:
        for t in TIMES_MIN:
            samples = ours(expr, t)
            assert all(not math.isnan(s.value) for s in samples), (expr, t)
            tests.append({"expr": expr, "eval_time": f"{t}m",
                          "exp_samples": [{"labels": _labels_text(s.labels),
                                           "value": s.value} for s in samples]})
    doc = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": _labels_text(tuple(sorted(lb.items()))),
                          "values": _promtool_values(v)} for lb, v in SERIES],
        "promql_expr_test": tests}]}
    path = tmp_path / "golden_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert len(tests) == len(EXPRESSIONS) * len(TIMES_MIN)


def test_some_values_by_hand() -> None:
    # counter a over [5m, 10m] at t=10m (both ends included, as Prometheus 2.x): 5 15 30 42 60
    # 61, the drop 50 -> 5 just before is outside; samples span the whole range: 56 / 300 s
    (a,) = [s for s in ours('rate(req_total{instance="a"}[5m])', 10)]
    assert a.value == pytest.approx(56 / 300)
    assert {dict(s.labels)["instance"] for s in ours("up == 0", 4)} == {"b"}
    # the stale marker ends temp{instance="c"} at 6m
    assert {dict(s.labels)["instance"] for s in ours("temp", 7)} == {"a"}
    assert [s.value for s in ours("count(up)", 8)] == [2.0]


@pytest.mark.parametrize(("expr", "why"), [
    ("topk(3, up)", "topk() is not in the supported PromQL subset"),
    ("histogram_quantile(0.9, x)", "not in the supported PromQL subset"),
    ("irate(x[5m])", "irate() is not in the supported"),
    ("quantile(0.9, x)", "not in the supported"),
    ("a / on(x) group_left b", "group_left (many-to-one matching) is not supported"),
    ("rate(x[5m:1m])", "subqueries are not supported"),
    ("rate(x)", "must be a range vector"),
    ("avg_over_time(x)", "must be a range vector"),
    ("x[5m]", "range vector cannot be the result"),
    ("sum(x[5m])", "needs an instant vector"),
    ("foo(x)", "unknown function foo()"),
    ("x{a=~\"(\"}", "invalid regular expression"),
    ("{a=\"\"}", "does not match the empty string"),
    ("1 > 2", "need the bool modifier"),
    ("x and 1", "needs instant vectors on both sides"),
    ("x +", "unexpected 'end of expression'"),
    ("(x", "expected ')'"),
    ("x 5m", "unexpected '5m'"),
    ("", "empty expression"),
    ("rate(x[5m]", "expected ')'"),
    ("x $ y", "unexpected character '$'"),
])
def test_parse_errors_name_the_problem(expr: str, why: str) -> None:
    def run() -> None:
        Evaluator(make_store()).instant(parse(expr), 0)

    with pytest.raises(PromQLError) as exc:
        run()
    assert why in str(exc.value)


def test_many_to_one_is_refused_at_evaluation() -> None:
    with pytest.raises(PromQLError, match="many-to-one"):
        Evaluator(make_store()).instant(parse("temp / on(job) up"), 3 * MIN)


def test_store_trims_and_bounds() -> None:
    store = RecentStore(retention_ms=10 * MIN, max_series=2)
    for i in range(3):
        store.add((("__name__", f"m{i}"),), 0, 1.0)
    assert len(store) == 2 and store.refused_series == 1
    store.add((("__name__", "m0"),), 20 * MIN, 2.0)
    assert store.trim(20 * MIN) == 2 and len(store) == 1  # m1 had nothing newer
    assert [list(v) for _, _, v in store.select(parse("m0").matchers, 0, 30 * MIN)] == [[2.0]]
