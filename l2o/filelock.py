"""Advisory file locks (POSIX ``fcntl.flock``) for shared files and run folders (stdlib only).

- ``exclusive(lock_path)``: wait for an exclusive lock; wrap a read-modify-write of a shared file
  (a registry's or the cache's ``zoo.json``) in it, so concurrent writers never lose each other's entries (also the
  bench harness's claim on a run it is about to make).
- ``RunLock(folder)``: claim a run folder (``fine_tune --out``, ``meta_train --out``) without waiting.
  A second claimant gets a ``FolderLockedError`` naming the holder's pid. The kernel drops a
  ``flock`` when its process dies, so the lock of a killed run is stale by construction: the next run
  takes it over and learns the dead holder's pid (``RunLock.stale_pid``).
- ``write_atomic(path, write)`` / ``write_bytes_atomic(path, data)`` / ``copy_atomic(src, dst)``: replace a
  file so readers see the old or the new one, never a partial one (the one atomic-write helper; the zoo's
  manifests, the seed ledger, the apps' checkpoints and the bench reports' plots use it).
- ``append_bytes(path, data)``: append to a file durably (fsync); a failed append (a full disk) cuts the file
  back to what it was (the one durable-append helper: the seed ledger's flushes, the bench suites' run records).
- ``remove_stale_temps(folder)``: the temp files of atomic writes a ``kill -9`` interrupted (a run calls it
  on its ``--out`` once it holds the folder's lock).
- ``writer_folder(parent, prefix)`` / ``remove_dead_writers(parent, prefix)``: a temp folder a process writes
  into (a download or conversion into the cache, a zoo entry's staging) held by a lock file beside it, and the
  removal of those whose writer died, never a live writer's (each new writer_folder does it first); also of a
  folder of that name with no lock file (made by code from before these locks) once nothing in it has changed
  for ``UNLOCKED_TEMP_AGE_S`` (an hour). ``staged_files(out, prefix)``: files written in such a folder inside
  ``out``, renamed into ``out`` once all are whole (``zoo apply``, ``zoo import-zo-finetuner``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from l2o.errors import UserError

RUN_LOCK_NAME = ".lock"
# write_atomic's temp file beside its target: .tmp-<target name>-<12 hex digits>
_TMP_NAME = re.compile(r"\.tmp-.+-[0-9a-f]{12}")
WRITER_LOCK_SUFFIX = ".lock"  # writer_folder's lock file: <folder name>.lock beside the folder
_MKSTEMP_CHARS = "[a-z0-9_]{8}"  # the random part of a tempfile.mkstemp name (CPython's _RandomNameSequence)
# A writer_folder-named folder without its lock file was made by code from before these locks (tempfile.mkdtemp,
# the same name), whose writer cannot be asked: it is removed once nothing in it has changed for an hour. A
# download or conversion writes its folder continuously (a 500 MB base converts in minutes), so an hour
# without a change anywhere in it means its writer is gone; a writer of the current code always holds a lock.
UNLOCKED_TEMP_AGE_S = 3600.0


class FolderLockedError(UserError):
    """Another live process holds the folder's lock."""


def lock_fd(lock_path: str | os.PathLike, waiting=None) -> int:
    """Open ``lock_path`` (created if missing) and wait for an exclusive ``flock`` on it (`waiting()` called
    first if it is held); closing the returned descriptor releases the lock. OSError if the file cannot be
    created."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if waiting is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                waiting()
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, waiting=None):
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the ``with`` body; `waiting()` is
    called once, before it waits, when another process holds it."""
    fd = lock_fd(lock_path, waiting)
    try:
        yield
    finally:
        os.close(fd)


class RunLock:
    """An exclusive, non-blocking claim on a run folder, recorded as ``<folder>/.lock`` holding the pid.

    ``acquire()`` raises ``FolderLockedError`` while a live process holds the folder; ``release()``
    (or the process's death) frees it. The file stays behind; only the flock on it counts.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "--out"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / RUN_LOCK_NAME
        self.fd: int | None = None
        self.stale_pid: int | None = None  # pid recorded by a holder that died without releasing

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise FolderLockedError(
                f"{self.what} {self.folder} is in use by {who}; wait for it to finish or choose another {self.what}"
            ) from None
        old = _read_pid(fd)
        self.stale_pid = old if old and old != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holder(folder: str | os.PathLike) -> int | None:
    """The pid a RunLock on `folder` records, while that process lives (None: free, or its holder died). It reads
    the lock file without taking the lock: for a report beside a running process, never to decide who may write."""
    try:
        fd = os.open(Path(folder) / RUN_LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _read_pid(fd)
    finally:
        os.close(fd)
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return pid


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_atomic(path: Path, write) -> None:
    """Replace `path` with what `write(f)` writes to the binary file `f`, through a temp file in the same
    folder (fsync, then rename): readers see the old file or the new one, never a partial one, and a write
    that fails (a full disk) leaves the old file as it was. The one atomic-write helper."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{secrets.token_hex(6)}"  # _TMP_NAME
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode any new file gets (umask)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`write_atomic` of the bytes `data`."""
    write_atomic(path, lambda f: f.write(data))


def write_png_atomic(path: Path, fig, dpi: int = 110, **savefig_kw) -> None:
    """The matplotlib figure `fig` as a PNG at `path` through `write_atomic` (never a half-written plot), then
    closed, also when the write fails (pyplot keeps every figure it made until it is closed)."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **savefig_kw))
    finally:
        plt.close(fig)


def copy_atomic(src: Path, dst: Path) -> None:
    """`write_atomic` of dst from the file src (a copy killed or failed midway leaves dst as it was)."""
    with open(src, "rb") as f_src:
        write_atomic(dst, lambda f: shutil.copyfileobj(f_src, f))


def append_bytes(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created if missing) and fsync; a failed append (a full disk) cuts the file back
    to what it was and raises with the file's name. The one durable-append helper."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the mode any new file gets (umask)
    try:
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, end)
            err.filename = str(path)
            raise
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> int:
    """Remove the temp files `write_atomic` left in `folder` and its subfolders when a process died mid-write
    (`kill -9`, a lost node); returns how many. Call it only while holding `folder`'s `RunLock`: no live writer of
    this run can then own one. Subfolders with a lock of their own (`*.lock`: another run's folder, a zoo
    registry) belong to their own holder and are left alone; so are symlinks and any other name."""
    removed = 0
    for here, dirs, files in os.walk(folder):
        if Path(here) != Path(folder) and any(f.endswith(".lock") for f in files):
            dirs.clear()
            continue
        for name in files:
            path = Path(here) / name
            if _TMP_NAME.fullmatch(name) and not path.is_symlink():
                try:
                    path.unlink()
                except OSError:  # gone meanwhile, or not ours to remove: left as it is
                    continue
                removed += 1
    return removed


@contextlib.contextmanager
def writer_folder(parent: Path, prefix: str, log=None, what: str = "download or copy"):
    """A new folder ``parent/<prefix><8 random characters>`` for the body to write into (a download, a conversion),
    held by this process: its lock file ``<folder>.lock`` beside it is created and flock'ed before the folder
    exists and removed only after the folder is gone (moved into place by the body, or removed here). So
    ``remove_dead_writers`` can tell a folder a killed writer left from a live writer's; it runs first, and
    ``log`` (a callable taking one line; default stderr) says how many it removed, if any, and of what (`what`)."""
    removed = remove_dead_writers(parent, prefix)
    if removed:
        (log or _stderr)(f"removed {removed} stale temp folder(s) {prefix}* that an interrupted {what} "
                         f"left in {parent}")
    fd, lock = tempfile.mkstemp(prefix=prefix, suffix=WRITER_LOCK_SUFFIX, dir=parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        folder = Path(lock[: -len(WRITER_LOCK_SUFFIX)])
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def staged_files(out: Path, prefix: str, log=None, what: str = "write"):
    """A `writer_folder(out, prefix)` for the body to write files into, each renamed into `out` (replacing one of its
    name) once the body has returned: a stop or a failure mid-write leaves `out`'s files as they were, where writing
    into `out` itself left some new and some old; a `kill -9` leaves the staging folder, which the next
    staged_files(out, prefix) removes. `out` must exist."""
    with writer_folder(out, prefix, log, what) as staging:
        yield staging
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)


def remove_dead_writers(parent: Path, prefix: str) -> int:
    """Remove the folders ``writer_folder(parent, prefix)`` made whose writer died (``kill -9``, a lost node), and
    their lock files; returns how many folders. Only that exact name (``<prefix><8 characters>`` with its
    ``.lock``) is looked at. A folder whose lock a live writer holds is left. One without a lock file (code from
    before these locks made it; its writer cannot be asked) is removed once nothing in it has changed for
    ``UNLOCKED_TEMP_AGE_S`` (`_unchanged_for`), and left until then."""
    name = re.compile(re.escape(prefix) + _MKSTEMP_CHARS + re.escape(WRITER_LOCK_SUFFIX))
    folder_name = re.compile(re.escape(prefix) + _MKSTEMP_CHARS)
    try:
        entries = list(os.scandir(parent))
    except OSError:  # no such folder (yet), or not ours to read
        return 0
    locks = [e.name for e in entries if name.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    removed = 0
    for e in entries:  # no lock beside it: a writer_folder makes its lock before its folder, removes it after
        unlocked = folder_name.fullmatch(e.name) and not Path(parent, e.name + WRITER_LOCK_SUFFIX).exists()
        if unlocked and e.is_dir(follow_symlinks=False) and _unchanged_for(Path(e.path), UNLOCKED_TEMP_AGE_S):
            shutil.rmtree(e.path, ignore_errors=True)
            removed += not os.path.exists(e.path)
    for lock in locks:
        try:
            fd = os.open(Path(parent, lock), os.O_RDWR)  # never O_CREAT: a lock its writer removed stays removed
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            folder = Path(parent, lock[: -len(WRITER_LOCK_SUFFIX)])
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed += not folder.exists()
            if not folder.exists():
                with contextlib.suppress(OSError):
                    os.unlink(Path(parent, lock))  # while held: a writer that opened it meanwhile finds it gone
        finally:
            os.close(fd)
    return removed


def _unchanged_for(folder: Path, seconds: float) -> bool:
    """Nothing in `folder` (itself, any file or folder below it) modified in the last `seconds`."""
    cutoff = time.time() - seconds
    try:
        if os.lstat(folder).st_mtime > cutoff:
            return False
        for here, dirs, files in os.walk(folder):
            for name in (*dirs, *files):
                if os.lstat(os.path.join(here, name)).st_mtime > cutoff:
                    return False
    except OSError:  # changing under us, or not ours to read: leave it
        return False
    return True


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)
