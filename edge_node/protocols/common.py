"""What every ingest protocol shares (sans-IO): label checks, limits, device identity.

:class:`LabelRules` are the metric-name and label checks of the ``[ingest]`` limits (name
syntax, name and value lengths), one copy for every protocol. A :class:`SeriesBuilder` (which
applies them) turns a protocol's (name, labels) into the buffer's
:data:`~edge_node.model.SeriesKey`, checking names and limits once per distinct label set
within a request, and giving every series a ``device`` label from the first of the configured
device-identity labels it carries (``ingest.device_labels``: ``device,device_id,host,instance``
by default), so heartbeats, last-seen and per-device limits work whatever the protocol. The
native API, whose device comes from its own field, applies the rules without the builder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..config import IngestConfig
from ..errors import BadRequest, PayloadTooLarge
from ..model import DEVICE_LABEL, NAME_LABEL, IngestBatch, SeriesKey

METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def sanitize_name(name: str) -> str:
    """A metric name made valid the way Prometheus exporters do: other characters become ``_``,
    and a leading digit gets a ``_`` in front."""
    out = _INVALID.sub("_", name)
    if not out or out[0].isdigit():
        out = "_" + out
    return out


def sanitize_label(name: str) -> str:
    return sanitize_name(name).replace(":", "_")


def text_lines(body: bytes) -> list[str]:
    """The lines of a UTF-8 text body (Prometheus text, Influx line protocol)."""
    try:
        return body.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc}", field="body") from None


def bounded(cache: dict[Any, Any], limit: int) -> dict[Any, Any]:
    """``cache``, emptied first if it has grown past ``limit`` entries."""
    if len(cache) > limit:
        cache.clear()
    return cache


def device_labels(cfg: IngestConfig) -> tuple[str, ...]:
    return tuple(x.strip() for x in cfg.device_labels.split(",") if x.strip())


class LabelRules:
    """The metric-name and label checks of the ``[ingest]`` limits, for every protocol."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg

    def name_problem(self, name: str) -> str | None:
        """What is wrong with metric name ``name`` (not a name, too long), or None."""
        if not METRIC_RE.match(name):
            return f"invalid metric name {name!r:.80}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        if len(name) > self.cfg.max_label_name_length:
            return f"metric name longer than {self.cfg.max_label_name_length} characters"
        return None

    def labels_problem(self, labels: Iterable[tuple[str, str]]) -> tuple[str, str, bool] | None:
        """The first bad label as (its name, what is wrong, whether its value is), or None:
        an invalid or reserved ``__name__`` name, a name longer than
        ``max_label_name_length``, a value longer than ``max_label_value_length``."""
        for k, v in labels:
            if not LABEL_RE.match(k) or k == NAME_LABEL:
                return k, (f"invalid label name {k!r:.80}: must match [a-zA-Z_][a-zA-Z0-9_]*"
                           + (" (__name__ is the metric name)" if k == NAME_LABEL else "")), False
            if len(k) > self.cfg.max_label_name_length:
                return k, (f"label name {k[:32]!r}... is longer than "
                           f"{self.cfg.max_label_name_length} characters"), False
            if len(v) > self.cfg.max_label_value_length:
                return k, (f"label {k!r} is longer than {self.cfg.max_label_value_length} "
                           "characters"), True
        return None


class SeriesBuilder(LabelRules):
    """Builds series keys for one request and enforces the per-request limits."""

    def __init__(self, cfg: IngestConfig, target: dict[str, str] | None = None) -> None:
        """``target``: labels of a scrape target (``job``, ``instance``, ...); they win over
        a sample's own label of the same name, which is kept as ``exported_<name>``."""
        super().__init__(cfg)
        self.target = target or {}
        self.identity = device_labels(cfg)
        self._keys: dict[tuple[str, tuple[tuple[str, str], ...]], SeriesKey] = {}

    def key(self, name: str, labels: tuple[tuple[str, str], ...], where: str) -> SeriesKey:
        """The series key of ``name{labels}``; raises naming ``where`` if anything is invalid."""
        cache_key = (name, labels)
        got = self._keys.get(cache_key)
        if got is not None:
            return got
        if problem := self.name_problem(name):
            raise BadRequest(problem, field=where)
        key = self._build({NAME_LABEL: name}, labels, where)
        self._keys[cache_key] = key
        return key

    def stream_key(self, labels: tuple[tuple[str, str], ...], where: str) -> SeriesKey:
        """The key of a log stream (no metric name) with ``labels``."""
        cache_key = ("", labels)
        got = self._keys.get(cache_key)
        if got is None:
            got = self._keys[cache_key] = self._build({}, labels, where)
        return got

    def _build(self, out: dict[str, str], labels: tuple[tuple[str, str], ...], where: str
               ) -> SeriesKey:
        if len(labels) > self.cfg.max_labels_per_series:
            raise BadRequest(f"{len(labels)} labels, more than the limit of "
                             f"{self.cfg.max_labels_per_series}", field=where)
        if problem := self.labels_problem(labels):
            raise BadRequest(problem[1], field=where)
        for k, v in labels:
            if k in self.target:
                k = "exported_" + k
            if k in out:
                raise BadRequest(f"label {k!r} appears twice", field=where)
            out[k] = v
        out.update(self.target)
        if DEVICE_LABEL not in out:
            for k in self.identity:
                if out.get(k):
                    out[DEVICE_LABEL] = out[k]
                    break
        return tuple(sorted(out.items()))

    def add(self, batch: IngestBatch, key: SeriesKey, ts_ms: int, value: float) -> None:
        if len(batch.metric_values) >= self.cfg.max_samples_per_request:
            raise PayloadTooLarge(f"more than {self.cfg.max_samples_per_request} samples in "
                                  "one request", field="body")
        batch.metric_keys.append(key)
        batch.metric_ts.append(ts_ms)
        batch.metric_values.append(value)

    def add_log(self, batch: IngestBatch, key: SeriesKey, ts_ms: int, line: bytes,
                where: str) -> None:
        if len(batch.log_lines) >= self.cfg.max_logs_per_request:
            raise PayloadTooLarge(f"more than {self.cfg.max_logs_per_request} log lines in "
                                  "one request", field="body")
        if len(line) > self.cfg.max_log_line_bytes:
            raise PayloadTooLarge(f"log line longer than {self.cfg.max_log_line_bytes} bytes",
                                  field=where)
        batch.log_keys.append(key)
        batch.log_ts.append(ts_ms)
        batch.log_lines.append(line)

    def finish(self, batch: IngestBatch) -> IngestBatch:
        if not batch:
            raise BadRequest("request carries no samples or log lines", field="body")
        return batch
