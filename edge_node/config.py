"""Typed, strict configuration for the edge node.

A config is a TOML file whose every key can be overridden by an environment variable.
Naming rule: ``FLEET_EDGE_`` + the dotted key path upper-cased with ``.`` replaced by ``_``::

    node_id               -> FLEET_EDGE_NODE_ID
    central.api_key       -> FLEET_EDGE_CENTRAL_API_KEY
    buffer.max_disk_mb    -> FLEET_EDGE_BUFFER_MAX_DISK_MB

Unknown keys (in the file or as ``FLEET_EDGE_*`` variables) are errors that name the key, so a
typo never silently falls back to a default. ``FLEET_EDGE_CONFIG`` is reserved for the config path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "FLEET_EDGE_"
_RESERVED_ENV = {"FLEET_EDGE_CONFIG"}


def _check(pred: typing.Callable[[Any], bool], why: str) -> dict[str, Any]:
    return {"check": (pred, why)}


@dataclass(frozen=True)
class CentralConfig:
    """Where and how the node forwards its data."""

    url: str = field(default="", metadata=_check(
        lambda v: re.match(r"^https?://[^/\s]+", v) is not None,
        "must be an http:// or https:// URL, e.g. http://central.example:9400"))
    api_key: str = field(default="", metadata=_check(bool, "must not be empty"))
    timeout_s: float = field(default=30.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    backoff_initial_s: float = field(default=0.5, metadata=_check(lambda v: v > 0, "must be > 0"))
    backoff_max_s: float = field(default=60.0, metadata=_check(lambda v: v > 0, "must be > 0"))
    # Upper bound of one batch: segments (rolled and merged) are sized to fit in it. Central
    # accepts up to 64 MiB by default.
    max_batch_bytes: int = field(default=8 * 1024 * 1024,
                                 metadata=_check(lambda v: v >= 1024, "must be >= 1024"))


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

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def alert_rule_groups(self) -> list[Any]:
        """The groups of every ``alerts.rule_files`` file (errors name file, rule and field)."""
        from .alerts.rules import load_rule_file
        from .errors import RuleFileError

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
        from .alerts.notify import HooksConfig, load_hooks_file
        from .errors import HooksError

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
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("", f"{path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(data, env=os.environ if env is None else env)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any],
                     env: Mapping[str, str] | None = None) -> EdgeConfig:
        """Build a config from parsed TOML data plus environment overrides."""
        merged = _apply_env(cls, dict(data), env or {})
        cfg: EdgeConfig = _build(cls, merged, "")
        _cross_checks(cfg)
        return cfg


def _cross_checks(cfg: EdgeConfig) -> None:
    for name in ("node_id", "data_dir"):
        if not getattr(cfg, name):
            raise ConfigError(name, "is required")
    if not cfg.central.url:
        raise ConfigError("central.url", "is required")
    if not cfg.central.api_key:
        raise ConfigError("central.api_key", "is required")
    if cfg.central.backoff_max_s < cfg.central.backoff_initial_s:
        raise ConfigError("central.backoff_max_s", "must be >= central.backoff_initial_s")
    if cfg.ingest.tokens_file:
        from .auth import load_tokens

        load_tokens(cfg.ingest.tokens_file)  # raises ConfigError naming the problem
    if cfg.scrape.timeout_s > cfg.scrape.interval_s:
        raise ConfigError("scrape.timeout_s", "must be <= scrape.interval_s")
    if cfg.ingest.max_decompressed_bytes < cfg.ingest.max_body_bytes:
        raise ConfigError("ingest.max_decompressed_bytes", "must be >= ingest.max_body_bytes")
    cfg.aggregation_rules()  # raises ConfigError naming the rule and field
    cfg.alert_rule_groups()
    cfg.alert_hooks()


def load_aggregation_rules(path: str) -> list[Any]:
    """The rules of ``aggregate.rules_file``; errors name the file, rule and field."""
    if not path:
        return []
    from .aggregate import load_rules_file
    from .errors import RuleError

    try:
        return load_rules_file(path)
    except RuleError as exc:
        raise ConfigError("aggregate.rules_file", f"{path}: {exc}") from None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _env_keys(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map every ``FLEET_EDGE_*`` variable name to the key path it overrides."""
    out: dict[str, tuple[str, ...]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            for env_name, path in _env_keys(t, prefix + f.name.upper() + "_").items():
                out[env_name] = (f.name, *path)
        else:
            out[ENV_PREFIX + prefix + f.name.upper()] = (f.name,)
    return out


def _apply_env(cls: type, data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    known = _env_keys(cls)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _RESERVED_ENV:
            continue
        path = known.get(name)
        if path is None:
            raise ConfigError(name, "unknown environment override (see the naming rule in "
                                    "the README: FLEET_EDGE_<SECTION>_<KEY>)")
        node = data
        for part in path[:-1]:
            sub = node.get(part)
            if not isinstance(sub, dict):
                sub = {}
                node[part] = sub
            node = sub
        node[path[-1]] = _EnvString(value)
    return data


class _EnvString(str):
    """A value that came from the environment: coerced to the field's type."""


def _coerce(value: Any, t: Any, key: str) -> Any:
    if isinstance(value, _EnvString):
        text = str(value)
        try:
            if t is bool:
                low = text.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if t is int:
                return int(text.replace("_", ""))
            if t is float:
                return float(text)
        except ValueError:
            raise ConfigError(key, f"cannot parse {text!r} as {t.__name__} "
                                   "(from the environment)") from None
        return text
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is bool and not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if t is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if t is float and not isinstance(value, float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if t is str and not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip("."), "must be a table")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(prefix + k, f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        t = hints[f.name]
        if isinstance(t, types.UnionType):  # pragma: no cover - no optional fields yet
            raise TypeError(key)
        if f.name not in data:
            continue
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            kwargs[f.name] = _build(t, data[f.name], key + ".")
            continue
        value = _coerce(data[f.name], t, key)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(key, f"{check[1]} (got {value!r})")
        kwargs[f.name] = value
    return cls(**kwargs)


# A commented config with every key; `fleet-edge example-config` prints it and a test checks
# that it validates.
EXAMPLE_CONFIG = """\
# fleet-edge configuration. Every key can be overridden by an environment variable:
# FLEET_EDGE_ + the dotted key upper-cased, '.' -> '_':
#   central.api_key -> FLEET_EDGE_CENTRAL_API_KEY
node_id = "site-1-gw"
listen = "0.0.0.0:9300"          # where devices POST /api/v1/ingest
data_dir = "/var/lib/fleet-edge"  # the SQLite buffer lives here
log_level = "info"
drain_timeout_s = 10.0            # on SIGTERM: time allowed to finish in-flight work

[central]
url = "http://central.example:9400"
api_key = "CHANGE-ME"             # from: fleet-central nodes add NODE_ID
timeout_s = 30.0
backoff_initial_s = 0.5
backoff_max_s = 60.0
max_batch_bytes = 8388608         # segments are sized to fit one batch of this size

[buffer]
max_disk_mb = 1024                # oldest logs, then oldest metrics, are dropped beyond this
synchronous = "full"              # full: a power cut never loses an acknowledged request
commit_window_ms = 2.0            # group commit: requests within this window share one fsync
roll_interval_s = 1.0
segment_max_samples = 2000000
merge_after_s = 5.0
queue_size = 256

[ingest]
max_body_bytes = 16777216
max_decompressed_bytes = 67108864
max_samples_per_request = 200000
max_logs_per_request = 50000
max_labels_per_series = 32
max_label_value_length = 1024
max_label_name_length = 128       # also the metric name's limit
max_log_line_bytes = 65536
tokens_file = ""                  # device/site bearer tokens (JSON); empty: no device auth
max_series_per_device = 20000     # active series per device (seen within series_ttl_s); 0: off
series_ttl_s = 3600.0
# Prometheus text / Influx line protocol: the first of these labels a series carries names its
# device (becomes its `device` label)
device_labels = "device,device_id,host,instance"

[aggregate]
# Stream aggregation rules, in vmagent's YAML format (or TOML with [[rules]]), e.g.
#   - match: 'cpu_usage_percent{site!=""}'
#     interval: 5m
#     by: [site]
#     outputs: [avg, max, "quantiles(0.5, 0.9, 0.99)"]
#     keep_raw: false        # only the rollups leave the site
rules_file = ""
checkpoint_interval_s = 300.0     # state saved at window closes, on shutdown and this often

[alerts]
rule_files = ""                   # Prometheus rule files, comma-separated (fleet-edge check-rules)
hooks_file = ""                   # YAML: route (group_by, repeat_interval) + hooks (exec,
                                  # webhook, alertmanager, log)
builtin_rules = true              # device offline, ingestion drop, storage, forwarding, backlog
builtin_interval_s = 30.0
device_offline_after_s = 300.0    # a known device silent this long is offline
ingest_drop_ratio = 0.2           # ingestion 20% below the previous 10 minutes
storage_used_ratio = 0.8          # buffer budget or data disk 80% used
forward_failure_ratio = 0.01      # more than 1% of sends to central failing
backlog_age_s = 3600.0            # oldest unforwarded data older than this
max_series = 200000               # recent series kept in memory for the rules
snapshot_interval_s = 300.0       # their recent data saved this often (and on shutdown)

[host]
enabled = true                    # this box's CPU, memory, disks, network, temperatures
interval_s = 15.0                 # ... stored and forwarded like a device's metrics
device = ""                       # their `device` label (empty: node_id); role="gateway"

[status]
step_s = 30.0                     # the status page's charts: one point per step
history_hours = 6.0               # ... this many hours kept (across restarts)

[scrape]
static_targets = ""               # e.g. "10.0.0.5:9100,http://cam-1.local:8080/metrics"
targets_file = ""                 # file_sd JSON, re-read when it changes
interval_s = 15.0
timeout_s = 10.0
job = "scrape"
"""
