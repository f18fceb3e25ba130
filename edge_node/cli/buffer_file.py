"""The commands that open the node's buffer file directly (the node may be stopped): ``buffer
check`` / ``buffer salvage``, and ``dead-letters`` (list, or requeue what central refused)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .format import fmt_utc, print_table
from .node_client import load_config

log = logging.getLogger("fleet_edge.cli")


def buffer_command(args: argparse.Namespace) -> int:
    """``buffer check``: read every part of the buffer file; ``buffer salvage``: copy what is
    readable into a new one. Prints what was read and lost, and every problem."""
    from ..buffer import check, salvage

    cfg = load_config(args.config)
    path = cfg.db_path
    if not path.exists():
        print(f"fleet-edge buffer: no buffer at {path}", file=sys.stderr)
        return 1

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    if args.action == "check":
        print(f"checking {path} (integrity, every segment, journal row and series block)")
        report = check(path, progress)
    else:
        out = Path(args.output) if args.output else path.with_name(path.name + ".salvaged")
        print(f"salvaging {path} into {out} (stop the node first)")
        try:
            report = salvage(path, out, progress)
        except FileExistsError as exc:
            print(f"fleet-edge buffer: {exc}", file=sys.stderr)
            return 1
    for table in sorted(set(report.ok) | set(report.lost)):
        print(f"  {table:<15} {report.ok.get(table, 0):>9,} read"
              + (f", {report.lost[table]:,} unreadable" if report.lost.get(table) else ""))
    for kind in sorted(set(report.rows_ok) | set(report.rows_lost)):
        print(f"  {kind:<15} {report.rows_ok.get(kind, 0):>9,} rows kept"
              + (f", {report.rows_lost[kind]:,} lost" if report.rows_lost.get(kind) else ""))
    for p in report.problems[:50]:
        print(f"  problem: {p}")
    if args.action == "salvage":
        print(f"salvaged into {out}; to use it: mv {out} {path} (keep the damaged file aside)")
        return 0
    print("buffer OK" if not report.problems else f"{len(report.problems)} problem(s)")
    return 0 if not report.problems else 1


def dead_letters(args: argparse.Namespace) -> int:
    """List the dead letters, (--requeue) send them again under new sequence numbers, or
    (--drop) delete them for good (each logged to stderr and counted in the buffer)."""
    from ..buffer import drop_dead_letters, list_dead_letters, requeue_dead_letters

    cfg = load_config(args.config)
    if not cfg.db_path.exists():
        print(f"fleet-edge: no buffer at {cfg.db_path}", file=sys.stderr)
        return 1
    if args.drop:
        gone = drop_dead_letters(cfg.db_path, args.drop, synchronous=cfg.buffer.synchronous)
        for seq, kind, n, reason in gone:
            print(f"dropped dead letter {seq}: {n} {kind} rows ({reason})")
            log.warning("dead letter %d dropped by the operator: %d %s rows (%s)", seq, n,
                        kind, reason)
        missing = sorted(set(args.drop) - {g[0] for g in gone})
        if missing:
            print(f"fleet-edge: no dead letter {', '.join(map(str, missing))}", file=sys.stderr)
        print(f"{len(gone)} dead letters dropped")
        return 1 if missing else 0
    if args.requeue is not None:
        moved = requeue_dead_letters(cfg.db_path, args.requeue or None,
                                     synchronous=cfg.buffer.synchronous)
        for old, new in moved:
            print(f"requeued dead letter {old} as segment {new}")
        print(f"{len(moved)} dead letters requeued")
        return 0
    rows = list_dead_letters(cfg.db_path)
    return print_table(rows, args.json,
                       f"{'SEQ':>8} {'KIND':<10} {'ROWS':>9} {'FAILED (UTC)':<20} REASON",
                       lambda r: f"{r['seq']:>8} {r['kind']!s:<10} {r['n']:>9} "
                       f"{fmt_utc(r['failed_ms']):<20} {r['reason']}", "dead letters")
