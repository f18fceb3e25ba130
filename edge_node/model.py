"""The few types the edge node's parts share.

Ingest parsers turn device requests into an :class:`IngestBatch`: columns of rows whose series
are identified by a :data:`SeriesKey` (sorted label pairs, the metric name under ``__name__``).
The buffer interns those keys into small integer series ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SeriesKey = tuple[tuple[str, str], ...]

NAME_LABEL = "__name__"
DEVICE_LABEL = "device"
HEARTBEAT_SERIES = "fleet_heartbeat"


def series_key(labels: dict[str, str]) -> SeriesKey:
    """The canonical, hashable identity of a label set."""
    return tuple(sorted(labels.items()))


@dataclass
class IngestBatch:
    """Everything one device request carries, validated, ready for the buffer.

    ``metrics`` rows are (series key, ts ms, value); ``logs`` rows (stream key, ts ms, line);
    ``heartbeats`` rows (device series key, ts ms).
    """

    metric_keys: list[SeriesKey] = field(default_factory=list)
    metric_ts: list[int] = field(default_factory=list)
    metric_values: list[float] = field(default_factory=list)
    log_keys: list[SeriesKey] = field(default_factory=list)
    log_ts: list[int] = field(default_factory=list)
    log_lines: list[bytes] = field(default_factory=list)
    hb_keys: list[SeriesKey] = field(default_factory=list)
    hb_ts: list[int] = field(default_factory=list)
    # alert events of the node's local alerting: (alert label set, ts ms, event JSON)
    alert_keys: list[SeriesKey] = field(default_factory=list)
    alert_ts: list[int] = field(default_factory=list)
    alert_lines: list[bytes] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return len(self.metric_values)

    @property
    def n_logs(self) -> int:
        return len(self.log_lines)

    @property
    def n_heartbeats(self) -> int:
        return len(self.hb_ts)

    @property
    def n_alerts(self) -> int:
        return len(self.alert_lines)

    def __bool__(self) -> bool:
        return bool(self.metric_values or self.log_lines or self.hb_ts or self.alert_lines)
