"""The forwarder against scripted central answers (httpx.MockTransport), on a virtual clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from edge_node.buffer import BufferService, Store
from edge_node.forward import Forwarder
from edge_node.metrics import Registry
from edge_node.model import IngestBatch
from edge_node.wire import decode_batch, decode_segment
from tests.conftest import edge_config
from tests.seams import InlineRunner

NOW = 1_795_839_600_000


def _batch(n: int) -> IngestBatch:
    b = IngestBatch()
    for i in range(n):
        b.metric_keys.append((("__name__", "m"), ("device", f"d{i % 3}")))
        b.metric_ts.append(NOW + i)
        b.metric_values.append(float(i))
    return b


async def _run(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response],
               until: Callable[[BufferService, Forwarder], bool],
               prepare: Callable[[Store], None] | None = None
               ) -> tuple[Store, Forwarder]:
    """Run a buffer and a forwarder until ``until``; the buffer's store for the checks."""
    cfg = edge_config(tmp_path)
    reg = Registry("t")
    store = Store(cfg.db_path)
    buf = BufferService(store, cfg.buffer, reg, runner=InlineRunner(),
                        merge_runner=InlineRunner())
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    fwd = Forwarder(cfg, buf, client, reg)
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        n.start_soon(fwd.run)
        await buf.write(_batch(30))
        if prepare is not None:
            prepare(store)
        await buf.roll_now()
        with trio.fail_after(3600):
            while not until(buf, fwd):
                await trio.sleep(0.5)
        n.cancel_scope.cancel()
    return store, fwd


async def test_retries_honour_retry_after_and_ack_once(tmp_path: Path,
                                                       autojump_clock: trio.abc.Clock) -> None:
    seen: list[tuple[float, int]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        b = decode_batch(req.content)
        seen.append((trio.current_time(), b.seq))
        if len(seen) <= 2:
            return httpx.Response(503, json={"error": "backend down"},
                                  headers={"Retry-After": "30"})
        return httpx.Response(200, json={"status": "applied"})

    t0 = trio.current_time()
    store, fwd = await _run(tmp_path, handler, lambda b, f: f.m_acked.get("metrics") > 0)
    assert [s for _, s in seen] == [seen[0][1]] * 3  # same batch, same seq each time
    assert seen[1][0] - seen[0][0] >= 30 and seen[2][0] - seen[1][0] >= 30
    assert seen[2][0] - t0 < 120
    assert fwd.m_acked.get("metrics") == 30
    assert fwd.m_errors.get("503") == 2
    assert store.stats().pending["metrics"] == 0


async def test_network_errors_back_off_and_never_give_up(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    calls: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(trio.current_time())
        if len(calls) < 12:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={})

    _, fwd = await _run(tmp_path, handler, lambda b, f: f.m_acked.get("metrics") > 0)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert max(gaps) <= 0.5 + 0.05  # capped at backoff_max_s (config in edge_config)
    assert fwd.m_errors.get("network") == 11


async def test_malformed_batch_goes_to_dead_letters(tmp_path: Path,
                                                    autojump_clock: trio.abc.Clock) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "segment is inconsistent"})

    store, fwd = await _run(tmp_path, handler, lambda b, f: f.m_dead.get("metrics") > 0)
    (dl,) = store.dead_letters()
    assert dl["reason"] == "segment is inconsistent" and dl["n"] == 30
    assert store.next_segment() is None


async def test_new_series_definitions_travel_once(tmp_path: Path,
                                                  autojump_clock: trio.abc.Clock) -> None:
    defs_seen: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        defs_seen.append(len(decode_batch(req.content).series_defs))
        return httpx.Response(200, json={})

    store, _ = await _run(tmp_path, handler, lambda b, f: f.m_acked.get("metrics") > 0)
    assert defs_seen == [3]  # the first send carries the 3 new series
    assert store.unacked_series_count() == 0  # ...and they are known to central now


async def test_missing_series_are_resent(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Central lost its dictionary (say, restored from an old backup): it answers 409."""
    defs_seen: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        b = decode_batch(req.content)
        defs_seen.append(len(b.series_defs))
        if not b.series_defs:
            ids = sorted(set(decode_segment(b.segment).series.tolist()))
            return httpx.Response(409, json={"missing_series": ids})
        return httpx.Response(200, json={})

    def forget(store: Store) -> None:  # the edge believes central knows every series
        store.mark_series([1, 2, 3], True)

    _, fwd = await _run(tmp_path, handler, lambda b, f: f.m_acked.get("metrics") > 0, forget)
    assert defs_seen == [0, 3]
    assert fwd.m_acked.get("metrics") == 30


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_keep_the_data(tmp_path: Path, autojump_clock: trio.abc.Clock,
                                           status: int) -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": "unknown or revoked node key"})

    store, fwd = await _run(tmp_path, handler, lambda b, f: len(calls) >= 5)
    assert store.stats().pending["metrics"] == 30
    assert "unknown or revoked" in fwd.last_error


async def test_dead_letters_cli_lists_and_requeues(tmp_path: Path,
                                                   autojump_clock: trio.abc.Clock) -> None:
    import subprocess
    import sys

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "segment is inconsistent"})

    store, _ = await _run(tmp_path, handler, lambda b, f: f.m_dead.get("metrics") > 0)
    store.close()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'node_id = "edge-1"\ndata_dir = "{tmp_path / "edge"}"\n'
                   '[central]\nurl = "http://127.0.0.1:9"\napi_key = "k"\n')

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "edge_node.cli", "dead-letters", "--config",
                               str(cfg), *args], check=True, capture_output=True,
                              text=True).stdout

    listing = cli()
    assert "segment is inconsistent" in listing and "1 dead letters" in listing
    assert "1 dead letters requeued" in cli("--requeue")
    assert "0 dead letters" in cli()


async def test_dead_letters_cli_drops_one_for_good_and_counts_it(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    import subprocess
    import sys

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "segment is inconsistent"})

    store, _ = await _run(tmp_path, handler, lambda b, f: f.m_dead.get("metrics") > 0)
    (dl,) = store.dead_letters()
    store.close()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'node_id = "edge-1"\ndata_dir = "{tmp_path / "edge"}"\n'
                   '[central]\nurl = "http://127.0.0.1:9"\napi_key = "k"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_node.cli", "dead-letters", "--config",
                               str(cfg), *args], capture_output=True, text=True, check=False)

    missing = cli("--drop", "99999")
    assert missing.returncode == 1 and "no dead letter 99999" in missing.stderr
    dropped = cli("--drop", str(dl["seq"]))
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped dead letter {dl['seq']}: 30 metrics rows (segment is inconsistent)" in \
        dropped.stdout and "dropped by the operator" in dropped.stderr
    assert "0 dead letters" in cli().stdout
    again = Store(tmp_path / "edge" / "buffer.sqlite3")
    assert again.counters()["dropped_dead_letters_metrics"] == 30  # counted, for the record
    again.close()
