"""Rule files (Prometheus format), templates, and the alert lifecycle (plain pytest)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edge_node.alerts.promql import parse
from edge_node.alerts.rules import (
    RuleEngine,
    load_rule_file,
    parse_rule_groups,
)
from edge_node.alerts.store import RecentStore
from edge_node.alerts.templates import (
    humanize,
    humanize_duration,
    parse_template,
)
from edge_node.errors import RuleFileError, TemplateError
from tests.tools import need

MIN = 60_000

# the kind of file people already have (node-exporter style), within the supported subset
EXISTING = """
groups:
  - name: node
    interval: 30s
    rules:
      - record: instance:cpu_busy:avg5m
        expr: 100 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])) * 100
      - alert: HostHighCpuLoad
        expr: instance:cpu_busy:avg5m > 90
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "Host high CPU load (instance {{ $labels.instance }})"
          description: "CPU load is > 90%\\n  VALUE = {{ $value }}\\n  LABELS = {{ $labels }}"
      - alert: HostOutOfDiskSpace
        expr: >-
          (node_filesystem_avail_bytes * 100) / node_filesystem_size_bytes < 10
          and on (instance, device, mountpoint) node_filesystem_readonly == 0
        for: 2m
        keep_firing_for: 5m
        labels:
          severity: critical
        annotations:
          summary: 'Disk {{ $labels.mountpoint }} almost full ({{ $value | humanize }}% left)'
  - name: devices
    rules:
      - alert: DeviceDown
        expr: up == 0
        annotations:
          summary: '{{ $labels.instance }} has been down for {{ printf "%.0f" $value }}'
"""


def test_an_existing_rule_file_loads(tmp_path: Path) -> None:
    p = tmp_path / "node.rules.yml"
    p.write_text(EXISTING)
    groups = load_rule_file(p)
    assert [g.name for g in groups] == ["node", "devices"]
    assert groups[0].interval_ms == 30_000 and groups[1].interval_ms == 60_000
    disk = groups[0].rules[2]
    assert disk.for_ms == 120_000 and disk.keep_firing_for_ms == 300_000  # type: ignore[union-attr]


def test_prometheus_accepts_the_same_file(tmp_path: Path) -> None:
    """The sample file is a real Prometheus rule file (promtool check rules agrees)."""
    need("promtool", "apt-get install prometheus")
    p = tmp_path / "node.rules.yml"
    p.write_text(EXISTING.replace("        keep_firing_for: 5m\n", ""))  # 2.42 predates it
    out = subprocess.run(["promtool", "check", "rules", str(p)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_problem_is_reported_with_its_place() -> None:
    doc = yaml.safe_load("""
groups:
  - name: g
    interval: soon
    rules:
      - alert: A
        expr: topk(3, up)
      - alert: B
        expr: up == 0
        for: 5 minutes
        labels: {"bad-name": x}
      - record: "not a metric"
        expr: up
      - alert: C
        record: D
        expr: up
      - alert: E
        expr: up
        annotations:
          summary: "{{ .Foo }}"
        severity: page
  - name: g
    rules: []
""")
    with pytest.raises(RuleFileError) as exc:
        parse_rule_groups(doc, "x.yml")
    problems = exc.value.problems
    assert "x.yml: groups[0].interval: 'soon' is not a duration (e.g. 30s, 5m, 1h)" in problems
    assert any(p.startswith("x.yml: groups[0].rules[0].expr: topk() is not in the supported")
               for p in problems)
    assert any(p.startswith("x.yml: groups[0].rules[1].for:") for p in problems)
    assert "x.yml: groups[0].rules[1].labels.bad-name: not a valid label name" in problems
    assert any(p.startswith("x.yml: groups[0].rules[2].record:") for p in problems)
    assert "x.yml: groups[0].rules[3]: give exactly one of alert or record" in problems
    assert any(p.startswith("x.yml: groups[0].rules[4].annotations.summary: unsupported "
                            "template action") for p in problems)
    assert any(p.startswith("x.yml: groups[0].rules[4].severity: unknown key") for p in problems)
    assert "x.yml: groups[1].name: duplicate group name 'g'" in problems
    with pytest.raises(RuleFileError, match="top-level 'groups:'"):
        parse_rule_groups({"rules": []})


@pytest.mark.parametrize(("tpl", "labels", "value", "want"), [
    ("{{ $labels.device }} down", {"device": "pump-1"}, 1.0, "pump-1 down"),
    ("v={{ $value }}", {}, 0.5, "v=0.5"),
    ("v={{ $value }}", {}, 3.0, "v=3"),
    ("v={{ $value }}", {}, 1e21, "v=1e+21"),
    ("{{ $value | humanize }}", {}, 1234567.0, "1.235M"),
    ("{{ $value | humanize }}", {}, 0.0012, "1.2m"),
    ("{{ $value | humanize1024 }}", {}, 2048.0, "2ki"),
    ("{{ $value | humanizePercentage }}", {}, 0.8123, "81.23%"),
    ("{{ $value | humanizeDuration }}", {}, 90061.0, "1d 1h 1m 1s"),
    ("{{ $value | humanizeDuration }}", {}, 125.0, "2m 5s"),
    ("{{ $value | humanizeDuration }}", {}, 0.25, "250ms"),
    ('{{ printf "%.1f" $value }}C', {}, 71.26, "71.3C"),
    ("{{ $labels.site | toUpper }}", {"site": "plant"}, 0.0, "PLANT"),
    ("{{ $labels }}", {"b": "2", "a": "1"}, 0.0, "map[a:1 b:2]"),
    ("{{ $labels := .Labels }}{{ .Value }} on {{ .Labels.host }}", {"host": "h"}, 2.0,
     "2 on h"),
    ("{{ $externalLabels.node }}", {}, 0.0, "gw-7"),
    ("no actions", {}, 0.0, "no actions"),
])
def test_templates_render_like_prometheus(tpl: str, labels: dict[str, str], value: float,
                                          want: str) -> None:
    assert parse_template(tpl).render(labels, value, {"node": "gw-7"}) == want


@pytest.mark.parametrize("tpl", ["{{ .Foo }}", "{{ $value | reReplaceAll }}", "{{ $value",
                                 "{{ range $labels }}x{{ end }}", "{{ if $value }}y{{ end }}"])
def test_unsupported_templates_are_refused(tpl: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(tpl)


def test_humanizers() -> None:
    assert humanize(math.inf) == "+Inf" and humanize(0) == "0"
    assert humanize_duration(4.5) == "4.5s" and humanize_duration(-3600) == "-1h 0m 0s"


# -- lifecycle --------------------------------------------------------------------------------

RULES = yaml.safe_load("""
groups:
  - name: g
    interval: 1m
    rules:
      - alert: Hot
        expr: temp > 30
        for: 3m
        labels: {severity: page, where: "{{ $labels.site }}"}
        annotations: {summary: "{{ $labels.device }} at {{ $value }}C"}
      - alert: Flappy
        expr: temp > 30
        keep_firing_for: 2m
      - record: temp:max
        expr: max by (site) (temp)
""")


def engine_with(temps: dict[int, float]) -> tuple[RuleEngine, RecentStore]:
    store = RecentStore(retention_ms=3600_000)
    key = (("__name__", "temp"), ("device", "d1"), ("site", "s1"))
    for minute, v in temps.items():
        store.add(key, minute * MIN, v)
    groups = parse_rule_groups(RULES)
    return RuleEngine(groups, store, {"node": "gw"}), store


def run(engine: RuleEngine, minutes: range) -> list[tuple[int, str, str]]:
    out = []
    for m in minutes:
        for e in engine.evaluate(engine.groups[0], m * MIN):
            out.append((m, e.kind, e.alert.rule))
    return out


def test_pending_firing_resolved_and_keep_firing_for() -> None:
    temps = {m: (35.0 if 2 <= m <= 8 else 20.0) for m in range(20)}
    temps[5] = 20.0  # one dip below: Hot resets to pending, Flappy keeps firing
    engine, store = engine_with(temps)
    events = run(engine, range(20))
    assert (2, "firing", "Flappy") in events  # no `for`: fires at once
    hot = [(m, k) for m, k, r in events if r == "Hot"]
    # Hot: pending from 2, the dip at 5 ends it (pending alerts just go), pending again from 6,
    # firing at 9? no: 6 + 3m = 9 but temp is 20 again at 9 -> never fires
    assert hot == []
    flappy = [(m, k) for m, k, r in events if r == "Flappy"]
    # Flappy: the dip at 5 is bridged by keep_firing_for 2m; resolves 2 minutes after 8
    assert flappy == [(2, "firing"), (11, "resolved")]
    # the recording rule wrote its series into the store
    recorded = list(store.select(parse("temp:max").matchers, 0, 20 * MIN))
    assert [dict(lb) for lb, _, _ in recorded] == [{"__name__": "temp:max", "site": "s1"}]


def test_for_duration_labels_annotations_and_restart() -> None:
    temps = {m: (35.0 if m >= 2 else 20.0) for m in range(12)}
    engine, store = engine_with(temps)
    events = run(engine, range(6))
    assert [(m, k) for m, k, r in events if r == "Hot"] == [(5, "firing")]
    hot = next(a for a in engine.active() if a.rule == "Hot")
    assert hot.labels == {"alertname": "Hot", "device": "d1", "site": "s1",
                          "severity": "page", "where": "s1"}
    assert hot.annotations == {"summary": "d1 at 35C"}
    assert hot.active_at_ms == 2 * MIN and hot.fired_at_ms == 5 * MIN
    # restart: a new engine with the saved state neither re-fires nor forgets
    saved = yaml.safe_load(yaml.safe_dump(engine.to_state()))
    again = RuleEngine(engine.groups, store)
    again.load_state(saved)
    assert run(again, range(6, 12)) == []
    assert {a.rule for a in again.active()} == {"Hot", "Flappy"}


def test_a_changed_rule_starts_afresh() -> None:
    engine, store = engine_with({m: 35.0 for m in range(6)})
    run(engine, range(6))
    changed = yaml.safe_load(yaml.safe_dump(RULES).replace("temp > 30", "temp > 31"))
    again = RuleEngine(parse_rule_groups(changed), store)
    again.load_state(engine.to_state())
    assert again.active() == []


def test_resolved_alerts_are_forgotten_after_15_minutes() -> None:
    engine, _ = engine_with({m: (35.0 if m < 2 else 20.0) for m in range(40)})
    run(engine, range(40))
    flappy = [a for st in engine.states.values() for a in st.alerts.values()
              if a.rule == "Flappy"]
    assert flappy == []


LOG_RULES = yaml.safe_load("""
groups:
  - name: logs
    rules:
      - alert: PumpErrors
        expr: sum by (device) (count_over_time({app="pump"} |~ "error|fail" != "debug" [5m])) > 2
      - alert: PumpErrorRate
        expr: rate({app="pump"} |= "" [1m]) > 0.05
""")


def test_log_rules_count_matching_lines() -> None:
    store = RecentStore(retention_ms=3600_000)
    engine = RuleEngine(parse_rule_groups(LOG_RULES), store)
    stream = (("app", "pump"), ("device", "p1"), ("level", "error"))
    other = (("app", "fan"), ("device", "f1"))
    lines = [b"pressure error", b"debug: error injected", b"valve fail", b"ok", b"error again"]
    taken = engine.feed_logs([stream] * 5 + [other], [MIN + i for i in range(6)],
                             [*lines, b"error"])
    assert taken == 3 + 5  # the first rule takes 3 lines, the catch-all rate rule all 5
    events = engine.evaluate(engine.groups[0], 2 * MIN)
    fired = {(e.alert.rule, e.alert.labels.get("device")) for e in events}
    assert fired == {("PumpErrors", "p1"), ("PumpErrorRate", "p1")}
    value = next(e.alert.value for e in events if e.alert.rule == "PumpErrors")
    assert value == 3.0


@pytest.mark.parametrize(("expr", "why"), [
    ('avg_over_time({app="x"} |= "e" [5m])', "does not apply to log lines"),
    ('count_over_time({app="x"} |= "e")', "needs a range"),
    ('count_over_time({app="x"} |~ "(" [5m])', "invalid regular expression"),
])
def test_log_rule_errors(expr: str, why: str) -> None:
    with pytest.raises(RuleFileError, match=why):
        parse_rule_groups({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": expr}]}]})


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(-1e6, 1e6)), max_size=40))
def test_recent_store_keeps_one_sample_per_timestamp_in_order(
        samples: list[tuple[int, float]]) -> None:
    # what a reload's seeding from the buffer and the new service's observing may both add
    store = RecentStore(retention_ms=3600_000)
    key = (("__name__", "t"),)
    for t, v in samples + samples:
        store.add(key, t, v)
    first: dict[int, float] = {}
    for t, v in samples:
        first.setdefault(t, v)
    if not samples:
        assert key not in store.series
        return
    s = store.series[key]
    assert s.ts == sorted(first) and s.vals == [first[t] for t in sorted(first)]


def test_hooks_file_route_timers_and_every_problem_named() -> None:
    from edge_node.alerts.notify import parse_hooks
    from edge_node.errors import HooksError

    cfg = parse_hooks({"route": {"group_by": ["alertname"], "group_wait": "30s",
                                 "group_interval": "5m", "repeat_interval": "2h"},
                       "hooks": [{"name": "siren", "type": "exec", "command": ["/bin/true"]}]})
    assert (cfg.route.group_wait_ms, cfg.route.group_interval_ms,
            cfg.route.repeat_interval_ms) == (30_000, 300_000, 7_200_000)
    assert parse_hooks({"route": {"group_wait": "0s"}}).route.group_wait_ms == 0
    assert parse_hooks({}).route.group_interval_ms == 0  # default: notify at once
    with pytest.raises(HooksError) as err:
        parse_hooks({"route": {"group_wait": "soon", "group_interval": "20m", "wait": 1},
                     "hooks": [{"type": "pager"}, {"type": "webhook", "url": "ftp://x"},
                               {"type": "exec", "command": [], "retries": 3},
                               {"name": "a", "type": "log", "path": "/tmp/a"},
                               {"name": "a", "type": "log", "path": "/tmp/b"}]}, "hooks.yml")
    assert sorted(err.value.problems) == sorted([
        "hooks.yml: route.group_wait: 'soon' is not a duration (e.g. 30s)",
        "hooks.yml: route.group_interval: at most 15m",
        "hooks.yml: route.wait: unknown key (known: group_by, group_wait, group_interval, "
        "repeat_interval)",
        "hooks.yml: hooks[0].type: must be one of exec, webhook, alertmanager, log",
        "hooks.yml: hooks[1].url: must be an http:// or https:// URL",
        "hooks.yml: hooks[2].retries: unknown key for an exec hook (known: command, name, "
        "timeout, type)",
        "hooks.yml: hooks[2].command: must be a command (a list: program and arguments)",
        "hooks.yml: hooks[4].name: duplicate hook name 'a'",
    ])
