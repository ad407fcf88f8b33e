"""What every training run (fine_tune, meta_train) does with its --out folder.

- **One run per folder.** ``RunFolder`` takes an exclusive lock on ``--out`` (``l2o.filelock.RunLock``):
  a second run into the same folder is refused in one line naming the holder's pid; the lock of a
  killed run is released by the kernel, so the next run takes it over.
- **Ctrl-C, SIGTERM.** A KeyboardInterrupt leaving the folder becomes ``RunInterrupted``, whose sentence says
  whether ``--resume`` can continue (``interrupt.py`` turns SIGINT and SIGTERM into "finish the step, save,
  stop"; l2o/stop.py makes SIGTERM a KeyboardInterrupt outside a fit).
- **Failure.** A run that fails (or is interrupted) before it has a checkpoint to resume from removes
  what it created in ``--out``; what was there before it started stays. A ``RunFailed`` (a full disk, a
  lost process; a full disk outside the fit too) leaves with the checkpoint ``--resume`` continues from added to
  its sentence.
- **Several processes.** Rank 0 holds the folder. The others get its record of the folder at setup
  (``share_folder``), so a survivor of a lost rank 0 cleans up as rank 0 would have.
- **Stale temp files.** Once it holds the lock, a run removes the ``.tmp-*`` files that ``kill -9`` left
  beside checkpoints and artefacts mid-write (``l2o.filelock.remove_stale_temps``), saying how many.
- **Resume.** ``check_resume`` refuses a second run into a folder, a resume of nothing, or of a damaged
  checkpoint, before anything is loaded.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from l2o.errors import ConfigError, RunFailed
from l2o.filelock import RUN_LOCK_NAME, FolderLockedError, RunLock, remove_stale_temps
from l2o.integrations.lightning.failures import disk_failure
from l2o.stop import signum_of, stopped


HOLDER_EXIT_S = 5.0  # how long a survivor waits for a lost holder's lock (`RunFolder._holders_lock`)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``signum``, l2o/stop.py) ended the run; ``str(err)`` says whether and how it can be
    continued."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


def _first_missing(path: Path) -> Path | None:
    top = None
    while not path.exists() and path.parent != path:
        top, path = path, path.parent
    return top


def last_checkpoint(out: Path) -> Path:
    return Path(out) / "checkpoints" / "last.ckpt"


def check_resume(out: Path, resume: bool) -> None:
    """Refuse a run into a folder that holds one (without --resume), a resume of nothing, and a resume
    from a truncated or damaged checkpoint (naming the last good one)."""
    last = last_checkpoint(out)
    if not resume and last.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not last.exists():
        raise ConfigError(f"nothing to resume in {out}: no checkpoints/last.ckpt")
    if resume:
        from l2o.integrations.lightning.checkpoints import check_checkpoint

        check_checkpoint(last)


class RunFolder:
    """``with RunFolder(out) as folder:`` claims ``out`` for one run and cleans up after a failure.

    On leaving with an exception: if this run saved ``checkpoints/last.ckpt`` the folder is kept (the
    run can be resumed); otherwise every file and folder this run created is removed. A
    KeyboardInterrupt leaves as ``RunInterrupted`` and a ``RunFailed`` with what survives added.
    ``holder=False`` (ranks > 0): claims nothing; after ``adopt(state)`` it cleans up in the holder's
    place once the holder is gone (its lock free). `log`: where the holder says how many stale temp files of
    an interrupted write it removed from ``out`` (nothing when none).
    """

    def __init__(self, out, what: str = "--out", holder: bool = True, log=None):
        self.out, self.what, self.holder, self.log = Path(out), what, holder, log
        self.last = last_checkpoint(self.out)
        self.lock, self.adopted = None, False
        self.created_top, self.before, self.last_mtime = None, set(), None

    def __enter__(self) -> "RunFolder":
        if not self.holder:
            return self
        self.created_top = _first_missing(self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.before = {p.name for p in self.out.iterdir()}
            self.lock = RunLock(self.out, self.what).acquire()
        except OSError as err:
            raise ConfigError(f"cannot write to {self.what} {self.out}: {err.strerror or err}") from None
        removed = remove_stale_temps(self.out)  # no live writer of this folder's temp files: we hold its lock
        if removed and self.log is not None:
            self.log(f"removed {removed} stale temp file(s) that an interrupted write left in {self.out}")
        self.last_mtime = self._last_mtime()
        return self

    def state(self) -> dict:
        """What the holder found in --out when it claimed it."""
        top = None if self.created_top is None else str(self.created_top)
        return {"created_top": top, "before": sorted(self.before), "last_mtime": self.last_mtime}

    def adopt(self, state: dict) -> None:
        """Take the holder's `state()` (ranks > 0)."""
        self.created_top = None if state["created_top"] is None else Path(state["created_top"])
        self.before, self.last_mtime, self.adopted = set(state["before"]), state["last_mtime"], True

    def _last_mtime(self):
        return self.last.stat().st_mtime_ns if self.last.exists() else None

    def resumable(self) -> bool:
        """This run wrote a checkpoint that ``--resume`` continues from."""
        return self.last.exists() and self._last_mtime() != self.last_mtime

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.resumable():
                self._clean_up()
        finally:
            if self.lock is not None:
                self.lock.release()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(self.interrupted_message(exc), signum_of(exc)) from None
        if isinstance(exc, RunFailed):
            exc.args = (f"{exc}; {self.survivors(exc.fix)}",)
        failure = disk_failure(exc)  # outside the fit (the final outputs, the artefact): a traceback before
        if failure is not None:
            failure.args = (f"{failure}; {self.survivors(failure.fix)}",)
            raise failure from None

    def _clean_up(self) -> None:
        if self.holder:
            self._remove_created()
        elif self.adopted:  # the holder's duty, once it is gone: its lock is free
            self.lock = self._holders_lock()
            if self.lock is not None and not self.resumable():
                self._remove_created()

    def _holders_lock(self) -> RunLock | None:
        """The folder's lock once its holder has let it go, or None if it keeps it (alive: it cleans up itself).
        A survivor can learn of a killed holder's death (its sockets closed) before the kernel has closed the
        holder's lock file, so it tries for up to HOLDER_EXIT_S."""
        deadline = time.monotonic() + HOLDER_EXIT_S
        while True:
            try:
                return RunLock(self.out, self.what).acquire()
            except FolderLockedError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)
            except OSError:
                return None

    def interrupted_message(self, exc: BaseException | None = None) -> str:
        how = stopped(exc or KeyboardInterrupt())
        if self.last.exists():
            return f"{how}; continue with --resume (checkpoint {self.last})"
        return f"{how} before the first checkpoint; nothing to resume, {self.what} {self.out} is as it was"

    def survivors(self, fix: str = "") -> str:
        """What a failed run leaves: the checkpoint --resume continues from, or nothing."""
        if not self.last.exists():
            return f"nothing to resume, {self.what} {self.out} is as it was"
        from l2o.integrations.lightning.checkpoints import intact

        then = f"{fix}, then " if fix else ""
        return f"{intact(self.last)}: {then}continue with --resume"

    def _remove_created(self) -> None:
        if self.created_top is not None:
            shutil.rmtree(self.created_top, ignore_errors=True)
            return
        for p in self.out.iterdir():
            if p.name not in self.before and p.name != RUN_LOCK_NAME:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        if RUN_LOCK_NAME not in self.before:
            (self.out / RUN_LOCK_NAME).unlink(missing_ok=True)  # still held: nobody can take it meanwhile


def share_folder(folder: RunFolder):
    """A Lightning callback that gives every rank the holder's (rank 0's) record of --out at setup."""
    from lightning.pytorch.callbacks import Callback

    class ShareRunFolder(Callback):
        def setup(self, trainer, pl_module, stage):
            if trainer.world_size > 1:
                state = trainer.strategy.broadcast(folder.state() if folder.holder else None, src=0)
                if not folder.holder:
                    folder.adopt(state)

    return ShareRunFolder()
