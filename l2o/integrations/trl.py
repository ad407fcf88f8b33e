"""TRL's `SFTTrainer` with a zeroth-order optimizer of ours: `ZOSFTTrainer` (needs `pip install l2o-zo[trl]`).

    from l2o.integrations.trl import ZOSFTTrainer
    trainer = ZOSFTTrainer(model=model, args=SFTConfig("out", learning_rate=1e-6, max_grad_norm=0),
                           train_dataset=ds, processing_class=tokenizer, optimizer="mezo")

The step is `l2o.integrations.hf.ZOTrainerMixin`'s (see there: forwards only, gradient accumulation as more
examples per step, the refusals). SFTTrainer's own loss (completion-only, DFT, padding-free) is what each
forward evaluates. SFTTrainer files its per-forward metrics (entropy, token accuracy) by the model's mode;
our forwards run in eval mode, so they are moved back to the training metrics after each step, and the
`num_tokens` it counts only in training mode does not advance.
"""

from __future__ import annotations

from trl import SFTTrainer

from l2o.integrations.hf import ZOTrainerMixin


class ZOSFTTrainer(ZOTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` whose training step is a zeroth-order step of ours."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        for key, values in self._metrics["eval"].items():   # the ZO forwards' metrics are training metrics
            if key != "num_tokens":
                self._metrics["train"][key].extend(values)
        self._metrics["eval"].clear()
        return loss


__all__ = ["ZOSFTTrainer"]
