"""Device online state, latest values and fast dedup marks in Valkey / Redis.

Keys (``{org}`` is the authenticated node's organisation)::

    fleetd:{org}:last_seen                 hash   device -> last seen (unix ms)
    fleetd:{org}:online:{device}           string last seen; expires ONLINE_TTL after it
    fleetd:{org}:latest:{node}             hash   series labels (canonical JSON) -> "ts value"
    fleetd:applied:{node}:{epoch}          zset   seqs applied (pruned below the low watermark)

Every update is a max-merge done server-side in one Lua script per batch, so writing a batch
twice, or two batches out of order, leaves the same state: the sink is idempotent. A device whose
newest data is older than the TTL (a drained backlog) is not marked online.

redis-py's asyncio client runs on trio-asyncio's loop; its errors become ``SinkUnavailable``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import trio_asyncio

from edge_node.wire import Batch

from ..errors import SinkUnavailable
from ..model import Job, NodeInfo

log = logging.getLogger("fleet_central.valkey")

# KEYS: last_seen hash, latest hash. ARGV: ttl_ms, now_ms, online key prefix, n_devices,
# then n_devices (device, ts) pairs, then (field, ts, value) triples for latest values.
UPDATE = """
local ttl, now, prefix, nd = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local i = 5
for _ = 1, nd do
  local d, ts = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local cur = tonumber(redis.call('HGET', KEYS[1], d) or '0')
  if ts > cur then redis.call('HSET', KEYS[1], d, ts); cur = ts end
  local left = cur + ttl - now
  if left > 0 then redis.call('SET', prefix .. d, cur, 'PX', left) end
end
while i <= #ARGV do
  local f, ts, entry = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 1] .. ' ' .. ARGV[i + 2]
  i = i + 3
  local cur = redis.call('HGET', KEYS[2], f)
  if not cur or tonumber(string.match(cur, '^(%S+)')) < ts then
    redis.call('HSET', KEYS[2], f, entry)
  end
end
return 1
"""

APPLIED_TTL_S = 7 * 86400

_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def update_args(job: Job, ttl_ms: int) -> list[Any]:
    """ARGV for ``UPDATE``: devices' last-seen and each series' newest value."""
    devices = job.devices()
    args: list[Any] = [ttl_ms, job.now_ms, f"fleetd:{job.node.org}:online:", len(devices)]
    for dev, (_, hi) in devices.items():
        args += [dev, hi]
    if job.kind == "metrics" and job.values is not None:
        ts, vals = job.ts, job.values
        now = job.now_ms or None
        for sid, _, e in job.series():
            field = json.dumps(job.labels[sid], sort_keys=True, separators=(",", ":"))
            t = int(ts[e - 1])  # a value stamped ahead must not block the next real one
            args += [field, min(t, now) if now else t, repr(float(vals[e - 1]))]
    return args


class ValkeySink:
    name = "valkey"
    kinds = frozenset({"metrics", "logs", "heartbeats"})
    stores_rows = False
    uses_asyncio = True

    def __init__(self, addr: str, *, online_ttl_s: int = 300, timeout_s: float = 15.0,
                 retry_after_s: int = 5) -> None:
        host, _, port = addr.rpartition(":")
        self.host, self.port = host, int(port)
        self.online_ttl_ms = online_ttl_s * 1000
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.client: aioredis.Redis | None = None
        self._script: Any = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(fn)(*args)
        except _ERRORS as exc:
            raise SinkUnavailable(self.name, f"{self.host}:{self.port}: {exc}",
                                  self.retry_after_s) from exc

    async def open(self) -> None:
        def make() -> aioredis.Redis:
            return aioredis.Redis(host=self.host, port=self.port,
                                  socket_timeout=self.timeout_s,
                                  socket_connect_timeout=self.timeout_s,
                                  decode_responses=False)

        async def connect() -> aioredis.Redis:
            return make()

        self.client = await trio_asyncio.aio_as_trio(connect)()
        self._script = self.client.register_script(UPDATE)

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(*_ERRORS):
                await trio_asyncio.aio_as_trio(client.aclose)()

    async def ready(self) -> bool:
        assert self.client is not None
        try:
            return bool(await self._call(self.client.ping))
        except SinkUnavailable:
            return False

    async def write(self, job: Job) -> None:
        org = job.node.org
        keys = [f"fleetd:{org}:last_seen", f"fleetd:{org}:latest:{job.node.node_id}"]
        await self._call(self._script, keys, update_args(job, self.online_ttl_ms))

    # -- fast dedup (used by the pipeline, see central.pipeline.FastDedup) ----------------------

    @staticmethod
    def _applied_key(node: NodeInfo, batch: Batch) -> str:
        return f"fleetd:applied:{node.node_id}:{batch.epoch}"

    async def is_applied(self, node: NodeInfo, batch: Batch) -> bool:
        assert self.client is not None
        score = await self._call(self.client.zscore, self._applied_key(node, batch), batch.seq)
        return score is not None

    async def mark_applied(self, node: NodeInfo, batch: Batch) -> None:
        assert self.client is not None
        key = self._applied_key(node, batch)

        async def mark(client: aioredis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {str(batch.seq): batch.seq})
                pipe.zremrangebyscore(key, "-inf", f"({batch.low_watermark}")
                pipe.expire(key, APPLIED_TTL_S)
                await pipe.execute()

        await self._call(mark, self.client)

    # -- the right to deletion (central.deletion) ----------------------------------------------

    async def delete_device(self, org: str, device: str) -> int:
        """Remove the device's online key, last-seen field and latest values; the count."""
        assert self.client is not None
        client = self.client

        async def run() -> int:
            n = int(await client.hdel(f"fleetd:{org}:last_seen", device))
            n += int(await client.delete(f"fleetd:{org}:online:{device}"))
            async for key in client.scan_iter(match=f"fleetd:{org}:latest:*", count=500):
                gone = [f async for f, _ in client.hscan_iter(key, count=1000)
                        if json.loads(f).get("device") == device]
                for i in range(0, len(gone), 1000):
                    n += int(await client.hdel(key, *gone[i:i + 1000]))
            return n

        got: int = await self._call(run)
        return got
