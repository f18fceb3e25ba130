"""The configuration's schema: one frozen dataclass per TOML table, and ``EdgeConfig`` holding
one of each. Every field has its default and, in its metadata, the check its value must pass
with the reason a failure gives; :mod:`.load` applies the checks while it builds the classes.
"""

from __future__ import annotations

import os
import re
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .environment import apply_env
from .load import build, cross_checks, load_aggregation_rules, read_toml


def _check(pred: typing.Callable[[Any], bool], why: str) -> dict[str, Any]:
    return {"check": (pred, why)}


@dataclass(frozen=True)
class CentralConfig:
    """Where and how the node forwards its data."""

    url: str = field(default="", metadata=_check(
        lambda v: re.match(r"^https?://[^/\s]+", v) is not None,
        "must be an http:// or https:// URL, e.g. https://central.example:9400"))
    api_key: str = field(default="", metadata=_check(bool, "must not be empty"))
    # https:// only: the CA file central's certificate is checked against (a private CA;
    # empty: the system trust store), a client certificate and its key (mutual TLS), and the
    # name to expect in central's certificate when the URL's host is not in it
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = field(default="", metadata=_check(
        lambda v: re.fullmatch(r"[A-Za-z0-9*][A-Za-z0-9.\-]{0,252}", v) is not None or v == "",
        "must be a host name, e.g. central.example"))
    timeout_s: float = field(default=30.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    backoff_initial_s: float = field(default=0.5, metadata=_check(lambda v: v > 0, "must be > 0"))
    backoff_max_s: float = field(default=60.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # Upper bound of one batch: segments (rolled and merged) are sized to fit in it. Central
    # accepts up to 64 MiB by default.
    max_batch_bytes: int = field(default=8 * 1024 * 1024,
                                 metadata=_check(lambda v: v >= 1024, "must be >= 1024"))
    # A cap on the bytes sent to central per second (metered cellular, satellite); 0: none
    max_bytes_per_s: float = field(default=0.0, metadata=_check(
        lambda v: v == 0 or v >= 1024, "must be 0 (no cap) or >= 1024"))
    # The share of that cap kept for live data; the backlog drains in the rest (and in what
    # live data leaves unused)
    live_share: float = field(default=0.25, metadata=_check(
        lambda v: 0 < v < 1, "must be strictly between 0 and 1"))
    # Segments made within this many seconds are live: while an older backlog drains, they
    # go out beside it, newest first
    live_window_s: float = field(default=60.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # Data older than its backend accepts is not sent (0: no limit): logs past Loki's
    # reject_old_samples_max_age (a week by default); metrics past VictoriaMetrics' retention
    logs_max_age_s: float = field(default=604800.0, metadata=_check(
        lambda v: v >= 0, "must be >= 0"))
    metrics_max_age_s: float = field(default=0.0, metadata=_check(
        lambda v: v >= 0, "must be >= 0"))
    # stream-aggregation rollups (ClickHouse keeps them for CLICKHOUSE_RETENTION_DAYS)
    rollups_max_age_s: float = field(default=0.0, metadata=_check(
        lambda v: v >= 0, "must be >= 0"))
    # ...and is dropped (counted in fleet_edge_expired_total) or kept as a dead letter
    # (listed by fleet-edge dead-letters, requeued or dropped from there)
    too_old: str = field(default="drop", metadata=_check(
        lambda v: v in ("drop", "keep"), "must be drop or keep"))


@dataclass(frozen=True)
class TLSConfig:
    """HTTPS on ``listen`` for devices, optionally with client certificates."""

    cert_file: str = ""       # PEM certificate (chain); with key_file, listen serves HTTPS
    key_file: str = ""
    client_ca_file: str = ""  # the CA that signs device certificates
    # off | optional (a device may present one) | required (the handshake refuses devices
    # without one); a verified certificate's common name (else its first DNS/URI name) is
    # the device: like a device token, it fills in and enforces the device label
    client_certs: str = field(default="off", metadata=_check(
        lambda v: v in ("off", "optional", "required"), "must be off, optional or required"))
    # a second, plain-HTTP listener for devices that cannot do TLS ("" none)
    plain_listen: str = field(default="", metadata=_check(
        lambda v: v == "" or _listen_ok(v), "must be host:port, e.g. 0.0.0.0:9301"))


@dataclass(frozen=True)
class BufferConfig:
    """The durable SQLite buffer."""

    max_disk_mb: float = field(default=1024.0, metadata=_check(lambda v: v >= 1, "must be >= 1"))
    # FULL: a power cut after a 2xx cannot lose the data. NORMAL trades the last commits for speed.
    synchronous: str = field(default="full", metadata=_check(
        lambda v: v in ("full", "normal", "extra"), "must be one of: full, normal, extra"))
    # How long the writer waits for more requests before committing a group (milliseconds).
    commit_window_ms: float = field(default=2.0, metadata=_check(
        lambda v: 0 <= v <= 1000, "must be between 0 and 1000"))
    roll_interval_s: float = field(default=1.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # Backlogged segments are merged up to this many samples: fewer, denser batches to drain.
    segment_max_samples: int = field(default=2_000_000, metadata=_check(
        lambda v: v >= 1000, "must be >= 1000"))
    merge_after_s: float = field(default=5.0, metadata=_check(lambda v: v >= 0, "must be >= 0"))
    queue_size: int = field(default=256, metadata=_check(lambda v: v >= 1, "must be >= 1"))
    # Room kept free on the data disk (a reserve file, given back when SQLite reports the disk
    # full): below it new data is refused (503) until forwarding frees twice as much.
    # 0: 2% of the filesystem, 1-16 MiB.
    disk_reserve_mb: float = field(default=0.0, metadata=_check(
        lambda v: v == 0 or 0.25 <= v <= 4096, "must be 0 (automatic) or 0.25-4096"))


@dataclass(frozen=True)
class IngestConfig:
    """Limits applied to every device request."""

    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata=_check(
        lambda v: v >= 1024, "must be >= 1024"))
    max_decompressed_bytes: int = field(default=64 * 1024 * 1024, metadata=_check(
        lambda v: v >= 1024, "must be >= 1024"))
    max_samples_per_request: int = field(default=200_000, metadata=_check(
        lambda v: v >= 1, "must be >= 1"))
    max_logs_per_request: int = field(default=50_000, metadata=_check(
        lambda v: v >= 1, "must be >= 1"))
    max_labels_per_series: int = field(default=32, metadata=_check(
        lambda v: v >= 1, "must be >= 1"))
    max_label_value_length: int = field(default=1024, metadata=_check(
        lambda v: v >= 16, "must be >= 16"))
    max_label_name_length: int = field(default=128, metadata=_check(
        lambda v: v >= 16, "must be >= 16"))
    max_log_line_bytes: int = field(default=64 * 1024, metadata=_check(
        lambda v: v >= 64, "must be >= 64"))
    # Which label names a device in protocols that have no device field (Prometheus text and
    # remote write, Influx line protocol): the first one a series carries becomes its `device`.
    # JSON token -> {"device": ...} | {"site": ...} | {}; when set, every request needs a token
    tokens_file: str = ""
    # distinct series one device may have sent within series_ttl_s (0: no limit)
    max_series_per_device: int = field(default=20_000, metadata=_check(
        lambda v: v >= 0, "must be >= 0"))
    series_ttl_s: float = field(default=3600.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    device_labels: str = field(default="device,device_id,host,instance", metadata=_check(
        lambda v: all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", x.strip())
                      for x in v.split(",") if x.strip()),
        "must be a comma-separated list of label names"))


@dataclass(frozen=True)
class ScrapeConfig:
    """Pulling from devices that expose Prometheus ``/metrics``."""

    # comma-separated host:port or URLs; a bare host:port means http://host:port/metrics
    static_targets: str = ""
    # JSON in Prometheus' file_sd format: [{"targets": ["host:port"], "labels": {...}}];
    # re-read whenever it changes
    targets_file: str = ""
    interval_s: float = field(default=15.0, metadata=_check(lambda v: v >= 0.1,
                                                            "must be >= 0.1"))
    timeout_s: float = field(default=10.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    job: str = field(default="scrape", metadata=_check(bool, "must not be empty"))


@dataclass(frozen=True)
class AggregateConfig:
    """Stream aggregation: rollups and percentiles computed at the site."""

    # vmagent-style YAML (a list of rules) or TOML ([[rules]]); empty: no aggregation
    rules_file: str = ""
    # each rule's state is saved when it closes a window, on shutdown and at least this often
    # (what came after is replayed from the buffer on start)
    checkpoint_interval_s: float = field(default=300.0, metadata=_check(
        lambda v: 1 <= v <= 3600, "must be between 1 and 3600"))


@dataclass(frozen=True)
class AlertsConfig:
    """Local alerting: rules evaluated on the node, hooks run on the node."""

    # comma-separated Prometheus-format rule files (alerting and recording rules)
    rule_files: str = ""
    # YAML: route (group_by, repeat_interval) and hooks (exec, webhook, alertmanager, log)
    hooks_file: str = ""
    # the built-in rules of the fleetd data architecture (device offline, ingestion drop,
    # storage, forward failures, backlog age) and their thresholds
    builtin_rules: bool = True
    builtin_interval_s: float = field(default=30.0, metadata=_check(
        lambda v: 1 <= v <= 3600, "must be between 1 and 3600"))
    device_offline_after_s: float = field(default=300.0, metadata=_check(
        lambda v: v >= 10, "must be >= 10"))
    ingest_drop_ratio: float = field(default=0.2, metadata=_check(
        lambda v: 0 < v < 1, "must be between 0 and 1"))
    storage_used_ratio: float = field(default=0.8, metadata=_check(
        lambda v: 0 < v <= 1, "must be between 0 and 1"))
    forward_failure_ratio: float = field(default=0.01, metadata=_check(
        lambda v: 0 < v <= 1, "must be between 0 and 1"))
    backlog_age_s: float = field(default=3600.0, metadata=_check(
        lambda v: v >= 1, "must be >= 1"))
    # recent samples kept in memory for rules (series beyond this are ignored and counted)
    max_series: int = field(default=200_000, metadata=_check(lambda v: v >= 100,
                                                            "must be >= 100"))
    # how often the rules' recent data is saved (it is also saved on shutdown; after a crash,
    # what is still in the buffer is read back and only older data that already left may be
    # missing from range windows). Flash wear: 100k series of 10 minutes are ~7 MB a save.
    snapshot_interval_s: float = field(default=300.0, metadata=_check(
        lambda v: 10 <= v <= 3600, "must be between 10 and 3600"))


@dataclass(frozen=True)
class HostConfig:
    """The gateway box's own CPU, memory, disks, network and temperatures, as device data."""

    enabled: bool = True
    interval_s: float = field(default=15.0, metadata=_check(lambda v: v >= 1, "must be >= 1"))
    # the `device` label of the box's series; empty: the node_id
    device: str = ""


@dataclass(frozen=True)
class StatusConfig:
    """The status page (``/``) and its charts of the node's own figures."""

    # one chart point per step; history_hours of points are kept (and survive restarts)
    step_s: float = field(default=30.0, metadata=_check(lambda v: v >= 1, "must be >= 1"))
    history_hours: float = field(default=6.0, metadata=_check(
        lambda v: 0 < v <= 168, "must be between 0 and 168"))


def _listen_ok(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) <= 65535


#: the ingest protocols' names (edge_node/ingest.py routes), for clock.protocol_policies
PROTOCOLS = ("native", "prometheus_text", "remote_write", "loki", "influx_v1", "influx_v2",
             "fleetd_agent")


def _policies_ok(text: str, names: tuple[str, ...] = ()) -> bool:
    for item in text.split(","):
        if not item.strip():
            continue
        m = re.fullmatch(r"\s*([^=,\s][^=,]*?)\s*=\s*(accept|correct|reject)\s*", item)
        if m is None or (names and m.group(1) not in names):
            return False
    return True


@dataclass(frozen=True)
class ClockConfig:
    """Device clocks: what to do with timestamps a device's wrong clock gave (see
    :mod:`edge_node.clock_skew`)."""

    # accept: store as sent (counted, alerted); correct: shift by the device's offset;
    # reject: refuse the request with a 422 naming the device and its offset
    policy: str = field(default="correct", metadata=_check(
        lambda v: v in ("accept", "correct", "reject"), "must be one of: accept, correct, reject"))
    # a device's newest timestamp further ahead of the receive time than this: its clock
    max_ahead_s: float = field(default=300.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # timestamps before this date: a clock that restarted at its epoch (1970, 2000)
    earliest_valid: str = field(default="2020-01-01", metadata=_check(
        lambda v: re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) is not None, "must be YYYY-MM-DD"))
    # how long a flagged device is watched (its buffered replays corrected too)
    window_s: float = field(default=600.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # per protocol and per device, overriding policy: "remote_write=accept,native=reject"
    protocol_policies: str = field(default="", metadata=_check(
        lambda v: _policies_ok(v, PROTOCOLS),
        "must look like 'remote_write=accept,native=reject' (accept, correct or reject), "
        f"protocols: {', '.join(PROTOCOLS)}"))
    device_policies: str = field(default="", metadata=_check(
        _policies_ok, "must look like 'pump-7=reject,meter-2=accept'"))


@dataclass(frozen=True)
class EdgeConfig:
    """The whole edge node configuration."""

    node_id: str = field(default="", metadata=_check(
        lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", v) is not None,
        "must be 1-128 characters of letters, digits, '_', '.', ':', '-'"))
    listen: str = field(default="127.0.0.1:9300", metadata=_check(
        _listen_ok, "must be host:port, e.g. 0.0.0.0:9300"))
    data_dir: str = field(default="", metadata=_check(bool, "must not be empty"))
    log_level: str = field(default="info", metadata=_check(
        lambda v: v in ("debug", "info", "warning", "error"),
        "must be one of: debug, info, warning, error"))
    drain_timeout_s: float = field(default=10.0, metadata=_check(
        lambda v: v >= 0, "must be >= 0"))
    central: CentralConfig = field(default_factory=CentralConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    scrape: ScrapeConfig = field(default_factory=ScrapeConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    host: HostConfig = field(default_factory=HostConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)

    def security_warnings(self) -> list[str]:
        from ..tls import is_loopback_host, split_listen

        """What is unsafe to run across the internet (logged at start, on the status page and
        by check-config): a plain-http central that is not on this box."""
        out: list[str] = []
        url = self.central.url
        if url.startswith("http://") and \
                not is_loopback_host(urllib.parse.urlsplit(url).hostname or ""):
            out.append(f"central.url {url!r} is plain http: the node's API key and all its "
                       "data cross the network unencrypted; use https:// (see the README's "
                       "Security section)")
        if self.tls.plain_listen and not self.ingest.tokens_file and \
                not is_loopback_host(split_listen(self.tls.plain_listen)[0]):
            out.append(f"tls.plain_listen {self.tls.plain_listen!r} takes data from anyone "
                       "who can reach it: set ingest.tokens_file to require device tokens "
                       "there")
        return out

    def tls_files(self) -> Any:
        """The listener's :class:`~edge_node.tls.TLSFiles` (``[tls]`` must name a cert)."""
        from ..tls import TLSFiles

        t = self.tls
        return TLSFiles(t.cert_file, t.key_file, t.client_ca_file, t.client_certs)

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def alert_rule_groups(self) -> list[Any]:
        """The groups of every ``alerts.rule_files`` file (errors name file, rule and field)."""
        from ..alerts.rules import load_rule_file
        from ..errors import RuleFileError

        groups: list[Any] = []
        for path in (p.strip() for p in self.alerts.rule_files.split(",")):
            if not path:
                continue
            try:
                groups += load_rule_file(path)
            except RuleFileError as exc:
                raise ConfigError("alerts.rule_files", "; ".join(exc.problems)) from None
        names = [g.name for g in groups]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError("alerts.rule_files", f"group name {n!r} is used twice")
        return groups

    def alert_hooks(self) -> Any:
        from ..alerts.notify import HooksConfig, load_hooks_file
        from ..errors import HooksError

        if not self.alerts.hooks_file:
            return HooksConfig()
        try:
            return load_hooks_file(self.alerts.hooks_file)
        except HooksError as exc:
            raise ConfigError("alerts.hooks_file", "; ".join(exc.problems)) from None

    def aggregation_rules(self) -> list[Any]:
        """The stream-aggregation rules (read from ``aggregate.rules_file`` on each call)."""
        return load_aggregation_rules(self.aggregate.rules_file)

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "buffer.sqlite3"

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str],
                  env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Load ``path``, apply ``FLEET_EDGE_*`` overrides from ``env`` and validate.

        Raises:
            ConfigError: naming the bad key, for unreadable files, syntax errors, unknown keys,
                wrong types and invalid values.
        """
        return cls.from_mapping(read_toml(path), env=os.environ if env is None else env)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any],
                     env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Build a config from parsed TOML data plus environment overrides."""
        merged = apply_env(cls, dict(data), env or {})
        cfg: EdgeConfig = build(cls, merged, "")
        cross_checks(cfg)
        return cfg
