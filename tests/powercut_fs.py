"""A FUSE filesystem that loses, on a power cut, every write not yet synced.

    /usr/bin/python3 tests/powercut_fs.py BACKING MOUNTPOINT

(Debian's python3 with python3-fusepy: the module is ``fusepy``.) Files live in ``BACKING``.
What a program writes is kept in this process's memory (the "page cache") and reaches
``BACKING`` only when the program calls ``fsync``/``fdatasync`` on the file; closing a file does
not sync it. Creating the file ``/.powercut`` is the power cut: every unsynced write is thrown
away at that instant and every operation from then on fails with EIO (the machine is dead),
until the test unmounts. Then ``BACKING`` holds exactly what a disk would hold after the cut.

``/.powercut-SEED`` is a harsher cut: a real disk may have written any part of what was not
synced, in any order, torn at sector boundaries. Each 512-byte sector of every unsynced write
(and each pending size change) then reaches ``BACKING`` or not, at random (seeded).

Metadata (create, unlink, rename, mkdir) reaches ``BACKING`` at once: a journaling filesystem
commits it within seconds, and SQLite does not rely on it for what it acknowledges (its WAL is
created once and synced before any commit in it counts). Size changes (truncate) are data: they
wait for the sync too. Reads see the program's own unsynced writes, as with a page cache.
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
from typing import Any

from fusepy import FUSE, FuseOSError, Operations  # type: ignore[import-not-found]


class Shadow:
    """A file's current contents (synced or not) and which parts are not synced yet."""

    def __init__(self, backing: str) -> None:
        with open(backing, "rb") as f:
            self.data = bytearray(f.read())
        self.dirty: list[tuple[int, int]] = []
        self.size_dirty = False

    def write(self, buf: bytes, offset: int) -> None:
        end = offset + len(buf)
        if end > len(self.data):
            self.data.extend(b"\0" * (end - len(self.data)))
            self.size_dirty = True
        self.data[offset:end] = buf
        self.dirty.append((offset, len(buf)))

    def truncate(self, length: int) -> None:
        if length < len(self.data):
            del self.data[length:]
        else:
            self.data.extend(b"\0" * (length - len(self.data)))
        self.size_dirty = True

    def persist_some(self, backing: str, rng: random.Random) -> int:
        """At a harsh cut: each unsynced 512-byte sector is on the disk or not. Returns how
        many sectors made it."""
        fd = os.open(backing, os.O_WRONLY)
        kept = 0
        try:
            if self.size_dirty and rng.random() < 0.5:
                os.ftruncate(fd, len(self.data))
            for off, n in self.dirty:
                for sec in range(off - off % 512, off + n, 512):
                    if sec < len(self.data) and rng.random() < 0.5:
                        os.pwrite(fd, bytes(self.data[sec:sec + 512]), sec)
                        kept += 1
        finally:
            os.close(fd)
        return kept

    def sync(self, backing: str) -> None:
        if not self.dirty and not self.size_dirty:
            return
        fd = os.open(backing, os.O_WRONLY)
        try:
            for off, n in self.dirty:
                if off < len(self.data):
                    os.pwrite(fd, bytes(self.data[off:off + n]), off)
            os.ftruncate(fd, len(self.data))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.dirty.clear()
        self.size_dirty = False


class PowerCutFS(Operations):  # type: ignore[misc]
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.shadows: dict[str, Shadow] = {}
        self.dead = False
        self._mutex = threading.RLock()
        self.syncs = 0

    def cut(self, seed: int | None = None) -> None:
        with self._mutex:
            self.dead = True
            lost = sum(len(s.dirty) for s in self.shadows.values())
            kept = 0
            if seed is not None:
                rng = random.Random(seed)
                for path, shadow in sorted(self.shadows.items()):
                    kept += shadow.persist_some(os.path.join(self.root, path.lstrip("/")), rng)
            self.shadows.clear()
        print(f"powercut_fs: power cut, {lost} unsynced writes lost"
              + (f" but {kept} of their sectors written (seed {seed})" if seed is not None
                 else "") + f", {self.syncs} syncs before", file=sys.stderr, flush=True)

    def _path(self, path: str) -> str:
        if self.dead:
            raise FuseOSError(errno.EIO)
        return os.path.join(self.root, path.lstrip("/"))

    def _shadow(self, path: str) -> Shadow:
        s = self.shadows.get(path)
        if s is None:
            s = self.shadows[path] = Shadow(self._path(path))
        return s

    def __call__(self, op: str, *args: Any) -> Any:
        with self._mutex:
            return super().__call__(op, *args)

    # -- metadata: straight to the backing directory -------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._path(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from exc
        attrs = {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                             "st_mtime", "st_nlink", "st_size", "st_uid")}
        shadow = self.shadows.get(path)
        if shadow is not None:
            attrs["st_size"] = len(shadow.data)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._path(path), amode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._path(path), uid, gid)

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(self._path(path), times)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._path(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._path(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._path(path))
        self.shadows.pop(path, None)

    def rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))
        shadow = self.shadows.pop(old, None)
        if shadow is not None:
            self.shadows[new] = shadow

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._path(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    # -- data: held until synced ----------------------------------------------------------------

    def create(self, path: str, mode: int, fi: object = None) -> int:
        if path == "/.powercut" or path.startswith("/.powercut-"):
            self.cut(int(path.split("-", 1)[1]) if "-" in path else None)
            raise FuseOSError(errno.EIO)
        fd = os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(fd)
        self.shadows[path] = Shadow(self._path(path))
        return 0

    def open(self, path: str, flags: int) -> int:
        self._shadow(path)
        if flags & os.O_TRUNC:
            self.shadows[path].truncate(0)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._shadow(path).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._shadow(path).write(data, offset)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._shadow(path).truncate(length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._shadow(path).sync(self._path(path))
        self.syncs += 1

    def flush(self, path: str, fh: int) -> None:
        self._path(path)  # EIO once dead; closing does not sync

    def release(self, path: str, fh: int) -> None:
        pass


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFS(backing)
    FUSE(fs, mountpoint, foreground=True, nothreads=True, allow_other=False)


if __name__ == "__main__":
    main()
