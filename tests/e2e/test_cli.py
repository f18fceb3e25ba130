"""The command-line contracts: versions, node keys, config checking, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_node import __version__
from edge_node.config import EXAMPLE_CONFIG

pytestmark = pytest.mark.e2e


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_versions() -> None:
    assert _run("edge_node.cli", "--version").stdout.strip() == f"fleet-edge {__version__}"
    assert _run("central.cli", "--version").stdout.strip() == f"fleet-central {__version__}"


def test_nodes_add_prints_key_last_and_stores_only_its_hash(tmp_path: Path) -> None:
    r = _run("central.cli", "nodes", "add", "gw-7", "--org", "acme", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("fle_") and len(key) > 40
    raw = (tmp_path / "central.sqlite3").read_bytes()
    assert key.encode() not in raw
    again = _run("central.cli", "nodes", "add", "gw-7", "--data-dir", str(tmp_path))
    assert again.returncode == 1 and "already exists" in again.stderr
    listed = _run("central.cli", "nodes", "list", "--data-dir", str(tmp_path)).stdout
    assert "gw-7" in listed and "acme" in listed and "active" in listed
    assert _run("central.cli", "nodes", "revoke", "gw-7", "--data-dir",
                str(tmp_path)).returncode == 0
    assert "revoked" in _run("central.cli", "nodes", "list", "--data-dir", str(tmp_path)).stdout


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "edge.toml"
    good.write_text(EXAMPLE_CONFIG)
    r = _run("edge_node.cli", "check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout and "2 warning(s)" in r.stdout
    assert "central.api_key is the example's placeholder 'CHANGE-ME'" in r.stderr
    assert "placeholder host" in r.stderr
    assert _run("edge_node.cli", "check-config", "--strict", str(good)).returncode == 1
    real = tmp_path / "real.toml"
    real.write_text(EXAMPLE_CONFIG.replace("CHANGE-ME", "fle_k3y").replace(
        "central.example", "central.acme.net"))
    r = _run("edge_node.cli", "check-config", "--strict", str(real))
    assert r.returncode == 0 and "warning" not in r.stdout + r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE_CONFIG.replace("max_disk_mb = 1024", "max_disk_mb = -1"))
    r = _run("edge_node.cli", "check-config", str(bad))
    assert r.returncode == 2 and "buffer.max_disk_mb" in r.stderr
    r = _run("edge_node.cli", "check-config", str(good), env={"FLEET_EDGE_CENTRAL_URL": "ftp:/x"})
    assert r.returncode == 2 and "central.url" in r.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    r = _run("edge_node.cli", "demo", "--devices", "10", "--duration", "3",
             "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "result: OK" in r.stdout
    # the final table: each kind accepted = stored, 0 lost, 0 duplicated
    rows = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.splitlines()
            if ln.split()[:1] in (["metrics"], ["logs"], ["heartbeats"]) and len(ln.split()) == 8}
    assert set(rows) == {"metrics", "logs", "heartbeats"}, r.stdout
    for kind, (accepted, _c, _f, _a, stored, lost, duplicated) in rows.items():
        assert int(accepted.replace(",", "")) > 0 and stored == accepted, (kind, r.stdout)
        assert (lost, duplicated) == ("0", "0"), (kind, r.stdout)


def test_startup_errors_are_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "edge.toml"
        cfg.write_text(EXAMPLE_CONFIG.replace('"0.0.0.0:9300"', f'"127.0.0.1:{port}"')
                       .replace("/var/lib/fleet-edge", str(tmp_path / "edge")))
        r = _run("edge_node.cli", "run", "--config", str(cfg))
        assert r.returncode == 1
        assert "cannot start" in r.stderr and "Traceback" not in r.stderr
        r = _run("central.cli", "run", "--listen", f"127.0.0.1:{port}", "--data-dir",
                 str(tmp_path / "c"))
        assert r.returncode == 1
        assert "cannot start" in r.stderr and "Traceback" not in r.stderr


def test_check_rules_names_every_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("groups:\n  - name: g\n    rules:\n      - alert: Down\n"
                    "        expr: up == 0\n        for: 5m\n      - record: job:up:sum\n"
                    "        expr: sum by (job) (up)\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n"
                   "        expr: histogram_quantile(0.9, x)\n      - alert: B\n"
                   "        expr: up\n        for: often\n")
    ok = _run("edge_node.cli", "check-rules", str(good))
    assert ok.returncode == 0
    assert "OK, 1 group(s), 1 alerting and 1 recording rule(s)" in ok.stdout
    r = _run("edge_node.cli", "check-rules", str(good), str(bad))
    assert r.returncode == 1
    assert f"{bad}: groups[0].rules[0].expr: histogram_quantile() is not in the supported" \
        in r.stderr
    assert f"{bad}: groups[0].rules[1].for: 'often' is not a duration" in r.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``fleet-edge example-config | head -1``: the reader closes the pipe before the command
    writes; no BrokenPipeError traceback, exit 141 (as other tools)."""
    for argv in (["edge_node.cli", "example-config"],
                 ["central.cli", "nodes", "list", "--data-dir", str(tmp_path / "c")]):
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command has written anything
        with proc.stderr:
            err = proc.stderr.read().decode()
        assert proc.wait(60) == 141 and "Traceback" not in err, (argv, err)


def test_the_http_client_libraries_log_only_warnings_below_debug() -> None:
    import logging

    from edge_node.process import quiet_libraries

    httpx_log = logging.getLogger("httpx")
    saved = httpx_log.level
    try:
        httpx_log.setLevel(logging.NOTSET)
        quiet_libraries("debug")
        assert httpx_log.level == logging.NOTSET  # debug shows every request
        quiet_libraries("info")
        assert httpx_log.level == logging.WARNING
    finally:
        httpx_log.setLevel(saved)
