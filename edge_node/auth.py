"""Optional device authentication at the edge: per-device or per-site bearer tokens.

``ingest.tokens_file`` is a JSON object of token -> grant::

    {"9f2c...": {"device": "pump-1"},      # may only send data of device pump-1
     "71ab...": {"site": "plant-7"},       # any device, always labelled site=plant-7
     "c0de...": {}}                        # any device

When it is set, every ingest request needs a token: ``Authorization: Bearer <t>`` (Prometheus,
vmagent, Alloy, Promtail, Fluent Bit), ``Token <t>`` (Influx v2 / Telegraf), or the password of
HTTP basic auth or the ``p`` query parameter (Influx v1). A device token fills in the device of
series that carry none and refuses (403) series of another device; a site token sets ``site``
and refuses series that claim another site. Sans-IO apart from reading the file.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, Forbidden, Unauthorized
from .model import DEVICE_LABEL, IngestBatch, SeriesKey


@dataclass(frozen=True)
class Grant:
    device: str = ""
    site: str = ""
    source: str = "token"  # or "certificate": a verified client certificate's name


def load_tokens(path: str) -> dict[str, Grant]:
    """Read and check the tokens file; errors name the file and the entry."""
    try:
        doc: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("ingest.tokens_file", f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError("ingest.tokens_file", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("ingest.tokens_file", f"{path} must be an object of token -> grant")
    out: dict[str, Grant] = {}
    for token, grant in doc.items():
        if len(token) < 16:
            raise ConfigError("ingest.tokens_file", f"{path}: token {token[:4]}... is shorter "
                                                    "than 16 characters")
        if not isinstance(grant, dict) or set(grant) - {"device", "site"} or not all(
                isinstance(v, str) and v for v in grant.values()):
            raise ConfigError("ingest.tokens_file", f"{path}: the grant of token "
                              f"{token[:4]}... must be {{}}, {{\"device\": ...}} or "
                              "{\"site\": ...}")
        out[token] = Grant(**grant)
    return out


def token_of(headers: dict[bytes, bytes], query: dict[str, str]) -> str:
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return query.get("p", "")


def authorize(tokens: dict[str, Grant], headers: dict[bytes, bytes], query_string: bytes
              ) -> Grant:
    query = dict(urllib.parse.parse_qsl(query_string.decode("latin-1")))
    token = token_of(headers, query)
    if not token:
        raise Unauthorized("this node requires a device token ('Authorization: Bearer <t>')",
                           field="Authorization")
    grant = tokens.get(token)
    if grant is None:
        raise Unauthorized("unknown device token", field="Authorization")
    return grant


def _restrict(keys: list[SeriesKey], grant: Grant, cache: dict[SeriesKey, SeriesKey]) -> None:
    for i, key in enumerate(keys):
        got = cache.get(key)
        if got is None:
            labels = dict(key)
            if grant.device:
                dev = labels.setdefault(DEVICE_LABEL, grant.device)
                if dev != grant.device:
                    raise Forbidden(f"this {grant.source} is for device {grant.device!r}, "
                                    f"not {dev!r}", field="device")
            if grant.site:
                site = labels.setdefault("site", grant.site)
                if site != grant.site:
                    raise Forbidden(f"this {grant.source} is for site {grant.site!r}, "
                                    f"not {site!r}", field="site")
            got = cache[key] = tuple(sorted(labels.items()))
        keys[i] = got


def apply_grant(batch: IngestBatch, grant: Grant) -> None:
    """Fill in and check the device / site of every series of ``batch`` (in place)."""
    if not grant.device and not grant.site:
        return
    cache: dict[SeriesKey, SeriesKey] = {}
    for keys in (batch.metric_keys, batch.log_keys, batch.hb_keys):
        _restrict(keys, grant, cache)
