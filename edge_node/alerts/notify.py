"""Notifications (sans-IO): hook configuration, grouping, and the payload formats.

A hooks file (YAML) says how alerts leave the box::

    route:
      group_by: [alertname, device]   # one notification per group (default: per alert)
      group_wait: 30s                 # a new group waits this long for more alerts (default 0)
      group_interval: 5m              # changes to a notified group go out this often (default 0)
      repeat_interval: 4h             # re-send for alerts still firing
    hooks:
      - name: siren
        type: exec                    # runs a local command, alert JSON on stdin
        command: ["/usr/local/bin/siren", "--loud"]
        timeout: 30s
      - name: ops
        type: webhook                 # POST in Alertmanager's webhook format (version 4)
        url: http://10.0.0.5:8080/alerts
      - name: am
        type: alertmanager            # push to an Alertmanager's /api/v2/alerts
        url: http://10.0.0.6:9093
      - name: journal
        type: log                     # append JSON lines to a file (and the node's log)
        path: /var/lib/fleet-edge/alerts.jsonl

Every notification goes to every hook through the durable outbox.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import format_rfc3339_ms
from ..errors import HooksError
from .rules import RESOLVED_RETENTION_MS, Alert

HOOK_TYPES = ("exec", "webhook", "alertmanager", "log")
_HOOK_KEYS = {"exec": {"name", "type", "command", "timeout"},
              "webhook": {"name", "type", "url", "timeout"},
              "alertmanager": {"name", "type", "url", "timeout"},
              "log": {"name", "type", "path"}}


@dataclass(frozen=True)
class Hook:
    name: str
    type: str
    command: tuple[str, ...] = ()
    url: str = ""
    path: str = ""
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Route:
    """Alertmanager's route timers, checked at each rule-group evaluation (so they act at the
    granularity of the evaluation interval). Zero waits: notify at the evaluation that saw
    the change."""

    group_by: tuple[str, ...] = ()      # empty: every alert is its own group
    repeat_interval_ms: int = 4 * 3600_000
    group_wait_ms: int = 0
    group_interval_ms: int = 0


@dataclass(frozen=True)
class HooksConfig:
    route: Route = field(default_factory=Route)
    hooks: tuple[Hook, ...] = ()


def parse_hooks(data: Any, source: str = "") -> HooksConfig:
    from .promql import parse_duration_ms

    pre = f"{source}: " if source else ""
    problems: list[str] = []
    if data is None:
        return HooksConfig()
    if not isinstance(data, Mapping):
        raise HooksError([f"{pre}must be a mapping with route and hooks"])
    for k in set(data) - {"route", "hooks"}:
        problems.append(f"{pre}{k}: unknown key (known: hooks, route)")
    r = data.get("route") or {}
    route = Route()
    if not isinstance(r, Mapping):
        problems.append(f"{pre}route: must be a mapping")
    else:
        known = ("group_by", "group_wait", "group_interval", "repeat_interval")
        for k in set(r) - set(known):
            problems.append(f"{pre}route.{k}: unknown key (known: {', '.join(known)})")
        gb = r.get("group_by", [])
        if not isinstance(gb, list) or not all(isinstance(x, str) for x in gb):
            problems.append(f"{pre}route.group_by: must be a list of label names")
            gb = []
        rep = route.repeat_interval_ms
        if "repeat_interval" in r:
            rep = parse_duration_ms(str(r["repeat_interval"]))
            if rep <= 0:
                problems.append(f"{pre}route.repeat_interval: {r['repeat_interval']!r} is not a "
                                "duration (e.g. 4h)")
        waits = {}
        # a group's resolved alerts are taken from the rules' state, which keeps them 15 min
        for key, most in (("group_wait", 3600_000), ("group_interval", RESOLVED_RETENTION_MS)):
            waits[key] = 0
            if key in r:
                text = str(r[key])
                ms = parse_duration_ms(text)
                if ms == 0 and not re.fullmatch(r"0+(ms|[smh])?", text):
                    problems.append(f"{pre}route.{key}: {r[key]!r} is not a duration (e.g. 30s)")
                elif ms > most:
                    problems.append(f"{pre}route.{key}: at most {most // 60_000}m")
                else:
                    waits[key] = ms
        route = Route(tuple(gb), rep, waits["group_wait"], waits["group_interval"])
    hooks: list[Hook] = []
    names: set[str] = set()
    raw = data.get("hooks") or []
    if not isinstance(raw, list):
        problems.append(f"{pre}hooks: must be a list")
        raw = []
    for i, h in enumerate(raw):
        w = f"{pre}hooks[{i}]"
        if not isinstance(h, Mapping):
            problems.append(f"{w}: must be a mapping")
            continue
        kind = h.get("type")
        if kind not in HOOK_TYPES:
            problems.append(f"{w}.type: must be one of {', '.join(HOOK_TYPES)}")
            continue
        for k in set(h) - _HOOK_KEYS[kind]:
            article = "an" if kind[0] in "aeiou" else "a"
            problems.append(f"{w}.{k}: unknown key for {article} {kind} hook (known: "
                            f"{', '.join(sorted(_HOOK_KEYS[kind]))})")
        name = str(h.get("name") or f"{kind}-{i}")
        if name in names:
            problems.append(f"{w}.name: duplicate hook name {name!r}")
        names.add(name)
        timeout = 30.0
        if "timeout" in h:
            timeout = parse_duration_ms(str(h["timeout"])) / 1000
            if timeout <= 0:
                problems.append(f"{w}.timeout: {h['timeout']!r} is not a duration")
        if kind == "exec":
            cmd = h.get("command")
            if isinstance(cmd, str):
                cmd = [cmd]
            if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
                problems.append(f"{w}.command: must be a command (a list: program and "
                                "arguments)")
                continue
            hooks.append(Hook(name, kind, command=tuple(cmd), timeout_s=timeout))
        elif kind in ("webhook", "alertmanager"):
            url = str(h.get("url") or "")
            if not url.startswith(("http://", "https://")):
                problems.append(f"{w}.url: must be an http:// or https:// URL")
                continue
            hooks.append(Hook(name, kind, url=url.rstrip("/") if kind == "alertmanager"
                              else url, timeout_s=timeout))
        else:
            path = str(h.get("path") or "")
            if not path:
                problems.append(f"{w}.path: is required")
                continue
            hooks.append(Hook(name, kind, path=path))
    if problems:
        raise HooksError(problems)
    return HooksConfig(route, tuple(hooks))


def load_hooks_file(path: str | Path) -> HooksConfig:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HooksError([f"{p}: cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise HooksError([f"{p}: not valid YAML: {exc}"]) from None
    return parse_hooks(data, str(p))


# -- grouping and payloads --------------------------------------------------------------------

def group_key(alert: Alert, route: Route) -> str:
    if route.group_by:
        labels = {k: alert.labels.get(k, "") for k in route.group_by}
    else:
        labels = dict(alert.labels)
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def alert_doc(a: Alert, generator_url: str = "") -> dict[str, Any]:
    """One alert as Alertmanager's webhook payload lists it."""
    status = "resolved" if a.state == "resolved" else "firing"
    return {"status": status, "labels": dict(a.labels), "annotations": dict(a.annotations),
            "startsAt": format_rfc3339_ms(a.fired_at_ms or a.active_at_ms),
            "endsAt": format_rfc3339_ms(a.resolved_at_ms) if status == "resolved" else
            "0001-01-01T00:00:00Z",
            "generatorURL": generator_url, "fingerprint": a.fingerprint,
            "value": a.value}


def webhook_payload(gkey: str, alerts: Sequence[Alert], receiver: str,
                    external_url: str = "") -> dict[str, Any]:
    """Alertmanager's webhook payload, version 4."""
    docs = [alert_doc(a, external_url) for a in alerts]
    status = "firing" if any(d["status"] == "firing" for d in docs) else "resolved"

    def common(field_: str) -> dict[str, str]:
        if not docs:
            return {}
        first = docs[0][field_]
        return {k: v for k, v in first.items() if all(d[field_].get(k) == v for d in docs)}

    for d in docs:
        d.pop("value")
    return {"version": "4", "groupKey": gkey, "truncatedAlerts": 0, "status": status,
            "receiver": receiver, "groupLabels": json.loads(gkey),
            "commonLabels": common("labels"), "commonAnnotations": common("annotations"),
            "externalURL": external_url, "alerts": docs}


def alertmanager_alerts(alerts: Sequence[Alert], generator_url: str = "") -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts`` (postableAlerts)."""
    out = []
    for a in alerts:
        d: dict[str, Any] = {"labels": dict(a.labels), "annotations": dict(a.annotations),
                             "startsAt": format_rfc3339_ms(a.fired_at_ms or a.active_at_ms),
                             "generatorURL": generator_url}
        if a.state == "resolved":
            d["endsAt"] = format_rfc3339_ms(a.resolved_at_ms)
        out.append(d)
    return out


def dedup_key(hook: str, gkey: str, alerts: Sequence[Alert], repeat: int = 0) -> str:
    """Identity of one notification: the same alerts in the same states are sent once."""
    doc = [hook, gkey, repeat, sorted((a.fingerprint, a.state, a.fired_at_ms, a.resolved_at_ms)
                                      for a in alerts)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def exec_env(payload: Mapping[str, Any]) -> dict[str, str]:
    """Key fields for exec hooks, as environment variables."""
    first = (payload.get("alerts") or [{}])[0]
    labels = first.get("labels", {})
    env = {"FLEET_ALERT_STATUS": str(payload.get("status", "")),
           "FLEET_ALERT_NAME": str(labels.get("alertname", "")),
           "FLEET_ALERT_COUNT": str(len(payload.get("alerts") or [])),
           "FLEET_ALERT_GROUP": str(payload.get("groupKey", "")),
           "FLEET_ALERT_SUMMARY": str(first.get("annotations", {}).get("summary", ""))}
    for k in ("severity", "device", "site", "node", "instance"):
        if k in labels:
            env[f"FLEET_ALERT_{k.upper()}"] = str(labels[k])
    return env
