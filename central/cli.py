"""``fleet-central``: run the service, migrate backend schemas, manage edge node keys.

Backends come from the environment (``DATABASE_URL``, ``VICTORIA_METRICS_URL``, ``LOKI_URL``,
``CLICKHOUSE_URL``, ``VALKEY_ADDR``, ...; see :mod:`central.config`); with none set everything
lives in the embedded SQLite store under ``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio
import trio_asyncio

from edge_node import __version__
from edge_node.durations import parse_duration
from edge_node.process import cli_exit, quiet_libraries, run_reporting, stop_on_signal, tune_gc
from edge_node.tls import ServerTLS, TLSError, is_loopback_host, split_listen

from .audit import AuditEntry, cli_actor
from .backends import build_pipeline, clickhouse, state_store
from .config import BACKEND_VARS, TUNING, Settings
from .deletion import delete_everywhere
from .errors import CentralError, RegistryError, SchemaOutdated, SettingsError, SinkUnavailable
from .keys import parse_lifetime
from .server import CentralHandle, run_central
from .sinks.postgres import PostgresStore
from .vmauth import vmauth_config

DEFAULT_DATA_DIR = "./fleet-central-data"


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("FLEET_CENTRAL_DATA_DIR",
                                                        DEFAULT_DATA_DIR),
                   help="directory of the embedded SQLite store (env FLEET_CENTRAL_DATA_DIR; "
                        f"default {DEFAULT_DATA_DIR})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-central",
        description="Central fleetd service: receives batches from edge nodes and writes them "
                    "to the configured backends.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill("backends (environment): " + ", ".join(BACKEND_VARS) + ". With "
                             "none set, everything is kept in the embedded SQLite store "
                             "under --data-dir.", 96) + "\n\ncentral's own settings "
               "(environment):\n" + "\n".join(
                   textwrap.fill(f"{name:<32} {why}" + (f" (default {default})" if default
                                                         else ""), 96, initial_indent="  ",
                                 subsequent_indent=" " * 35, break_on_hyphens=False)
                   for name, (default, why) in TUNING.items()))
    p.add_argument("--version", action="version", version=f"fleet-central {__version__}")
    p.add_argument("--log-level", default=os.environ.get("FLEET_CENTRAL_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve POST /api/v1/batches, /healthz, /readyz, /metrics")
    run.add_argument("--listen", default=os.environ.get("FLEET_CENTRAL_LISTEN", "127.0.0.1:9400"),
                     help="host:port to listen on (env FLEET_CENTRAL_LISTEN; "
                          "default 127.0.0.1:9400)")
    _add_data_dir(run)
    mig = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema and the "
                                         "ClickHouse tables (DATABASE_URL, CLICKHOUSE_URL)")
    _add_data_dir(mig)
    nodes = sub.add_parser("nodes", help="manage edge node registrations and keys")
    nsub = nodes.add_subparsers(dest="nodes_cmd", required=True, metavar="ACTION")
    add = nsub.add_parser("add", help="register a node; prints its API key on the last line")
    add.add_argument("node_id")
    add.add_argument("--org", default="default", help="organisation (default: default)")
    add.add_argument("--site", default="", help="the node's site: the 'site' label of its "
                                                "devices' data unless they carry their own")
    add.add_argument("--expires", metavar="DURATION", help="the key's life, e.g. 90d or "
                     "'never' (default FLEET_CENTRAL_KEY_LIFETIME, 90d); central offers the "
                     "next key before it runs out")
    _add_data_dir(add)
    ls = nsub.add_parser("list", help="list registered nodes")
    ls.add_argument("--json", action="store_true")
    _add_data_dir(ls)
    rv = nsub.add_parser("revoke", help="revoke a node's key (refused from the next request)")
    rv.add_argument("node_id")
    _add_data_dir(rv)
    rot = nsub.add_parser("rotate", help="give a node a new key; prints it on the last line "
                                         "(the old key keeps working for the grace period)")
    rot.add_argument("node_id")
    rot.add_argument("--now", action="store_true", help="the old key stops working at once "
                                                        "(a stolen key)")
    rot.add_argument("--grace", metavar="DURATION", help="how long the old key keeps working "
                     "(default FLEET_CENTRAL_KEY_GRACE, 7d)")
    rot.add_argument("--expires", metavar="DURATION", help="the new key's life (default "
                     "FLEET_CENTRAL_KEY_LIFETIME)")
    _add_data_dir(rot)
    devices = sub.add_parser("devices", help="the right to deletion: remove a device's data")
    dsub = devices.add_subparsers(dest="devices_cmd", required=True, metavar="ACTION")
    dele = dsub.add_parser("delete", help="delete one device's data from every backend it "
                           "reached (PostgreSQL or the embedded store, VictoriaMetrics, Loki, "
                           "ClickHouse, Valkey); audit-logged; safe to run again")
    dele.add_argument("device")
    dele.add_argument("--org", required=True, help="the device's organisation")
    dele.add_argument("--yes", action="store_true", help="do not ask (needed without a "
                                                         "terminal)")
    dele.add_argument("--json", action="store_true", help="the report as JSON")
    _add_data_dir(dele)
    vma = sub.add_parser("vmauth-config", help="write a vmauth config: one user per "
                         "organisation, its queries limited to its own series")
    vma.add_argument("--org", action="append", default=[], metavar="ORG",
                     help="an organisation (repeat; default: every one with a node)")
    vma.add_argument("--vm-url", default="", help="the VictoriaMetrics vmauth forwards to "
                                                  "(default VICTORIA_METRICS_URL)")
    vma.add_argument("--out", metavar="FILE", help="write it here (mode 0600) instead of "
                                                   "printing it")
    _add_data_dir(vma)
    audit = sub.add_parser("audit", help="read the audit log: admin actions, key rotations, "
                                         "migrations, deletions, refused keys")
    audit.add_argument("--since", default="24h", metavar="DURATION",
                       help="entries this recent (e.g. 1h, 7d; default 24h)")
    audit.add_argument("--node", default="", help="only this node's entries")
    audit.add_argument("--limit", type=int, default=1000, help="at most this many, the newest "
                                                               "(default 1000)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_data_dir(audit)
    return p


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    tune_gc()  # batches allocate ~100k objects each; the caches hold millions more
    files = settings.tls_files()
    tls = ServerTLS(files) if files is not None else None  # TLSError names the variable
    pipeline = build_pipeline(settings, args.data_dir)
    log = logging.getLogger("fleet_central")
    log.info("routing: %s", settings.describe())
    if tls is None and not is_loopback_host(split_listen(args.listen)[0]):
        log.warning("serving plain HTTP on %s: node keys and data cross the network "
                    "unencrypted; set FLEET_CENTRAL_TLS_CERT and FLEET_CENTRAL_TLS_KEY (or "
                    "terminate TLS in front of central)", args.listen)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_central, pipeline, args.listen, tls=tls,
                                             key_policy=settings.key_policy()))
        nursery.start_soon(_reload_on_sighup, handle)
        await stop_on_signal(handle.stop, "fleet_central")
        nursery.cancel_scope.cancel()


async def _reload_on_sighup(handle: CentralHandle) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            handle.reload_tls()


def _confirmed(args: argparse.Namespace) -> bool:
    if not sys.stdin.isatty():
        print("fleet-central devices delete: deletion cannot be undone; add --yes to confirm "
              "without a terminal", file=sys.stderr)
        return False
    answer = input(f"delete every trace of device {args.device!r} of organisation "
                   f"{args.org!r} from every backend? type the device name to confirm: ")
    if answer.strip() != args.device:
        print("not confirmed; nothing deleted", file=sys.stderr)
        return False
    return True


async def _delete_device(args: argparse.Namespace, settings: Settings, code: list[int]
                         ) -> None:
    pipeline = build_pipeline(settings, args.data_dir)
    async with trio_asyncio.open_loop():
        await pipeline.open()
        try:
            outcomes = await delete_everywhere(pipeline.state, list(pipeline.sinks), args.org,
                                               args.device, cli_actor())
        finally:
            await pipeline.close()
    if args.json:
        print(json.dumps({"org": args.org, "device": args.device,
                          "backends": [o.to_json() for o in outcomes]}, indent=2))
    else:
        print(f"device {args.device!r} of organisation {args.org!r}:")
        for o in outcomes:
            print(f"  {o.line()}")
    failed = [o.backend for o in outcomes if o.error]
    if failed:
        print(f"fleet-central: not deleted from {', '.join(failed)}; fix that and run the same "
              "command again (it is safe to repeat)", file=sys.stderr)
        code[0] = 1


async def _audit_migration(settings: Settings, args: argparse.Namespace,
                           done: list[str]) -> None:
    """ClickHouse migrations go to the state store's audit log (PostgreSQL's own do already)."""
    entry = AuditEntry(int(time.time() * 1000), "migrate", cli_actor(),
                       detail={"applied": done, "backend": "clickhouse"})
    store = state_store(settings, args.data_dir)
    if isinstance(store, PostgresStore):
        async with trio_asyncio.open_loop():
            await store.write_audit([entry])
    else:
        await store.write_audit([entry])


async def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    if not settings.database_url and not settings.clickhouse_url:
        print("nothing to migrate: neither DATABASE_URL nor CLICKHOUSE_URL is set (the "
              "embedded SQLite store creates its schema itself)")
        return
    if settings.database_url:
        pg = PostgresStore(settings.database_url, chunk_seconds=settings.chunk_seconds,
                           retention_days=settings.status_retention_days)
        print("==> PostgreSQL: applying migrations", flush=True)
        async with trio_asyncio.open_loop():
            done = await pg.migrate()
        print(f"    applied: {', '.join(done)}" if done else "    schema is up to date")
    ch = clickhouse(settings)
    if ch is not None:
        print(f"==> ClickHouse: applying migrations to database {ch.db!r}", flush=True)
        try:
            done = await ch.migrate()
            print(f"    applied: {', '.join(done)} (server {'.'.join(map(str, ch.version))})"
                  if done else "    schema is up to date")
            if done:
                await _audit_migration(settings, args, done)
        finally:
            await ch.close()


async def _nodes(args: argparse.Namespace, settings: Settings) -> None:
    store = state_store(settings, args.data_dir)
    if isinstance(store, PostgresStore):
        async with trio_asyncio.open_loop():
            await _nodes_cmd(args, store, settings)
    else:
        await _nodes_cmd(args, store, settings)


async def _nodes_cmd(args: argparse.Namespace, store: object, settings: Settings) -> None:
    where = getattr(store, "path", None) or "PostgreSQL"

    async def call(method: str, *a: object, **kw: object) -> object:
        got = getattr(store, method)(*a, **kw)
        return await got if hasattr(got, "__await__") else got

    if args.cmd == "audit":
        await _audit_cmd(args, call)
        return
    if args.cmd == "vmauth-config":
        await _vmauth_cmd(args, call, settings)
        return
    if args.nodes_cmd == "add":
        expires = _expiry(args.expires, settings)
        key = await call("add_node", args.node_id, args.org, args.site, expires_ms=expires)
        print(f"registered node {args.node_id!r} in organisation {args.org!r} "
              f"({where}); its key expires {_when(expires)}; the API key (shown once, only "
              "its hash is stored):")
        print(key)
    elif args.nodes_cmd == "rotate":
        grace = None if args.now else (settings.key_grace_ms if args.grace is None else
                                       _duration(args.grace, "--grace"))
        key = await call("rotate_key", args.node_id, grace_ms=grace,
                         expires_ms=_expiry(args.expires, settings))
        old = ("no longer works" if grace is None
               else f"keeps working until {_when(int(time.time() * 1000) + grace)}")
        print(f"new API key for node {args.node_id!r} (the old one {old}):")
        print(key)
    elif args.nodes_cmd == "revoke":
        await call("revoke_node", args.node_id)
        print(f"revoked node {args.node_id!r}")
    elif args.nodes_cmd == "list":
        rows = await call("list_nodes")
        assert isinstance(rows, list)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            now = time.time() * 1000
            print(f"{'NODE':<24} {'ORG':<16} {'SITE':<12} {'STATE':<8} {'LAST SEEN':<20} "
                  f"{'KEY AGE':<8} KEY EXPIRES")
            for r in rows:
                state = "revoked" if r["revoked_ms"] else "active"
                made = r.get("key_created_ms")
                age = f"{(now - made) / 86_400_000:.0f}d" if isinstance(made, int) else "-"
                exp = _when(r.get("key_expires_ms"))
                if r.get("next_key_offered_ms"):
                    exp += " (next key offered)"
                print(f"{r['node_id']!s:<24} {r['org']!s:<16} {r['site']!s:<12} {state:<8} "
                      f"{_when(r['last_seen_ms'], 'never'):<20} {age:<8} {exp}")


def _when(ms: object, none: str = "never") -> str:
    if not isinstance(ms, int):
        return none
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _duration(text: str, what: str) -> int:
    try:
        return parse_duration(text)
    except ValueError:
        raise SettingsError(f"{what} {text!r} must be a duration like 7d or 12h") from None


def _expiry(text: str | None, settings: Settings) -> int | None:
    """The expiry (epoch ms) of a key made now with life ``text`` (or the setting's)."""
    life = settings.key_lifetime_ms if text is None else parse_lifetime(text, "--expires")
    return None if life is None else int(time.time() * 1000) + life


async def _vmauth_cmd(args: argparse.Namespace, call: Callable[..., Awaitable[object]],
                      settings: Settings) -> None:
    url = args.vm_url or settings.victoria_metrics_url
    if not url:
        raise SettingsError("vmauth-config needs VICTORIA_METRICS_URL (or --vm-url)")
    if "/insert/" in url:
        raise SettingsError("a VictoriaMetrics cluster has tenants of its own (accountIDs): "
                            "vmauth-config is for the single-node server")
    orgs = args.org
    if not orgs:
        rows = await call("list_nodes")
        assert isinstance(rows, list)
        orgs = sorted({str(r["org"]) for r in rows})
    if not orgs:
        raise SettingsError("no organisation has a node yet: register one or pass --org")
    text, _ = vmauth_config(url.split("/api/")[0], orgs)
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {args.out} (mode 0600): users {', '.join(sorted(set(orgs)))}; run "
              f"vmauth -auth.config={args.out}")
    else:
        print(text, end="")


async def _audit_cmd(args: argparse.Namespace, call: Callable[..., Awaitable[object]]
                     ) -> None:
    since = int(time.time() * 1000) - _duration(args.since, "--since")
    entries = await call("read_audit", since, args.node, args.limit)
    assert isinstance(entries, list)
    for e in entries:
        if args.json:
            print(json.dumps(e.to_json(), sort_keys=True))
        else:
            detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))
            print(f"{e.to_json()['at']}  {e.action:<14} {e.actor:<28} "
                  f"{(e.org + '/' if e.org else '') + e.node_id:<28} {e.source:<21} {detail}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.log_level)  # no line per backend request at info
    return cli_exit(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"fleet-central: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "run":
        # e.g. the listen address is in use, the data dir not writable, an old schema
        return run_reporting(_serve, args, settings,
                             expected=(OSError, CentralError, TLSError),
                             prefix="fleet-central: cannot start")
    expected = (RegistryError, SchemaOutdated, SinkUnavailable, OSError, SettingsError)
    if args.cmd == "migrate":
        return run_reporting(_migrate, settings, args, expected=expected,
                             prefix="fleet-central")
    if args.cmd == "devices":
        if not args.yes and not _confirmed(args):
            return 1
        code = [0]
        got = run_reporting(_delete_device, args, settings, code, expected=expected,
                            prefix="fleet-central")
        return got or code[0]
    return run_reporting(_nodes, args, settings, expected=expected, prefix="fleet-central")


if __name__ == "__main__":
    sys.exit(main())
