"""Ctrl-C (or SIGTERM, l2o/stop.py) during ``Trainer.fit``: finish this step, save ``checkpoints/last.ckpt``, stop.

Lightning would otherwise catch the KeyboardInterrupt and exit 1. ``interrupt_callback`` saves and stops
the fit; ``finish_fit`` then raises KeyboardInterrupt, which ``RunFolder`` (folder.py) turns into
``RunInterrupted``, and the CLIs print it and exit 130 (143 after SIGTERM). ``finish_fit`` also turns a
failure from outside the run (a full disk, a lost process: failures.py) into one sentence.
"""

from __future__ import annotations

from pathlib import Path

from l2o.stop import StopRequest, interrupt


class StopRequested(BaseException):
    """Raised from the step after which Ctrl-C stops the fit (once its checkpoint is saved)."""


def interrupt_callback(last: Path):
    """A Lightning callback: on SIGINT or SIGTERM during fit, finish the step, save ``last``, and stop training.

    The checkpoint is the run's own ``LastCheckpoint`` (checkpoints.py), saved as its periodic save would
    be, so resuming from it is exact and no second ``last-v1.ckpt`` appears. The fit stops by an exception
    right after it: ``Trainer.should_stop`` would first run a validation the uninterrupted run does not.
    A second Ctrl-C stops at once (Lightning's own KeyboardInterrupt handling). ``requested`` tells
    ``finish_fit`` that the run was interrupted, ``signum`` by which signal.

    In a run of several processes a signal may reach one of them only (``kill`` of one process) or each at
    another moment (a scheduler's SIGTERM to every task). The handler only takes note; after each step every
    process learns the largest signal any of them took (one all-reduce), so all of them save the same step,
    stop, and say the same. Lightning installs a SIGTERM handler of its own after ``on_fit_start``, which
    broadcasts from inside the handler: a collective that the other processes, somewhere else in their step,
    do not join, so a SIGTERM to one process hung the run. ``on_train_start`` takes SIGTERM back from it.
    Lightning may put this callback's handler back after the fit, so a signal that reaches it then is a
    KeyboardInterrupt at once, as it would be without it.
    """
    from lightning.pytorch.callbacks import Callback

    from l2o.integrations.lightning.checkpoints import LastCheckpoint

    class StopOnInterrupt(Callback):
        is_interrupt_callback = True

        def __init__(self):
            self.note = StopRequest()  # the first signal noted, a second raising at once (l2o/stop.py)

        requested = property(lambda self: self.note.requested)
        signum = property(lambda self: self.note.signum)

        def on_fit_start(self, trainer, pl_module):
            self.note.install()

        def on_train_start(self, trainer, pl_module):
            self.note.retake()  # Lightning's SIGTERM handler replaced this one since on_fit_start

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.stop_if_requested(trainer)

        def on_train_end(self, trainer, pl_module):
            # a signal after the last step's check (in the final validation): every rank stops here, not only
            # the one it reached (which alone would say "stopped" while the others finish the run)
            self.stop_if_requested(trainer)

        def stop_if_requested(self, trainer):
            # every rank of a multi-device run stops at the same point, by the largest signal any rank took (0:
            # none); one device needs no exchange (nor a device sync each step)
            signum = int(self.signum or 0)
            if trainer.world_size > 1:
                import torch

                took = torch.tensor([signum], device=trainer.strategy.root_device)
                signum = int(trainer.strategy.reduce(took, reduce_op="max").item())
            if signum:
                self.note.signum = signum
                saver = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
                if saver is not None:
                    saver.save_now(trainer)
                else:
                    trainer.save_checkpoint(str(last), weights_only=False)
                raise StopRequested

        def on_exception(self, trainer, pl_module, exception):
            self.note.restore()

        def teardown(self, trainer, pl_module, stage):
            self.note.restore()

    return StopOnInterrupt()


def interrupt_requested(trainer) -> bool:
    """Whether Ctrl-C has asked this run to stop: work that would only delay the stop (a meta-validation after
    the step, at the end of training) skips or abandons itself."""
    return any(getattr(cb, "is_interrupt_callback", False) and cb.requested for cb in getattr(trainer, "callbacks", []))


def stop_if_interrupted(trainer) -> None:
    """Where work after a step's checkpoint point may have been cut short by Ctrl-C (a meta-validation that
    abandoned itself): stop now, as the interrupt callback does after a step (save ``last.ckpt`` at this step,
    then stop), instead of running one more step first. Every rank must call it at the same point; the
    resumed run redoes what was abandoned."""
    for cb in getattr(trainer, "callbacks", []):
        if getattr(cb, "is_interrupt_callback", False):
            cb.stop_if_requested(trainer)


def finish_fit(fit, trainer, stop_cb) -> None:
    """Run ``fit()``; raise KeyboardInterrupt if Ctrl-C stopped it (``RunFolder`` turns that into
    ``RunInterrupted``, with or without a checkpoint to resume from), and ``RunFailed`` for a failure
    from outside the run (failures.py)."""
    from l2o.integrations.lightning.failures import run_failure

    try:
        fit()
    except StopRequested:  # the stop callback set `requested` on every rank before raising it: raised below
        pass
    except SystemExit:  # Lightning exits 1 on a KeyboardInterrupt (a second Ctrl-C); SIGTERMException, a SystemExit,
        # follows a SIGTERM its own handler took before on_train_start took the signal back
        if trainer.interrupted:
            raise interrupt(stop_cb.signum) from None
        raise
    except Exception as err:
        failure = run_failure(err, trainer)
        if failure is None:
            raise
        raise failure from None
    if stop_cb.requested:
        # Free what the stopped loop left in reference cycles (a validation's data iterators and fetcher, once the
        # exception's frames are gone) now, while the process is whole. Collected at interpreter exit instead,
        # after a stop inside a validation one process of a 2-process gloo run aborted ("terminate called without
        # an active exception", exit -6) in 5 of 20 runs here; 0 of 50 with this collection.
        import gc

        gc.collect()
        raise interrupt(stop_cb.signum)
