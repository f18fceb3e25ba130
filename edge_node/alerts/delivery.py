"""Sending one notification to one hook: a webhook, an Alertmanager, a command, a log file,
or central (as rows of the ``alerts`` data class, through the node's buffer).

:func:`send` returns what the receiver said (kept in the outbox) or raises; the caller, the
service's delivery loop, records the outcome and retries failures with backoff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from ..durations import parse_rfc3339_ms
from ..model import NAME_LABEL, IngestBatch
from ..runtime import Clock, Runner, clock_ms
from .notify import Hook, alertmanager_alerts, exec_env
from .rules import Alert

#: the hook that forwards alert events to central (added when the node forwards)
CENTRAL_HOOK = "central"

Forward = Callable[[IngestBatch], Awaitable[None]]


async def send(hook: Hook, payload: dict[str, Any], *, client: httpx.AsyncClient | None,
               forward: Forward | None, runner: Runner, clock: Clock) -> str:
    """Deliver ``payload`` (a webhook payload) to ``hook``.

    Args:
        client: for webhooks and Alertmanagers (None: a client for this one request).
        forward: commits a batch for central (the ``central`` hook).
        runner: where the log hook's blocking file append runs.
        clock: stamps the rows for central.

    Returns:
        A short description of the receiver's answer.

    Raises:
        Exception: any failure (HTTP status >= 300, a non-zero exit, a timeout ...).
    """
    if hook.type == "central":
        assert forward is not None
        batch = alert_batch(payload, clock_ms(clock))
        await forward(batch)
        return f"{batch.n_alerts} alert events committed for central"
    if hook.type == "exec":
        return await _exec(hook, payload)
    if hook.type == "log":
        line = json.dumps(payload, sort_keys=True)
        await runner(_append_line, hook.path, line)
        return "written"
    own = client or httpx.AsyncClient()
    try:
        if hook.type == "webhook":
            body: Any = payload
            url = hook.url
        else:
            body = alertmanager_alerts(_alerts_of(payload))
            url = hook.url + "/api/v2/alerts"
        with trio.fail_after(hook.timeout_s):
            resp = await own.post(url, json=body)
    finally:
        if client is None:
            await own.aclose()
    if resp.status_code >= 300:
        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    return f"HTTP {resp.status_code}"


async def _exec(hook: Hook, payload: dict[str, Any]) -> str:
    data = json.dumps(payload).encode()
    env = {**os.environ, **exec_env(payload)}
    with trio.fail_after(hook.timeout_s):
        proc = await trio.run_process(list(hook.command), stdin=data, capture_stdout=True,
                                      capture_stderr=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace')[-300:]}")
    return f"exit status 0: {proc.stdout.decode('utf-8', 'replace')[-300:]}"


def alert_batch(payload: dict[str, Any], now_ms: int) -> IngestBatch:
    """A notification's alerts as rows of the ``alerts`` data class: series = the alert's
    labels (named ``ALERTS``, as Prometheus names its alert series), line = the event."""
    b = IngestBatch()
    for d in payload.get("alerts", []):
        labels = {k: v for k, v in d["labels"].items() if k != NAME_LABEL}
        b.alert_keys.append(tuple(sorted({**labels, NAME_LABEL: "ALERTS"}.items())))
        b.alert_ts.append(now_ms)
        b.alert_lines.append(json.dumps(d, sort_keys=True).encode())
    return b


def _alerts_of(payload: dict[str, Any]) -> list[Alert]:
    out = []
    for d in payload.get("alerts", []):
        a = Alert(d["labels"].get("alertname", ""), d["labels"], d["annotations"],
                  "resolved" if d["status"] == "resolved" else "firing", 0, 0.0)
        a.fired_at_ms = parse_rfc3339_ms(d["startsAt"])
        a.resolved_at_ms = parse_rfc3339_ms(d.get("endsAt", ""))
        out.append(a)
    return out


def _append_line(path: str, line: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
