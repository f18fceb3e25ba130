"""The right to deletion: ``fleet-central devices delete --org ORG DEVICE`` removes one device's
data from every backend it reached, reports per backend what went, and is audit-logged.

- the state store (PostgreSQL or the embedded SQLite store): the device's registry row, status
  and heartbeat history, samples and log lines kept there, alert events, and the definitions
  of its series (their labels), in one transaction;
- VictoriaMetrics: ``/api/v1/admin/tsdb/delete_series`` for ``{org="ORG",device="DEVICE"}``
  (single node; a cluster URL deletes through vmselect's ``/delete/<account>/...``);
- Loki: a delete request for ``{org="ORG",device="DEVICE"}`` in the organisation's tenant
  (Loki's compactor must have deletion enabled; it removes the lines in the background);
- ClickHouse: ``ALTER TABLE ... DELETE`` (a mutation, applied in the background) on the rollup
  and alert tables;
- Valkey: the device's online key, its last-seen field and its latest values.

Running it again deletes nothing more and says so: it is idempotent. A backend that fails is
reported (the others still run); running it again finishes the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditEntry, log_entry
from .errors import SinkRejected, SinkUnavailable
from .sinks.clickhouse import ClickHouseSink
from .sinks.http import request
from .sinks.loki import LokiSink
from .sinks.valkey import ValkeySink
from .sinks.victoriametrics import VictoriaMetricsSink

CH_TABLES = ("metric_rollups_1m", "edge_rollups", "alert_history")


@dataclass
class Outcome:
    backend: str
    deleted: dict[str, int] = field(default_factory=dict)
    note: str = ""
    error: str = ""

    def line(self) -> str:
        what = ", ".join(f"{k} {v:,}" for k, v in self.deleted.items()) or "nothing"
        if self.error:
            return f"{self.backend:<17} FAILED: {self.error}"
        return f"{self.backend:<17} {what}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "deleted": self.deleted, "note": self.note,
                "error": self.error}


def selector(org: str, device: str) -> str:
    """A PromQL / LogQL stream selector for the device (label values escaped)."""
    def q(v: str) -> str:
        return json.dumps(v)  # backslashes and quotes escaped as both languages want

    return f"{{org={q(org)},device={q(device)}}}"


async def victoria_metrics(sink: VictoriaMetricsSink, org: str, device: str) -> Outcome:
    out = Outcome(sink.name)
    match = selector(org, device)
    base = sink.root
    if "/insert/" in sink.url:  # a cluster: vmselect serves reads and deletes per account
        account = sink.url.split("/insert/", 1)[1].split("/", 1)[0]
        read = f"{base}/select/{account}/prometheus"
        delete = f"{base}/delete/{account}/prometheus"
    else:
        read = delete = base
    r = await request(sink.client, sink.name, "GET", f"{read}/api/v1/series",
                      params={"match[]": match, "start": "0"}, retry_after_s=1)
    out.deleted["series"] = len(r.json().get("data", []))
    await request(sink.client, sink.name, "POST", f"{delete}/api/v1/admin/tsdb/delete_series",
                  params={"match[]": match}, retry_after_s=1)
    return out


async def loki(sink: LokiSink, org: str, device: str) -> Outcome:
    out = Outcome(sink.name)
    params = {"query": selector(org, device), "start": "2000-01-01T00:00:00Z",
              "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))}
    try:
        await request(sink.client, sink.name, "POST", f"{sink.root}/loki/api/v1/delete",
                      params=params, headers={"X-Scope-OrgID": org}, retry_after_s=1,
                      ok=(200, 204))
    except (SinkUnavailable, SinkRejected) as exc:
        if "HTTP 404" in str(exc) or "not enabled" in str(exc).lower():
            raise SinkRejected(sink.name, f"{_why(exc)} (Loki needs deletion enabled: compactor "
                               "retention_enabled and delete_request_store, and "
                               "limits_config.deletion_mode: filter-and-delete; see the "
                               "README)") from None
        raise
    out.deleted["delete requests"] = 1
    out.note = "Loki's compactor removes the lines in the background"
    return out


def _why(exc: SinkUnavailable | SinkRejected) -> str:
    """The backend's answer, without the "refused the batch" of the write path."""
    return getattr(exc, "reason", None) or str(exc)


def _ch_string(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def clickhouse(sink: ClickHouseSink, org: str, device: str) -> Outcome:
    out = Outcome(sink.name, note="ClickHouse applies the mutations in the background")
    where = f"org = {_ch_string(org)} AND device = {_ch_string(device)}"
    for table in CH_TABLES:
        n = int((await sink.query(f"SELECT count() FROM {sink.db}.{table} WHERE {where}")
                 ).strip() or 0)
        out.deleted[table] = n
        if n:
            await sink.query(f"ALTER TABLE {sink.db}.{table} DELETE WHERE {where}")
    return out


async def valkey(sink: ValkeySink, org: str, device: str) -> Outcome:
    out = Outcome(sink.name)
    out.deleted["keys and fields"] = await sink.delete_device(org, device)
    return out


async def delete_everywhere(state: Any, sinks: list[Any], org: str, device: str,
                            actor: str) -> list[Outcome]:
    """Delete ``device`` of ``org`` from the state store and every sink; audit it."""
    outcomes: list[Outcome] = []
    try:
        counts = await state.delete_device(org, device)
        outcomes.append(Outcome(state.name, counts))
    except (SinkUnavailable, SinkRejected, OSError) as exc:
        outcomes.append(Outcome(state.name, error=_why(exc) if not isinstance(exc, OSError)
                                else str(exc)))
    steps: dict[type, Callable[[Any, str, str], Awaitable[Outcome]]] = {
        VictoriaMetricsSink: victoria_metrics, LokiSink: loki, ClickHouseSink: clickhouse,
        ValkeySink: valkey}
    for sink in sinks:
        step = next((fn for kind, fn in steps.items() if isinstance(sink, kind)), None)
        if step is None:
            continue
        try:
            outcomes.append(await step(sink, org, device))
        except (SinkUnavailable, SinkRejected) as exc:
            outcomes.append(Outcome(sink.name, error=_why(exc)))
    entry = AuditEntry(int(time.time() * 1000), "device.delete", actor, org,
                       detail={"device": device, "backends": [o.to_json() for o in outcomes]})
    log_entry(entry)
    await state.write_audit([entry])
    return outcomes
