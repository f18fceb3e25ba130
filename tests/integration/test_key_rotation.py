"""Key rotation between central's key service (on the embedded store) and the edge's key file,
in one process with a hand-driven clock: the lifecycle step by step, and (hypothesis) any
sequence of lost answers, edge crashes and central crashes leaves the edge a key central
accepts, as long as it keeps talking to central."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.audit import Audit
from central.keys import KeyPolicy, KeyService, decide
from central.sinks.base import hash_key
from central.sinks.sqlite import SQLiteStore
from edge_node.central_key import CentralKey

POLICY = KeyPolicy(lifetime_ms=100_000, renew_before_ms=60_000, grace_ms=30_000,
                   reoffer_after_ms=5_000)


class World:
    """Central's store and key service, and an edge's key file, on one clock."""

    def __init__(self, tmp: Path) -> None:
        self.now = 1_000_000.0
        self.store = SQLiteStore(tmp / "central", clock=lambda: self.now)
        self.audit = Audit(self.store, clock=lambda: self.now)
        self.keys = KeyService(self.store, POLICY, self.audit, lambda: self.now)
        self.first = self.store.add_node("gw", "acme", expires_ms=int(self.now * 1000)
                                         + POLICY.lifetime_ms)
        self.edge_dir = tmp / "edge"
        self.edge_dir.mkdir()
        self.edge = CentralKey(str(self.edge_dir), self.first, clock=lambda: self.now)

    async def exchange(self, *, answer: bool = True, offer: bool = True) -> int:
        """One batch: central authenticates (and maybe offers), the edge hears the answer
        unless ``answer`` is False. Returns the HTTP status central sent."""
        key = self.edge.for_request()
        held = self.edge.headers().get("X-Fleet-Next-Key")
        d = await self.keys.authenticate(key, "10.0.0.9:5000", "gw", held)
        if d.node is None:
            status, body = 401, {"error": d.message, "reason": d.refusal}
        else:
            nxt = await self.keys.offer(d, "10.0.0.9:5000") if offer else None
            status = 200
            body = {"status": "applied", "key": {"created_ms": d.created_ms,
                                                  "expires_ms": d.expires_ms}}
            if nxt:
                body["next_key"] = nxt
        if answer:
            await self.edge.answered(key, status, body)
        return status

    def restart_edge(self) -> None:
        self.edge = CentralKey(str(self.edge_dir), self.first, clock=lambda: self.now)

    async def accepted(self, key: str | None) -> bool:
        if key is None:
            return False
        row = await self.store.lookup_key(hash_key(key))
        return decide(row, int(self.now * 1000), POLICY).node is not None


async def test_the_lifecycle_offer_switch_grace_expiry(tmp_path: Path) -> None:
    w = World(tmp_path)
    assert await w.exchange() == 200
    assert w.edge.state.next is None  # 100 s of life left: nothing offered
    w.now += 70  # 30 s left: inside the window (a third of the life)
    assert await w.exchange() == 200
    offered = w.edge.state.next
    assert offered is not None and offered != w.first
    on_disk = json.loads((w.edge_dir / "central-key.json").read_text())
    assert on_disk["next"] == offered  # stored before it is used
    assert await w.exchange() == 200  # sent with the offered key: central switches
    assert (w.edge.state.current, w.edge.state.next) == (offered, None)
    assert await w.accepted(w.first)  # the old key: the grace period
    w.now += 31
    assert not await w.accepted(w.first)
    row = await w.store.lookup_key(hash_key(w.first))
    assert decide(row, int(w.now * 1000), POLICY).refusal == "expired"
    assert await w.accepted(offered)
    actions = [e.action for e in await w.store.read_audit(0, "", 100)]
    assert actions == ["node.add", "key.offered", "key.rotated"]


async def test_an_offer_never_heard_is_made_again_with_a_new_key(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.now += 70
    assert await w.exchange(answer=False) == 200  # central offered, the answer was lost
    assert w.edge.state.next is None
    w.now += 4
    await w.exchange()
    assert w.edge.state.next is None  # offered 4 s ago: perhaps still on its way
    w.now += 1
    await w.exchange()
    assert w.edge.state.next is not None  # the edge says it lacks it: a new offer
    assert await w.exchange() == 200
    assert w.edge.state.next is None and w.edge.state.current != w.first


async def test_a_refused_next_key_falls_back_to_the_current_one(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.now += 70
    await w.exchange()
    stale = w.edge.state.next
    assert stale is not None
    # an operator rotates by hand meanwhile: the pending offer is gone
    manual = w.store.rotate_key("gw", grace_ms=60_000)
    assert await w.exchange() == 401  # the stale next key
    assert w.edge.state.next is None
    assert await w.exchange() == 200  # the current one still works during the grace
    assert manual != w.edge.state.current


async def test_a_new_config_key_wins_over_the_rotated_one(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.now += 70
    await w.exchange()
    await w.exchange()
    rotated = w.edge.state.current
    assert rotated != w.first
    w.restart_edge()
    assert w.edge.for_request() == rotated  # the file survives a restart
    fresh = w.store.rotate_key("gw", grace_ms=None)
    w.edge = CentralKey(str(w.edge_dir), fresh, clock=lambda: w.now)  # the operator's edit
    assert w.edge.for_request() == fresh
    assert await w.exchange() == 200


STEPS = st.sampled_from(["batch", "lost_answer", "central_crash", "edge_crash"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEPS, min_size=25, max_size=60), seed_clean=st.integers(2, 4))
def test_any_crashes_leave_a_working_key(tmp_path_factory: pytest.TempPathFactory,
                                         steps: list[str], seed_clean: int) -> None:
    """5 s per step, and every ``seed_clean``-th step a batch whose answer arrives (the edge
    keeps talking to central): whatever else happens, the key the edge sends with next, or
    the current key it falls back to after a 401, is accepted."""

    async def run() -> None:
        w = World(tmp_path_factory.mktemp("rot"))
        for i, step in enumerate(steps):
            w.now += 5
            if i % seed_clean == 0 or step == "batch":
                await w.exchange()
            elif step == "lost_answer":
                await w.exchange(answer=False)
            elif step == "central_crash":  # authenticated, died before offering and answering
                await w.exchange(answer=False, offer=False)
            else:
                w.restart_edge()
            state: Any = w.edge.state
            ok = await w.accepted(w.edge.for_request()) or (
                w.edge.for_request() == state.next and await w.accepted(state.current))
            assert ok, f"locked out after step {i} ({step}): {steps[:i + 1]}"
        # rotating is not optional: past the renewal window plus a few clean exchanges
        # the edge must be on a key of its own
        if len(steps) * 5 >= 100:
            assert w.edge.state.current != w.first, steps

    trio.run(run)


async def test_an_offer_that_cannot_be_stored_is_not_used(tmp_path: Path) -> None:
    """A full disk (or a read-only one) when central offers the next key: the node keeps the
    current one, does not crash, and takes the offer made again once it can store it."""
    w = World(tmp_path)
    w.now += 70
    w.edge_dir.chmod(0o500)  # the key file cannot be written
    try:
        if os.geteuid() == 0:  # root writes anyway: make the file a directory instead
            (w.edge_dir / "central-key.json.tmp").mkdir()
        assert await w.exchange() == 200
        assert w.edge.state.next is None
        assert w.edge.for_request() == w.first
    finally:
        w.edge_dir.chmod(0o700)
        tmp = w.edge_dir / "central-key.json.tmp"
        if tmp.is_dir():
            tmp.rmdir()
    w.now += 6
    assert await w.exchange() == 200  # offered again, stored this time
    assert w.edge.state.next is not None
    assert await w.exchange() == 200
    assert w.edge.state.current != w.first
