"""Loading and validation: a TOML file read into a mapping, the mapping built into the typed
schema (unknown keys, wrong types and failed field checks are errors naming the key), then the
checks that span fields and the rule and hook files the config names.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .environment import coerce, field_types

if TYPE_CHECKING:
    from .schema import EdgeConfig


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML of ``path``; an unreadable file or bad syntax is a ``ConfigError``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from exc
    return data


def build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """The dataclass ``cls`` built from ``data``, its nested sections too, every value coerced
    and checked; ``prefix`` is the dotted path of ``data`` that errors name."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip("."), "must be a table")
    hints = field_types(cls)
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
            kwargs[f.name] = build(t, data[f.name], key + ".")
            continue
        value = coerce(data[f.name], t, key)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(key, f"{check[1]} (got {value!r})")
        kwargs[f.name] = value
    return cls(**kwargs)


def cross_checks(cfg: EdgeConfig) -> None:
    """What no single field can check: required keys, fields that bound each other, and the
    token, rule and hook files the config names (they must load)."""
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
        from ..auth import load_tokens

        load_tokens(cfg.ingest.tokens_file)  # raises ConfigError naming the problem
    _tls_checks(cfg)
    if cfg.scrape.timeout_s > cfg.scrape.interval_s:
        raise ConfigError("scrape.timeout_s", "must be <= scrape.interval_s")
    if cfg.ingest.max_decompressed_bytes < cfg.ingest.max_body_bytes:
        raise ConfigError("ingest.max_decompressed_bytes", "must be >= ingest.max_body_bytes")
    cfg.aggregation_rules()  # raises ConfigError naming the rule and field
    cfg.alert_rule_groups()
    cfg.alert_hooks()


def _tls_checks(cfg: EdgeConfig) -> None:
    """The listener's and the central link's TLS settings fit together and their files load
    (a key that is not its certificate's, a CA file without a certificate: named here)."""
    from ..tls import ServerTLS, TLSError, client_context

    t, c = cfg.tls, cfg.central
    if bool(t.cert_file) != bool(t.key_file):
        raise ConfigError("tls.key_file" if t.cert_file else "tls.cert_file",
                          "tls.cert_file and tls.key_file go together")
    if t.client_certs != "off" and not t.cert_file:
        raise ConfigError("tls.client_certs", "needs tls.cert_file and tls.key_file (client "
                                              "certificates are part of the TLS handshake)")
    if t.client_certs != "off" and not t.client_ca_file:
        raise ConfigError("tls.client_ca_file", f"is required with client_certs = "
                                                f"{t.client_certs!r}: the CA that signs the "
                                                "device certificates")
    if t.plain_listen and not t.cert_file:
        raise ConfigError("tls.plain_listen", "is a plain listener beside an HTTPS one; "
                                              "without tls.cert_file, listen is plain already")
    if t.plain_listen and t.plain_listen == cfg.listen:
        raise ConfigError("tls.plain_listen", "must differ from listen")
    tls_keys = {"ca_file": c.ca_file, "client_cert": c.client_cert,
                "client_key": c.client_key, "server_name": c.server_name}
    if not c.url.startswith("https://"):
        for name, value in tls_keys.items():
            if value:
                raise ConfigError(f"central.{name}", "needs an https:// central.url")
    if c.client_key and not c.client_cert:
        raise ConfigError("central.client_cert", "is required with central.client_key")
    try:
        if t.cert_file:
            ServerTLS(cfg.tls_files())
        if c.url.startswith("https://"):
            client_context(c.ca_file, c.client_cert, c.client_key)
    except TLSError as exc:
        raise ConfigError(exc.key, exc.reason) from None


def load_aggregation_rules(path: str) -> list[Any]:
    """The rules of ``aggregate.rules_file``; errors name the file, rule and field."""
    if not path:
        return []
    from ..aggregate import load_rules_file
    from ..errors import RuleError

    try:
        return load_rules_file(path)
    except RuleError as exc:
        raise ConfigError("aggregate.rules_file", f"{path}: {exc}") from None

