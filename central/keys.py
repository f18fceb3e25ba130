"""Node keys that expire and rotate themselves, with a grace period: the decision taken on each
authentication (sans-IO, :func:`decide`) and the service that applies it to the state store.

A node has at most one *current* key, at most one *next* key (offered, not used yet) and any
number of *previous* keys, each accepted until its grace period ends::

    nodes add             current, expiring after FLEET_CENTRAL_KEY_LIFETIME (90d; --expires)
    a batch authenticated by current within FLEET_CENTRAL_KEY_RENEW_BEFORE (30d) of its expiry:
                          central makes a next key and returns it in the 200 ("next_key"); the
                          edge stores it (0600, fsync'd) and sends with it from then on
    the first batch with the next key:
                          next -> current (a new expiry); current -> previous, still accepted
                          for FLEET_CENTRAL_KEY_GRACE (7d)                  audit: key.rotated
    nodes rotate          a new current at once; the old key previous for the grace (--now: no
                          grace); a pending next key is dropped

An offer whose answer never reached the edge is made again after ``reoffer_after_ms`` with a
new key (the old offer is dropped: only hashes are stored, so the same key cannot be repeated).
Every step is one transaction of the store, so a crash of central or the edge at any point
leaves a key that works: the current one until the next one is used, both during the grace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from edge_node.durations import parse_duration
from edge_node.runtime import Clock, clock_ms

from .audit import Audit, AuditEntry, log_entry
from .errors import SettingsError
from .model import NodeInfo
from .sinks.base import hash_key, new_api_key

log = logging.getLogger("fleet_central.keys")

DAY_MS = 86_400_000


def parse_lifetime(text: str, name: str) -> int | None:
    """``"90d"`` -> milliseconds; ``"never"`` (or ``0``) -> ``None``."""
    t = text.strip().lower()
    if t in ("never", "0", ""):
        return None
    try:
        ms = parse_duration(t)
    except ValueError:
        raise SettingsError(f"{name}={text!r} must be a duration like 90d, 12h or 'never'"
                            ) from None
    if ms < 1000:
        raise SettingsError(f"{name}={text!r} must be at least 1s")
    return ms


@dataclass(frozen=True)
class KeyPolicy:
    lifetime_ms: int | None = 90 * DAY_MS  # a new key's life; None: keys never expire
    renew_before_ms: int = 30 * DAY_MS     # offer the next key this long before expiry
    grace_ms: int = 7 * DAY_MS             # a replaced key keeps working this long
    reoffer_after_ms: int = 30_000         # an offer the edge says it lacks: again after this


@dataclass(frozen=True)
class KeyRow:
    """What the store knows about a key presented to it."""

    node: NodeInfo
    state: str                   # current | next | previous
    created_ms: int
    expires_ms: int | None
    until_ms: int | None         # a previous key: accepted until then
    next_offered_ms: int | None  # when the node's pending next key was offered (None: none)
    next_hash: str | None = None  # that key's hash


@dataclass(frozen=True)
class Decision:
    """The outcome of presenting a key: ``node`` when accepted, else ``refusal`` (``unknown``,
    ``revoked``, ``expired``) and a message for the 401; ``promote``: the key is the node's
    next one (make it current); ``offer``: make and return a next key."""

    node: NodeInfo | None
    refusal: str = ""
    message: str = ""
    promote: bool = False
    offer: bool = False
    expires_ms: int | None = None
    created_ms: int = 0


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def decide(row: KeyRow | None, now_ms: int, policy: KeyPolicy, edge_next: str | None = None
           ) -> Decision:
    """Whether ``row``'s key is accepted at ``now_ms`` and what to do about rotation.
    ``edge_next`` is what the edge says of the next key it holds (``X-Fleet-Next-Key``: the
    first 12 hex digits of its SHA-256; ``None``: none): an offer it lacks is made again once
    ``reoffer_after_ms`` passed (its answer was lost, or the edge crashed before storing it);
    an offer it holds is not (it sent this batch before it switched)."""
    if row is None:
        return Decision(None, "unknown", "unknown or revoked node key")
    if row.node.revoked_ms is not None:
        return Decision(None, "revoked", "unknown or revoked node key")
    if row.state == "previous":
        if row.until_ms is not None and now_ms >= row.until_ms:
            return Decision(None, "expired", f"this key of node {row.node.node_id!r} was "
                            f"replaced and its grace period ended at {_day(row.until_ms)}")
        return Decision(row.node, expires_ms=row.until_ms, created_ms=row.created_ms)
    if row.expires_ms is not None and now_ms >= row.expires_ms and row.state == "current":
        return Decision(None, "expired", f"the key of node {row.node.node_id!r} expired at "
                        f"{_day(row.expires_ms)}: give it a new one with 'fleet-central "
                        "nodes rotate'")
    if row.state == "next":
        return Decision(row.node, promote=True, expires_ms=row.expires_ms,
                        created_ms=row.created_ms)
    offer = False
    if row.expires_ms is not None:
        window = min(policy.renew_before_ms, (row.expires_ms - row.created_ms) // 3 or 1)
        due = now_ms >= row.expires_ms - window
        pending = row.next_offered_ms is not None
        held = pending and edge_next is not None and row.next_hash is not None and \
            row.next_hash.startswith(edge_next.lower())
        stale = pending and row.next_offered_ms is not None and \
            now_ms - row.next_offered_ms >= policy.reoffer_after_ms
        offer = due and (not pending or (stale and not held))
    return Decision(row.node, offer=offer, expires_ms=row.expires_ms, created_ms=row.created_ms)


class KeyStore(Protocol):
    """The key operations of a state store (SQLite or PostgreSQL)."""

    async def lookup_key(self, key_hash: str) -> KeyRow | None: ...

    async def promote_key(self, node_id: str, key_hash: str, now_ms: int, grace_until_ms: int,
                          expires_ms: int | None, entry: AuditEntry) -> bool: ...

    async def offer_key(self, node_id: str, key_hash: str, now_ms: int,
                        expires_ms: int | None, entry: AuditEntry) -> None: ...


class KeyService:
    """Authenticates node keys for the batch endpoint and drives their rotation."""

    def __init__(self, store: KeyStore, policy: KeyPolicy, audit: Audit,
                 clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self.audit = audit
        self.clock = clock
        #: node -> (created_ms, expires_ms) of the key it last used (for /metrics)
        self.seen: dict[str, tuple[int, int | None]] = {}

    async def authenticate(self, key: str, source: str, claimed_node: str,
                           edge_next: str | None = None) -> Decision:
        """The decision for ``key``; refusals are audited (coalesced), a promotion applied."""
        now = clock_ms(self.clock)
        row = await self.store.lookup_key(hash_key(key))
        d = decide(row, now, self.policy, edge_next)
        if d.node is None:
            tried = row.node.node_id if row is not None else claimed_node
            self.audit.auth_failed(source, tried, d.refusal, claimed=row is None)
            return d
        if d.promote:
            node = d.node
            lifetime = (d.expires_ms - d.created_ms) if d.expires_ms is not None else None
            expires = now + lifetime if lifetime is not None else None
            until = now + self.policy.grace_ms
            entry = AuditEntry(now, "key.rotated", f"node:{node.node_id}", node.org,
                               node.node_id, source, {"expires_ms": expires,
                                                      "previous_until_ms": until})
            if await self.store.promote_key(node.node_id, hash_key(key), now, until, expires,
                                            entry):
                log_entry(entry)
            d = Decision(node, expires_ms=expires, created_ms=now)
        assert d.node is not None
        self.seen[d.node.node_id] = (d.created_ms, d.expires_ms)
        return d

    async def offer(self, d: Decision, source: str) -> str | None:
        """A new next key for ``d``'s node when ``d.offer`` (stored before it is returned)."""
        if not d.offer or d.node is None or d.expires_ms is None:
            return None
        now = clock_ms(self.clock)
        key = new_api_key()
        expires = now + (d.expires_ms - d.created_ms)
        entry = AuditEntry(now, "key.offered", "central", d.node.org, d.node.node_id, source,
                           {"current_expires_ms": d.expires_ms, "next_expires_ms": expires})
        await self.store.offer_key(d.node.node_id, hash_key(key), now, expires, entry)
        log_entry(entry)
        return key
