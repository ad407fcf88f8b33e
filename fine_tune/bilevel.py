"""Single-task Bilevel-ZOFO fine-tuning under Lightning (`fine_tune --optimizer bilevel-zofo`).

Mirrors `fine_tune.module.ZOFineTuneModule`: manual optimization, one global step per training step
through Lightning's optimizer wrapper (so `global_step`, `max_steps`, checkpoint and validation
intervals work), the HF model in eval mode throughout, and the batches of step t a pure function of
(data seed, t). The task's training sample is split 2:1 (seeded by the data seed) into D_g (lower
level and penalty) and D_f (upper objective).

Checkpoints hold the installed upper adapter (p) as the module's state_dict, and in the optimizer
state every copy (p and w), both Adam states, the counters and the seed ledger of the backbone's updates
(a line per upper step): resuming replays that ledger onto the freshly loaded base, which gives the backbone
bit-identically, without ever storing a backbone-sized tensor.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from fine_tune.module import FineTuneModuleBase
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.streams import BilevelStreams, split_dg_df


class BilevelFineTuneModule(FineTuneModuleBase):
    """Args: model (PEFT-wrapped: lora | prefix | prompt), tokenizer, objective, splits (train/dev/eval),
    bilevel_kwargs (BilevelZOFO's: lam, lower_lr, upper_lr, theta_lr, eps, t_low, one_sided,
    num_directions, theta_clip, noise), seed (directions), data_seed (D_g/D_f split and batches),
    batch_size, eval_batch_size, steps, fingerprint (of the base; checked on resume)."""

    checkpoint_method = "bilevel-zofo"
    selects_best_on_dev = False  # the backbone lives in the seed ledger, not in a reloadable checkpoint

    def __init__(self, model, tokenizer, objective, splits, bilevel_kwargs: dict | None = None, seed: int = 0,
                 data_seed: int = 0, batch_size: int = 16, eval_batch_size: int = 16, steps: int = 1000,
                 fingerprint: str = ""):
        super().__init__(model, tokenizer, objective, splits, seed, data_seed, eval_batch_size, steps, fingerprint)
        self.bilevel_kwargs = dict(bilevel_kwargs or {})
        t_low = BilevelZOFO.resolve({k: v for k, v in self.bilevel_kwargs.items() if k != "noise"})["t_low"]
        self.d_g, self.d_f = split_dg_df(splits.train, data_seed)
        self.stream = BilevelStreams([(self.d_g, self.d_f)], batch_size, t_low, 1, data_seed)
        self._method: BilevelZOFO | None = None

    @property
    def method(self) -> BilevelZOFO:
        if self._method is None:
            self._method = BilevelZOFO(self.model, num_tasks=1, seed=self.seed, **self.bilevel_kwargs)
        return self._method

    def configure_optimizers(self):
        return self.method

    def training_step(self, _, batch_idx):
        step = self.global_step
        opt = self.optimizers()
        t0 = time.perf_counter()
        losses = self.stream.losses(step, lambda task, batch: self.objective.loss(self.model, self.tokenizer, batch))
        opt.step(loss=losses, task=0)
        dt = time.perf_counter() - t0
        raw: BilevelZOFO = opt.optimizer
        up = raw.last_upper
        row = {"step": step, "loss": raw.last_lower, "forwards": raw.forward_passes,
               "backwards": raw.backward_passes, "step_time_s": dt}
        logs = {"train/forward_passes": float(raw.forward_passes), "train/backward_passes": float(raw.backward_passes),
                "train/step_time_s": dt, "train/skipped_steps": float(raw.counters["skipped"])}
        if math.isfinite(raw.last_lower):
            logs["lower/loss"] = raw.last_lower
        if up is not None and not up.skipped:
            row.update(upper_loss=up.upper_loss[0], penalty=up.penalty[0], objective=up.objective[0],
                       projected_grad=up.projected_grads[0])
            # sparse metrics go straight to the logger: Lightning's on_step cache would repeat them every step
            if self.logger is not None:
                self.logger.log_metrics({"upper/loss": up.upper_loss[0], "upper/lower_g_loss": up.lower_g_loss[0],
                                         "upper/upper_g_loss": up.upper_g_loss[0], "upper/penalty": up.penalty[0],
                                         "upper/objective": up.objective[0],
                                         "upper/projected_grad": up.projected_grads[0]}, step=self.global_step)
        self.history.append(row)
        self.log_dict(logs, on_step=True, prog_bar=False)
        self.log("loss", raw.last_lower if math.isfinite(raw.last_lower) else float("nan"), prog_bar=True,
                 logger=False)

    def run_counters(self) -> dict:
        m = self.method
        return {"forward_passes": m.forward_passes, "backward_passes": m.backward_passes,
                "upper_steps": m.counters["upper_steps"], "skipped_steps": m.counters["skipped"],
                "splits_dg_df": [len(self.d_g), len(self.d_f)]}

    def export(self, path: Path, tokenizer=None, base: dict | None = None) -> Path:
        """The fine-tuned model: the adapter (`save_pretrained`), the backbone's change from the base
        (`backbone_delta.safetensors`, float32, regenerated from the seed ledger) and `base.json`."""
        from safetensors.torch import save_file

        path = super().export(path, tokenizer, base)
        delta = self.method.backbone_delta()
        if delta:
            save_file({k: v.contiguous() for k, v in delta.items()}, str(path / "backbone_delta.safetensors"),
                      metadata={"base_fingerprint": self.fingerprint})
        (path / "base.json").write_text(json.dumps({**(base or {}), "fingerprint": self.fingerprint,
                                                    "method": "bilevel-zofo",
                                                    "backbone_delta": "backbone_delta.safetensors" if delta else None},
                                                   indent=1))
        return path
