"""Buffer check and salvage: damaged segments and journal rows are reported; salvage keeps the
epoch, the sequence numbers and the series, so nothing central applied is applied twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_node.buffer import Store, check, pack_journal_rows, salvage
from edge_node.model import IngestBatch
from edge_node.wire import decode_segment


def _fill(path: Path) -> Store:
    store = Store(path)
    for i in range(4):
        keys = [(("__name__", "temp"), ("device", f"d{i}"))] * 10
        b = IngestBatch(metric_keys=keys, metric_ts=list(range(1000, 1010)),
                        metric_values=[float(x) for x in range(10)])
        store.append_rows([(i + 1, keys[0])],
                          pack_journal_rows([(b, ([i + 1] * 10, [], []))]))
        store.roll()
    b = IngestBatch(metric_keys=[(("__name__", "temp"), ("device", "d0"))] * 3,
                    metric_ts=[2000, 2001, 2002], metric_values=[1.0, 2.0, 3.0])
    store.append_rows([], pack_journal_rows([(b, ([1] * 3, [], []))]))  # left in the journal
    return store


def test_a_sound_buffer_checks_clean(tmp_path: Path) -> None:
    _fill(tmp_path / "b.sqlite3").close()
    report = check(tmp_path / "b.sqlite3")
    assert report.problems == []
    assert report.ok["segments"] == 4 and report.ok["journal"] == 1
    assert report.rows_ok == {"metrics": 43}


def test_salvage_keeps_epoch_seqs_and_series(tmp_path: Path) -> None:
    store = _fill(tmp_path / "b.sqlite3")
    epoch = store.epoch
    seqs = [s for (s,) in store.conn.execute("SELECT seq FROM segments ORDER BY seq")]
    store.conn.execute("UPDATE segments SET blob=x'00ff00ff' WHERE seq=?", (seqs[1],))
    store.conn.execute("UPDATE journal SET blob=x'c1'")
    store.close()
    report = check(tmp_path / "b.sqlite3")
    assert any(p.startswith(f"segment {seqs[1]}:") for p in report.problems)
    assert any(p.startswith("journal row") for p in report.problems)

    out = tmp_path / "new.sqlite3"
    rep = salvage(tmp_path / "b.sqlite3", out)
    assert rep.ok["segments"] == 3 and rep.lost == {"segments": 1, "journal": 1}
    assert rep.rows_ok["metrics"] == 30 and rep.rows_lost["metrics"] == 10
    new = Store(out)
    try:
        assert new.epoch == epoch  # central still recognises what it applied
        got = [s for (s,) in new.conn.execute("SELECT seq FROM segments ORDER BY seq")]
        assert got == [seqs[0], seqs[2], seqs[3]]
        assert len(new.series) == 4 and new.unacked_series_count() == 4
        for (blob,) in new.conn.execute("SELECT blob FROM segments"):
            assert len(decode_segment(blob)) == 10
        # new segments continue after the highest sequence number ever used
        b = IngestBatch(metric_keys=[(("__name__", "temp"), ("device", "d9"))],
                        metric_ts=[5000], metric_values=[1.0])
        new.append_rows([(99, b.metric_keys[0])], pack_journal_rows([(b, ([99], [], []))]))
        (made,) = new.roll()
        assert made > max(seqs)
    finally:
        new.close()
    assert check(out).problems == []


def test_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _fill(data / "buffer.sqlite3").close()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'node_id = "n"\ndata_dir = "{data}"\n[central]\nurl = "http://x:1"\n'
                   f'api_key = "k"\n')

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_node.cli", "buffer", *a, "--config",
                               str(cfg)], capture_output=True, text=True, timeout=60)

    ok = run("check")
    assert ok.returncode == 0 and "buffer OK" in ok.stdout and "43 rows kept" in ok.stdout
    s = run("salvage")
    assert s.returncode == 0 and "salvaged into" in s.stdout
    assert (data / "buffer.sqlite3.salvaged").exists()
    again = run("salvage")
    assert again.returncode == 1 and "exists" in again.stderr
