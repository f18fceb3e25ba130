"""The SQLite store, called directly: journal, segments, acks, dead letters, disk budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge_node.buffer import Store
from edge_node.buffer.budget import Candidate, plan_drops
from edge_node.model import IngestBatch
from edge_node.wire import concat_columns, decode_segment, encode_segment

NOW = 1_795_839_600_000


def _batch(n: int, *, device: str = "d", logs: int = 0, hb: bool = False,
           t0: int = NOW) -> IngestBatch:
    b = IngestBatch()
    for i in range(n):
        b.metric_keys.append((("__name__", f"m{i % 10}"), ("device", device)))
        b.metric_ts.append(t0 + i)
        b.metric_values.append(float(i))
    for i in range(logs):
        b.log_keys.append((("device", device), ("level", "info")))
        b.log_ts.append(t0 + i)
        b.log_lines.append(f"line {i} ".encode() + random.randbytes(40).hex().encode())
    if hb:
        b.hb_keys.append((("__name__", "fleet_heartbeat"), ("device", device)))
        b.hb_ts.append(t0)
    return b


class Interner:
    """The ingest side of the buffer, without the service: ids from the store's series
    dictionary, the new definitions committed with the rows."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, *batches: IngestBatch) -> None:
        ids = self.store.series.ids
        tagged = [(b, (ids(b.metric_keys), ids(b.log_keys), ids(b.hb_keys))) for b in batches]
        new = self.store.series.unsaved()
        self.store.append(new, tagged)
        self.store.series.saved(len(new))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "buf.sqlite3")
    yield s
    s.close()


def test_append_roll_forward_ack(store: Store) -> None:
    it = Interner(store)
    it.append(_batch(100, logs=3, hb=True), _batch(50, device="e"))
    assert store.stats().pending == {"alerts": 0, "heartbeats": 1, "rollups": 0, "metrics": 150,
                                     "logs": 3}
    seqs = store.roll()
    assert len(seqs) == 3
    assert store.stats().journal_rows == 0
    first = store.next_segment()
    assert first is not None and first.kind == "heartbeats"  # highest priority first
    cols = decode_segment(first.blob)
    assert len(cols) == 1
    store.ack(first.seq, first.kind, first.n, [])
    nxt = store.next_segment()
    assert nxt is not None and nxt.kind == "metrics" and nxt.n == 150
    assert store.next_segment(exclude={nxt.seq}).kind == "logs"  # type: ignore[union-attr]
    store.ack(nxt.seq, nxt.kind, nxt.n, [1, 2])
    assert store.counters()["acked_metrics"] == 150
    assert store.low_watermark() == seqs[2]


def test_series_and_epoch_survive_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.sqlite3")
    Interner(s).append(_batch(20))
    epoch = s.epoch
    s.close()
    s2 = Store(tmp_path / "b.sqlite3")
    assert len(s2.series) == 10 and s2.series.next_id == 11
    assert s2.epoch == epoch
    assert s2.stats().pending["metrics"] == 20
    s2.close()


def test_seq_is_never_reused(store: Store) -> None:
    it = Interner(store)
    it.append(_batch(5))
    (a,) = store.roll()
    store.ack(a, "metrics", 5)
    it.append(_batch(5))
    (b,) = store.roll()
    assert b > a
    assert store.low_watermark() == b
    store.ack(b, "metrics", 5)
    assert store.low_watermark() == b + 1


def test_dead_letter(store: Store) -> None:
    it = Interner(store)
    it.append(_batch(10))
    (seq,) = store.roll()
    store.dead_letter(seq, "central said: bad")
    assert store.next_segment() is None
    (dl,) = store.dead_letters()
    assert dl["seq"] == seq and dl["reason"] == "central said: bad" and dl["n"] == 10
    assert store.counters()["dead_lettered_metrics"] == 10


def test_budget_drops_oldest_logs_first_never_heartbeats(store: Store) -> None:
    it = Interner(store)
    for i in range(30):
        it.append(_batch(2000, logs=200, hb=True, t0=NOW + i * 10_000, device=f"d{i}"))
        store.roll()
    used = store.used_bytes()
    (logs_bytes,) = store.conn.execute(
        "SELECT sum(size) FROM segments WHERE kind='logs'").fetchone()
    budget = used - logs_bytes // 2  # room for about half the logs
    dropped = store.enforce_budget(budget)
    assert dropped.get("logs", 0) > 0 and "metrics" not in dropped
    assert "heartbeats" not in dropped
    st = store.stats()
    assert st.pending["heartbeats"] == 30
    assert store.used_bytes() <= budget + 64 * 1024
    c = store.counters()
    assert c["dropped_logs"] == dropped["logs"]
    # the oldest went first: the logs that remain are exactly the newest batches' logs
    remaining = sorted((int(decode_segment(b).ts.min()) - NOW) // 10_000 for b in
                       store.read_segments([r[0] for r in store.conn.execute(
                           "SELECT seq FROM segments WHERE kind='logs'")]))
    assert 0 < len(remaining) < 30  # some went, some stayed
    assert remaining == list(range(30 - len(remaining), 30))


def test_budget_then_drops_metrics(store: Store) -> None:
    it = Interner(store)
    for i in range(10):
        it.append(_batch(5000, hb=True, t0=NOW + i * 10_000))
        store.roll()
    dropped = store.enforce_budget(1)
    assert dropped["metrics"] == 50_000
    assert store.stats().pending == {"alerts": 0, "heartbeats": 10, "rollups": 0, "metrics": 0,
                                     "logs": 0}


def test_merge_backlog(store: Store) -> None:
    it = Interner(store)
    for i in range(5):
        it.append(_batch(100, t0=NOW + i * 1000))
        store.roll()
    cands = store.merge_candidates("metrics", older_than_ms=2**62, max_rows=350)
    assert [n for _, n in cands] == [100, 100, 100]
    seqs = [s for s, _ in cands]
    parts = [decode_segment(b) for b in store.read_segments(seqs)]
    cols = concat_columns("metrics", parts)
    new = store.replace_segments(seqs, "metrics", cols, encode_segment(cols))
    assert new > max(seqs)
    assert store.stats().pending["metrics"] == 500
    # a segment already attempted is never merged (central may have applied it)
    store.mark_attempt(new)
    assert store.replace_segments([new], "metrics", cols, encode_segment(cols)) == 0


def test_a_claimed_segment_is_never_merged(store: Store) -> None:
    it = Interner(store)
    for i in range(3):
        it.append(_batch(100, t0=NOW + i * 1000))
        store.roll()
    cands = store.merge_candidates("metrics", older_than_ms=2**62, max_rows=10**6)
    assert len(cands) == 3
    claimed = store.claim_next_segment()  # the forwarder wins the race...
    assert claimed is not None
    seqs = [s for s, _ in cands]
    parts = [decode_segment(b) for b in store.read_segments(seqs)]
    cols = concat_columns("metrics", parts)
    # ...so the merge computed from the stale candidate list must not happen
    assert store.replace_segments(seqs, "metrics", cols, encode_segment(cols)) == 0
    assert store.stats().pending["metrics"] == 300


def test_integrity_check_reports_corrupt_segments(store: Store) -> None:
    it = Interner(store)
    it.append(_batch(10))
    (seq,) = store.roll()
    assert store.integrity_check() == []
    store.conn.execute("UPDATE segments SET blob=x'00' WHERE seq=?", (seq,))
    assert any(f"segment {seq}" in p for p in store.integrity_check())


def test_roll_and_merge_respect_the_batch_size(store: Store) -> None:
    it = Interner(store)
    for i in range(6):  # ~60 kB of random log text per request
        it.append(_batch(0, logs=600, t0=NOW + i * 1000))
    seqs = store.roll(max_bytes=100_000)
    assert len(seqs) >= 3  # the journal was cut into several segments...
    assert store.stats().journal_rows == 0  # ...and nothing was left behind
    sizes = [r[0] for r in store.conn.execute("SELECT size FROM segments")]
    cands = store.merge_candidates("logs", older_than_ms=2**62, max_rows=10**6,
                                   max_bytes=max(sizes) * 2)
    assert 2 <= len(cands) <= len(seqs)
    picked = set(s for s, _ in cands)
    assert sum(sz for (seq, sz) in store.conn.execute("SELECT seq, size FROM segments")
               if seq in picked) <= max(sizes) * 2


def test_requeue_dead_letters_gets_a_new_seq(store: Store) -> None:
    it = Interner(store)
    it.append(_batch(10))
    (seq,) = store.roll()
    store.dead_letter(seq, "central bug")
    [(old, new)] = store.requeue_dead_letters()
    assert old == seq and new > seq
    assert store.dead_letters() == []
    nxt = store.next_segment()
    assert nxt is not None and nxt.seq == new and nxt.n == 10


def test_a_definition_block_never_hides_another(tmp_path: Path) -> None:
    """A roll stores the definition of a rollup output series that a device also sends while
    the group commit that allocated it is still waiting; both blocks then start at the same
    id. Both must be kept, or the other series of the group commit lose their labels."""
    path = tmp_path / "b.sqlite3"
    s = Store(path)
    shared = (("__name__", "cpu:5m_by_site_avg"), ("site", "s0"))  # pre-aggregated upstream
    other = (("__name__", "temp"), ("device", "d1"))
    rollup = (("__name__", "temp:5m_avg"),)
    s.series.ids([shared, other])  # ingest allocates 1 and 2, not yet committed
    waiting = s.series.unsaved()
    _, defs = s.series.ids_durable([shared, rollup])  # the roll: 1 (waiting) and 3 (new)
    with s.tx():
        s.define_series(defs)
    s.append_rows(waiting, [])  # then the group commit of 1 and 2
    s.series.saved(len(waiting))
    s.close()
    again = Store(path)
    known = again.series.labels(again.series.known_ids())
    assert {tuple(sorted(labels.items())) for _, labels in known} == {shared, other, rollup}
    again.close()


def test_plan_drops_leaves_in_flight_segments_and_fits_the_budget() -> None:
    c = [Candidate(s, n=10, size=100) for s in (1, 2, 3)]
    plan = plan_drops(300, 150, [], {"logs": c}, exclude={1})
    assert plan.seqs == [2, 3] and plan.rows == {"logs": 20}


def test_plan_drops_counts_a_compacted_segment_once() -> None:
    m = [Candidate(1, 10, 100), Candidate(2, 10, 100)]
    plan = plan_drops(300, 100, [m[0]], {"metrics": m})
    assert plan.seqs == [1, 2] and plan.rows == {"compacted": 10, "metrics": 10}
