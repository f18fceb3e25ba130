"""The link cap (virtual time): the average rate holds, live data never waits behind the
backlog's debt, and the live lane's unused share goes to the backlog."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from edge_node.bandwidth import Bucket, Link

KB = 1000


async def send_all(link: Link, sizes: list[int], *, live: bool) -> list[float]:
    """When each send was allowed."""
    at = []
    for n in sizes:
        await link.send_allowed(n, live=live)
        at.append(trio.current_time())
    return at


async def test_no_cap_never_waits(autojump_clock: trio.testing.MockClock) -> None:
    link = Link(0, 0.25)
    t0 = trio.current_time()
    await send_all(link, [10 << 20] * 100, live=False)
    assert trio.current_time() == t0 and link.waited_s == 0


async def test_the_backlog_averages_the_whole_rate_when_live_is_idle(
        autojump_clock: trio.testing.MockClock) -> None:
    link = Link(20 * KB, 0.25)
    t0 = trio.current_time()
    at = await send_all(link, [10 * KB] * 40, live=False)  # 400 KB at 20 KB/s
    # the first second's bucket goes at once, the rest at the rate (live's share included)
    assert at[-1] - t0 == pytest.approx((400 - 20) / 20, abs=0.6)


async def test_a_batch_larger_than_the_bucket_waits_until_it_is_earned(
        autojump_clock: trio.testing.MockClock) -> None:
    link = Link(10 * KB, 0.25)
    t0 = trio.current_time()
    at = await send_all(link, [100 * KB, 1 * KB], live=False)
    # 100 KB at 10 KB/s with a full 10 KB bucket to start: it goes after 9 s, not at once
    assert at[0] - t0 == pytest.approx((100 - 10) / 10, abs=0.05)
    assert at[1] - t0 == pytest.approx((100 - 10 + 1) / 10, abs=0.05)


async def test_live_data_never_waits_behind_the_backlogs_debt(
        autojump_clock: trio.testing.MockClock) -> None:
    link = Link(100 * KB, 0.25)
    t0 = trio.current_time()
    live_at: list[float] = []
    backlog_at: list[float] = []

    async def backlog() -> None:
        await link.send_allowed(8000 * KB, live=False)  # a merged backlog segment: 80 s
        backlog_at.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(backlog)
        live_at += await send_all(link, [5 * KB] * 20, live=True)  # 100 KB at 25 KB/s
    assert live_at[0] == t0  # at once
    assert live_at[-1] - t0 == pytest.approx((100 - 25) / 25, abs=0.6)  # at its own share
    assert backlog_at[0] - t0 > 75  # the big one waited for its bytes, not the live data


async def test_live_and_backlog_share_the_link(autojump_clock: trio.testing.MockClock) -> None:
    link = Link(40 * KB, 0.25)
    sent = {"live": 0, "backlog": 0}

    async def lane(live: bool) -> None:
        while True:
            await link.send_allowed(2 * KB, live=live)
            sent["live" if live else "backlog"] += 2 * KB

    with trio.move_on_after(100):
        async with trio.open_nursery() as n:
            n.start_soon(lane, True)
            n.start_soon(lane, False)
    total = sent["live"] + sent["backlog"]
    assert total == pytest.approx(40 * KB * 100, rel=0.03)  # the cap holds
    assert sent["live"] == pytest.approx(10 * KB * 100, rel=0.05)  # live gets its quarter


def test_bucket_spills_the_live_share_into_the_backlog() -> None:
    b = Bucket(100.0, 0.25, now=0.0)
    b.take(100, False, 0.0)  # backlog's bucket empty, live's full (25)
    assert b.wait(50, False, 0.0) > 0
    # 0.5 s: backlog refilled 37.5 of its own + 12.5 the full live bucket spilled = 50
    assert b.wait(50, False, 0.5) == 0
