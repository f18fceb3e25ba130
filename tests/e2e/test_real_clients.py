"""Real remote-write clients into the edge node: vmagent and Prometheus (Debian packages) scrape
a device's exposition and remote-write it to ``POST /api/v1/write``; the samples reach central
with their names, labels and values intact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.e2e

EXPOSITION = """# HELP device_temp_celsius Temperature.
# TYPE device_temp_celsius gauge
device_temp_celsius{device="pump-1",zone="a b"} 42.5
device_temp_celsius{device="pump-2",zone="quote\\"d"} -3.25
# TYPE device_starts_total counter
device_starts_total{device="pump-1"} 17
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    """A device exposing /metrics (a static file served over HTTP)."""
    root = tmp_path / "target"
    root.mkdir()
    (root / "metrics").write_text(EXPOSITION)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def remote_write_client(kind: str, tmp: Path, target: str, edge_url: str,
                        tls: tuple[Path, Path, Path] | None = None, keep: str = ""
                        ) -> subprocess.Popen[bytes]:
    """vmagent or Prometheus scraping ``target`` and remote-writing to ``edge_url``; with
    ``tls`` = (CA file, client certificate, key) over HTTPS with a client certificate; with
    ``keep`` (a regex) only the series whose name matches it are written."""
    work = tmp / kind
    work.mkdir()
    scrape = f"""
scrape_configs:
  - job_name: {kind}-job
    scrape_interval: 1s
    static_configs:
      - targets: ["{target}"]
"""
    if kind == "vmagent":
        (work / "scrape.yml").write_text(scrape)
        argv = ["vmagent", f"-promscrape.config={work}/scrape.yml",
                f"-remoteWrite.url={edge_url}/api/v1/write", f"-remoteWrite.tmpDataPath={work}/q",
                f"-httpListenAddr=127.0.0.1:{free_port()}", "-remoteWrite.flushInterval=500ms",
                "-loggerLevel=WARN"]
        if keep:
            (work / "relabel.yml").write_text(
                f"- action: keep\n  source_labels: [__name__]\n  regex: '{keep}'\n")
            argv.append(f"-remoteWrite.urlRelabelConfig={work}/relabel.yml")
        if tls is not None:
            argv += [f"-remoteWrite.tlsCAFile={tls[0]}", f"-remoteWrite.tlsCertFile={tls[1]}",
                     f"-remoteWrite.tlsKeyFile={tls[2]}"]
    else:
        (work / "prometheus.yml").write_text(scrape + f"""
remote_write:
  - url: {edge_url}/api/v1/write
    queue_config: {{batch_send_deadline: 500ms, min_backoff: 100ms, max_backoff: 1s}}
""" + ("" if not keep else f"""    write_relabel_configs:
      - {{action: keep, source_labels: [__name__], regex: '{keep}'}}
""") + ("" if tls is None else f"""    tls_config: {{ca_file: "{tls[0]}", cert_file: "{tls[1]}",
                  key_file: "{tls[2]}"}}
"""))
        argv = ["prometheus", f"--config.file={work}/prometheus.yml",
                f"--storage.tsdb.path={work}/data",
                f"--web.listen-address=127.0.0.1:{free_port()}", "--log.level=warn"]
    with (work / "log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work)


@pytest.mark.parametrize("kind", ["vmagent", "prometheus"])
async def test_remote_write_clients_reach_central(kind: str, tmp_path: Path, central: Central,
                                                  target: str) -> None:
    async with open_edge_node(edge_config(tmp_path, central)) as node:
        proc = remote_write_client(kind, tmp_path, target, node.url)
        try:
            def rows() -> list[tuple[str, dict[str, str], float]]:
                got = central.store.open_sync().execute(
                    "SELECT name, labels, value FROM samples_v WHERE name LIKE 'device_%'"
                ).fetchall()
                return [(r[0], json.loads(r[1]), r[2]) for r in got]

            await wait_for(lambda: {(n, lb["device"]) for n, lb, _ in rows()} >= {
                ("device_temp_celsius", "pump-1"), ("device_temp_celsius", "pump-2"),
                ("device_starts_total", "pump-1")}, timeout=60)
            assert proc.poll() is None, (tmp_path / kind / "log").read_text()
        finally:
            proc.terminate()
            proc.wait(30)
    seen = {(n, lb["device"]): (lb, v) for n, lb, v in rows()}
    labels, value = seen[("device_temp_celsius", "pump-1")]
    assert value == 42.5
    assert labels == {"__name__": "device_temp_celsius", "device": "pump-1", "zone": "a b",
                      "job": f"{kind}-job", "instance": target}
    labels, value = seen[("device_temp_celsius", "pump-2")]
    assert (labels["zone"], value) == ('quote"d', -3.25)
    assert seen[("device_starts_total", "pump-1")][1] == 17.0
