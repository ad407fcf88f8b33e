"""First-order baselines (`fine_tune --optimizer fo-sgd|fo-adamw`): backpropagation with a `torch.optim` optimizer.

They are the ceiling the zeroth-order methods are measured against, and the memory contrast every ZO paper
prints: a step keeps the activations for the backward pass and one gradient per trainable weight (AdamW: two
more moment buffers), where a ZO step keeps neither. The module mirrors `ZOFineTuneModule`: manual
optimization (one optimizer step per global step, so `max_steps`, checkpoints and validation intervals work),
the HF model in eval mode (dropout off), and the batch of step t a pure function of (data seed, t), so a run
and its ZO counterpart see the same batches. Each step is one forward and one backward pass.
"""

from __future__ import annotations

import math
import time

import torch

from fine_tune.module import FineTuneModuleBase
from l2o.footprint import Buffer
from l2o.streams import Stream

# name -> (torch.optim class, defaults); MeZO's FT baseline is Adam (fo-adamw), plain SGD is ZO-SGD's FO twin
FIRST_ORDER: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "fo-sgd": (torch.optim.SGD, dict(lr=1e-3, weight_decay=0.0)),
    "fo-adamw": (torch.optim.AdamW, dict(lr=1e-4, weight_decay=0.0)),
}
FO_FLAGS = ("lr", "weight_decay")  # the fine_tune flags a first-order optimizer takes
# What a step keeps beyond the weights, per trainable tensor (l2o/footprint.py), for `fine_tune --dry-run`: the
# gradient backprop leaves in every trainable tensor (in its dtype), and the torch optimizer's state: AdamW's
# exp_avg and exp_avg_sq, which torch keeps in the parameters' own dtype (bf16 weights: bf16 moments; its 'step'
# is a 4-byte scalar per tensor, not counted); SGD keeps a momentum buffer only with momentum, which FO_FLAGS
# does not offer (torch's default 0): none. tests/test_first_order.py checks them against a step's tensors.
GRADIENTS = Buffer("gradients", dtype="weights")
FO_BUFFERS: dict[str, tuple[Buffer, ...]] = {
    "fo-sgd": (),
    "fo-adamw": (Buffer("AdamW's exp_avg and exp_avg_sq", copies=2, dtype="weights"),),
}
# The step's own temporary, in copies of the trainable tensors (their dtype), for the plan: on a GPU torch's AdamW
# defaults to its foreach implementation, whose torch._foreach_sqrt(exp_avg_sq) makes one temporary of every
# trainable tensor at once (torch/optim/adam.py, _multi_tensor_adam), after the backward has freed the activations;
# its single-tensor path (the CPU's default) makes two or three tensors at a time (sqrt(v), its quotient, the
# previous tensor's denominator still bound), each at most the largest trainable tensor. SGD without momentum
# updates in place on both paths: none. Measured on SmolLM2-135M (docs/distributed.md, bench/fo_step_memory.py),
# tested in tests/test_fine_tune_placement.py.
FO_STEP_TEMPORARY: dict[str, int] = {"fo-sgd": 0, "fo-adamw": 1}


def is_first_order(name) -> bool:
    return name in FIRST_ORDER


def first_order_kwargs(name: str, given: dict) -> dict:
    """The registry defaults of `name`, overridden by the flags given; ValueError for a flag it does not take or a
    negative lr or weight decay."""
    unknown = sorted(k for k, v in given.items() if v is not None and k not in FO_FLAGS)
    if unknown:
        raise ValueError(f"--{unknown[0].replace('_', '-')} does not apply to optimizer {name!r} "
                         f"(it takes {', '.join('--' + f.replace('_', '-') for f in FO_FLAGS)})")
    kwargs = {**FIRST_ORDER[name][1], **{k: v for k, v in given.items() if v is not None}}
    for k in FO_FLAGS:
        if kwargs[k] < 0:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 0, got {kwargs[k]!r}")
    return kwargs


class FOFineTuneModule(FineTuneModuleBase):
    """One backpropagation step per training step with `FIRST_ORDER[optimizer]` over the trainable parameters."""

    checkpoint_method = "first-order"

    def __init__(self, model, tokenizer, objective, splits, optimizer: str, optimizer_kwargs: dict, seed: int,
                 data_seed: int, batch_size: int, eval_batch_size: int, steps: int, fingerprint: str):
        super().__init__(model, tokenizer, objective, splits, seed, data_seed, eval_batch_size, steps, fingerprint)
        self.optimizer_name, self.optimizer_kwargs = optimizer, dict(optimizer_kwargs)
        self.stream = Stream(splits.train, batch_size, data_seed, salt=0xDA7A)  # ZOFineTuneModule's batches
        self.forward_passes = self.backward_passes = 0
        self.first_step = 0

    def configure_optimizers(self):
        cls = FIRST_ORDER[self.optimizer_name][0]
        return cls([p for p in self.model.parameters() if p.requires_grad], **self.optimizer_kwargs)

    def on_train_start(self):
        self.first_step = self.global_step

    def training_step(self, _, batch_idx):
        batch = self.stream.batch(self.global_step)
        opt = self.optimizers()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.objective.loss(self.model, self.tokenizer, batch)
            self.manual_backward(loss)
        opt.step()
        dt = time.perf_counter() - t0
        self.forward_passes += 1
        self.backward_passes += 1
        value = float(loss.detach())
        self.history.append({"step": self.global_step, "loss": value, "forwards": self.forward_passes,
                             "backwards": self.backward_passes, "step_time_s": dt, "skipped": False,
                             "effective_step": None})
        logs = {"train/forward_passes": float(self.forward_passes),
                "train/backward_passes": float(self.backward_passes),
                "train/step_time_s": dt, "train/lr": opt.optimizer.param_groups[0]["lr"]}
        if math.isfinite(value):
            logs["train/loss"] = value
        self.log_dict(logs, on_step=True, prog_bar=False)
        self.log("loss", value, prog_bar=True, logger=False)

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["l2o"]["counters"] = {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        counters = checkpoint["l2o"].get("counters", {})
        self.forward_passes = counters.get("forward_passes", 0)
        self.backward_passes = counters.get("backward_passes", 0)

    def run_counters(self) -> dict:
        return {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes, "skipped_steps": 0,
                "processes": {"world_size": 1, "parallel": None, "bytes_sent_per_step": 0.0},
                "effective_step": None, "bszo_prior": None}
