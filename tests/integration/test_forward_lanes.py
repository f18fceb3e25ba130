"""After a long outage, live data first; data older than its backend accepts is not sent.

The forwarder against a scripted central (httpx.MockTransport) on a virtual clock, the buffer's
wall clock moved by the test (an hour of outage passes in no time).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import trio

from edge_node.buffer import BufferService, Store
from edge_node.config import EdgeConfig
from edge_node.forward import Forwarder
from edge_node.metrics import Registry
from edge_node.model import IngestBatch
from edge_node.wire import decode_batch
from tests.conftest import edge_config
from tests.seams import InlineRunner

T0 = 1_795_839_600.0  # wall clock at the start, seconds
DAY_S = 86_400


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def metrics(ts_s: float, n: int = 200) -> IngestBatch:
    b = IngestBatch()
    for i in range(n):
        b.metric_keys.append((("__name__", f"m{i % 20}"), ("device", f"d{i % 7}")))
        b.metric_ts.append(int(ts_s * 1000) + i)
        b.metric_values.append(float(i) * 1.37)
    return b


def logs(ts_s: float, n: int = 5) -> IngestBatch:
    b = IngestBatch()
    for i in range(n):
        b.log_keys.append((("app", "pumpd"), ("device", "p-1")))
        b.log_ts.append(int(ts_s * 1000) + i)
        b.log_lines.append(f"line {i}".encode())
    return b


class Central:
    """Answers 503 while ``down``; records the batches it applied, in order."""

    def __init__(self) -> None:
        self.down = True
        self.applied: list[tuple[int, str, int]] = []  # (seq, kind, rows)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503, json={"error": "down"}, headers={"Retry-After": "1"})
        b = decode_batch(request.content)
        self.applied.append((b.seq, b.kind, b.rows))
        return httpx.Response(200, json={"status": "applied", "seq": b.seq})


def node(tmp_path: Path, wall: Wall, central: Central, merge: bool = True,
         **central_cfg: object) -> tuple[EdgeConfig, Store, BufferService, Forwarder]:
    cfg = edge_config(tmp_path, buffer={} if merge else {"merge_after_s": 10.0**9})
    cfg = dataclasses.replace(cfg, central=dataclasses.replace(cfg.central, **central_cfg))
    reg = Registry("t")
    store = Store(cfg.db_path, clock=wall)
    buf = BufferService(store, cfg.buffer, reg, clock=wall, runner=InlineRunner(),
                        merge_runner=InlineRunner())
    fwd = Forwarder(cfg, buf, httpx.AsyncClient(transport=httpx.MockTransport(central)), reg,
                    clock=wall)
    return cfg, store, buf, fwd


async def test_live_data_goes_out_beside_a_draining_backlog(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    wall, central = Wall(), Central()
    # a metered link: 2 KB/s, a quarter kept for live data
    # no merging: the backlog stays 40 segments in order (a merged one gets a newer seq)
    _, store, buf, fwd = node(tmp_path, wall, central, merge=False, max_bytes_per_s=2048.0,
                              live_share=0.25, live_window_s=60.0)
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        n.start_soon(fwd.run)
        for _ in range(40):  # the site offline: the backlog builds, segment by segment
            wall.now += 90
            await buf.write(metrics(wall.now))
            await buf.roll_now()
        backlog = [r[0] for r in store.conn.execute("SELECT seq FROM segments ORDER BY seq")]
        assert len(backlog) == 40
        central.down = False  # the link is back
        await trio.sleep(2)
        wall.now += 30
        await buf.write(metrics(wall.now))  # a device reports now
        await buf.roll_now()
        (live_seq,) = [r[0] for r in store.conn.execute(
            "SELECT seq FROM segments WHERE seq > ?", (backlog[-1],))]
        with trio.fail_after(3600):
            while store.conn.execute("SELECT count(*) FROM segments").fetchone()[0]:
                await trio.sleep(0.5)
        n.cancel_scope.cancel()
    order = [seq for seq, _, _ in central.applied]
    assert sorted(order) == sorted([*backlog, live_seq])  # everything, once
    # the live segment went out within the first few, not behind the whole backlog
    # the live segment went out among the first few, not behind the whole backlog (without
    # the live lane it is the 41st)
    assert order.index(live_seq) < 10, order
    assert fwd.m_live.get("metrics") >= 200  # the live lane sent it (and the freshest backlog)
    assert fwd.link.waited_s > 0  # the cap was in force


async def test_without_a_backlog_one_lane_sends_in_order(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    wall, central = Wall(), Central()
    central.down = False
    _, _, buf, fwd = node(tmp_path, wall, central)
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        n.start_soon(fwd.run)
        for _ in range(10):
            wall.now += 1
            await buf.write(metrics(wall.now, 20))
            await buf.roll_now()
            await trio.sleep(1)
        with trio.fail_after(600):
            while len(central.applied) < 10:
                await trio.sleep(0.5)
        n.cancel_scope.cancel()
    order = [seq for seq, _, _ in central.applied]
    assert order == sorted(order) and fwd.m_live.get("metrics") == 0


async def test_logs_older_than_loki_accepts_are_dropped_and_counted(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    wall, central = Wall(), Central()
    _, store, buf, fwd = node(tmp_path, wall, central)  # logs_max_age_s: a week (Loki's)
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        n.start_soon(fwd.run)
        await buf.write(logs(wall.now - 8 * DAY_S))  # written during a long outage
        await buf.roll_now()
        await buf.write(logs(wall.now - 6 * DAY_S))
        await buf.roll_now()
        await buf.write(metrics(wall.now - 8 * DAY_S, 10))  # metrics: no limit by default
        await buf.roll_now()
        central.down = False
        with trio.fail_after(600):
            while store.conn.execute("SELECT count(*) FROM segments").fetchone()[0]:
                await trio.sleep(0.5)
        n.cancel_scope.cancel()
    assert sorted((kind, rows) for _, kind, rows in central.applied) == [("logs", 5),
                                                                        ("metrics", 10)]
    assert fwd.m_expired.get("logs") == 5
    assert store.counters()["expired_logs"] == 5  # kept across restarts


async def test_too_old_keep_makes_a_dead_letter_that_says_why(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    wall, central = Wall(), Central()
    central.down = False
    _, store, buf, fwd = node(tmp_path, wall, central, too_old="keep",
                              metrics_max_age_s=30 * DAY_S)
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        n.start_soon(fwd.run)
        await buf.write(metrics(wall.now - 31 * DAY_S, 10))
        await buf.roll_now()
        with trio.fail_after(600):
            while not store.dead_letters():
                await trio.sleep(0.5)
        n.cancel_scope.cancel()
    (dl,) = store.dead_letters()
    assert "older than the metrics backend accepts" in dl["reason"]
    assert "metrics_max_age_s" in dl["reason"] and central.applied == []


async def test_two_lanes_never_claim_the_same_segment(tmp_path: Path) -> None:
    """Both lanes asking at once, the store on a real worker thread: one gets the segment,
    the other nothing (before the claim lock, both got it and sent it twice)."""
    from edge_node.runtime import ThreadRunner

    wall = Wall()
    cfg = edge_config(tmp_path, buffer={"merge_after_s": 10.0**9})
    store = Store(cfg.db_path, clock=wall)
    buf = BufferService(store, cfg.buffer, Registry("t"), clock=wall, runner=ThreadRunner(1),
                        merge_runner=InlineRunner())
    got: list[object] = []
    async with trio.open_nursery() as n:
        await n.start(buf.serve)
        await buf.write(metrics(wall.now, 20))
        await buf.roll_now()

        async def claim(fresh: bool) -> None:
            seg = await buf.claim(fresh_since_ms=int((wall.now - 60) * 1000) if fresh else None)
            got.append(seg.seq if seg is not None else None)

        n.start_soon(claim, True)
        n.start_soon(claim, False)
        with trio.fail_after(10):
            while len(got) < 2:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert sorted(got, key=str) == [1, None]
