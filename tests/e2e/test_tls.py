"""TLS and mutual TLS with real processes and real clients: ``fleet-central run`` serving HTTPS
with client certificates bound to node ids, ``fleet-edge run`` forwarding to it with a private
CA and its own certificate, devices posting to the edge's HTTPS listener with curl (their
certificate naming the device), certificate problems named in the status, and certificates
replaced on SIGHUP without dropping open connections. Certificates come from a throwaway CA
per test (tests/pki.py)."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.procs import (
    Proc,
    edge_proc,
    free_port,
    register,
    start_central,
    write_edge_config,
)
from tests.e2e.test_real_clients import remote_write_client
from tests.pki import PKI
from tests.readers import metric_total

pytestmark = pytest.mark.e2e

NODE = "edge-tls"


def central_env(pki: PKI, client_certs: str = "required") -> dict[str, str]:
    cert, key = pki.issue("central", "127.0.0.1", "localhost", common_name="central")
    env = {"FLEET_CENTRAL_TLS_CERT": str(cert), "FLEET_CENTRAL_TLS_KEY": str(key)}
    if client_certs != "off":
        env |= {"FLEET_CENTRAL_TLS_CLIENT_CA": str(pki.ca_file),
                "FLEET_CENTRAL_TLS_CLIENT_CERTS": client_certs}
    return env


def tls_central(tmp: Path, pki: PKI, procs: list[Proc], client_certs: str = "required"
                ) -> Proc:
    c = start_central(tmp, env=central_env(pki, client_certs))
    c.url = c.url.replace("http://", "https://")
    # the health check presents a certificate of its own (the handshake asks for one)
    c.verify = pki.client_context(pki.issue("probe", common_name="probe"))
    procs.append(c)
    return c.start()


def stored(tmp: Path, name: str) -> list[tuple[str, float]]:
    """(device, value) of every sample ``name`` central's embedded store holds."""
    conn = sqlite3.connect(tmp / "central" / "central.sqlite3", timeout=30)
    try:
        return [(json.loads(labels).get("device", ""), v) for labels, v in conn.execute(
            "SELECT labels, value FROM samples_v WHERE name = ?", (name,))]
    except sqlite3.OperationalError:  # no batch yet: the schema is not there
        return []
    finally:
        conn.close()


def wait_until(pred: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status(edge_url: str, **kw: object) -> dict[str, object]:
    got: dict[str, object] = httpx.get(edge_url + "/api/v1/status", timeout=5, **kw).json()
    return got


def post(edge_url: str, name: str, value: float, **kw: object) -> httpx.Response:
    return httpx.post(edge_url + "/api/v1/ingest", timeout=10, json={
        "device_id": "pump-1", "metrics": [{"name": name, "value": value}]}, **kw)


def test_edge_forwards_over_mutual_tls_and_the_node_certificate_must_name_the_node(
        tmp_path: Path, procs: list[Proc]) -> None:
    pki = PKI(tmp_path / "pki")
    central = tls_central(tmp_path, pki, procs)
    key = register(tmp_path, NODE)
    cert, ckey = pki.issue("node", common_name=NODE)
    url = _edge_with(tmp_path, central.url, key, f'ca_file = "{pki.ca_file}"\n'
                     f'client_cert = "{cert}"\nclient_key = "{ckey}"\n', procs)
    assert post(url, "mtls_temp", 21.5).status_code == 204
    wait_until(lambda: stored(tmp_path, "mtls_temp") == [("pump-1", 21.5)],
               "the sample at central over mutual TLS")
    assert metric_total(url, "fleet_edge_forward_errors_total", reason="tls") == 0

    # the node's key without a certificate: the handshake itself is refused
    body = b"not even read"
    plain = httpx.Client(verify=pki.client_context())
    with pytest.raises(httpx.HTTPError) as err:
        plain.post(central.url + "/api/v1/batches", content=body,
                   headers={"Authorization": f"Bearer {key}"})
    assert "certificate required" in str(err.value) or "alert" in str(err.value).lower() \
        or isinstance(err.value, httpx.ReadError | httpx.RemoteProtocolError | httpx.ConnectError)

    # the node's key with a certificate the same CA issued to another node: 403 naming it
    other = pki.issue("other", common_name="edge-other")
    r = httpx.post(central.url + "/api/v1/batches", content=body,
                   headers={"Authorization": f"Bearer {key}"},
                   verify=pki.client_context(other))
    assert r.status_code == 403, r.text
    assert "edge-other" in r.json()["error"] and NODE in r.json()["error"]
    assert metric_total(central.url, "fleet_central_batches_total", outcome="forbidden",
                        verify=central.verify) >= 1


def _edge_with(tmp: Path, central_url: str, key: str, central_tls: str, procs: list[Proc]
               ) -> str:
    cfg, url = write_edge_config(tmp, central_url, key, node_id=NODE)
    cfg.write_text(cfg.read_text().replace("[central]\n", "[central]\n" + central_tls, 1))
    edge = edge_proc(tmp, cfg, url)
    procs.append(edge)
    edge.start()
    return url


@pytest.mark.parametrize(("case", "expect"), [
    ("no_ca_file", "set central.ca_file"),
    ("wrong_server_name", "set central.server_name"),
    ("no_client_cert", "central requires a client certificate"),
])
def test_certificate_problems_are_named_in_status_and_metrics(
        case: str, expect: str, tmp_path: Path, procs: list[Proc]) -> None:
    pki = PKI(tmp_path / "pki")
    central = tls_central(tmp_path, pki, procs)
    key = register(tmp_path, NODE)
    cert, ckey = pki.issue("node", common_name=NODE)
    settings = {
        "no_ca_file": f'client_cert = "{cert}"\nclient_key = "{ckey}"\n',
        "wrong_server_name": f'ca_file = "{pki.ca_file}"\nserver_name = "elsewhere.example"\n'
                             f'client_cert = "{cert}"\nclient_key = "{ckey}"\n',
        "no_client_cert": f'ca_file = "{pki.ca_file}"\n',
    }[case]
    url = _edge_with(tmp_path, central.url, key, settings, procs)
    assert post(url, "tls_problem", 1.0).status_code == 204
    wait_until(lambda: metric_total(url, "fleet_edge_forward_errors_total", reason="tls") > 0,
               "a forward error with reason tls")
    doc = status(url)
    central_doc = doc["central"]
    assert isinstance(central_doc, dict)
    error = str(central_doc["last_error"])
    assert error.startswith("TLS: ") and expect in error, error
    assert central_doc["connected"] is False
    assert metric_total(url, "fleet_edge_forward_errors_total", reason="network") == 0
    assert stored(tmp_path, "tls_problem") == []
    assert key not in json.dumps(doc)


def _peer_fingerprint(port: int, ctx: ssl.SSLContext) -> tuple[ssl.SSLSocket, str]:
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                           server_hostname="127.0.0.1")
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return sock, hashlib.sha256(der).hexdigest()


def _get_on(sock: ssl.SSLSocket, path: str = "/healthz") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_central_reloads_its_certificate_on_sighup_without_dropping_connections(
        tmp_path: Path, procs: list[Proc]) -> None:
    pki = PKI(tmp_path / "pki")
    central = tls_central(tmp_path, pki, procs, client_certs="off")
    port = int(central.url.rpartition(":")[2])
    ctx = pki.client_context()
    old_sock, old_fp = _peer_fingerprint(port, ctx)
    assert b" 200 " in _get_on(old_sock)
    # a renewed certificate at the same paths (as certbot or an ACME client writes it)
    pki.issue("central", "127.0.0.1", "localhost", common_name="central")
    assert central.proc is not None
    central.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    new_fp = old_fp
    while new_fp == old_fp and time.monotonic() < deadline:
        sock, new_fp = _peer_fingerprint(port, ctx)
        sock.close()
        time.sleep(0.1)
    assert new_fp != old_fp, "new connections still get the old certificate"
    # the connection opened before the reload is still served
    assert b" 200 " in _get_on(old_sock)
    old_sock.close()
    assert central.proc.poll() is None


def https_edge(tmp: Path, pki: PKI, procs: list[Proc], tls: str, *, client_certs: str,
               before_buffer: str = "") -> tuple[Proc, str]:
    """A plain central and an edge whose listener serves HTTPS with ``client_certs``
    (``tls``: more [tls] keys; ``before_buffer``: sections placed before [buffer]); returns
    the edge and its https:// URL."""
    central = start_central(tmp)
    procs.append(central)
    central.start()
    key = register(tmp, NODE)
    cert, ckey = pki.issue("edge", "127.0.0.1", "localhost")
    ca = f'client_ca_file = "{pki.ca_file}"\n' if client_certs != "off" else ""
    cfg, url = write_edge_config(tmp, central.url, key, node_id=NODE, extra=(
        f'[tls]\ncert_file = "{cert}"\nkey_file = "{ckey}"\n{ca}'
        f'client_certs = "{client_certs}"\n{tls}'))
    if before_buffer:
        cfg.write_text(cfg.read_text().replace("[buffer]\n", before_buffer + "[buffer]\n", 1))
    https_url = url.replace("http://", "https://")
    probe = pki.issue("probe", common_name="probe") if client_certs == "required" else None
    edge = Proc(edge_proc(tmp, cfg, url).argv, https_url, tmp / "edge.log",
                verify=pki.client_context(probe))
    procs.append(edge)
    edge.start()
    return edge, https_url


def test_devices_post_over_https_with_their_certificate_as_identity(
        tmp_path: Path, procs: list[Proc]) -> None:
    pki = PKI(tmp_path / "pki")
    plain_port = free_port()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"legacy-token-0123456789": {"device": "old-meter"}}))
    edge, https_url = https_edge(tmp_path, pki, procs, f'plain_listen = "127.0.0.1:{plain_port}"\n',
                                 client_certs="required",
                                 before_buffer=f'[ingest]\ntokens_file = "{tokens}"\n')
    dev_cert, dev_key = pki.issue("pump-7", common_name="pump-7")
    curl = ["curl", "-sS", "--cacert", str(pki.ca_file), "-o", "/dev/stderr", "-w",
            "%{http_code}", "-H", "Content-Type: application/json"]

    def run(*args: str) -> tuple[int, str]:
        p = subprocess.run([*curl, *args], capture_output=True, text=True, timeout=30)
        return (int(p.stdout) if p.stdout.isdigit() else 0), p.stderr

    mine = ["--cert", str(dev_cert), "--key", str(dev_key)]
    # Prometheus text without a device label: the certificate names the device
    code, err = run(*mine, "--data-binary", "cert_temp 7.5\n",
                    https_url + "/api/v1/import/prometheus")
    assert code == 204, err
    # the certificate is pump-7's: another device's data is refused
    other = json.dumps({"device_id": "pump-8", "metrics": [{"name": "cert_temp", "value": 1}]})
    code, err = run(*mine, "-d", other, https_url + "/api/v1/ingest")
    assert code == 403 and "pump-7" in err, err
    body = json.dumps({"device_id": "old-meter",
                       "metrics": [{"name": "cert_temp", "value": 7.5}]})
    # no certificate: the handshake is refused (required)
    code, err = run("-d", body, https_url + "/api/v1/ingest")
    assert code == 0 and err, err
    # a legacy device on the plain port, with its token
    code, _ = run("-H", "Authorization: Bearer legacy-token-0123456789", "-d", body,
                  f"http://127.0.0.1:{plain_port}/api/v1/ingest")
    assert code == 204
    code, _ = run("-d", body, f"http://127.0.0.1:{plain_port}/api/v1/ingest")
    assert code == 401
    wait_until(lambda: sorted(stored(tmp_path, "cert_temp")) == [("old-meter", 7.5),
                                                                  ("pump-7", 7.5)],
               "both devices' samples at central")
    assert metric_total(https_url, "fleet_edge_tls_handshake_failures_total",
                        verify=edge.verify) >= 1


@pytest.mark.parametrize("kind", ["vmagent", "prometheus"])
def test_remote_write_clients_with_client_certificates(kind: str, tmp_path: Path,
                                                       procs: list[Proc]) -> None:
    """vmagent (-remoteWrite.tlsCAFile, -remoteWrite.tlsCertFile) and Prometheus
    (remote_write tls_config) write to the edge's HTTPS listener that requires certificates;
    the certificate's common name is the device their series must belong to."""
    pki = PKI(tmp_path / "pki")
    edge, https_url = https_edge(tmp_path, pki, procs, "", client_certs="required")
    root = tmp_path / "target"
    root.mkdir()
    (root / "metrics").write_text('sensor_temp_celsius{device="sensor-7"} 19.25\n')
    port = free_port()
    target = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cert, ckey = pki.issue(kind, common_name="sensor-7")
    client = remote_write_client(kind, tmp_path, f"127.0.0.1:{port}", https_url,
                                 (pki.ca_file, cert, ckey), keep="sensor_.*")
    try:
        wait_until(lambda: ("sensor-7", 19.25) in stored(tmp_path, "sensor_temp_celsius"),
                   f"{kind}'s samples at central", timeout=60)
        assert client.poll() is None, (tmp_path / kind / "log").read_text()
    finally:
        for p in (client, target):
            p.terminate()
            p.wait(30)
    assert metric_total(https_url, "fleet_edge_rejected_total", verify=edge.verify) == 0


def test_edge_listener_reloads_its_certificate_on_sighup(tmp_path: Path,
                                                          procs: list[Proc]) -> None:
    pki = PKI(tmp_path / "pki")
    edge, https_url = https_edge(tmp_path, pki, procs, "", client_certs="off")
    port = int(https_url.rpartition(":")[2])
    old_sock, old_fp = _peer_fingerprint(port, pki.client_context())
    doc = status(https_url, verify=edge.verify)
    tls = doc["tls"]
    assert isinstance(tls, dict) and tls["sha256"] == old_fp and tls["client_certs"] == "off"
    pki.issue("edge", "127.0.0.1", "localhost")  # renewed at the same paths
    assert edge.proc is not None
    edge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "tls" in ((status(https_url, verify=edge.verify).get("last_reload")
                                  or {}).get("applied", [])), "the reload to report tls")
    sock, new_fp = _peer_fingerprint(port, pki.client_context())
    sock.close()
    assert new_fp != old_fp
    assert b" 200 " in _get_on(old_sock)  # opened before the reload, still served
    old_sock.close()
    doc = status(https_url, verify=edge.verify)
    assert isinstance(doc["tls"], dict) and doc["tls"]["sha256"] == new_fp
    assert metric_total(https_url, "fleet_edge_tls_certificate_expiry_timestamp_seconds",
                        verify=edge.verify) > time.time()
