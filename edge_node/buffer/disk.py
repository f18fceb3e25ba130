"""The data disk as a state: watched, refused into before it fails, never a crash.

A gateway's SD card fills up during a long WAN outage. SQLite then fails whatever transaction
needs one more page, the roll's and the merge's included, and even the acknowledgements that
would free space. So the buffer keeps a **reserve**: a file of ``reserve_bytes`` next to the
buffer, given back to the filesystem the moment SQLite reports the disk full (and at a start
on a tight disk, so a node restarted into a full disk can open its buffer), which leaves room
for the small writes that free space (acks, rolls, checkpoints).

:class:`DiskGuard` holds the state, with hysteresis:

- **refusing** (ingest answers 503 with ``Retry-After`` and :attr:`DiskGuard.reason`) once the
  room for new data (free space on the filesystem plus free pages inside the buffer file)
  falls below ``reserve_bytes``, or SQLite reported the disk full;
- **accepting** again once that room is back to twice ``reserve_bytes`` (acknowledged segments
  leave free pages) with the reserve in place again: when the filesystem lacks the room for it,
  the buffer hands some of its free pages back (``PRAGMA incremental_vacuum``).

The WAL is never cut while the disk is tight: its allocated file is what every write, an
acknowledgement included, reuses after a checkpoint.

The guard is sans-IO but for two injectable calls (``statvfs`` and the reserve file's
create/remove), so its transitions are tested without filling a disk; the end-to-end test fills
a real tmpfs.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import disk_full_cause

log = logging.getLogger("fleet_edge.buffer")

MiB = 1 << 20
RESERVE_NAME = "buffer.reserve"


def default_reserve(total_bytes: int) -> int:
    """2% of the filesystem, at least 1 MiB and at most 16 MiB."""
    return max(MiB, min(16 * MiB, total_bytes // 50))


class DiskGuard:
    """Free space of the buffer's filesystem, the reserve file, and the refusing state.

    Args:
        directory: the data directory (the reserve file lives there).
        reserve_bytes: the reserve's size and the refusing threshold; ``0`` picks
            :func:`default_reserve` of the filesystem.
        statvfs: ``os.statvfs`` (a test passes a fake filesystem).
    """

    def __init__(self, directory: str | os.PathLike[str], reserve_bytes: int = 0, *,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.reserve_path = self.directory / RESERVE_NAME
        self._statvfs = statvfs
        self.free_bytes, self.total_bytes = self._measure()
        self.reserve_bytes = reserve_bytes or default_reserve(self.total_bytes)
        self.reusable_bytes = 0  # free pages inside the buffer file (new rows reuse them)
        self.reason: str | None = None  # set while refusing
        self.full_errors = 0  # disk-full errors SQLite reported
        self._step_shift = 0  # page give-back steps halved this many times
        if self.free_bytes < 2 * self.reserve_bytes:  # a restart into a full disk must be
            self.release_reserve()  # able to open the buffer (else the reserve stays put)
        self.check()

    # -- the state ------------------------------------------------------------------------------

    @property
    def refusing(self) -> bool:
        return self.reason is not None

    def _measure(self) -> tuple[int, int]:
        st = self._statvfs(str(self.directory))
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def _refuse(self, why: str) -> None:
        was = self.reason
        self.reason = (f"the buffer's disk is full ({why}; {self.free_bytes / MiB:.1f} MiB free "
                       f"on {self.directory}): new data is refused until forwarding to central "
                       "frees space")
        if was is None:
            log.error("%s", self.reason)

    @property
    def available_bytes(self) -> int:
        """Room for new data: free space on the filesystem plus free pages in the buffer."""
        return self.free_bytes + self.reusable_bytes

    def wants_pages(self, reusable_bytes: int) -> int:
        """Bytes of the buffer's free pages to hand back to the filesystem now (0: none).
        Accepting needs the reserve in place and ``reserve_bytes`` more free on the
        filesystem (every write grows the WAL first); when the filesystem lacks that but the
        buffer's free pages (what acknowledged segments left) make it up, they go back, in
        steps: moving pages writes them to the WAL first, so one step is at most half what
        the filesystem has free (halved again after a step that did not fit)."""
        free, _ = self._measure()
        r = self.reserve_bytes
        need = (r if self.reserve_path.exists() else 2 * r) - free
        if need <= 0 or reusable_bytes < need:
            return 0
        step = max(64 * 1024, free // 2) >> self._step_shift
        return min(reusable_bytes, need + r // 2, step)

    def step_failed(self) -> None:
        """The last :meth:`wants_pages` step did not fit: ask for half as much next time."""
        self._step_shift = min(self._step_shift + 1, 8)

    def check(self, reusable_bytes: int = 0) -> bool:
        """Measure the free space (``reusable_bytes``: the buffer file's free pages) and move
        between the states; True while refusing."""
        self.free_bytes, self.total_bytes = self._measure()
        self.reusable_bytes = reusable_bytes
        r = self.reserve_bytes
        if not self.reserve_path.exists() and self.free_bytes >= 2 * r and self.restore_reserve():
            self.free_bytes, _ = self._measure()
        if self.reserve_path.exists():
            self._step_shift = 0
        if self.refusing:
            # the reserve in place, one reserve's worth free on the filesystem (writes grow
            # the WAL first) and twice that in all, the buffer's free pages counted
            if (self.reserve_path.exists() and self.free_bytes >= r
                    and self.available_bytes >= 2 * r):
                log.warning("the buffer's disk has room again (%.1f MiB free, %.1f MiB free "
                            "in the buffer): accepting data", self.free_bytes / MiB,
                            self.reusable_bytes / MiB)
                self.reason = None
        elif self.available_bytes < r:
            self._refuse(f"less than the {r / MiB:.0f} MiB reserve left")
        return self.refusing

    def hit(self, exc: BaseException) -> bool:
        """SQLite reported the disk full: refuse, and free the reserve so the writes that free
        space can run. Returns whether the reserve was freed just now (worth one retry)."""
        self.full_errors += 1
        freed = self.release_reserve()
        self.free_bytes, self.total_bytes = self._measure()
        self.reusable_bytes = 0  # SQLite found no room: what was free is taken
        self._refuse(f"SQLite: {disk_full_cause(exc) or exc}")
        return freed

    # -- the reserve file -----------------------------------------------------------------------

    def release_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        log.warning("released the %.0f MiB disk reserve %s", self.reserve_bytes / MiB,
                    self.reserve_path)
        return True

    def restore_reserve(self) -> bool:
        """Write the reserve file (real blocks, not a sparse hole); False if it does not fit."""
        tmp = self.reserve_path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                chunk = b"\0" * MiB
                left = self.reserve_bytes
                while left > 0:
                    left -= f.write(chunk[:left])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.reserve_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return False
        return True
