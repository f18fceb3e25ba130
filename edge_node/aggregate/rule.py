"""What a rule is: its schema, the validation of one written by hand, and its output names.

:func:`parse_rules` turns the list a rules file holds (vmagent's stream-aggregation format) into
validated :class:`Rule` values; every error is a :class:`~edge_node.errors.RuleError` naming the
rule and field (``rules[1].outputs``). A rule's outputs are named like vmagent's::

    <metric>:<interval>[_by_<l1>_<l2>|_without_<l1>_<l2>]_<output>

and :func:`edge_node.rollup_names.split_output_name` takes such a name apart again (central's
sinks use it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..durations import parse_duration
from ..errors import RuleError, SelectorError
from ..model import NAME_LABEL, SeriesKey
from ..rollup_names import OUTPUTS
from ..selector import Selector, parse_selector
from .sketch import DEFAULT_RELATIVE_ERROR

DEFAULT_GRACE_MS = 10_000
_RULE_KEYS = {"name", "match", "interval", "staleness", "staleness_interval", "grace", "by",
              "without", "outputs", "keep_raw", "quantile_error"}
_VMAGENT_ONLY = {"dedup_interval", "output_relabel_configs", "input_relabel_configs",
                 "flush_on_shutdown", "ignore_old_samples", "ignore_first_intervals",
                 "keep_metric_names", "drop_input_labels", "no_align_flush_to_interval",
                 "enable_windows", "ignore_first_sample_interval"}
#: the layout of a rule's saved state; part of every fingerprint, so a new layout starts afresh
STATE_VERSION = 1


@dataclass(frozen=True)
class Rule:
    """One validated aggregation rule."""

    match: tuple[Selector, ...]
    interval: str
    interval_ms: int
    staleness_ms: int
    grace_ms: int
    by: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    quantiles: tuple[float, ...] = ()
    keep_raw: bool = True
    quantile_error: float = DEFAULT_RELATIVE_ERROR
    name: str = ""

    @property
    def suffix(self) -> str:
        """The part of output names between ``<metric>:`` and ``_<output>``."""
        s = self.interval
        if self.by:
            s += "_by_" + "_".join(self.by)
        if self.without:
            s += "_without_" + "_".join(self.without)
        return s

    @property
    def fingerprint(self) -> str:
        """Identity of everything that shapes this rule's state (not ``keep_raw``/``name``)."""
        doc = {"match": [str(s) for s in self.match], "interval": self.interval_ms,
               "staleness": self.staleness_ms, "grace": self.grace_ms, "by": self.by,
               "without": self.without, "outputs": self.outputs, "q": self.quantiles,
               "qe": self.quantile_error, "v": STATE_VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(s.matches(labels) for s in self.match)

    def group_key(self, key: SeriesKey) -> SeriesKey:
        """The labels the outputs keep from input series ``key`` (always with the name)."""
        if self.by:
            keep = set(self.by) | {NAME_LABEL}
            return tuple(kv for kv in key if kv[0] in keep)
        drop = set(self.without)
        return tuple(kv for kv in key if kv[0] not in drop)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": [str(s) for s in self.match],
                               "interval": self.interval, "outputs": list(self.outputs_text()),
                               "keep_raw": self.keep_raw, "grace_s": self.grace_ms / 1000,
                               "staleness_s": self.staleness_ms / 1000}
        if self.by:
            out["by"] = list(self.by)
        if self.without:
            out["without"] = list(self.without)
        return out

    def outputs_text(self) -> Iterable[str]:
        for o in self.outputs:
            if o == "quantiles":
                yield "quantiles(" + ", ".join(f"{q:g}" for q in self.quantiles) + ")"
            else:
                yield o


_QUANTILES = re.compile(r"quantiles\((.*)\)")


def parse_rule(raw: Any, where: str) -> Rule:
    """Validate one rule (a mapping from YAML or TOML); errors name ``where`` and the field."""
    if not isinstance(raw, Mapping):
        raise RuleError(where, "must be a mapping with match, interval and outputs")
    for k in raw:
        if k in _VMAGENT_ONLY:
            raise RuleError(f"{where}.{k}", "is a vmagent option fleet-edge does not support")
        if k not in _RULE_KEYS:
            raise RuleError(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    for req in ("match", "interval", "outputs"):
        if req not in raw:
            raise RuleError(f"{where}.{req}", "is required")
    match_raw = raw["match"]
    texts = [match_raw] if isinstance(match_raw, str) else match_raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RuleError(f"{where}.match", "must be a series selector or a list of them")
    try:
        match = tuple(parse_selector(t) for t in texts)
    except SelectorError as exc:
        raise RuleError(f"{where}.match", str(exc)) from None

    def dur(key: str, default: int | None) -> int:
        if key not in raw:
            assert default is not None
            return default
        try:
            return parse_duration(raw[key])
        except ValueError as exc:
            raise RuleError(f"{where}.{key}", str(exc)) from None

    interval_ms = dur("interval", None)
    if interval_ms < 1000:
        raise RuleError(f"{where}.interval", "must be at least 1s")
    interval = str(raw["interval"]).strip()
    if "staleness" in raw and "staleness_interval" in raw:
        raise RuleError(f"{where}.staleness", "give staleness or staleness_interval, not both")
    staleness_ms = dur("staleness_interval" if "staleness_interval" in raw else "staleness",
                       2 * interval_ms)
    if staleness_ms < interval_ms:
        raise RuleError(f"{where}.staleness", "must be at least the interval")
    grace_ms = dur("grace", min(DEFAULT_GRACE_MS, interval_ms))

    def labels(key: str) -> tuple[str, ...]:
        v = raw.get(key, [])
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(
                isinstance(x, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", x) for x in v):
            raise RuleError(f"{where}.{key}", "must be a list of label names")
        return tuple(sorted(set(v) - {NAME_LABEL}))

    by, without = labels("by"), labels("without")
    if by and without:
        raise RuleError(f"{where}.by", "give by or without, not both")
    outs_raw = raw["outputs"]
    if isinstance(outs_raw, str) or not isinstance(outs_raw, list) or not outs_raw:
        raise RuleError(f"{where}.outputs", "must be a non-empty list, e.g. [avg, max]")
    outputs: list[str] = []
    quantiles: list[float] = []
    for o in outs_raw:
        text = str(o).strip().replace(" ", "")
        qm = _QUANTILES.fullmatch(text)
        if qm:
            try:
                qs = [float(x) for x in qm.group(1).split(",") if x]
            except ValueError:
                qs = []
            if not qs or not all(0 <= q <= 1 for q in qs):
                raise RuleError(f"{where}.outputs", f"{o!r}: give phis between 0 and 1, e.g. "
                                                    "quantiles(0.5, 0.9, 0.99)")
            quantiles += qs
            text = "quantiles"
        elif text not in OUTPUTS:
            raise RuleError(f"{where}.outputs", f"unknown output {o!r} (known: "
                                                f"{', '.join(OUTPUTS)}(phi, ...))")
        if text not in outputs:
            outputs.append(text)
    keep_raw = raw.get("keep_raw", True)
    if not isinstance(keep_raw, bool):
        raise RuleError(f"{where}.keep_raw", "must be true or false")
    qe = raw.get("quantile_error", DEFAULT_RELATIVE_ERROR)
    if isinstance(qe, bool) or not isinstance(qe, int | float) or not 0.0001 <= qe <= 0.1:
        raise RuleError(f"{where}.quantile_error", "must be a number between 0.0001 and 0.1")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise RuleError(f"{where}.name", "must be a string")
    return Rule(match=match, interval=interval, interval_ms=interval_ms,
                staleness_ms=staleness_ms, grace_ms=grace_ms, by=by, without=without,
                outputs=tuple(outputs), quantiles=tuple(sorted(set(quantiles))),
                keep_raw=keep_raw, quantile_error=float(qe), name=name)


def parse_rules(raw: Any, where: str = "rules") -> list[Rule]:
    """A list of rules (vmagent's stream aggregation file is such a list)."""
    if isinstance(raw, Mapping) and set(raw) == {"rules"}:
        raw = raw["rules"]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RuleError(where, "must be a list of rules")
    rules = [parse_rule(r, f"{where}[{i}]") for i, r in enumerate(raw)]
    seen: set[str] = set()
    for i, r in enumerate(rules):
        name = r.name
        if not name:  # default: the selectors and the output suffix, numbered if repeated
            base = f"{'|'.join(str(s) for s in r.match)}:{r.suffix}"
            name, n = base, 1
            while name in seen:
                n += 1
                name = f"{base}#{n}"
            rules[i] = dataclasses.replace(r, name=name)
        elif name in seen:
            raise RuleError(f"{where}[{i}].name", f"duplicate rule name {name!r}: give each "
                                                  "rule a distinct name")
        seen.add(name)
    return rules
