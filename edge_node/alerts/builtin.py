"""The built-in alerting rules of the fleetd data architecture, as one PromQL rule group.

They read the node's own series (``fleet_edge_*``, which the service adds at each evaluation)
and :data:`LAST_SEEN`, every known device's last-seen time; their thresholds come from the
``[alerts]`` settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .rules import RuleGroup, parse_rule_groups

if TYPE_CHECKING:
    from ..config import AlertsConfig

#: the series of each known device's last-seen time (what DeviceOffline reads)
LAST_SEEN = "fleet_edge_device_last_seen_timestamp_seconds"


def builtin_group(cfg: AlertsConfig, clock_off_s: float = 300.0) -> RuleGroup:
    """The alerting rules of the fleetd data architecture, as PromQL over the node's own
    series (``fleet_edge_*``) and its devices' last-seen times; ``clock_off_s`` is how far a
    device's clock may be off before ``DeviceClockSkew`` (``clock.max_ahead_s``)."""
    drop = 1 - cfg.ingest_drop_ratio
    doc = {"groups": [{"name": "fleet-edge-builtin", "interval": f"{int(cfg.builtin_interval_s)}s",
                       "rules": [
        {"alert": "DeviceOffline",
         "expr": f"time() - {LAST_SEEN} > "
                 f"{cfg.device_offline_after_s:g}",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "device {{ $labels.device }} has sent nothing for "
                                    "{{ $value | humanizeDuration }}"}},
        {"alert": "IngestionRateDrop",
         "expr": f'sum(rate(fleet_edge_committed_total{{kind="metrics"}}[10m])) < {drop:g} * '
                 f'sum(rate(fleet_edge_committed_total{{kind="metrics"}}[10m] offset 10m))',
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "samples ingested dropped more than "
                                    f"{cfg.ingest_drop_ratio:.0%} against the 10 minutes "
                                    "before"}},
        {"alert": "StorageAlmostFull",
         "expr": f"fleet_edge_buffer_bytes / fleet_edge_buffer_disk_budget_bytes > "
                 f"{cfg.storage_used_ratio:g} or 1 - fleet_edge_data_disk_free_bytes / "
                 f"fleet_edge_data_disk_total_bytes > {cfg.storage_used_ratio:g}",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "storage {{ $value | humanizePercentage }} used"}},
        {"alert": "BufferDiskFull",
         "expr": "fleet_edge_buffer_disk_full > 0",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "the data disk is full: devices get 503 until forwarding "
                                    "to central frees space"}},
        {"alert": "DeviceClockSkew",
         "expr": f"abs(fleet_edge_device_clock_offset_seconds) > {clock_off_s:g}",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "device {{ $labels.device }}'s clock is off by "
                                    "{{ $value | humanizeDuration }}"}},
        {"alert": "ForwardFailures",
         "expr": f"sum(rate(fleet_edge_forward_errors_total[10m])) / "
                 f"sum(rate(fleet_edge_forward_attempts_total[10m])) > "
                 f"{cfg.forward_failure_ratio:g}",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $value | humanizePercentage }} of the sends to "
                                    "central fail"}},
        {"alert": "ForwardBacklogOld",
         "expr": f"fleet_edge_backlog_age_seconds > {cfg.backlog_age_s:g}",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "the oldest unforwarded data is "
                                    "{{ $value | humanizeDuration }} old"}},
    ]}]}
    return parse_rule_groups(doc, "built-in")[0]
