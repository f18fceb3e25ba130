"""Alert events from edge nodes (sans-IO): the rows of an ``alerts`` batch, parsed once for
every backend that stores them (PostgreSQL ``alert_events``, ClickHouse ``alert_history``, the
embedded SQLite store's ``alert_events``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from edge_node.durations import parse_rfc3339_ms

from .model import Job


@dataclass(frozen=True)
class AlertEvent:
    org: str
    node: str
    site: str
    device: str
    alertname: str
    severity: str
    fingerprint: str
    status: str            # firing | resolved
    starts_ms: int
    ends_ms: int           # 0 while firing
    labels: dict[str, str]
    annotations: dict[str, str]


def alert_events(job: Job) -> tuple[list[AlertEvent], int]:
    """The events of an ``alerts`` batch, and how many lines were not valid events."""
    assert job.lines is not None
    out: list[AlertEvent] = []
    bad = 0
    for sid, a, b in job.series():
        trusted = job.labels[sid]
        for raw in job.lines[a:b]:
            try:
                d = json.loads(raw)
                labels = {str(k): str(v) for k, v in d["labels"].items()}
                ann = {str(k): str(v) for k, v in d.get("annotations", {}).items()}
                status = str(d["status"])
                starts = parse_rfc3339_ms(str(d["startsAt"]))
                ends = parse_rfc3339_ms(str(d.get("endsAt", "")))
                fp = str(d["fingerprint"])
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
                continue
            if status not in ("firing", "resolved"):
                bad += 1
                continue
            out.append(AlertEvent(
                org=job.node.org, node=job.node.node_id,
                site=trusted.get("site", labels.get("site", "")),
                device=labels.get("device", ""), alertname=labels.get("alertname", ""),
                severity=labels.get("severity", ""), fingerprint=fp, status=status,
                starts_ms=starts, ends_ms=ends, labels=labels, annotations=ann))
    return out, bad
