"""Central's batch endpoint over real HTTP: auth, dedup, malformed input, missing series."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from edge_node.wire import BATCH_CONTENT_TYPE, Batch, Columns, encode_batch, encode_segment
from tests.conftest import Central

NOW = 1_795_839_600_000


def _batch(seq: int, *, node: str = "edge-1", defs: bool = True, low: int = 0,
           epoch: str = "e1") -> bytes:
    cols = Columns("metrics", np.array([1, 1, 2], dtype=np.int64),
                   np.array([NOW, NOW + 1, NOW], dtype=np.int64), np.array([1.0, 2.0, 3.0]))
    d = [(1, {"__name__": "a", "device": "d1"}), (2, {"__name__": "b", "device": "d2"})]
    return encode_batch(Batch(node, seq, "metrics", encode_segment(cols), 3, low_watermark=low,
                              epoch=epoch, series_defs=d if defs else []))


async def _post(central: Central, body: bytes, key: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.post(central.url + "/api/v1/batches", content=body, headers={
            "Authorization": f"Bearer {key or central.key}", "Content-Type": BATCH_CONTENT_TYPE})


async def test_a_retried_batch_is_applied_once(central: Central) -> None:
    r1 = await _post(central, _batch(1))
    r2 = await _post(central, _batch(1))
    assert (r1.status_code, r1.json()["status"]) == (200, "applied")
    assert (r2.status_code, r2.json()["status"]) == (200, "duplicate")
    assert central.counts()["metrics"] == 3
    r3 = await _post(central, _batch(2, defs=False))  # dictionary remembered per node
    assert r3.json()["status"] == "applied"
    assert central.counts()["metrics"] == 6


async def test_same_seq_in_a_new_epoch_is_new_data(central: Central) -> None:
    await _post(central, _batch(1, epoch="old"))
    r = await _post(central, _batch(1, epoch="rebuilt"))
    assert r.json()["status"] == "applied"
    assert central.counts()["metrics"] == 6


async def test_low_watermark_prunes_dedup_marks(central: Central) -> None:
    for seq in (1, 2, 3):
        await _post(central, _batch(seq))
    await _post(central, _batch(4, low=4))
    (n,) = central.store.open_sync().execute("SELECT count(*) FROM applied").fetchone()
    assert n == 1


async def test_unknown_series_get_409(central: Central) -> None:
    r = await _post(central, _batch(1, defs=False))
    assert r.status_code == 409
    assert r.json()["missing_series"] == [1, 2]
    assert central.counts()["metrics"] == 0
    assert (await _post(central, _batch(1))).json()["status"] == "applied"


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"\xc1", 400, "msgpack"),
    (b"\x81\xa1v\x05", 400, "version"),
])
async def test_malformed_batches_are_400(central: Central, body: bytes, status: int,
                                         needle: str) -> None:
    r = await _post(central, body)
    assert r.status_code == status and needle in r.json()["error"]


async def test_lying_envelope_is_400(central: Central) -> None:
    import msgpack

    doc = msgpack.unpackb(_batch(1))
    doc["rows"] = 4
    r = await _post(central, msgpack.packb(doc))
    assert r.status_code == 400 and "rows" in r.json()["error"]
    assert central.counts()["metrics"] == 0


async def test_auth(central: Central) -> None:
    assert (await _post(central, _batch(1), key="fle_wrong")).status_code == 401
    async with httpx.AsyncClient() as c:
        r = await c.post(central.url + "/api/v1/batches", content=_batch(1))
    assert r.status_code == 401
    other = central.store.add_node("edge-2", "org-b")
    r = await _post(central, _batch(1), key=other)  # edge-2's key, edge-1's batch
    assert r.status_code == 403
    central.store.revoke_node("edge-1")
    assert (await _post(central, _batch(1))).status_code == 401
    assert central.counts()["metrics"] == 0


async def test_error_bodies_end_with_a_newline(central: Central) -> None:
    """`curl` output then leaves the shell prompt on a line of its own."""
    r = await _post(central, b"not a batch")
    assert r.status_code == 400 and r.text.endswith("}\n")
    async with httpx.AsyncClient() as c:
        r = await c.post(central.url + "/api/v1/batches", content=b"x")
    assert r.status_code == 401 and r.text.endswith("}\n")
