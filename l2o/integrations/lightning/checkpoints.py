"""Checkpoints that a full disk cannot damage, and a damaged one refused in one line.

- `AtomicCheckpointIO`: Lightning's `TorchCheckpointIO`, but each checkpoint is written through
  `l2o.filelock.write_atomic` (a temp file in the checkpoint's own folder, fsync, rename). A write that
  fails (a full disk) leaves the previous checkpoint as it was and raises an OSError naming the file.
  (Lightning's writer made its temp file in the system temp folder, so its "rename" crossed filesystems,
  became a copy, and a full disk cut the checkpoint short.)
- `LastCheckpoint`: a run's one `checkpoints/last.ckpt`, every `every` steps and on request (`save_now`:
  the Ctrl-C checkpoint), always that file (never `last-v1.ckpt`). A checkpoint it makes between the
  run's own ones carries `UNSCHEDULED`, so the run resumed from it can undo what it added (a ledger seal).
- `check_checkpoint(path)`: a truncated or damaged checkpoint is refused in one line naming the last good
  one; `checkpoint_step(path)` reads a checkpoint's step without loading its tensors.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from l2o.errors import UserError
from l2o.filelock import write_atomic

UNSCHEDULED = "l2o_unscheduled"  # top-level key: made between the run's own checkpoints (by Ctrl-C)


class CheckpointError(UserError):
    """A checkpoint that is truncated or damaged."""


def _intact(path: Path) -> bool:
    """A complete torch checkpoint: a zip archive whose central directory (written last) is there."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def checkpoint_step(path: Path) -> int | None:
    """The `global_step` a checkpoint was saved at (its tensors stay on disk), or None if unreadable."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - unreadable or not a Lightning checkpoint: no step to name
        return None


def intact(last: Path) -> str:
    """"the last checkpoint <last> (step N) is intact": what a failed run's message says survives."""
    step = checkpoint_step(last)
    return f"the last checkpoint {last}{f' (step {step})' if step is not None else ''} is intact"


def last_good(folder: Path, besides: Path | None = None) -> Path | None:
    """The intact checkpoint in `folder` (other than `besides`) with the highest step."""
    good = [p for p in sorted(folder.glob("*.ckpt")) if p != besides and _intact(p)]
    return max(good, key=lambda p: (checkpoint_step(p) or -1, p.stat().st_mtime_ns), default=None)


def check_checkpoint(path: Path) -> None:
    """Refuse a truncated or damaged checkpoint in one sentence naming the last good one."""
    path = Path(path)
    if _intact(path):
        return
    good = last_good(path.parent, path)
    if good is not None:
        where = (f"the last good one is {good} (step {checkpoint_step(good)}): copy it over {path.name} to "
                 "resume from there")
    else:
        where = f"no intact checkpoint is left in {path.parent}: start the run again in an empty --out"
    raise CheckpointError(f"the checkpoint {path} is truncated or damaged ({path.stat().st_size:,} bytes, not a "
                          f"complete torch checkpoint); {where}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose writes are atomic in the target's own folder and whose reads refuse a
    damaged file in one line."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        import torch

        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda f: torch.save(checkpoint, f))
        except Exception as err:  # torch's zip writer may report a failed write as a RuntimeError after it
            cause = _os_error(err)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(path)) from err  # named: the checkpoint, not its temp

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        check_checkpoint(Path(path))
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _os_error(err: BaseException | None, depth: int = 4) -> OSError | None:
    """The OSError that `err` is, or that it arose from (its context or cause)."""
    while err is not None and depth > 0:
        if isinstance(err, OSError):
            return err
        err, depth = err.__cause__ or err.__context__, depth - 1
    return None


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt` every `every` training steps, and at once on `save_now`."""

    def __init__(self, dirpath, every: int):
        super().__init__(dirpath=str(dirpath), filename="step{step}", every_n_train_steps=every, save_top_k=0,
                         save_last=True, enable_version_counter=False)
        self.every = every
        self._unscheduled = False

    @property
    def state_key(self) -> str:  # a plain ModelCheckpoint's: checkpoints of earlier runs restore into it
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def save_now(self, trainer) -> None:
        """Save `last.ckpt` after the step just done (the same file and contents a periodic save makes),
        unless it is saved already; marked `UNSCHEDULED` off the every-`every`-steps schedule."""
        if self.saved(trainer.global_step):
            return
        self._unscheduled = trainer.global_step % self.every != 0
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._unscheduled = False

    def saved(self, step: int) -> bool:
        """Whether `last.ckpt` holds the end of step `step` (saved after it, periodically or by `save_now`)."""
        return bool(self._last_checkpoint_saved) and self._last_global_step_saved == step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._unscheduled:
            checkpoint[UNSCHEDULED] = True


def step_saved(trainer) -> bool:
    """Whether the run's `last.ckpt` holds the end of the step just done (a run without a `LastCheckpoint`: no)."""
    return any(cb.saved(trainer.global_step) for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint))


_STALE_CALLBACKS = ("Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided "
                    "during `Trainer` instantiation. Please add the following callbacks: {}.")  # Lightning's words


def cadence_change(saver: LastCheckpoint, path: Path, flag: str) -> str | None:
    """A run resumed from `path` with another checkpoint cadence than the run's: one line saying what changed,
    and Lightning's warning about the checkpoint callback's state (its key names the old cadence, so it no
    longer matches; `LastCheckpoint` keeps no state a resume needs: one fixed file, no top-k) silenced for
    exactly that key, no other. None when the cadence is the run's (or the checkpoint names none)."""
    import re
    import warnings

    import torch

    try:
        keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("callbacks") or {}
    except Exception:  # noqa: BLE001 - unreadable: the resume itself says so (check_checkpoint)
        return None
    cadence = re.compile(r"'every_n_train_steps': (\d+)")
    mine = cadence.sub("", saver.state_key)
    old = [(k, int(m.group(1))) for k in keys if (m := cadence.search(k)) and cadence.sub("", k) == mine]
    if saver.state_key in keys or len(old) != 1 or old[0][1] == saver.every:
        return None
    key, every = old[0]
    warnings.filterwarnings("ignore", message=re.escape(_STALE_CALLBACKS.format([key])) + r"\Z")
    return f"{flag} {saver.every} differs from the run's {every}; checkpoints now every {saver.every} steps"
