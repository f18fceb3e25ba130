"""Build the release artefacts: single-file executables and Debian packages.

    .venv/bin/python packaging/build.py [--out dist] [edge] [central]

For each of ``fleet-edge`` and ``fleet-central``:

* ``dist/fleet-edge.pyz``: a shiv zipapp holding the code and every dependency (compiled
  wheels included), run by the system ``python3`` (the ABI it was built for: 3.11 on Debian 12).
  shiv unpacks the packages once into ``$SHIV_ROOT`` (default ``~/.shiv``; the units set
  ``/var/cache/<name>``) and starts in ~0.6 s afterwards.
* ``dist/fleet-edge_<version>_<arch>.deb``: the executable as ``/usr/bin/fleet-edge``, the
  systemd unit, a commented default config (a conffile: upgrades keep local edits), the state
  and cache directories, and maintainer scripts that create the ``fleet-edge`` system user.
  The service is enabled but not started on install: the config needs the node's identity and
  central's address and key first.

Why shiv rather than PyInstaller: the zipapp uses the distribution's Python, which gets the
distribution's security updates, it is a third of the size, it builds in seconds without a
compiler toolchain, and it starts without unpacking into /tmp on every run (which
``PrivateTmp=`` and ``noexec`` /tmp mounts on gateways would fight).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Package:
    name: str  # the command, the package, the user
    summary: str
    description: str
    config_path: str  # the shipped default config (a conffile)
    config_mode: int


EDGE = Package(
    "fleet-edge", "fleetd edge node for device fleets",
    "Receives device metrics, logs and heartbeats over the protocols they speak (fleetd\n"
    " agent, Prometheus remote-write and text, Influx line protocol, Loki push), buffers them\n"
    " durably in SQLite, aggregates and alerts locally (with the WAN down too) and forwards\n"
    " compressed batches to fleetd central.",
    "/etc/fleet-edge/edge.toml", 0o640)
CENTRAL = Package(
    "fleet-central", "fleetd central service",
    "Receives the batches of fleetd edge nodes and writes them, exactly once, to the\n"
    " configured storage backends (PostgreSQL/TimescaleDB, VictoriaMetrics, Grafana Loki,\n"
    " ClickHouse, Valkey) or to its embedded SQLite store.",
    "/etc/fleet-central/environment", 0o640)

CENTRAL_ENV = """\
# fleet-central backends (read by fleet-central.service). Uncomment what this site runs;
# with none set, everything is kept in the embedded SQLite store in /var/lib/fleet-central.
# After changing backends: systemctl restart fleet-central (it runs 'fleet-central migrate').
#DATABASE_URL=postgresql://fleet:secret@db.example:5432/fleetd
#DATABASE_POOL_SIZE=10
#TIMESCALE_CHUNK_INTERVAL=1 day
#TIMESCALE_RETENTION_DAYS=30
#VICTORIA_METRICS_URL=http://vm.example:8428
#METRICS_RETENTION_DAYS=30
#LOKI_URL=http://loki.example:3100
#LOKI_RETENTION_DAYS=14
#CLICKHOUSE_URL=http://clickhouse.example:8123
#CLICKHOUSE_DATABASE=fleetd
#CLICKHOUSE_RETENTION_DAYS=90
#VALKEY_ADDR=valkey.example:6379
"""

POSTINST = """\
#!/bin/sh
# {name}: create the system user, own the state directory, register the unit.
set -e
if [ "$1" = configure ]; then
    if ! getent passwd {name} >/dev/null; then
        adduser --system --group --home /var/lib/{name} --no-create-home \\
            --gecos "{summary}" {name} >/dev/null
    fi
    install -d -o {name} -g {name} -m 0750 /var/lib/{name}
    install -d -o {name} -g {name} -m 0750 /var/cache/{name}
    chgrp {name} {config} && chmod 0640 {config}
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        if [ -z "$2" ]; then
            systemctl enable {name}.service >/dev/null 2>&1 || true
            echo "{name}: edit {config}, then: systemctl start {name}"
        else
            systemctl try-restart {name}.service >/dev/null 2>&1 || true
        fi
    fi
fi
exit 0
"""

PRERM = """\
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop {name}.service >/dev/null 2>&1 || true
    systemctl disable {name}.service >/dev/null 2>&1 || true
fi
exit 0
"""

POSTRM = """\
#!/bin/sh
# purge: the unpacked-packages cache goes; the state directory stays (it may hold data that
# was never forwarded): remove /var/lib/{name} by hand once it is no longer needed.
set -e
if [ "$1" = purge ]; then
    rm -rf /var/cache/{name}
    if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
fi
exit 0
"""


def run(*argv: str | Path, **kw: object) -> None:
    subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]


def version() -> str:
    sys.path.insert(0, str(ROOT))
    from edge_node import __version__

    return __version__


def site_packages(work: Path, target: str) -> Path:
    """The project's wheel and its runtime dependencies, installed into one directory for the
    ``target`` interpreter: pip evaluates the dependencies' markers for that one (redis needs
    async-timeout on Debian's 3.11.2 but not on 3.11.7, say)."""
    python = sys.executable
    wheels = work / "wheels"
    site = work / "site-packages"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    print("==> building the wheel", flush=True)
    run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
        "-w", wheels, ROOT)
    (wheel,) = wheels.glob("*.whl")
    print("==> installing it with its dependencies", flush=True)
    run(python, "-m", "pip", "--python", target, "install", "--quiet",
        "--disable-pip-version-check", "--root-user-action=ignore", "--no-compile",
        "--target", site, wheel)
    return site


def zipapp(site: Path, name: str, out: Path, interpreter: str) -> Path:
    pyz = out / f"{name}.pyz"
    print(f"==> {pyz.name} (shiv, for {interpreter})", flush=True)
    shiv = Path(sys.executable).with_name("shiv")
    # no pip arguments: shiv copies the prepared site-packages as they are
    run(shiv, "--site-packages", site, "-c", name, "-o", pyz, "-p", interpreter,
        "--compressed", "--reproducible")
    return pyz


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def default_config(pkg: Package, pyz: Path, interpreter: str) -> str:
    if pkg is CENTRAL:
        return CENTRAL_ENV
    text = subprocess.run([interpreter, str(pyz), "example-config"], check=True,
                          capture_output=True, text=True,
                          env={**os.environ, "SHIV_ROOT": str(pyz.parent / ".shiv")}).stdout
    return ("# Installed by the fleet-edge package. Set node_id, central.url and\n"
            "# central.api_key (fleet-central nodes add NODE_ID), then: "
            "systemctl start fleet-edge\n" + text)


def deb(pkg: Package, pyz: Path, out: Path, interpreter: str) -> Path:
    ver = version()
    stage = out / f"{pkg.name}-deb"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "DEBIAN").mkdir(parents=True)
    for d in ("usr/bin", "lib/systemd/system", f"usr/share/doc/{pkg.name}",
              f"var/lib/{pkg.name}", f"var/cache/{pkg.name}",
              pkg.config_path.rsplit("/", 1)[0].lstrip("/")):
        (stage / d).mkdir(parents=True, exist_ok=True)
    exe = stage / "usr/bin" / pkg.name
    shutil.copy(pyz, exe)
    exe.chmod(0o755)
    shutil.copy(ROOT / "systemd" / f"{pkg.name}.service",
                stage / "lib/systemd/system" / f"{pkg.name}.service")
    conf = stage / pkg.config_path.lstrip("/")
    conf.write_text(default_config(pkg, pyz, interpreter))
    conf.chmod(pkg.config_mode)
    (stage / f"usr/share/doc/{pkg.name}/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: fleetd-edge\nFiles: *\nLicense: Apache-2.0\n"
        " On Debian systems see /usr/share/common-licenses/Apache-2.0.\n"
        " The executable bundles its Python dependencies under their own licenses.\n")
    shutil.copy(ROOT / "README.md", stage / f"usr/share/doc/{pkg.name}/README.md")
    size_kb = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) // 1024
    fmt = {"name": pkg.name, "summary": pkg.summary, "config": pkg.config_path}
    control = (f"Package: {pkg.name}\nVersion: {ver}\nArchitecture: {arch()}\n"
               "Maintainer: fleetd-edge developers <dev@fleetd.invalid>\n"
               "Section: net\nPriority: optional\n"
               # compiled wheels inside are built for this Python's ABI
               "Depends: python3 (>= 3.11), python3 (<< 3.12), adduser\n"
               f"Installed-Size: {size_kb}\nHomepage: https://github.com/fleetd/fleetd-edge\n"
               f"Description: {pkg.summary}\n {pkg.description}\n")
    (stage / "DEBIAN/control").write_text(control)
    (stage / "DEBIAN/conffiles").write_text(pkg.config_path + "\n")
    for script, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        p = stage / "DEBIAN" / script
        p.write_text(text.format(**fmt))
        p.chmod(0o755)
    target = out / f"{pkg.name}_{ver}_{arch()}.deb"
    print(f"==> {target.name}", flush=True)
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", stage, target,
        stdout=subprocess.DEVNULL)
    shutil.rmtree(stage)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build fleet-edge / fleet-central zipapps and "
                                             ".deb packages.")
    ap.add_argument("which", nargs="*", metavar="edge|central",
                    help="what to build (default: both)")
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output directory (dist/)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the interpreter the executables run with (their #! line); the "
                         "dependencies are resolved for it (default /usr/bin/python3)")
    ap.add_argument("--no-deb", action="store_true", help="only the zipapps")
    args = ap.parse_args(argv)
    bad = [w for w in args.which if w not in ("edge", "central")]
    if bad:
        ap.error(f"unknown target {bad[0]!r}: choose edge and/or central")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    site = site_packages(out / "build", args.python)
    for pkg in [{"edge": EDGE, "central": CENTRAL}[w] for w in (args.which or
                                                               ["edge", "central"])]:
        pyz = zipapp(site, pkg.name, out, args.python)
        digest = hashlib.sha256(pyz.read_bytes()).hexdigest()[:16]
        print(f"    {pyz.stat().st_size / 1e6:.1f} MB, sha256 {digest}...")
        if not args.no_deb:
            d = deb(pkg, pyz, out, args.python)
            print(f"    {d.stat().st_size / 1e6:.1f} MB")
    shutil.rmtree(out / "build")
    shutil.rmtree(out / ".shiv", ignore_errors=True)
    print(f"==> done in {time.monotonic() - t0:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
