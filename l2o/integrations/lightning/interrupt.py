"""Ctrl-C during ``Trainer.fit``: finish this step, save ``checkpoints/last.ckpt``, stop.

Lightning would otherwise catch the KeyboardInterrupt and exit 1. ``interrupt_callback`` asks for the stop;
``finish_fit`` raises KeyboardInterrupt afterwards, which ``RunFolder`` (folder.py) turns into
``RunInterrupted``, and the CLIs print it and exit 130.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path


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
