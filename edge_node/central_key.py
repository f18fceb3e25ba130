"""The node's API key for central, as central rotates it (see ``central/keys.py``).

The key in the config (``central.api_key``) is where a node starts. When central offers the
next key in a batch's answer (``next_key``), the node writes it to ``central-key.json`` in its
data directory (mode 0600: the service user only; written to a temporary file, fsync'd and
renamed, the directory fsync'd) *before* it sends with it; the first answer to a batch sent
with the new key makes it the current one here too. Until then, and for central's grace
period after, the old key keeps working, so a crash or ``kill -9`` at any step leaves a key
that works: after a restart the node tries the next key first and falls back to the current
one if central refuses it.

A new ``central.api_key`` in the config (an operator's ``nodes rotate --now``) wins over the
file: the file remembers which config key it grew from (its SHA-256) and is set aside when that
changes. No key is ever logged, shown in the status or exported in ``/metrics``; log lines name
a key by the first characters of its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from .metrics import Registry
from .runtime import Clock

log = logging.getLogger("fleet_edge.central_key")

KEY_FILE = "central-key.json"


def fingerprint(key: str) -> str:
    """What logs may say about a key: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class KeyState:
    config_sha256: str           # the central.api_key this state grew from
    current: str
    next: str | None = None      # offered by central, not confirmed yet
    created_ms: int | None = None
    expires_ms: int | None = None
    rotated_ms: int | None = None  # when the current key replaced the config's


def _write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, readable by its owner only, durably."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of another mode is truncated, not recreated
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CentralKey:
    """Which key a batch is sent with, and what central's answers change about it."""

    def __init__(self, data_dir: str, config_key: str, registry: Registry | None = None, *,
                 clock: Clock = time.time) -> None:
        self.path = Path(data_dir) / KEY_FILE
        self.clock = clock
        self._lock = trio.Lock()
        self.rotations = 0
        self.state = self._load(config_key)
        if registry is not None:
            registry.gauge("central_key_expiry_timestamp_seconds", "When the key the node "
                           "sends with expires (as central last said; no sample: never or "
                           "not known yet).",
                           callback=lambda: ({(): self.state.expires_ms / 1000}
                                             if self.state.expires_ms else {}))
            registry.gauge("central_key_age_seconds", "Age of the key the node sends with "
                           "(as central last said).",
                           callback=lambda: ({(): max(0.0, self.clock()
                                                      - self.state.created_ms / 1000)}
                                             if self.state.created_ms else {}))
            registry.gauge("central_key_rotations", "Automatic key rotations since the "
                           "start.", callback=lambda: float(self.rotations))

    def _load(self, config_key: str) -> KeyState:
        digest = hashlib.sha256(config_key.encode()).hexdigest()
        fresh = KeyState(config_sha256=digest, current=config_key)
        try:
            doc: Any = json.loads(self.path.read_text(encoding="utf-8"))
            state = KeyState(**doc)
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError, TypeError) as exc:
            log.error("%s cannot be read (%s); starting from central.api_key", self.path, exc)
            return fresh
        if state.config_sha256 != digest:
            log.warning("central.api_key changed in the config: it replaces the key in %s",
                        self.path)
            return fresh
        return state

    def apply(self, config_key: str) -> None:
        """A reload: a changed ``central.api_key`` replaces the rotated key."""
        if hashlib.sha256(config_key.encode()).hexdigest() != self.state.config_sha256:
            self.state = KeyState(config_sha256=hashlib.sha256(config_key.encode()).hexdigest(),
                                  current=config_key)
            log.info("central.api_key changed: sending with key %s from now on",
                     fingerprint(config_key))

    def for_request(self) -> str:
        """The key to send the next batch with: the next one while it waits for central's
        confirmation, else the current one."""
        return self.state.next or self.state.current

    def headers(self) -> dict[str, str]:
        """Tells central which offered key the node holds (the first 12 hex digits of its
        SHA-256), so central offers again only one that was lost."""
        nxt = self.state.next
        return {"X-Fleet-Next-Key": fingerprint(nxt)} if nxt else {}

    async def answered(self, used: str, status: int, body: Any) -> None:
        """What central's answer to a batch sent with ``used`` changes."""
        async with self._lock:
            st = self.state
            if status == 401 and used == st.next and st.next is not None:
                log.warning("central refused the offered key %s (%s); back to key %s",
                            fingerprint(used), _error(body), fingerprint(st.current))
                st.next = None
                await self._save()  # best effort: a stale next key is refused again anyway
                return
            if not 200 <= status < 300 or not isinstance(body, dict):
                return
            info = body.get("key")
            if used == st.next:  # central took the new key: it is the current one now
                st.current, st.next = used, None
                st.rotated_ms = int(self.clock() * 1000)
                self.rotations += 1
                self._learn(info)
                # if this write fails, a restart reads current=old, next=new: it tries the
                # new key first, and the old one works through central's grace period
                await self._save()
                log.info("central confirmed key %s: the node sends with it from now on "
                         "(expires %s)", fingerprint(used), _day(st.expires_ms))
                return
            if used != st.current:
                return  # an answer to a key replaced meanwhile
            changed = self._learn(info)
            offered = body.get("next_key")
            if isinstance(offered, str) and offered and offered != st.current:
                st.next = offered
                if not await self._save():  # durable before a batch is sent with it
                    st.next = None  # not used: central offers it again (a new one)
                    return
                log.info("central offered key %s (the current one expires %s); switching",
                         fingerprint(offered), _day(st.expires_ms))
            elif changed:  # the expiry to show after a restart too
                await self._save()

    def _learn(self, info: Any) -> bool:
        if not isinstance(info, dict):
            return False
        created, expires = info.get("created_ms"), info.get("expires_ms")
        got = (created if isinstance(created, int) else None,
               expires if isinstance(expires, int) else None)
        if got == (self.state.created_ms, self.state.expires_ms):
            return False
        self.state.created_ms, self.state.expires_ms = got
        return True

    async def _save(self) -> bool:
        """Write the state; False (logged) when the disk refuses (full, read-only)."""
        text = json.dumps(asdict(self.state), indent=1) + "\n"
        try:
            await trio.to_thread.run_sync(_write_private, self.path, text)
        except OSError as exc:
            log.error("cannot write %s: %s", self.path, exc)
            return False
        return True

    def describe(self, now_s: float) -> dict[str, Any]:
        """For the status document (never the key itself)."""
        st = self.state
        return {"fingerprint": fingerprint(st.current),
                "source": "config" if st.rotated_ms is None else "rotated",
                "expires": _day(st.expires_ms) if st.expires_ms else None,
                "expires_in_days": (round((st.expires_ms / 1000 - now_s) / 86400, 1)
                                    if st.expires_ms else None),
                "age_days": (round((now_s - st.created_ms / 1000) / 86400, 1)
                             if st.created_ms else None),
                "rotated": _day(st.rotated_ms) if st.rotated_ms else None,
                "next_key_pending": st.next is not None}


def _day(ms: int | None) -> str:
    if not ms:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _error(body: Any) -> str:
    return str(body.get("error", "")) if isinstance(body, dict) else "no reason given"
