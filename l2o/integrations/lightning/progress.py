"""Quiet libraries, and progress lines when no progress bar shows (both apps' Lightning runs)."""

from __future__ import annotations

import math
import os
import sys
import time

from lightning.pytorch.callbacks import Callback

# library chatter that does not apply to forward-only training (the runs print their own summaries)
_IGNORED = (".*isinstance\\(treespec, LeafSpec\\).*", ".*module\\(s\\) in eval mode.*",
            ".*no pre-optimization state was saved.*", ".*does not have many workers.*",
            ".*limit_val_batches.*", ".*exists and is not empty.*",
            # batches are a pure function of global_step (l2o.streams.Stream), so mid-epoch resume is exact
            ".*dataloader is not resumable.*", ".*is_gradient_checkpointing.*is deprecated.*",
            ".*were not used by the forward.*", ".*`training_step` returned `None`.*",
            ".*LightningCLI's args parameter.*",
            # every rank evaluates dev/eval on identical weights: nothing to synchronise
            ".*sync_dist=True.*")


def quiet_libraries() -> None:
    """The one warning silencer of the apps: the patterns above, Lightning's info logs, HF progress bars."""
    import logging
    import warnings

    for pattern in _IGNORED:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def show_progress_bar() -> bool:
    """Lightning's bar only on a terminal (or with L2O_PROGRESS=1); otherwise `ProgressLines` logs."""
    return sys.stderr.isatty() or os.environ.get("L2O_PROGRESS") == "1"


class ProgressLines(Callback):
    """A line on stderr every `every` steps (and at the last step, and at least every `seconds`):
    step, loss, forward passes, rate and ETA. For runs whose stderr is a file or a pipe, where the
    progress bar is off and a long run would otherwise print nothing for minutes."""

    LOSS_KEYS = ("train/loss", "lower/loss", "meta/meta_loss", "loss")  # fine_tune, bilevel, meta_train

    def __init__(self, every: int = 0, seconds: float = 60.0, stream=None):
        self.every, self.seconds, self.stream = int(every), float(seconds), stream
        self._t0 = self._last = None
        self._start_step = 0

    def on_train_start(self, trainer, pl_module):
        self._t0 = self._last = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero:  # rank 0 speaks for the run
            return
        step, total = trainer.global_step, trainer.max_steps
        every = self.every or max(1, total // 20 if total and total > 0 else 10)
        now = time.perf_counter()
        if not (step % every == 0 or step == total or now - self._last >= self.seconds):
            return
        self._last = now
        print(self.line(trainer, step, total, now - self._t0), file=self.stream or sys.stderr, flush=True)

    def line(self, trainer, step: int, total: int, elapsed: float) -> str:
        metrics = trainer.callback_metrics
        loss = next((float(metrics[k]) for k in self.LOSS_KEYS if k in metrics), math.nan)
        done = max(1, step - self._start_step)
        rate = done / max(elapsed, 1e-9)
        parts = [f"step {step}/{total}" if total and total > 0 else f"step {step}", f"loss {loss:.4f}"]
        if "train/forward_passes" in metrics:
            parts.append(f"{int(metrics['train/forward_passes'])} forward passes")
        parts.append(f"{rate:.2f} steps/s")
        if total and total > 0:
            parts.append(f"ETA {max(0, total - step) / rate:.0f} s")
        return ", ".join(parts)
