"""What every central store/sink provides (a small ``Protocol``) and the shared result types."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from edge_node.wire import Batch, Columns


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    org: str
    created_ms: int
    revoked_ms: int | None = None


def new_api_key() -> str:
    """A fresh node key: 256 random bits, URL-safe."""
    return "fle_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys are random 256-bit secrets, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(key.encode()).hexdigest()


class Store(Protocol):
    """The state store central needs: node registry, series dictionary, dedup, data."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def authenticate(self, key: str) -> NodeInfo | None: ...

    async def apply(self, node: NodeInfo, batch: Batch, cols: Columns) -> bool:
        """Apply ``batch`` atomically; ``False`` when (node, epoch, seq) was applied before.

        Raises:
            MissingSeries: ``cols`` references series ids with no known definition.
            SinkUnavailable: the backend cannot take the write now.
        """
        ...
