"""Prometheus rule files and the alert lifecycle (sans-IO).

A rule file is Prometheus' format: ``groups:`` with ``name``, ``interval`` and ``rules:``, each
rule either ``alert`` (with ``expr``, ``for``, ``keep_firing_for``, ``labels``, ``annotations``)
or ``record`` (with ``expr``, ``labels``). Existing files load unchanged as long as their
expressions stay within :mod:`edge_node.alerts.promql`'s subset; :func:`check_rule_file`
reports every problem at once, each naming file, group, rule and field.

An alert (one per rule and label set) goes inactive -> pending -> firing -> resolved, exactly
as Prometheus' rule manager does: pending while the expression holds for less than ``for``;
firing after; with ``keep_firing_for`` it stays firing that long after the expression stopped
holding; resolved alerts are kept for 15 minutes so the resolution is notified. The whole state
serialises (:meth:`RuleEngine.to_state`), so a restart neither re-fires nor forgets an alert.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PromQLError, RuleFileError, TemplateError
from ..model import NAME_LABEL
from .promql import (
    Evaluator,
    LogFilter,
    Node,
    Queryable,
    Sample,
    log_filters,
    parse,
    parse_duration_ms,
)
from .templates import Template, parse_template

RESOLVED_RETENTION_MS = 15 * 60_000
DEFAULT_INTERVAL_MS = 60_000
_GROUP_KEYS = {"name", "interval", "rules", "limit"}
_ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_RECORD_KEYS = {"record", "expr", "labels"}
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_DURATION = re.compile(r"(?:\d+(?:ms|[smhdwy]))+")


@dataclass(frozen=True)
class AlertingRule:
    name: str
    expr_text: str
    expr: Node
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    labels: tuple[tuple[str, Template], ...] = ()
    annotations: tuple[tuple[str, Template], ...] = ()

    @property
    def key(self) -> str:
        """Identity of the rule's definition (alert state is kept across reloads by it)."""
        doc = [self.name, self.expr_text, self.for_ms, self.keep_firing_for_ms,
               [(k, t.source) for k, t in self.labels]]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr_text: str
    expr: Node
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RuleGroup:
    name: str
    interval_ms: int
    rules: tuple[AlertingRule | RecordingRule, ...]
    source: str = ""


def _duration(raw: Any, where: str, problems: list[str]) -> int:
    text = str(raw).strip()
    if not _DURATION.fullmatch(text):
        problems.append(f"{where}: {raw!r} is not a duration (e.g. 30s, 5m, 1h)")
        return 0
    return parse_duration_ms(text)


def _templates(raw: Any, where: str, problems: list[str], *, label_names: bool
               ) -> tuple[tuple[str, Template], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping of names to strings")
        return ()
    out = []
    for k, v in raw.items():
        if label_names and not _NAME.fullmatch(str(k)):
            problems.append(f"{where}.{k}: not a valid label name")
            continue
        try:
            out.append((str(k), parse_template(str(v))))
        except TemplateError as exc:
            problems.append(f"{where}.{k}: {exc}")
    return tuple(sorted(out))


def parse_rule_groups(data: Any, source: str = "") -> list[RuleGroup]:
    """Validate parsed YAML; raises :class:`RuleFileError` listing every problem."""
    problems: list[str] = []
    groups: list[RuleGroup] = []
    pre = f"{source}: " if source else ""
    if not isinstance(data, Mapping) or "groups" not in data:
        raise RuleFileError([f"{pre}a rule file needs a top-level 'groups:' list"])
    extra = set(data) - {"groups"}
    if extra:
        problems.append(f"{pre}unknown top-level key(s): {', '.join(sorted(map(str, extra)))}")
    raw_groups = data["groups"] or []
    if not isinstance(raw_groups, list):
        raise RuleFileError([f"{pre}groups: must be a list"])
    names: set[str] = set()
    for gi, g in enumerate(raw_groups):
        gw = f"{pre}groups[{gi}]"
        if not isinstance(g, Mapping):
            problems.append(f"{gw}: must be a mapping with name and rules")
            continue
        for k in set(g) - _GROUP_KEYS:
            problems.append(f"{gw}.{k}: unknown key (known: {', '.join(sorted(_GROUP_KEYS))})")
        name = str(g.get("name") or "")
        if not name:
            problems.append(f"{gw}.name: is required")
        elif name in names:
            problems.append(f"{gw}.name: duplicate group name {name!r}")
        names.add(name)
        interval = (_duration(g["interval"], f"{gw}.interval", problems) if "interval" in g
                    else DEFAULT_INTERVAL_MS)
        rules: list[AlertingRule | RecordingRule] = []
        for ri, r in enumerate(g.get("rules") or []):
            rw = f"{gw}.rules[{ri}]"
            rule = _parse_rule(r, rw, problems)
            if rule is not None:
                rules.append(rule)
        groups.append(RuleGroup(name, interval or DEFAULT_INTERVAL_MS, tuple(rules), source))
    if problems:
        raise RuleFileError(problems)
    return groups


def _parse_rule(r: Any, rw: str, problems: list[str]) -> AlertingRule | RecordingRule | None:
    if not isinstance(r, Mapping):
        problems.append(f"{rw}: must be a mapping")
        return None
    is_alert = "alert" in r
    if is_alert == ("record" in r):
        problems.append(f"{rw}: give exactly one of alert or record")
        return None
    known = _ALERT_KEYS if is_alert else _RECORD_KEYS
    for k in set(r) - known:
        problems.append(f"{rw}.{k}: unknown key for {'an alerting' if is_alert else 'a recording'}"
                        f" rule (known: {', '.join(sorted(known))})")
    name = str(r.get("alert") or r.get("record") or "")
    if is_alert and not name:
        problems.append(f"{rw}.alert: must not be empty")
    if not is_alert and not _METRIC.fullmatch(name):
        problems.append(f"{rw}.record: {name!r} is not a valid metric name")
    text = str(r.get("expr", "")).strip()
    expr: Node | None = None
    if not text:
        problems.append(f"{rw}.expr: is required")
    else:
        try:
            expr = parse(text)
        except PromQLError as exc:
            problems.append(f"{rw}.expr: {exc}")
        else:
            from .promql import type_of

            if type_of(expr) not in ("v", "s"):
                problems.append(f"{rw}.expr: must give an instant vector or a scalar")
    if is_alert:
        for_ms = _duration(r["for"], f"{rw}.for", problems) if "for" in r else 0
        keep = (_duration(r["keep_firing_for"], f"{rw}.keep_firing_for", problems)
                if "keep_firing_for" in r else 0)
        labels = _templates(r.get("labels"), f"{rw}.labels", problems, label_names=True)
        ann = _templates(r.get("annotations"), f"{rw}.annotations", problems, label_names=False)
        if expr is None:
            return None
        return AlertingRule(name, text, expr, for_ms, keep, labels, ann)
    raw_labels = r.get("labels") or {}
    if not isinstance(raw_labels, Mapping):
        problems.append(f"{rw}.labels: must be a mapping")
        raw_labels = {}
    if expr is None:
        return None
    return RecordingRule(name, text, expr, tuple(sorted((str(k), str(v))
                                                       for k, v in raw_labels.items())))


def load_rule_file(path: str | Path) -> list[RuleGroup]:
    import yaml

    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([f"{p}: cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError([f"{p}: not valid YAML: {exc}"]) from None
    return parse_rule_groups(data, str(p))


# -- the alert lifecycle --------------------------------------------------------------------------

@dataclass
class Alert:
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str              # pending | firing | resolved
    active_at_ms: int
    value: float
    fired_at_ms: int = 0
    resolved_at_ms: int = 0
    last_seen_ms: int = 0   # last evaluation whose result held this alert
    keep_firing_since_ms: int = 0  # first evaluation it no longer held (keep_firing_for)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.labels.items())).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Event:
    """A state change worth telling someone about: ``firing`` or ``resolved``."""

    kind: str
    alert: Alert
    at_ms: int


@dataclass
class _RuleState:
    alerts: dict[str, Alert] = field(default_factory=dict)  # by label-set fingerprint


class RuleEngine:
    """Evaluates groups against a store and tracks every alert's state."""

    def __init__(self, groups: Sequence[RuleGroup], store: Queryable,
                 external_labels: Mapping[str, str] | None = None) -> None:
        self.groups = list(groups)
        self.store = store
        self.evaluator = Evaluator(store)
        self.external = dict(external_labels or {})
        self.states: dict[str, _RuleState] = {}
        self.last_error: dict[str, str] = {}
        seen: dict[str, LogFilter] = {}
        for g in self.groups:
            for r in g.rules:
                for lf in log_filters(r.expr):
                    seen[lf.series_name] = lf
        self.log_filters = list(seen.values())

    def feed_logs(self, keys: Sequence[tuple[tuple[str, str], ...]], ts: Sequence[int],
                  lines: Sequence[bytes]) -> int:
        """Count log lines for the log rules: each line a rule's filter takes becomes a sample
        of that filter's series. Returns the lines taken."""
        add = getattr(self.store, "add", None)
        if not self.log_filters or add is None:
            return 0
        taken = 0
        streams: dict[tuple[tuple[str, str], ...], list[LogFilter]] = {}
        for key, t, raw in zip(keys, ts, lines, strict=True):
            fs = streams.get(key)
            if fs is None:
                labels = dict(key)
                fs = streams[key] = [lf for lf in self.log_filters if lf.matches_stream(labels)]
            if not fs:
                continue
            line = raw.decode("utf-8", "replace")
            for lf in fs:
                if lf.matches_line(line):
                    add(tuple(sorted((*key, (NAME_LABEL, lf.series_name)))), t, 1.0)
                    taken += 1
        return taken

    def evaluate(self, group: RuleGroup, t_ms: int) -> list[Event]:
        """Evaluate every rule of ``group`` at ``t_ms``; returns firing/resolved events."""
        events: list[Event] = []
        for rule in group.rules:
            try:
                res = self.evaluator.instant(rule.expr, t_ms)
            except PromQLError as exc:
                self.last_error[_rule_id(group, rule)] = str(exc)
                continue
            self.last_error.pop(_rule_id(group, rule), None)
            vec = [Sample((), res)] if isinstance(res, float) else res
            if isinstance(rule, RecordingRule):
                self._record(rule, vec, t_ms)
            else:
                events += self._step(rule, vec, t_ms)
        return events

    def _record(self, rule: RecordingRule, vec: list[Sample], t_ms: int) -> None:
        add = getattr(self.store, "add", None)
        if add is None:
            return
        for s in vec:
            labels = {k: v for k, v in s.labels if k != NAME_LABEL}
            labels.update(dict(rule.labels))
            labels[NAME_LABEL] = rule.record
            add(tuple(sorted(labels.items())), t_ms, s.value)

    def _step(self, rule: AlertingRule, vec: list[Sample], t: int) -> list[Event]:
        st = self.states.setdefault(rule.key, _RuleState())
        events: list[Event] = []
        seen: set[str] = set()
        for s in vec:
            base = {k: v for k, v in s.labels if k != NAME_LABEL}
            labels = dict(base)
            for k, tpl in rule.labels:
                labels[k] = tpl.render(base, s.value, self.external)
            labels["alertname"] = rule.name
            ann = {k: tpl.render(base, s.value, self.external) for k, tpl in rule.annotations}
            probe = Alert(rule.name, labels, ann, "pending", t, s.value)
            fp = probe.fingerprint
            if fp in seen:
                continue  # two series rendered into one label set: Prometheus errors; keep one
            seen.add(fp)
            a = st.alerts.get(fp)
            if a is None or a.state == "resolved":
                a = st.alerts[fp] = probe
            a.value, a.annotations, a.last_seen_ms = s.value, ann, t
            a.keep_firing_since_ms = 0
            if a.state == "pending" and t - a.active_at_ms >= rule.for_ms:
                a.state, a.fired_at_ms = "firing", t
                events.append(Event("firing", a, t))
        for fp, a in list(st.alerts.items()):
            if fp in seen:
                continue
            if a.state == "pending":
                del st.alerts[fp]
            elif a.state == "firing":
                if rule.keep_firing_for_ms:
                    if not a.keep_firing_since_ms:
                        a.keep_firing_since_ms = t
                    if t - a.keep_firing_since_ms < rule.keep_firing_for_ms:
                        continue
                a.state, a.resolved_at_ms = "resolved", t
                events.append(Event("resolved", a, t))
            elif t - a.resolved_at_ms >= RESOLVED_RETENTION_MS:
                del st.alerts[fp]
        return events

    def active(self) -> list[Alert]:
        """Pending and firing alerts."""
        return [a for st in self.states.values() for a in st.alerts.values()
                if a.state in ("pending", "firing")]

    def resolved(self) -> list[Alert]:
        """Alerts resolved within the last ``RESOLVED_RETENTION_MS``."""
        return [a for st in self.states.values() for a in st.alerts.values()
                if a.state == "resolved"]

    # -- persistence ------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {key: [a.to_dict() for a in st.alerts.values()]
                for key, st in self.states.items() if st.alerts}

    def load_state(self, doc: Mapping[str, Any]) -> None:
        """Restore alerts of rules that still exist (a changed rule starts afresh)."""
        keys = {r.key for g in self.groups for r in g.rules if isinstance(r, AlertingRule)}
        for key, alerts in doc.items():
            if key not in keys:
                continue
            st = self.states.setdefault(key, _RuleState())
            for d in alerts:
                a = Alert(**d)
                st.alerts[a.fingerprint] = a


def _rule_id(group: RuleGroup, rule: AlertingRule | RecordingRule) -> str:
    return f"{group.name}/{rule.name if isinstance(rule, AlertingRule) else rule.record}"
