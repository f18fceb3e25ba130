"""The per-batch lease's in-process layer and its polling claim (virtual time)."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from central.errors import SinkUnavailable
from central.lease import LeaseTimes, LocalLeases, claim_polling

KEY = ("edge-1", "e1", 7)


async def test_a_second_attempt_of_a_batch_waits_for_the_first(
        autojump_clock: trio.testing.MockClock) -> None:
    leases = LocalLeases()
    events: list[str] = []

    async def attempt(name: str, work_s: float) -> None:
        async with leases.hold(KEY, wait_s=60) as waited:
            events.append(f"{name} in (waited={waited})")
            await trio.sleep(work_s)
            events.append(f"{name} out")

    async with trio.open_nursery() as n:
        n.start_soon(attempt, "first", 5)
        await trio.sleep(1)
        n.start_soon(attempt, "retry", 0)
    assert events == ["first in (waited=False)", "first out", "retry in (waited=True)",
                      "retry out"]
    assert len(leases) == 0  # nothing kept once idle


async def test_other_batches_do_not_wait(autojump_clock: trio.testing.MockClock) -> None:
    leases = LocalLeases()
    inside: list[tuple[str, str, int]] = []

    async def attempt(key: tuple[str, str, int]) -> None:
        async with leases.hold(key, wait_s=60):
            inside.append(key)
            await trio.sleep(5)

    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for key in [KEY, ("edge-1", "e1", 8), ("edge-2", "e1", 7), ("edge-1", "e2", 7)]:
            n.start_soon(attempt, key)
    assert len(inside) == 4
    assert trio.current_time() - t0 == pytest.approx(5)  # concurrently, not one after another


async def test_a_wait_past_the_bound_is_a_503_naming_the_batch(
        autojump_clock: trio.testing.MockClock) -> None:
    leases = LocalLeases()
    held = trio.Event()

    async def holder() -> None:
        async with leases.hold(KEY, wait_s=60):
            held.set()
            await trio.sleep(100)

    async with trio.open_nursery() as n:
        n.start_soon(holder)
        await held.wait()
        t0 = trio.current_time()
        with pytest.raises(SinkUnavailable, match=r"batch e1/7 of node 'edge-1' is still being "
                                                  r"applied by another attempt"):
            async with leases.hold(KEY, wait_s=3):
                pytest.fail("entered a held lease")
        assert trio.current_time() - t0 == pytest.approx(3)
        n.cancel_scope.cancel()
    assert len(leases) == 0


async def test_a_cancelled_holder_lets_the_next_attempt_in(
        autojump_clock: trio.testing.MockClock) -> None:
    leases = LocalLeases()
    entered = []

    async def holder(scope: trio.CancelScope) -> None:
        with scope:
            async with leases.hold(KEY, wait_s=60):
                await trio.sleep_forever()

    scope = trio.CancelScope()
    async with trio.open_nursery() as n:
        n.start_soon(holder, scope)
        await trio.sleep(1)

        async def retry() -> None:
            async with leases.hold(KEY, wait_s=60):
                entered.append(trio.current_time())

        n.start_soon(retry)
        await trio.sleep(1)
        assert entered == []
        scope.cancel()
    assert len(entered) == 1 and len(leases) == 0


async def test_claim_polling_backs_off_and_gives_up_at_the_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    tries: list[float] = []

    async def never() -> bool:
        tries.append(trio.current_time())
        return False

    t0 = trio.current_time()
    with pytest.raises(SinkUnavailable, match="still being applied"):
        await claim_polling(never, KEY, wait_s=5)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:4] == pytest.approx([0.02, 0.04, 0.08, 0.16])
    assert max(gaps) == pytest.approx(0.25)
    assert trio.current_time() - t0 <= 5

    answers = iter([False, False, True])

    async def third_time() -> bool:
        return next(answers)

    assert await claim_polling(third_time, KEY, wait_s=5) is True  # it waited
    assert await claim_polling(lambda: _true(), KEY, wait_s=5) is False


async def _true() -> bool:
    return True


def test_lease_times_outlast_a_crashed_holder() -> None:
    t = LeaseTimes.for_sink_timeout(15)
    assert t.hold_s == 30
    # a store lease is renewed well before it runs out, and a waiter outlasts a live holder
    assert t.ttl_s < t.hold_s < t.wait_s and t.renew_every_s < t.ttl_s
    short = LeaseTimes.for_sink_timeout(0.5)
    assert short.renew_every_s < short.ttl_s <= short.hold_s < short.wait_s <= 3
