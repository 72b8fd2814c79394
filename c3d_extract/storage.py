"""Storage faults: a full disk, a quota, a file size limit, a failing or a read-only disk.

Every file this package writes goes through here, so that such a fault ends a run with one line
that names the file, the reason, what is saved and what to do (exit status 3), and leaves no
temporary file behind.

Why HDF5 never sees a failed write: h5py closes a dataset with H5Idec_ref. When HDF5 cannot write
the dataset's cached chunks while closing it, its close callback (H5D__close_cb) frees the dataset
anyway but reports the failure, and H5I then keeps the identifier, now pointing at freed memory.
h5py's File.close() decrements that identifier again, and HDF5's own clean-up at exit closes it
once more: a use after free, and the process dies with SIGSEGV (exit 139) after two tracebacks.
So an HDF5 file is written through `_Target` (h5py's file-object driver): it records the first
error, silently discards every later write, and lets HDF5 close normally; the caller raises the
recorded error after the close and deletes the temporary file. The same trick keeps torch.save's
zip writer from turning an OSError into an opaque RuntimeError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator, Optional

import h5py

from c3d_extract.errors import C3DError

EXIT_CODE = 3  # documented in the README ("Exit status"); 1 and 2 mean failed videos and refusals
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS})
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or this process's file size limit, ulimit -f)",
    errno.EIO: "input/output error (a failing disk or a lost network file system?)",
    errno.EROFS: "read-only file system",
}
_TODO = {
    errno.ENOSPC: "free space on that disk (or write elsewhere) and run the same command again",
    errno.EDQUOT: "free space within your quota (or write elsewhere) and run the same command again",
    errno.EFBIG: "raise the file size limit (ulimit -f) or write to another file system, and run the same "
                 "command again",
    errno.EIO: "check the disk (dmesg, SMART) and run the same command again",
    errno.EROFS: "make that file system writable (or write elsewhere) and run the same command again",
}


def is_storage_error(exc: BaseException) -> bool:
    """True for the OSErrors a full, limited, failing or read-only disk raises."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def reason(exc: OSError) -> str:
    """The OS's reason in words, with its errno name: 'no space left on device (ENOSPC)'."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = _REASONS.get(exc.errno, exc.strerror or str(exc))
    return f"{text} ({name})" if name else text


class StorageError(C3DError):
    """A write failed because of the storage. str() is the one line for the user; exit status 3."""

    def __init__(self, path: str, error: OSError, saved: str, todo: Optional[str] = None):
        self.path, self.error, self.saved = path, error, saved
        self.todo = todo or _TODO.get(error.errno, "fix the storage and run the same command again")
        super().__init__(f"{path}: cannot write: {reason(error)}; {saved}; {self.todo}")


def human(size: float) -> str:
    """Bytes as people read them: 912 kB, 3.4 MB, 1.2 GB (powers of 1000, as df -H)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit in ("B", "kB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_bytes(path: str) -> Optional[int]:
    """Free space (for this user) on the file system that holds `path` or would hold it."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _fallocate(fd: int, size: int) -> None:
    """fallocate(2), mode 0: allocate [0, size). Not posix_fallocate: where the file system cannot
    allocate (NFSv3, some FUSE), glibc emulates it by writing a byte into every block, which takes
    hours for a large file over a network; fallocate(2) says EOPNOTSUPP instead."""
    libc = _libc()
    if libc is None or not hasattr(libc, "fallocate"):
        os.posix_fallocate(fd, 0, size)
        return
    if libc.fallocate(fd, 0, ctypes.c_int64(0), ctypes.c_int64(size)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


class _Target:
    """A file opened for writing that never raises from write: it records the first error and
    discards what follows (see the module's docstring). Also the HDF5 file-object driver's file:
    it keeps a logical size apart from the reserved one."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self.pos = self.size = 0
        self.error: Optional[OSError] = None

    def reserve(self, size: int) -> None:
        """Allocate `size` bytes now, so that a full disk is found before anything is written. Where
        the file system cannot allocate, its free space is compared with `size` instead."""
        if size <= 0:
            return
        try:
            _fallocate(self.fd, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            free = free_bytes(self.path)
            if free is not None and free < size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path) from None

    def check(self) -> None:
        """Raise the first write error, if any."""
        if self.error is not None:
            raise self.error

    # the file-object protocol h5py's driver and torch.save use
    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        data = os.pread(self.fd, max(n, 0), self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        want = max(0, min(len(buffer), self.size - self.pos))
        got = os.preadv(self.fd, [memoryview(buffer)[:want]], self.pos) if want else 0
        self.pos += got
        return got

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        self.pos += len(view)
        self.size = max(self.size, self.pos)
        return len(view)

    def truncate(self, size: Optional[int] = None) -> int:
        self.size = self.pos if size is None else size  # applied in finish(): keeps the reservation
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def finish(self) -> None:
        """Cut the file to what was written (dropping the unused reservation) and make it durable."""
        self.check()
        try:
            os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        except OSError as exc:
            self.error = exc
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def temp_name(path: str) -> str:
    """The temporary name a new version of `path` is written under: PATH.tmp-PID."""
    return f"{path}.tmp-{os.getpid()}"


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def new_hdf5(path: str, reserve: int = 0) -> Iterator[tuple[h5py.File, Callable[[], None]]]:
    """Write a new HDF5 file at `path`: yields (file, check), where check() raises the first write
    error (call it after each large write, to stop early). `reserve` bytes are allocated first. The
    file is durable on a normal exit; on any error it is removed and the error raised."""
    target = _Target(path)
    try:
        target.reserve(reserve)
        h5 = h5py.File(target, "w")
        try:
            yield h5, target.check
        finally:
            h5.close()  # cannot fail on I/O: _Target does not raise
        target.finish()
    except BaseException:
        target.close()
        _unlink_quietly(path)
        raise
    target.close()


def write_atomically(path: str, write: Callable[[BinaryIO], None],
                     check: Optional[Callable[[str], None]] = None) -> None:
    """Write `path` through a temporary file: write(handle), fsync, check(temporary path), then
    rename over `path`. On any error the temporary file is removed and `path` is left as it was."""
    remove_stale_temps(path)
    tmp = temp_name(path)
    target = _Target(tmp)
    try:
        write(target)  # type: ignore[arg-type]
        target.finish()
        target.close()
        if check is not None:
            check(tmp)
        replace_durably(tmp, path)
    except BaseException:
        target.close()
        _unlink_quietly(tmp)
        raise


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str, path: str) -> None:
    """Make `tmp` durable, then rename it over `path` (and make the rename durable)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


def replace_atomically(tmp: str, path: str) -> None:
    """Rename `tmp` durably over `path`; on an error `tmp` is removed and `path` left as it was."""
    try:
        replace_durably(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Remove PATH.tmp-PID files (and PATH.tmp-PID.npy) left by a process that was killed while it
    wrote them: PID is no longer running, or is this process. Returns what was removed."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.tmp-(\d+)(\.npy)?$")
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        if match and (int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))):
            _unlink_quietly(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
    return removed


def sha256_of(path: "str | os.PathLike") -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
