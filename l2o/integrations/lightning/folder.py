"""What every training run (fine_tune, meta_train) does with its --out folder.

- **One run per folder.** ``RunFolder`` takes an exclusive lock on ``--out`` (``l2o.filelock.RunLock``):
  a second run into the same folder is refused in one line naming the holder's pid; the lock of a
  killed run is released by the kernel, so the next run takes it over.
- **Ctrl-C.** A KeyboardInterrupt leaving the folder becomes ``RunInterrupted``, whose sentence says
  whether ``--resume`` can continue (``interrupt.py`` turns SIGINT into "finish the step, save, stop").
- **Failure.** A run that fails (or is interrupted) before it has a checkpoint to resume from removes
  what it created in ``--out``; what was there before it started stays.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from l2o.errors import ConfigError
from l2o.filelock import RUN_LOCK_NAME, RunLock


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the run; ``str(err)`` says whether and how it can be continued."""


def _first_missing(path: Path) -> Path | None:
    top = None
    while not path.exists() and path.parent != path:
        top, path = path, path.parent
    return top


class RunFolder:
    """``with RunFolder(out) as folder:`` claims ``out`` for one run and cleans up after a failure.

    On leaving with an exception: if this run saved ``checkpoints/last.ckpt`` the folder is kept (the
    run can be resumed); otherwise every file and folder this run created is removed. A
    KeyboardInterrupt leaves as ``RunInterrupted`` with the sentence to print.
    """

    def __init__(self, out, what: str = "--out"):
        self.out, self.what = Path(out), what
        self.last = self.out / "checkpoints" / "last.ckpt"

    def __enter__(self) -> "RunFolder":
        self.created_top = _first_missing(self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.before = {p.name for p in self.out.iterdir()}
            self.lock = RunLock(self.out, self.what).acquire()
        except OSError as err:
            raise ConfigError(f"cannot write to {self.what} {self.out}: {err.strerror or err}") from None
        self.last_mtime = self._last_mtime()
        return self

    def _last_mtime(self):
        return self.last.stat().st_mtime_ns if self.last.exists() else None

    def resumable(self) -> bool:
        """This run wrote a checkpoint that ``--resume`` continues from."""
        return self.last.exists() and self._last_mtime() != self.last_mtime

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.resumable():
                self._remove_created()
        finally:
            self.lock.release()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(self.interrupted_message()) from None

    def interrupted_message(self) -> str:
        if self.last.exists():
            return f"interrupted; continue with --resume (checkpoint {self.last})"
        return f"interrupted before the first checkpoint; nothing to resume, {self.what} {self.out} is as it was"

    def _remove_created(self) -> None:
        if self.created_top is not None:
            shutil.rmtree(self.created_top, ignore_errors=True)
            return
        for p in self.out.iterdir():
            if p.name not in self.before and p.name != RUN_LOCK_NAME:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        if RUN_LOCK_NAME not in self.before:
            (self.out / RUN_LOCK_NAME).unlink(missing_ok=True)  # still held: nobody can take it meanwhile
