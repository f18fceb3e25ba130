"""Stream aggregation inside the buffer: rollup segments, keep_raw, restarts (checkpoint +
replay log), failed transactions, rule changes and compaction under disk pressure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_node.aggregate import parse_rules
from edge_node.aggregate.roll_stage import RollupStage
from edge_node.buffer import BufferService, Store
from edge_node.config import BufferConfig
from edge_node.metrics import Registry
from edge_node.model import IngestBatch, SeriesKey
from edge_node.wire import decode_segment
from tests.seams import InlineRunner

MIN = 60_000
T0 = 1_795_839_600_000  # a whole hour

RULES = [
    {"name": "cpu5m", "match": "cpu", "interval": "5m", "by": ["site"],
     "outputs": ["avg", "max", "count_series", "quantiles(0.5, 0.99)"]},
    {"name": "req1m", "match": "req_total", "interval": "1m",
     "outputs": ["increase", "total", "rate_avg"], "keep_raw": False},
]


def key(name: str, **labels: str) -> SeriesKey:
    return tuple(sorted({"__name__": name, **labels}.items()))


@dataclass
class Buf:
    """The buffer's store with the aggregation stage the roll runs (what the service does,
    step by step on the test's clock)."""

    store: Store
    stage: RollupStage


def open_buffer(path: Path, rules: list[dict[str, Any]] = RULES) -> Buf:
    store = Store(path)
    stage = RollupStage(parse_rules(rules), store.series.key, checkpoint_interval_s=3600)
    stage.load(*store.agg_saved())
    return Buf(store, stage)


def append(buf: Buf, rows: list[tuple[SeriesKey, int, float]]) -> None:
    b = IngestBatch(metric_keys=[k for k, _, _ in rows], metric_ts=[t for _, t, _ in rows],
                    metric_values=[v for _, _, v in rows])
    series = buf.store.series
    sids = series.ids(b.metric_keys)
    new = series.unsaved()
    buf.store.append(new, [(b, (sids, [], []))])
    series.saved(len(new))


def roll(buf: Buf, now: int, force: bool = False) -> None:
    buf.store.roll(stage=buf.stage, now=now, force_checkpoint=force)


def workload(minute: int) -> list[tuple[SeriesKey, int, float]]:
    """One minute of samples: 4 CPUs on 2 sites every 10 s, 2 request counters."""
    rows = []
    for s in range(6):
        t = T0 + minute * MIN + s * 10_000
        for d in range(4):
            rows.append((key("cpu", site=f"s{d % 2}", device=f"d{d}"), t,
                         float((minute * 7 + s * 3 + d * 11) % 97)))
        for d in range(2):
            rows.append((key("req_total", device=f"d{d}"), t, float(minute * 600 + s * 100 + d)))
    return rows


def outputs(store: Store) -> dict[tuple[str, int], float]:
    """Every rollup row in the buffer as {name{labels}: value}."""
    res = {}
    labels = dict(store.series.labels(range(1, 10_000)))
    for (blob,) in store.conn.execute("SELECT blob FROM segments WHERE kind='rollups'"):
        cols = decode_segment(blob)
        assert cols.values is not None
        for sid, t, v in zip(cols.series.tolist(), cols.ts.tolist(), cols.values.tolist(),
                             strict=True):
            lbl = dict(labels[sid])
            name = lbl.pop("__name__")
            res[(f"{name}{sorted(lbl.items())}", t)] = v
    return res


def raw_rows(store: Store, summarised: int | None = None) -> int:
    q = "SELECT coalesce(sum(n), 0) FROM segments WHERE kind='metrics'"
    if summarised is not None:
        q += f" AND summarised={summarised}"
    return int(store.conn.execute(q).fetchone()[0])


LAG = 5_000


def feed_minute(buf: Buf, m: int) -> None:
    """A minute's samples in two requests, each rolled: the first roll closes the 1m window
    before last (a checkpoint), the second closes nothing, so the replay log holds samples."""
    rows = workload(m)
    half = len(rows) // 2
    append(buf, rows[:half])
    roll(buf, T0 + m * MIN + LAG)
    append(buf, rows[half:])
    roll(buf, T0 + m * MIN + LAG + 3000)


def uninterrupted(tmp_path: Path, minutes: int = 12) -> dict[tuple[str, int], float]:
    buf = open_buffer(tmp_path / "ref.sqlite3")
    for m in range(minutes):
        feed_minute(buf, m)
    roll(buf, T0 + 60 * MIN)
    out = outputs(buf.store)
    buf.store.close()
    return out


def test_rollups_keep_raw_and_priority(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.sqlite3")
    for m in range(6):
        append(buf, workload(m))
        roll(buf, T0 + m * MIN + 55_000)
    roll(buf, T0 + 6 * MIN)
    out = outputs(buf.store)
    # cpu5m: window [0, 5m) closed at 5m10s; its figures cover 5 minutes x 6 x 2 devices/site
    assert out[("cpu:5m_by_site_count_series[('site', 's0')]", T0 + 5 * MIN)] == 2
    assert ("cpu:5m_by_site_quantiles[('quantile', '0.99'), ('site', 's1')]",
            T0 + 5 * MIN) in out
    # req1m (keep_raw false): per-device increase each minute: 5 x 100 within, 100 across
    assert out[("req_total:1m_increase[('device', 'd0')]", T0 + 2 * MIN)] == 600
    # raw cpu samples stay (summarised: the rollups cover them); raw req_total ones are gone
    assert raw_rows(buf.store) == 6 * 24
    assert raw_rows(buf.store, summarised=1) == 6 * 24
    first = buf.store.next_segment()
    assert first is not None and first.kind == "rollups"  # rollups are forwarded first
    assert buf.store.counters()["rollups_made"] == len(out)


@pytest.mark.parametrize("crash_after", [1, 4, 5, 7])
def test_restart_anywhere_changes_no_output(tmp_path: Path, crash_after: int) -> None:
    """Reopen the buffer (no clean shutdown: no final checkpoint) after any minute: the
    checkpoint plus the replay log rebuild the state exactly."""
    ref = uninterrupted(tmp_path)
    path = tmp_path / "b.sqlite3"
    buf = open_buffer(path)
    for m in range(12):
        feed_minute(buf, m)
        if m == crash_after:
            buf.store.close()  # like kill -9 after the roll's commit
            buf = open_buffer(path)
            assert buf.stage is not None and buf.stage.replayed > 0
    roll(buf, T0 + 60 * MIN)
    assert outputs(buf.store) == pytest.approx(ref)


def test_journal_not_yet_rolled_is_aggregated_after_restart(tmp_path: Path) -> None:
    ref = uninterrupted(tmp_path)
    path = tmp_path / "b.sqlite3"
    buf = open_buffer(path)
    for m in range(12):
        if m == 6:
            rows = workload(m)
            half = len(rows) // 2
            append(buf, rows[:half])
            roll(buf, T0 + m * MIN + LAG)
            append(buf, rows[half:])
            buf.store.close()  # committed to the journal, never rolled
            buf = open_buffer(path)
            roll(buf, T0 + m * MIN + LAG + 3000)
            continue
        feed_minute(buf, m)
    roll(buf, T0 + 60 * MIN)
    assert outputs(buf.store) == pytest.approx(ref)


def test_failed_transaction_reloads_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    ref = uninterrupted(tmp_path)
    buf = open_buffer(tmp_path / "b.sqlite3")
    store = buf.store
    real = store.insert_segment
    calls = {"n": 0}

    def flaky(*a: Any, **k: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk I/O error")
        return real(*a, **k)

    for m in range(12):
        if m != 3:
            feed_minute(buf, m)
            continue
        append(buf, workload(m))
        monkeypatch.setattr(store, "insert_segment", flaky)
        with pytest.raises(OSError, match="disk I/O"):
            roll(buf, T0 + m * MIN + LAG)  # fails after the aggregator took the chunk
        monkeypatch.setattr(store, "insert_segment", real)
        roll(buf, T0 + m * MIN + LAG)  # the failed chunk is still in the journal
        roll(buf, T0 + m * MIN + LAG + 3000)
    roll(buf, T0 + 60 * MIN)
    assert outputs(store) == pytest.approx(ref)


def test_checkpoint_empties_the_replay_log_and_rule_changes(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = open_buffer(path)
    append(buf, workload(0))
    roll(buf, T0 + 30_000)
    assert buf.store.agg_saved()[1]  # logged, no checkpoint yet
    roll(buf, T0 + 40_000, force=True)
    states, log = buf.store.agg_saved()
    assert len(states) == 2 and not log
    buf.store.close()
    # change req1m's interval (a new rule), keep cpu5m: cpu5m resumes, req1m starts afresh
    changed = [RULES[0], {**RULES[1], "interval": "2m"}]
    buf = open_buffer(path, changed)
    assert buf.stage is not None
    summary = {s["name"]: s for s in buf.stage.summary()}
    assert summary["cpu5m"]["samples"] == 24 and summary["req1m"]["samples"] == 0
    roll(buf, T0 + 50_000, force=True)
    assert set(buf.store.agg_saved()[0]) == {r.fingerprint for r in parse_rules(changed)}


def test_compaction_before_dropping(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.sqlite3")
    for m in range(40):
        append(buf, workload(m))
        roll(buf, T0 + m * MIN + 55_000)
    store = buf.store
    summarised = raw_rows(store, summarised=1)
    cut = store.compact_before_ms
    covered = int(store.conn.execute(
        "SELECT sum(n) FROM segments WHERE summarised=1 AND max_ts<?", (cut,)).fetchone()[0])
    assert 0 < covered < summarised  # the open window's raw rows are not covered yet
    rollups_before = outputs(store)
    covered_bytes = int(store.conn.execute(
        "SELECT sum(size) FROM segments WHERE summarised=1 AND max_ts<?", (cut,)).fetchone()[0])
    # a budget that compaction alone can meet: nothing is dropped
    removed = store.enforce_budget(store.used_bytes() - covered_bytes // 2)
    assert 0 < removed["compacted"] <= covered and set(removed) == {"compacted"}
    assert store.counters()["compacted_metrics"] == removed["compacted"]
    # raw rows the rollups do not cover yet were not touched, and the rollups are all there
    assert int(store.conn.execute(
        "SELECT count(*) FROM segments WHERE summarised=1 AND max_ts>=?", (cut,)).fetchone()[0])
    # a budget compaction cannot meet: all covered rows go first, then the oldest raw metrics
    rest = int(store.conn.execute(
        "SELECT coalesce(sum(size), 0) FROM segments WHERE summarised=1 AND max_ts<?",
        (cut,)).fetchone()[0])
    removed = store.enforce_budget(store.used_bytes() - rest - 1)
    assert store.counters()["compacted_metrics"] == covered
    assert removed["metrics"] > 0 and "rollups" not in removed
    assert outputs(store) == rollups_before


def test_rollup_series_defined_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = open_buffer(path)
    append(buf, workload(0))
    roll(buf, T0 + 30_000)
    roll(buf, T0 + 2 * MIN)
    n_out = len(outputs(buf.store))
    assert n_out
    buf.store.close()
    again = Store(path)  # definitions of every rollup series are durable and unacked
    ids = [key for _, key in again.series.labels(again.series.known_ids())]
    names = {k["__name__"] for k in ids}
    assert "req_total:1m_increase" in names
    assert again.unacked_series_count() == len(ids)
    again.close()


async def test_service_close_saves_a_checkpoint(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.sqlite3")
    svc = BufferService(buf.store, BufferConfig(), Registry("t"), runner=InlineRunner(),
                        merge_runner=InlineRunner())
    await svc.set_stage(buf.stage)
    now = int(time.time() * 1000)
    append(buf, [(key("cpu", site="s", device="d"), now - 1000 + i, float(i)) for i in range(5)])
    buf.store.roll(stage=buf.stage)  # on the real clock
    assert buf.store.agg_saved()[1]
    await svc.close()
    assert not buf.store.agg_saved()[1] and buf.store.agg_saved()[0]


def test_rules_checkpoint_at_their_own_pace(tmp_path: Path) -> None:
    """The 1m rule saves its state every minute, the 5m rule every 5 minutes; the replay log
    keeps exactly what the older checkpoint lacks."""
    buf = open_buffer(tmp_path / "b.sqlite3")
    saves: dict[str, list[int]] = {"cpu5m": [], "req1m": []}
    for m in range(12):
        feed_minute(buf, m)
        for name, saved_ms in buf.store.conn.execute("SELECT name, saved_ms FROM agg_state"):
            if not saves[name] or saves[name][-1] != saved_ms:
                saves[name].append(saved_ms)
        states, log = buf.store.agg_saved()
        low = min(log_id for _, log_id in states.values()) if len(states) == 2 else 0
        assert all(entry_id > low for entry_id, _, _ in log)
    assert len(saves["req1m"]) >= 10 and len(saves["cpu5m"]) == 2  # closes at 5m and 10m

