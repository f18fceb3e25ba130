"""The release artefacts: ``packaging/build.py`` builds the zipapps and the .debs; each .deb is
unpacked into a temp root and what it installed is run from there with the system python3:
``--version``, ``check-config`` on the shipped default config, and a short real run (the
packaged central receiving from the packaged edge). The units pass ``systemd-analyze verify``
against the unpacked tree."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_node import __version__
from tests.e2e.procs import free_port, wait_healthy
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=900)
    return out


@pytest.fixture(scope="module")
def root(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both packages unpacked into one file-system tree."""
    tree = tmp_path_factory.mktemp("root")
    for deb in dist.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # the zipapps unpack their packages here (the units use /var/cache/<name>)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
            "SHIV_ROOT": str(tmp_path / "shiv")}


def _out(argv: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_system_python_is_the_one_the_wheels_were_built_for() -> None:
    got = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got == str(sys.version_info[:2])


def test_debs_carry_the_executable_unit_config_and_state_dir(dist: Path) -> None:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    for name, conf in (("fleet-edge", "/etc/fleet-edge/edge.toml"),
                       ("fleet-central", "/etc/fleet-central/environment")):
        deb = dist / f"{name}_{__version__}_{arch}.deb"
        info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                              check=True).stdout
        assert f"Package: {name}\n" in info and f"Version: {__version__}\n" in info
        assert "Depends: python3 (>= 3.11), python3 (<< 3.12), adduser" in info
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                                 check=True).stdout
        files = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
        assert files[f"./usr/bin/{name}"] == "-rwxr-xr-x"
        assert files[f"./lib/systemd/system/{name}.service"] == "-rw-r--r--"
        assert files[f".{conf}"] == "-rw-r-----"  # it holds the API key
        assert f"./var/lib/{name}/" in files and f"./var/cache/{name}/" in files
        control = Path(str(deb) + ".ctl")
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
        assert (control / "conffiles").read_text() == conf + "\n"
        for script in ("postinst", "prerm", "postrm"):
            assert os.access(control / script, os.X_OK)
            subprocess.run(["sh", "-n", str(control / script)], check=True)  # parses
        post = (control / "postinst").read_text()
        assert f"adduser --system --group --home /var/lib/{name}" in post
        assert f"install -d -o {name} -g {name} -m 0750 /var/lib/{name}" in post


def test_units_pass_systemd_analyze_verify(root: Path, tmp_path: Path) -> None:
    need("systemd-analyze", "apt-get install systemd")
    # verify resolves targets (sysinit.target, ...) inside --root: give it the host's units
    tree = tmp_path / "verify"
    shutil.copytree(root, tree, symlinks=True)
    units = tree / "lib/systemd/system"
    for unit in Path("/lib/systemd/system").iterdir():
        if not (units / unit.name).exists() and (unit.is_file() or unit.is_symlink()):
            shutil.copy(unit, units / unit.name, follow_symlinks=False)
    (tree / "bin").mkdir(exist_ok=True)  # ExecReload's kill comes from the system
    shutil.copy("/bin/kill", tree / "bin" / "kill")
    for name in ("fleet-edge", "fleet-central"):
        r = subprocess.run(["systemd-analyze", "verify", f"--root={tree}",
                            f"/lib/systemd/system/{name}.service"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # the sandbox, as systemd rates it (0 = fully locked down, 10 = exposed; 9.6 with no
    # hardening at all): no directive may silently go
    for name in ("fleet-edge", "fleet-central"):
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tree}",
                            f"/lib/systemd/system/{name}.service"], capture_output=True,
                           text=True)
        level = re.search(r"Overall exposure level for [\w.-]+: ([\d.]+)", r.stdout)
        assert level and float(level.group(1)) <= 3.5, r.stdout[-500:]
    # and it does check: a missing executable fails
    (tree / "usr/bin/fleet-edge").unlink()
    r = subprocess.run(["systemd-analyze", "verify", f"--root={tree}",
                        "/lib/systemd/system/fleet-edge.service"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "not executable" in r.stderr
    unit = (root / "lib/systemd/system/fleet-edge.service").read_text()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "User=fleet-edge",
                 "StateDirectory=fleet-edge", "ProtectSystem=strict", "ProtectHome=yes",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n",
                 "LimitNOFILE=65536", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit, line


@pytest.fixture
def running(root: Path, env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_installed_executables_run(root: Path, env: dict[str, str], tmp_path: Path,
                                   running: list[subprocess.Popen]) -> None:
    edge = str(root / "usr/bin/fleet-edge")
    central = str(root / "usr/bin/fleet-central")
    # the #! line is the system python3: run the files themselves
    assert Path(edge).read_bytes().startswith(b"#!/usr/bin/python3\n")
    assert _out([edge, "--version"], env).strip() == f"fleet-edge {__version__}"
    assert _out([central, "--version"], env).strip() == f"fleet-central {__version__}"
    conf = root / "etc/fleet-edge/edge.toml"
    assert "OK (node site-1-gw" in _out([edge, "check-config", str(conf)], env)
    assert "#DATABASE_URL=" in (root / "etc/fleet-central/environment").read_text()

    # a short real run: the packaged central and the packaged edge on the shipped config,
    # with the site's settings given as FLEET_EDGE_* overrides
    cport, eport = free_port(), free_port()
    cdata = tmp_path / "central"
    key = _out([central, "nodes", "add", "site-1-gw", "--org", "acme", "--data-dir",
                str(cdata)], env).strip().splitlines()[-1]
    logs = {n: tmp_path / f"{n}.log" for n in ("central", "edge")}
    with logs["central"].open("wb") as log:
        c = subprocess.Popen([central, "run", "--listen", f"127.0.0.1:{cport}", "--data-dir",
                              str(cdata)], env=env, stderr=log)
    running.append(c)
    wait_healthy(f"http://127.0.0.1:{cport}", c, logs["central"], timeout=60)
    edge_env = {**env, "FLEET_EDGE_DATA_DIR": str(tmp_path / "edge"),
                "FLEET_EDGE_LISTEN": f"127.0.0.1:{eport}",
                "FLEET_EDGE_CENTRAL_URL": f"http://127.0.0.1:{cport}",
                "FLEET_EDGE_CENTRAL_API_KEY": key, "FLEET_EDGE_LOG_LEVEL": "warning"}
    with logs["edge"].open("wb") as log:
        e = subprocess.Popen([edge, "run", "--config", str(conf)], env=edge_env, stderr=log)
    running.append(e)
    url = f"http://127.0.0.1:{eport}"
    wait_healthy(url, e, logs["edge"], timeout=60)
    r = httpx.post(url + "/api/v1/ingest", json={"device_id": "pump-1", "metrics": [
        {"name": "temp", "value": 21.5}]})
    assert r.status_code == 204
    deadline = time.monotonic() + 60
    while True:
        doc = httpx.get(url + "/api/v1/status").json()
        if doc["forward"]["acked_total"] >= 1 and doc["buffer"]["pending"].get("metrics") == 0:
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert doc["central"]["connected"] and doc["node_id"] == "site-1-gw"
    assert doc["host"]["device"] == "site-1-gw"  # the gateway's own metrics are on
    assert httpx.get(url + "/").text.startswith("<!DOCTYPE html>")
    for p, name in ((e, "edge"), (c, "central")):
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, logs[name].read_text()


def _run_script(script: Path, args: list[str], tmp: Path, *, user_exists: bool,
                systemd: bool) -> list[str]:
    """Run a maintainer script with every command it calls replaced by a recorder (the
    machine is not touched); returns the calls, one line each."""
    bin_dir = tmp / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp / "calls.log"
    log.write_text("")
    for cmd in ("adduser", "install", "chgrp", "chmod", "systemctl", "rm", "getent"):
        status = 0 if cmd != "getent" or user_exists else 2
        (bin_dir / cmd).write_text(f'#!/bin/sh\necho "{cmd} $*" >> "{log}"\nexit {status}\n')
        (bin_dir / cmd).chmod(0o755)
    text = script.read_text()
    if systemd:  # the scripts test for a running systemd with [ -d /run/systemd/system ]
        text = text.replace("[ -d /run/systemd/system ]", "true")
    else:
        text = text.replace("[ -d /run/systemd/system ]", "false")
    patched = tmp / script.name
    patched.write_text(text)
    out = subprocess.run(["sh", "-e", str(patched), *args], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return log.read_text().splitlines()


def test_maintainer_scripts_create_the_user_and_never_delete_the_buffer(
        dist: Path, tmp_path: Path) -> None:
    deb = next(dist.glob("fleet-edge_*.deb"))
    ctl = tmp_path / "ctl"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctl)], check=True)
    fresh = _run_script(ctl / "postinst", ["configure", ""], tmp_path, user_exists=False,
                        systemd=True)
    assert fresh[:2] == ["getent passwd fleet-edge",
                         'adduser --system --group --home /var/lib/fleet-edge --no-create-home '
                         '--gecos fleetd edge node for device fleets fleet-edge']
    assert "install -d -o fleet-edge -g fleet-edge -m 0750 /var/lib/fleet-edge" in fresh
    assert "chgrp fleet-edge /etc/fleet-edge/edge.toml" in fresh
    assert "systemctl enable fleet-edge.service" in fresh
    assert not any(c.startswith("systemctl start") for c in fresh)  # config first
    upgrade = _run_script(ctl / "postinst", ["configure", "0.0.9"], tmp_path, user_exists=True,
                          systemd=True)
    assert not any(c.startswith("adduser") for c in upgrade)
    assert "systemctl try-restart fleet-edge.service" in upgrade
    no_systemd = _run_script(ctl / "postinst", ["configure", ""], tmp_path, user_exists=True,
                             systemd=False)
    assert not any(c.startswith("systemctl") for c in no_systemd)
    assert _run_script(ctl / "prerm", ["remove"], tmp_path, user_exists=True,
                       systemd=True) == ["systemctl stop fleet-edge.service",
                                         "systemctl disable fleet-edge.service"]
    purge = _run_script(ctl / "postrm", ["purge"], tmp_path, user_exists=True, systemd=True)
    assert "rm -rf /var/cache/fleet-edge" in purge
    assert not any("/var/lib/fleet-edge" in c for c in purge)  # the buffer stays
    assert _run_script(ctl / "postrm", ["remove"], tmp_path, user_exists=True,
                       systemd=True) == []
