"""What every training run (fine_tune, meta_train) does with its --out folder.

- **One run per folder.** ``RunFolder`` takes an exclusive lock on ``--out`` (``l2o.filelock.RunLock``):
  a second run into the same folder is refused in one line naming the holder's pid; the lock of a
  killed run is released by the kernel, so the next run takes it over.
- **Ctrl-C.** ``interrupt_callback`` turns SIGINT during ``Trainer.fit`` into "finish this step, save
  ``checkpoints/last.ckpt``, stop" (Lightning would otherwise catch the KeyboardInterrupt and exit 1);
  ``finish_fit`` then raises ``RunInterrupted``, which the CLIs print and exit 130 for.
- **Failure.** A run that fails (or is interrupted) before it has a checkpoint to resume from removes
  what it created in ``--out``; what was there before it started stays.
"""

from __future__ import annotations

import shutil
import signal
import threading
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


def interrupt_callback(last: Path):
    """A Lightning callback: on SIGINT during fit, finish the step, save ``last``, and stop training
    (the checkpoint is saved where ModelCheckpoint saves its own, so resuming from it is exact).

    A second Ctrl-C stops at once (Lightning's own KeyboardInterrupt handling). ``requested`` tells
    ``finish_fit`` that the run was interrupted.
    """
    from lightning.pytorch.callbacks import Callback

    class StopOnInterrupt(Callback):
        def __init__(self):
            self.requested = self.saved = False
            self._previous = None

        def _handle(self, signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        def on_fit_start(self, trainer, pl_module):
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGINT, self._handle)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # every rank of a multi-device run stops after the same step (a no-op reduction on one device)
            if trainer.strategy.reduce_boolean_decision(self.requested, all=False) and not self.saved:
                self.requested = True
                trainer.save_checkpoint(str(last))
                self.saved = trainer.should_stop = True

        def teardown(self, trainer, pl_module, stage):
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)
                self._previous = None

    return StopOnInterrupt()


def finish_fit(fit, trainer, stop_cb) -> None:
    """Run ``fit()``; raise KeyboardInterrupt if Ctrl-C stopped it (``RunFolder`` turns that into
    ``RunInterrupted``, with or without a checkpoint to resume from)."""
    try:
        fit()
    except SystemExit:  # Lightning exits 1 on a KeyboardInterrupt (a second Ctrl-C)
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if stop_cb.requested:
        raise KeyboardInterrupt
