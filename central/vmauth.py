"""Tenant isolation for VictoriaMetrics single node, which has no tenants of its own:
``fleet-central vmauth-config`` writes a configuration for vmauth (in Debian's
victoria-metrics package) with one user per organisation whose every query is limited to its
``org`` label (``extra_label=org=ORG``: VictoriaMetrics adds the matcher to each selector, so
no query can reach another organisation's series). Central itself keeps writing to
VictoriaMetrics directly; dashboards and tenants read through vmauth.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse


def vmauth_config(vm_url: str, orgs: list[str], passwords: dict[str, str] | None = None
                  ) -> tuple[str, dict[str, str]]:
    """(the YAML, org -> password) for ``orgs`` reading ``vm_url`` (single node)."""
    base = vm_url.rstrip("/")
    got = dict(passwords or {})
    lines = ["# fleet-central vmauth-config: one user per organisation; keep this file secret",
             "users:"]
    for org in sorted(set(orgs)):
        pw = got.setdefault(org, secrets.token_urlsafe(24))
        label = urllib.parse.quote(f"org={org}", safe="=")
        # JSON strings are valid YAML scalars, with every character escaped
        lines += [f"  - username: {json.dumps(org)}",
                  f"    password: {json.dumps(pw)}",
                  f"    url_prefix: {json.dumps(f'{base}/?extra_label={label}')}"]
    return "\n".join(lines) + "\n", got
