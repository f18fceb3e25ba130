"""Central's settings, read from the environment variable names of the fleetd data architecture.

Each backend is enabled by its variable; with none set, central keeps everything in the
embedded SQLite store under ``--data-dir``::

    DATABASE_URL              postgresql://user@host:5432/db   nodes, devices, status, dedup
    DATABASE_POOL_SIZE        connections per central instance (default 10)
    TIMESCALE_CHUNK_INTERVAL  hypertable chunk / native partition width (default "1 day")
    TIMESCALE_RETENTION_DAYS  drop status/heartbeat partitions older than this (0: keep)
    VICTORIA_METRICS_URL      http://vm:8428 or http://vminsert:8480/insert/<account>/prometheus/
    METRICS_RETENTION_DAYS    samples older than this are counted and not sent (VM drops them)
    LOKI_URL                  http://loki:3100 (push to /loki/api/v1/push, X-Scope-OrgID = org)
    LOKI_RETENTION_DAYS       log lines older than this are counted and not sent
    CLICKHOUSE_URL            http://clickhouse:8123 (HTTP interface)
    CLICKHOUSE_DATABASE       default fleetd_analytics
    CLICKHOUSE_RETENTION_DAYS drop rollups older than this (TTL, or partition drops; 0: keep)
    VALKEY_ADDR               host:port of Valkey/Redis (online state, latest values, dedup)

Tuning variables of central itself start with ``FLEET_CENTRAL_`` (see ``TUNING``); an unknown
``FLEET_CENTRAL_*`` variable is an error naming it, so a typo never falls back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge_node.tls import CLIENT_CERT_MODES, TLSFiles

from .errors import SettingsError
from .keys import KeyPolicy, parse_lifetime

# FLEET_CENTRAL_* variables: name -> (default, help). The CLI's own ones are listed too, so the
# unknown-variable check knows them.
TUNING: dict[str, tuple[str, str]] = {
    "FLEET_CENTRAL_SINK_TIMEOUT_S": ("15", "per-request timeout of a backend write"),
    "FLEET_CENTRAL_RETRY_AFTER_S": ("5", "Retry-After sent with a 503 when a backend is down"),
    "FLEET_CENTRAL_ONLINE_TTL_S": ("300", "a device is online this long after its last data"),
    "FLEET_CENTRAL_LOKI_METADATA": ("true", "send non-stream labels as Loki structured "
                                            "metadata (Loki >= 3.0); false: append them to "
                                            "the line as logfmt"),
    "FLEET_CENTRAL_LOKI_MAX_AGE_S": ("604800", "log lines older than this are not sent to Loki "
                                               "(counted): Loki's reject_old_samples_max_age, "
                                               "a week by default; 0: send all"),
    "FLEET_CENTRAL_LOKI_MAX_AHEAD_S": ("600", "log lines stamped further ahead than this are "
                                              "not sent to Loki (counted): its "
                                              "creation_grace_period, 10 minutes by default"),
    "FLEET_CENTRAL_LISTEN": ("127.0.0.1:9400", "host:port to listen on"),
    "FLEET_CENTRAL_TLS_CERT": ("", "PEM certificate (chain): central serves HTTPS (re-read on "
                                   "SIGHUP)"),
    "FLEET_CENTRAL_TLS_KEY": ("", "the certificate's PEM key"),
    "FLEET_CENTRAL_TLS_CLIENT_CA": ("", "CA that signs the edge nodes' client certificates "
                                        "(mutual TLS)"),
    "FLEET_CENTRAL_TLS_CLIENT_CERTS": ("", "off | optional | required (default: required "
                                           "when FLEET_CENTRAL_TLS_CLIENT_CA is set): a "
                                           "node's certificate must name its node id"),
    "FLEET_CENTRAL_KEY_LIFETIME": ("90d", "how long a node key lives ('never': keys do not "
                                          "expire); nodes add --expires overrides it"),
    "FLEET_CENTRAL_KEY_RENEW_BEFORE": ("30d", "central offers a node its next key this long "
                                              "before the current one expires (at most a "
                                              "third of the key's life)"),
    "FLEET_CENTRAL_KEY_GRACE": ("7d", "a replaced key keeps working this long (automatic "
                                      "rotations and nodes rotate without --now)"),
    "FLEET_CENTRAL_DATA_DIR": ("./fleet-central-data", "embedded SQLite store directory"),
    "FLEET_CENTRAL_LOG_LEVEL": ("info", "log level"),
}

BACKEND_VARS = ("DATABASE_URL", "DATABASE_POOL_SIZE", "TIMESCALE_CHUNK_INTERVAL",
                "TIMESCALE_RETENTION_DAYS", "VICTORIA_METRICS_URL", "METRICS_RETENTION_DAYS",
                "LOKI_URL", "LOKI_RETENTION_DAYS", "CLICKHOUSE_URL", "CLICKHOUSE_DATABASE",
                "CLICKHOUSE_RETENTION_DAYS", "VALKEY_ADDR")

_INTERVAL = re.compile(r"^\s*(\d+)\s*(minute|minutes|hour|hours|day|days|week|weeks)\s*$")


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    database_pool_size: int = 10
    chunk_interval: str = "1 day"
    status_retention_days: int = 0
    victoria_metrics_url: str = ""
    metrics_retention_days: int = 0
    loki_url: str = ""
    loki_retention_days: int = 0
    clickhouse_url: str = ""
    clickhouse_database: str = "fleetd_analytics"
    clickhouse_retention_days: int = 0
    valkey_addr: str = ""
    sink_timeout_s: float = 15.0
    retry_after_s: int = 5
    online_ttl_s: int = 300
    loki_metadata: bool = True
    loki_max_age_s: int = 604800
    loki_max_ahead_s: int = 600
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_client_certs: str = "off"
    key_lifetime_ms: int | None = 90 * 86_400_000
    key_renew_before_ms: int = 30 * 86_400_000
    key_grace_ms: int = 7 * 86_400_000

    def key_policy(self) -> KeyPolicy:
        return KeyPolicy(lifetime_ms=self.key_lifetime_ms,
                         renew_before_ms=self.key_renew_before_ms, grace_ms=self.key_grace_ms)

    def tls_files(self) -> TLSFiles | None:
        """The listener's TLS files, or ``None`` for plain HTTP."""
        if not self.tls_cert:
            return None
        return TLSFiles(self.tls_cert, self.tls_key, self.tls_client_ca,
                        self.tls_client_certs,
                        settings=("FLEET_CENTRAL_TLS_CERT", "FLEET_CENTRAL_TLS_KEY",
                                  "FLEET_CENTRAL_TLS_CLIENT_CA",
                                  "FLEET_CENTRAL_TLS_CLIENT_CERTS"))

    @property
    def chunk_seconds(self) -> int:
        m = _INTERVAL.match(self.chunk_interval)
        assert m is not None  # checked in from_env
        unit = m.group(2).rstrip("s")
        return int(m.group(1)) * {"minute": 60, "hour": 3600, "day": 86400,
                                  "week": 604800}[unit]

    def describe(self) -> str:
        """One line naming where each kind of data goes (for the startup log)."""
        state = "postgresql" if self.database_url else "sqlite"
        return (f"state+devices+status: {state}; metrics: "
                f"{'victoria-metrics' if self.victoria_metrics_url else state}; logs: "
                f"{'loki' if self.loki_url else state}; rollups: "
                f"{'clickhouse' if self.clickhouse_url else 'off'}; online state: "
                f"{'valkey' if self.valkey_addr else 'off'}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and validate; raises :class:`SettingsError` naming the bad variable."""
        unknown = sorted(k for k in env if k.startswith("FLEET_CENTRAL_") and k not in TUNING)
        if unknown:
            raise SettingsError(f"unknown environment variable {unknown[0]} (known: "
                                f"{', '.join(sorted(TUNING))})")

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def integer(name: str, default: int, lo: int) -> int:
            raw = get(name, str(default))
            try:
                v = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer") from None
            if v < lo:
                raise SettingsError(f"{name}={v} must be >= {lo}")
            return v

        def url(name: str, schemes: tuple[str, ...]) -> str:
            v = get(name)
            if v and not any(v.startswith(s + "://") for s in schemes):
                raise SettingsError(f"{name}={v!r} must start with "
                                    f"{' or '.join(s + '://' for s in schemes)}")
            return v.rstrip("/") if not v.startswith("postgres") else v

        chunk = get("TIMESCALE_CHUNK_INTERVAL", "1 day")
        if not _INTERVAL.match(chunk):
            raise SettingsError(f"TIMESCALE_CHUNK_INTERVAL={chunk!r} must look like '1 day', "
                                "'6 hours' or '1 week'")
        valkey = get("VALKEY_ADDR")
        valkey = valkey.removeprefix("redis://").removeprefix("valkey://").rstrip("/")
        if valkey and not re.match(r"^[\w.\-]+:\d+$", valkey):
            raise SettingsError(f"VALKEY_ADDR={valkey!r} must be host:port, e.g. 127.0.0.1:6379")
        db = get("CLICKHOUSE_DATABASE", "fleetd_analytics")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", db):
            raise SettingsError(f"CLICKHOUSE_DATABASE={db!r} must be a plain identifier")
        try:
            timeout = float(get("FLEET_CENTRAL_SINK_TIMEOUT_S", "15"))
        except ValueError:
            raise SettingsError("FLEET_CENTRAL_SINK_TIMEOUT_S must be a number of seconds") \
                from None
        cert, key = get("FLEET_CENTRAL_TLS_CERT"), get("FLEET_CENTRAL_TLS_KEY")
        client_ca = get("FLEET_CENTRAL_TLS_CLIENT_CA")
        client_certs = get("FLEET_CENTRAL_TLS_CLIENT_CERTS") or ("required" if client_ca
                                                                 else "off")
        if bool(cert) != bool(key):
            only = "FLEET_CENTRAL_TLS_CERT" if cert else "FLEET_CENTRAL_TLS_KEY"
            raise SettingsError("FLEET_CENTRAL_TLS_CERT and FLEET_CENTRAL_TLS_KEY go together "
                                f"(only {only} is set)")
        if client_certs not in CLIENT_CERT_MODES:
            raise SettingsError(f"FLEET_CENTRAL_TLS_CLIENT_CERTS={client_certs!r} must be off, "
                                "optional or required")
        if client_certs != "off" and not (cert and client_ca):
            raise SettingsError("FLEET_CENTRAL_TLS_CLIENT_CERTS needs FLEET_CENTRAL_TLS_CERT, "
                                "FLEET_CENTRAL_TLS_KEY and FLEET_CENTRAL_TLS_CLIENT_CA")
        lifetime = parse_lifetime(get("FLEET_CENTRAL_KEY_LIFETIME", "90d"),
                                  "FLEET_CENTRAL_KEY_LIFETIME")
        renew = parse_lifetime(get("FLEET_CENTRAL_KEY_RENEW_BEFORE", "30d"),
                               "FLEET_CENTRAL_KEY_RENEW_BEFORE")
        grace = parse_lifetime(get("FLEET_CENTRAL_KEY_GRACE", "7d"), "FLEET_CENTRAL_KEY_GRACE")
        if renew is None:
            raise SettingsError("FLEET_CENTRAL_KEY_RENEW_BEFORE must be a duration, e.g. 30d")
        meta = get("FLEET_CENTRAL_LOKI_METADATA", "true").lower()
        if meta not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"FLEET_CENTRAL_LOKI_METADATA={meta!r} must be true or false")
        return cls(
            database_url=url("DATABASE_URL", ("postgresql", "postgres")),
            database_pool_size=integer("DATABASE_POOL_SIZE", 10, 1),
            chunk_interval=chunk,
            status_retention_days=integer("TIMESCALE_RETENTION_DAYS", 0, 0),
            victoria_metrics_url=url("VICTORIA_METRICS_URL", ("http", "https")),
            metrics_retention_days=integer("METRICS_RETENTION_DAYS", 0, 0),
            loki_url=url("LOKI_URL", ("http", "https")),
            loki_retention_days=integer("LOKI_RETENTION_DAYS", 0, 0),
            clickhouse_url=url("CLICKHOUSE_URL", ("http", "https")),
            clickhouse_database=db,
            clickhouse_retention_days=integer("CLICKHOUSE_RETENTION_DAYS", 0, 0),
            valkey_addr=valkey,
            sink_timeout_s=timeout,
            retry_after_s=integer("FLEET_CENTRAL_RETRY_AFTER_S", 5, 1),
            online_ttl_s=integer("FLEET_CENTRAL_ONLINE_TTL_S", 300, 1),
            loki_metadata=meta in ("true", "1", "yes"),
            loki_max_age_s=integer("FLEET_CENTRAL_LOKI_MAX_AGE_S", 604800, 0),
            loki_max_ahead_s=integer("FLEET_CENTRAL_LOKI_MAX_AHEAD_S", 600, 0),
            tls_cert=cert, tls_key=key, tls_client_ca=client_ca, tls_client_certs=client_certs,
            key_lifetime_ms=lifetime, key_renew_before_ms=renew, key_grace_ms=grace or 0,
        )
