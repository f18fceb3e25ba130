"""The node's series dictionary: the one owner of series key <-> id (sans-IO, thread-safe).

Every row in the buffer names its series by a small integer id; the labels are stored once, in
``series_blocks``: the series first seen in one commit, as one zstd-compressed msgpack block
(labels repeat a lot: ~10x smaller than a row per series)::

    zstd( msgpack [[sid, name1, value1, name2, value2, ...], ...] )

Ids are handed out on two threads. The ingest side (the Trio thread) asks :meth:`ids` for
every request; a new series gets its id at once and waits in :meth:`unsaved` until the group
commit that first uses it stores its definition. The roll (the store's thread) asks
:meth:`ids_durable` for rollup output series and stores the definitions in its own transaction,
including any of those ids that are still waiting for a group commit. One lock covers both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import msgpack
import zstandard

from ..model import SeriesKey

Definition = tuple[int, SeriesKey]


def encode_block(defs: Sequence[Definition]) -> tuple[int, int, bytes]:
    """``(first id, last id, blob)`` of the block that stores ``defs``."""
    flat = [[sid, *(x for kv in key for x in kv)] for sid, key in defs]
    ids = [sid for sid, _ in defs]
    return min(ids), max(ids), zstandard.ZstdCompressor(level=3).compress(msgpack.packb(flat))


def decode_block(blob: bytes) -> list[Definition]:
    """The definitions in one block.

    Raises:
        ValueError: the block is not a list of ``[sid, name, value, ...]`` entries.
    """
    out: list[Definition] = []
    for entry in msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob), raw=False):
        if not isinstance(entry, list) or len(entry) % 2 != 1:
            raise ValueError("malformed series block")
        sid, *flat = entry
        out.append((sid, tuple(zip(flat[0::2], flat[1::2], strict=True))))
    return out


class SeriesDictionary:
    """Series keys and their ids, and the definitions not yet stored."""

    def __init__(self, defs: Iterable[Definition] = ()) -> None:
        self._ids: dict[SeriesKey, int] = {}
        self._keys: dict[int, SeriesKey] = {}
        top = 0
        for sid, key in defs:
            self._ids[key] = sid
            self._keys[sid] = key
            top = max(top, sid)
        self.next_id = top + 1
        self._unsaved: list[Definition] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, keys: list[SeriesKey]) -> list[int]:
        """Ids for ``keys``, allocating (not yet durable) ids for new ones (the ingest hot
        path: a known series costs one dictionary lookup)."""
        get = self._ids.get
        out = [get(k, -1) for k in keys]
        if -1 in out:
            with self._lock:
                for i, sid in enumerate(out):
                    if sid == -1:
                        out[i] = self._allocate(keys[i], self._unsaved)
        return out

    def ids_durable(self, keys: list[SeriesKey]) -> tuple[list[int], list[Definition]]:
        """Ids for ``keys`` and the definitions the caller must store in its own transaction:
        those of new series, and of any still waiting in :meth:`unsaved`."""
        out: list[int] = []
        defs: list[Definition] = []
        with self._lock:
            pending = {sid for sid, _ in self._unsaved}
            for k in keys:
                sid = self._ids.get(k, -1)
                if sid == -1:
                    sid = self._allocate(k, defs)
                elif sid in pending:
                    defs.append((sid, k))
                    pending.discard(sid)
                out.append(sid)
        return out, defs

    def _allocate(self, key: SeriesKey, into: list[Definition]) -> int:
        sid = self._ids.get(key, -1)  # another thread may have allocated it meanwhile
        if sid == -1:
            sid = self.next_id
            self.next_id += 1
            self._ids[key] = sid
            self._keys[sid] = key
            into.append((sid, key))
        return sid

    def unsaved(self) -> list[Definition]:
        """The definitions allocated by :meth:`ids` that no commit has stored yet (a copy)."""
        with self._lock:
            return list(self._unsaved)

    def saved(self, n: int) -> None:
        """The first ``n`` of :meth:`unsaved` are durable now."""
        with self._lock:
            del self._unsaved[:n]

    def known_ids(self) -> list[int]:
        return list(self._keys)

    def key(self, sid: int) -> SeriesKey | None:
        """The labels of series ``sid`` (any thread)."""
        return self._keys.get(sid)

    def labels(self, ids: Iterable[int]) -> list[tuple[int, dict[str, str]]]:
        """``[(sid, labels)]`` of the known ones of ``ids``."""
        keys = self._keys
        return [(sid, dict(keys[sid])) for sid in ids if sid in keys]
