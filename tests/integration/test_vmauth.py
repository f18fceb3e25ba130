"""Tenant isolation in front of VictoriaMetrics single node: the config of ``fleet-central
vmauth-config`` run by the real vmauth (Debian's victoria-metrics package) lets each
organisation's credentials see its own series and none of another's, whatever the query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import servers


@pytest.fixture
def vmauth(vm_server: servers.Server, tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """(vmauth URL, org a, org b, the config file) with both organisations' series in VM."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"acme-{tag}", f"rival-{tag}"
    now = int(time.time() * 1000)
    lines = "".join(json.dumps({"metric": {"__name__": f"temp_{tag}", "org": org,
                                           "device": dev},
                                "values": [v], "timestamps": [now]}) + "\n"
                    for org, dev, v in ((a, "pump-1", 1.0), (a, "pump-2", 2.0),
                                        (b, "pump-9", 9.0)))
    httpx.post(vm_server.url + "/api/v1/import", content=lines, timeout=10).raise_for_status()
    deadline = time.monotonic() + 20  # searchable a moment after the flush
    while time.monotonic() < deadline:
        httpx.get(vm_server.url + "/internal/force_flush", timeout=10)
        got = httpx.get(vm_server.url + "/api/v1/query", params={"query": f"temp_{tag}"},
                        timeout=10).json()["data"]["result"]
        if len(got) == 3:
            break
        time.sleep(0.2)
    cfg = tmp_path / "vmauth.yml"
    out = subprocess.run([sys.executable, "-m", "central.cli", "vmauth-config", "--org", a,
                          "--org", b, "--vm-url", vm_server.url, "--out", str(cfg),
                          "--data-dir", str(tmp_path / "c")],
                         capture_output=True, text=True, check=True)
    assert "mode 0600" in out.stdout and oct(cfg.stat().st_mode & 0o777) == "0o600"
    port = servers.free_port()
    proc = subprocess.Popen(["vmauth", f"-auth.config={cfg}", f"-httpListenAddr=127.0.0.1:{port}",
                             "-loggerLevel=WARN"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, a, b, str(cfg)
    finally:
        proc.kill()
        proc.wait()


def _password(cfg: str, org: str) -> str:
    text = Path(cfg).read_text().splitlines()
    i = next(n for n, ln in enumerate(text) if ln.strip() == f"- username: {json.dumps(org)}")
    return str(json.loads(text[i + 1].split(":", 1)[1]))


def _query(url: str, auth: tuple[str, str], q: str) -> list[dict[str, object]]:
    r = httpx.get(url + "/api/v1/query", params={"query": q}, auth=auth, timeout=10)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def test_each_organisation_sees_only_its_own_series(vmauth: tuple[str, str, str, str]
                                                    ) -> None:
    url, a, b, cfg = vmauth
    tag = a.split("-", 1)[1]
    as_a, as_b = (a, _password(cfg, a)), (b, _password(cfg, b))
    seen_a = _query(url, as_a, f"temp_{tag}")
    assert sorted(r["metric"]["device"] for r in seen_a) == ["pump-1", "pump-2"]  # type: ignore[index]
    seen_b = _query(url, as_b, f"temp_{tag}")
    assert [r["metric"]["device"] for r in seen_b] == ["pump-9"]  # type: ignore[index]
    # asking for the other organisation by name, or for everything, changes nothing
    assert _query(url, as_a, f'temp_{tag}{{org="{b}"}}') == []
    assert {r["metric"]["org"] for r in _query(url, as_a, f'{{__name__=~"temp_{tag}"}}')} == {a}  # type: ignore[index]
    r = httpx.get(url + "/api/v1/series", params={"match[]": '{__name__=~".+"}'}, auth=as_b,
                  timeout=10)
    assert {s["org"] for s in r.json()["data"]} == {b}
    # wrong or no credentials: refused (vmauth 1.79 answers 400 for an unknown user)
    for auth in ((a, "wrong"), None):
        r = httpx.get(url + "/api/v1/query", params={"query": f"temp_{tag}"}, auth=auth,
                      timeout=10)
        assert r.status_code in (400, 401, 403) and "pump" not in r.text
