"""The data disk's state machine (:class:`edge_node.buffer.disk.DiskGuard`) on a fake
filesystem: when it refuses, when it accepts again, and what happens to the reserve file."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
from pathlib import Path

import pytest

from edge_node.buffer.disk import DiskGuard, MiB, default_reserve
from edge_node.errors import disk_full_cause, is_disk_full


class FakeFs:
    """A filesystem of ``total`` bytes with ``free`` of them free; the reserve file the guard
    writes (a real file in a temp dir) is charged to it."""

    def __init__(self, directory: Path, total: int, free: int) -> None:
        self.directory, self.total, self._free = directory, total, free

    @property
    def free(self) -> int:
        reserve = self.directory / "buffer.reserve"
        return self._free - (reserve.stat().st_size if reserve.exists() else 0)

    def set_free(self, free: int) -> None:
        """``free`` bytes free besides the reserve file."""
        self._free = free

    def statvfs(self, _path: str) -> os.statvfs_result:
        bsize = 4096
        return os.statvfs_result((bsize, bsize, self.total // bsize, max(self.free, 0) // bsize,
                                  max(self.free, 0) // bsize, 0, 0, 0, 0, 255))


def guard(tmp_path: Path, total: int = 16 * MiB, free: int = 10 * MiB, reserve: int = 0
          ) -> tuple[DiskGuard, FakeFs]:
    fs = FakeFs(tmp_path, total, free)
    return DiskGuard(tmp_path, reserve, statvfs=fs.statvfs), fs


def test_the_reserve_is_two_percent_within_bounds() -> None:
    assert default_reserve(16 * MiB) == MiB
    assert default_reserve(500 * MiB) == 10 * MiB
    assert default_reserve(64 * 1024 * MiB) == 16 * MiB


def test_a_roomy_disk_accepts_and_holds_its_reserve(tmp_path: Path) -> None:
    g, fs = guard(tmp_path)
    assert not g.refusing and g.reason is None
    assert g.reserve_path.stat().st_size == MiB  # real bytes, counted by the filesystem
    assert fs.free == 9 * MiB


def test_refuses_below_the_reserve_and_accepts_at_twice_it(tmp_path: Path) -> None:
    g, fs = guard(tmp_path)
    fs.set_free(int(1.9 * MiB))  # 0.9 MiB left beside the 1 MiB reserve
    assert g.check() is True
    assert "disk is full" in (g.reason or "") and "less than the 1 MiB reserve" in g.reason
    fs.set_free(int(2.5 * MiB))  # 1.5 MiB: more than the reserve, less than twice
    assert g.check() is True  # hysteresis: no flapping at the threshold
    fs.set_free(int(3.1 * MiB))
    assert g.check() is False and g.reason is None


def test_free_pages_inside_the_buffer_count_as_room(tmp_path: Path) -> None:
    g, fs = guard(tmp_path)
    fs.set_free(int(1.5 * MiB))  # 0.5 MiB on the filesystem
    assert g.check(reusable_bytes=0) is True
    # central acknowledged the backlog: its segments' pages are free inside the file; but
    # every write grows the WAL first, so a reserve's worth must be free on the filesystem
    free, reusable, rolls = int(1.5 * MiB), 5 * MiB, 0
    while g.check(reusable_bytes=reusable):  # each roll hands a step of pages back
        give = g.wants_pages(reusable)
        assert 0 < give <= free  # a step never needs more WAL room than there is
        free, reusable, rolls = free + give, reusable - give, rolls + 1
        fs.set_free(free)
    assert 1 <= rolls <= 4 and reusable > 3 * MiB


def test_a_disk_full_error_frees_the_reserve_once(tmp_path: Path) -> None:
    g, fs = guard(tmp_path)
    fs.set_free(MiB + 4096)
    err = sqlite3.OperationalError("database or disk is full")
    assert g.hit(err) is True  # freed now: the failed write is worth one more try
    assert not g.reserve_path.exists() and g.refusing
    assert "SQLite: database or disk is full" in (g.reason or "")
    assert g.hit(err) is False  # nothing left to free
    assert g.full_errors == 2
    # room comes back: the reserve is written again first, then data is accepted
    fs.set_free(int(3.5 * MiB))
    assert g.check() is False and g.reserve_path.exists()


def test_the_reserve_comes_back_from_the_buffers_free_pages(tmp_path: Path) -> None:
    g, fs = guard(tmp_path)
    fs.set_free(MiB)
    g.hit(sqlite3.OperationalError("database or disk is full"))
    fs.set_free(int(0.5 * MiB))
    # no room on the filesystem for the reserve, but the buffer has plenty of free pages
    # 1.5 MiB needed, but a step moves pages through the WAL: at most half the free space
    assert g.wants_pages(reusable_bytes=10 * MiB) == 256 * 1024
    g.step_failed()  # that did not fit either: half as much next time
    assert g.wants_pages(reusable_bytes=10 * MiB) == 128 * 1024
    assert g.wants_pages(reusable_bytes=MiB) == 0  # not enough to put the reserve back
    fs.set_free(int(2.5 * MiB))  # the pages handed back
    assert g.check(reusable_bytes=8 * MiB) is False and g.reserve_path.exists()
    assert g.wants_pages(reusable_bytes=10 * MiB) == 0  # in place: nothing to do


def test_a_small_drained_buffer_gets_its_reserve_back(tmp_path: Path) -> None:
    """Room enough in all (1.9 MiB free + 3 MiB of free pages) but neither part alone: the
    guard must not refuse for ever (a drained buffer whose file is small)."""
    g, fs = guard(tmp_path)
    fs.set_free(MiB)
    g.hit(sqlite3.OperationalError("database or disk is full"))
    fs.set_free(int(1.9 * MiB))
    reusable = int(2.99 * MiB)
    give = g.wants_pages(reusable)
    assert 0 < give <= reusable
    fs.set_free(int(1.9 * MiB) + give)  # the pages handed back to the filesystem
    assert g.check(reusable_bytes=reusable - give) is False and g.reserve_path.exists()


def test_a_restart_into_a_full_disk_starts_without_its_reserve(tmp_path: Path) -> None:
    guard(tmp_path)
    fs = FakeFs(tmp_path, 16 * MiB, MiB + 512 * 1024)  # full up to the reserve's last block
    g = DiskGuard(tmp_path, statvfs=fs.statvfs)
    assert not g.reserve_path.exists()  # handed back first: the buffer can open in its room
    assert g.refusing is False  # 1.5 MiB free: above the reserve, so not refusing yet
    fs.set_free(int(0.5 * MiB))
    assert g.check() is True


def test_a_reserve_that_does_not_fit_is_not_left_half_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g, _ = guard(tmp_path, free=10 * MiB, reserve=MiB)
    g.release_reserve()

    class NoSpace(io.BytesIO):
        def write(self, _: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            raise AssertionError("never reached")

    made: list[str] = []

    def full_open(path: object, mode: str = "r") -> NoSpace:
        Path(str(path)).touch()  # the file exists, as a real half-written one would
        made.append(str(path))
        return NoSpace()

    monkeypatch.setattr("edge_node.buffer.disk.open", full_open, raising=False)
    assert g.restore_reserve() is False
    assert made and not any(Path(p).exists() for p in made)
    assert not g.reserve_path.exists()


@pytest.mark.parametrize(("exc", "full"), [
    (sqlite3.OperationalError("database or disk is full"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (sqlite3.OperationalError("database is locked"), False),
    (OSError(errno.EIO, "Input/output error"), False),
])
def test_disk_full_is_recognised(exc: BaseException, full: bool) -> None:
    assert is_disk_full(exc) is full


def test_a_failed_rollback_does_not_hide_the_disk_full_cause() -> None:
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError(  # noqa: B904 (as sqlite3 code does)
                "cannot rollback - no transaction is active")
    except sqlite3.OperationalError as exc:
        assert str(disk_full_cause(exc)) == "database or disk is full"
