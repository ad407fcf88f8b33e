"""The validation a resumed run owes, and the record of one it does not (fine_tune --eval-every, meta_train
--model.val_every of Bilevel-ZOFO: both validate through Lightning's validation loop every `every` steps).

A checkpoint at a validation step is saved at the step's end, before its validation (periodically, or by Ctrl-C,
which stops there), and Lightning's resume takes that validation as done: the resumed run lacked that step's rows
(on TensorBoard, and in whatever the module keeps of its validations). `owed_validation` runs it first, unless
the interrupted run did it (kill -9 in a later step): rank 0 records the step of each validation done in
`folder`/validated.json. A module that keeps its validations' results in its checkpoint (Bilevel-ZOFO's
`adaptation` rows) puts what the record must carry in `validation_record()`, and gets it back through
`restore_validation_record(record)` when the validation was done after the checkpoint it resumes from. The
record also keeps the values the run's monitoring `ModelCheckpoint`s (fine_tune's best-on-dev) saw, so such a
resumed run gives them that validation too: the weights are the checkpoint's, the validated ones.

Ctrl-C (or SIGTERM) during a validation stops the run at its step. When the step is saved: after the batch under
way when batches are left (the validation is not recorded, so the resumed run owes it, as above), else once the
validation has ended and is recorded. When it is not (--save-every off the validation steps): once the validation
has ended and is recorded, saving the step then (a checkpoint taken half-way through a validation would not
resume). A scheduler's grace period is short; one more step (and where it can, the rest of the validation) no
longer runs first.
"""

from __future__ import annotations

import json
from pathlib import Path

from l2o.filelock import write_atomic


def owed_validation(every: int, folder: Path):
    """A Lightning callback: a run resumed from a checkpoint at a validation step (step % `every` == 0) first does
    that step's validation, logged at the step the uninterrupted run logs it at, unless the interrupted run did
    it (then the module gets that validation's record back, if it keeps one)."""
    from lightning.pytorch.callbacks import Callback

    from l2o.integrations.lightning.checkpoints import step_saved
    from l2o.integrations.lightning.interrupt import stop_if_interrupted

    record = folder / "validated.json"

    class OwedValidation(Callback):
        owed = pending = False  # pending: a resumed run that has not yet settled whether it owes one
        done: dict | None = None  # the record of the checkpoint step's validation, when the interrupted run did it

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            step = int(checkpoint.get("global_step", 0))
            try:
                done = json.loads(record.read_text())
                done_step = done["step"]
            except (OSError, ValueError, KeyError, TypeError):
                done, done_step = None, None
            due = step > 0 and step % every == 0
            self.owed, self.pending = due and done_step != step, True
            self.done = done if due and done_step == step else None

        def on_validation_end(self, trainer, pl_module):
            if trainer.is_global_zero and not trainer.sanity_checking:
                folder.mkdir(parents=True, exist_ok=True)
                keep = getattr(pl_module, "validation_record", None)
                entry = {"step": trainer.global_step, **({"module": keep()} if keep is not None else {}),
                         "monitored": {cb.monitor: float(trainer.callback_metrics[cb.monitor])
                                       for cb in _monitoring(trainer) if cb.monitor in trainer.callback_metrics}}
                write_atomic(record, lambda f: f.write(json.dumps(entry).encode()))
            if self.in_fit(trainer):  # Ctrl-C during it: stop at its step, recorded, saved now if it was not
                stop_if_interrupted(trainer)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.validate(trainer, pl_module, 1)  # Lightning counted this batch already
            self.stop_at_saved_validation(trainer)  # Ctrl-C in its last batch: the validation is recorded; stop

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            last = dataloader_idx == len(trainer.num_val_batches) - 1 and batch_idx == trainer.num_val_batches[-1] - 1
            if not last:  # Ctrl-C with batches left: abandon them (not recorded, so the resumed run owes them)
                self.stop_at_saved_validation(trainer)

        @staticmethod
        def in_fit(trainer) -> bool:
            """Whether this is a validation of fit at a validation step (not a sanity check): the periodic one after
            that step, or the one a run resumed at that step owes before its first step."""
            return trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.global_step > 0 \
                and trainer.global_step % every == 0

        def stop_at_saved_validation(self, trainer):
            """Ctrl-C during the validation of a saved step: stop at that step, not after the validation's rest and
            one more step (a scheduler's grace period is short). Every rank comes here at the same point."""
            if self.in_fit(trainer) and step_saved(trainer):
                stop_if_interrupted(trainer)

        def on_fit_end(self, trainer, pl_module):
            self.validate(trainer, pl_module, 0)  # resumed at the last step: Lightning ran no training loop

        def validate(self, trainer, pl_module, counted: int):
            if not self.pending:
                return
            self.pending = False
            # rank 0's record decides, for every rank
            owed, done = trainer.strategy.broadcast((self.owed, self.done), 0)
            if not owed:
                if done is not None:
                    self.restore(trainer, pl_module, done)
                return
            loop = trainer.fit_loop.epoch_loop
            first = trainer._logger_connector._first_loop_iter
            loop._batches_that_stepped -= counted  # log at the step the uninterrupted run logs it at
            try:
                trainer.validating = True
                loop.val_loop.restarting = False  # a whole validation, not the rest of a restored one
                loop.val_loop.run()
            finally:
                trainer.training = True
                trainer._logger_connector._first_loop_iter = first
                loop._batches_that_stepped += counted

        @staticmethod
        def restore(trainer, pl_module, done: dict):
            """The interrupted run's validation at this step, given back: to the module (its record), and to each
            monitoring ModelCheckpoint, which compares its value and saves the weights now (the validated ones)."""
            restore = getattr(pl_module, "restore_validation_record", None)
            if restore is not None and "module" in done:
                restore(done["module"])
            import torch

            for cb in _monitoring(trainer):
                value = done.get("monitored", {}).get(cb.monitor)
                if value is not None:
                    candidates = cb._monitor_candidates(trainer)
                    candidates[cb.monitor] = torch.tensor(value)
                    cb._save_topk_checkpoint(trainer, candidates)

    return OwedValidation()


def _monitoring(trainer) -> list:
    """The trainer's ModelCheckpoints that choose by a monitored value (fine_tune's best-on-dev)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
