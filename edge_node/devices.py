"""The edge's registry of fleetd agents: devices that registered themselves and got an API key.

A small SQLite file beside the buffer (``devices.sqlite3``) with its own connection, used from
one thread at a time (``CapacityLimiter(1)``); keys are stored as SHA-256 hashes only (they are
random 256-bit secrets, so a plain hash is a safe one-way store).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .runtime import Clock, Runner, ThreadRunner, clock_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, version TEXT NOT NULL,
    capabilities TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, registered_ms INTEGER NOT NULL);
"""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Registration:
    device_id: str
    api_key: str


class DeviceRegistry:
    """Registered devices in ``<data_dir>/devices.sqlite3``.

    Args:
        clock: wall-clock seconds (registration stamps).
        runner: runs the SQLite calls, one at a time (a ``ThreadRunner(1)``).
    """

    def __init__(self, data_dir: str | Path, *, clock: Clock = time.time,
                 runner: Runner | None = None) -> None:
        self.path = Path(data_dir) / "devices.sqlite3"
        self.clock = clock
        self._run: Runner = runner or ThreadRunner(1)
        self._conn: sqlite3.Connection | None = None
        self._by_hash: dict[str, str] = {}  # key hash -> device id (cache of lookups)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    async def register(self, name: str, type_: str, version: str,
                       capabilities: dict[str, str]) -> Registration:
        """A new device id and API key (shown once; only its hash is kept)."""
        reg = Registration(device_id=str(uuid.uuid4()), api_key=secrets.token_urlsafe(32))

        def insert() -> None:
            self._db().execute(
                "INSERT INTO devices(device_id, name, type, version, capabilities, key_hash, "
                "registered_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (reg.device_id, name, type_, version, json.dumps(capabilities, sort_keys=True),
                 _hash(reg.api_key), clock_ms(self.clock)))

        await self._run(insert)
        return reg

    async def device_for_key(self, key: str) -> str | None:
        h = _hash(key)
        found = self._by_hash.get(h)
        if found is not None:
            return found

        def lookup() -> str | None:
            row = self._db().execute("SELECT device_id FROM devices WHERE key_hash = ?",
                                     (h,)).fetchone()
            return None if row is None else str(row[0])

        found = await self._run(lookup)
        if found is not None:
            self._by_hash[h] = found
        return found

    def list(self) -> list[dict[str, object]]:
        cols = ("device_id", "name", "type", "version", "capabilities", "registered_ms")
        return [dict(zip(cols, r, strict=True)) for r in self._db().execute(
            f"SELECT {', '.join(cols)} FROM devices ORDER BY registered_ms")]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
