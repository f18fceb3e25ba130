"""Private instances of the real backend servers for tests and benchmarks.

Each ``start_*`` function starts the real server (from the Debian packages that
``scripts/backends`` installs) bound to 127.0.0.1 on a free port, with its data in a fresh
temporary directory, waits until it answers, and returns a :class:`Server` whose ``stop()``
kills it and removes the directory. ``restart()`` keeps the data (for outage tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PG_BIN = Path(os.environ.get("FLEET_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ServerMissing(RuntimeError):
    """A server binary is not installed: run scripts/backends."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(path: str | Path) -> str:
    found = shutil.which(str(path))
    if found is None:
        raise ServerMissing(f"{path} is not installed: run scripts/backends (as root) first")
    return found


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path,
          what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


def _http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=1).status_code == 200


@dataclass
class Server:
    """A running private server. ``url`` is what the matching env variable expects."""

    name: str
    url: str
    port: int
    workdir: Path
    argv: list[str]
    ready: Callable[[], bool]
    as_user: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    stop_cmd: list[str] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _prefix(self) -> list[str]:
        return ["runuser", "-u", self.as_user, "--"] if self.as_user else []

    def start(self) -> Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self._prefix() + self.argv, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        _wait(self.ready, self.proc, self.log, self.name)
        return self

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), keeping its data."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.stop_cmd:  # PostgreSQL: postmaster children and the pid file
            subprocess.run(self._prefix() + self.stop_cmd, capture_output=True, check=False)

    def terminate(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGTERM), keeping its data."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)

    def pause(self) -> None:
        """SIGSTOP the server's process group: a long stall (GC pause, swapped out, I/O hang)
        with every connection left open."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def restart(self) -> Server:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _workdir(name: str, owner: str | None = None) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"fleetd-{name}-"))
    if owner:
        shutil.chown(d, owner, owner)
    return d


def start_postgres() -> Server:
    """PostgreSQL 15: ``initdb`` + ``postgres`` as the ``postgres`` user when run as root."""
    initdb = _need(PG_BIN / "initdb")
    user = "postgres" if os.geteuid() == 0 else None
    work = _workdir("postgres", user)
    data = work / "data"
    prefix = ["runuser", "-u", user, "--"] if user else []
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    port = free_port()
    argv = [str(PG_BIN / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
            "-p", str(port), "-k", str(work), "-c", "fsync=off", "-c", "max_connections=200"]

    def ready() -> bool:
        r = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                           capture_output=True, check=False)
        return r.returncode == 0

    srv = Server("postgres", f"postgresql://postgres@127.0.0.1:{port}/postgres", port, work,
                 argv, ready, as_user=user,
                 stop_cmd=[str(PG_BIN / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"])
    return srv.start()


def create_database(server: Server, name: str) -> str:
    """Create database ``name`` on a private PostgreSQL; returns its URL."""
    subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U",
                    "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'],
                   check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


def start_victoria_metrics(*, dedup: bool = True) -> Server:
    """VictoriaMetrics single node. ``-dedup.minScrapeInterval=1ms`` is the setting central's
    README asks for: samples of one series with the same millisecond are one sample. The
    exactly-once tests start one with ``dedup=False`` (VictoriaMetrics' default), where a sample
    written twice is exported twice, so a duplicate can be seen."""
    binary = _need("victoria-metrics")
    work = _workdir("vm")
    port = free_port()
    argv = [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={work}/data",
            "-retentionPeriod=100y", "-search.latencyOffset=0s",
            *(["-dedup.minScrapeInterval=1ms"] if dedup else []),
            "-search.disableCache", "-loggerLevel=WARN"]
    url = f"http://127.0.0.1:{port}"
    return Server("victoria-metrics", url, port, work, argv, _http_ok(url + "/health")).start()


LOKI = Path(__file__).resolve().parent.parent.parent / "shared" / "bin" / "loki"

LOKI_CONFIG = """\
auth_enabled: true
server:
  http_listen_address: 127.0.0.1
  http_listen_port: {http}
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: {grpc}
  log_level: warn
common:
  instance_addr: 127.0.0.1
  path_prefix: {work}/data
  replication_factor: 1
  ring:
    instance_addr: 127.0.0.1
    kvstore:
      store: inmemory
  storage:
    filesystem:
      chunks_directory: {work}/data/chunks
      rules_directory: {work}/data/rules
schema_config:
  configs:
    - from: 2020-01-01
      store: tsdb
      object_store: filesystem
      schema: v13
      index:
        prefix: index_
        period: 24h
limits_config:
  allow_structured_metadata: true
  reject_old_samples: true
  reject_old_samples_max_age: 168h
  deletion_mode: filter-and-delete
compactor:
  working_directory: {work}/data/compactor
  retention_enabled: true
  delete_request_store: filesystem
analytics:
  reporting_enabled: false
"""


def loki_binary() -> str:
    """The real Grafana Loki 3.4.6 that ships beside the project (``../shared/bin/loki``)."""
    script = Path(os.environ.get("FLEET_TEST_LOKI", LOKI))
    if not script.exists():
        raise ServerMissing(f"no Grafana Loki at {script} (set FLEET_TEST_LOKI)")
    out = subprocess.run([str(script), "--path"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def start_loki() -> Server:
    """Grafana Loki 3.4.6, multi-tenant (``X-Scope-OrgID``), filesystem storage, structured
    metadata on, Loki's default refusal of entries older than a week kept (the tests check
    what central does about it). Ready after ~15 s (its ring wait)."""
    binary = loki_binary()
    work = _workdir("loki")
    http, grpc = free_port(), free_port()
    cfg = work / "loki.yaml"
    cfg.write_text(LOKI_CONFIG.format(http=http, grpc=grpc, work=work))
    url = f"http://127.0.0.1:{http}"
    return Server("loki", url, http, work, [binary, f"-config.file={cfg}"],
                  _http_ok(url + "/ready")).start()


def start_alertmanager(config_yaml: str) -> Server:
    """Prometheus Alertmanager (Debian's prometheus-alertmanager), clustering off."""
    binary = _need("prometheus-alertmanager")
    port = free_port()
    work = _workdir("alertmanager")
    (work / "alertmanager.yml").write_text(config_yaml)
    url = f"http://127.0.0.1:{port}"
    return Server("alertmanager", url, port, work,
                  [binary, f"--config.file={work / 'alertmanager.yml'}",
                   f"--storage.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                   "--cluster.listen-address=", "--log.level=warn"],
                  _http_ok(url + "/-/ready")).start()


def start_redis() -> Server:
    binary = _need("redis-server")
    work = _workdir("redis")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(work)]

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    return Server("redis", f"127.0.0.1:{port}", port, work, argv, ready).start()


CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{work}/server.log</log>
        <errorlog>{work}/error.log</errorlog><console>0</console></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>30</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>8589934592</uncompressed_cache_size>
    <mark_cache_size>536870912</mark_cache_size>
    <path>{work}/data/</path>
    <tmp_path>{work}/tmp/</tmp_path>
    <user_files_path>{work}/user_files/</user_files_path>
    <format_schema_path>{work}/format_schemas/</format_schema_path>
    <users_config>{work}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
        </interval></default></quotas>
</yandex>
"""


def start_clickhouse() -> Server:
    binary = _need("clickhouse-server")
    user = "clickhouse" if os.geteuid() == 0 and _has_user("clickhouse") else None
    work = _workdir("clickhouse", user)
    http, tcp = free_port(), free_port()
    (work / "config.xml").write_text(CLICKHOUSE_CONFIG.format(work=work, http=http, tcp=tcp))
    (work / "users.xml").write_text(CLICKHOUSE_USERS)
    for sub in ("data", "tmp", "user_files", "format_schemas"):
        (work / sub).mkdir()
        if user:
            shutil.chown(work / sub, user, user)
    for f in ("config.xml", "users.xml"):
        if user:
            shutil.chown(work / f, user, user)
    url = f"http://127.0.0.1:{http}"
    argv = [binary, f"--config-file={work}/config.xml"]
    return Server("clickhouse", url, http, work, argv, _http_ok(url + "/ping"),
                  as_user=user).start()


#: backend name (as central's sinks call themselves) -> (starter, central's environment variable)
BACKENDS: dict[str, tuple[Callable[[], Server], str]] = {
    "postgresql": (start_postgres, "DATABASE_URL"),
    "victoria-metrics": (start_victoria_metrics, "VICTORIA_METRICS_URL"),
    "clickhouse": (start_clickhouse, "CLICKHOUSE_URL"),
    "valkey": (start_redis, "VALKEY_ADDR"),
}


def start_backend(name: str) -> tuple[Server, str]:
    """A private server of backend ``name`` and the value of its environment variable."""
    server = BACKENDS[name][0]()
    url = create_database(server, "fleet") if name == "postgresql" else server.url
    return server, url


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def main() -> None:
    """Start all four servers; print their environment as ``export`` lines; stop them on
    SIGINT/SIGTERM. For trying central with every backend on one machine (see the README)."""
    import sys

    started: list[Server] = []
    try:
        pg = start_postgres()
        started.append(pg)
        url = create_database(pg, "fleetd")
        vm = start_victoria_metrics()
        started.append(vm)
        ch = start_clickhouse()
        started.append(ch)
        rd = start_redis()
        started.append(rd)
        print(f"export DATABASE_URL={url}\nexport VICTORIA_METRICS_URL={vm.url}\n"
              f"export CLICKHOUSE_URL={ch.url}\nexport VALKEY_ADDR={rd.url}", flush=True)
        print("backend servers running; Ctrl-C (or SIGTERM) stops them", file=sys.stderr)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for s in reversed(started):
            s.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
