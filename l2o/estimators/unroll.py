"""A truncated unroll: K steps of the deployed optimizer, the meta-loss on held-out batches (forward only).

The inner run is what a user deploys (`fine_tune --optimizer zo-finetuner[+gv] --policy ...`): MeZO or MeZO-GV
with the policy's per-block scales, built through the optimizer registry. Per unroll of K steps from the
run's state (its step u, the policy's recurrent features, the weights in the model):

    for k < K:   theta <- ZO step on train batch u + k, directions from (seed, u + k)     (writes the weights)
    meta-loss    final: mean_m L(theta_{u+K}; heldout batch (u+K) M + m)
                 mean:  (1/K) sum_{k=1..K} mean_m L(theta_{u+k}; heldout batch (u+k) M + m)

Both signs of an antithetic pair use the same (seed, u) and the same batches: common random numbers.
`InnerState` is the run's resumable state: the step, the features, and its ledger records since the
pretrained weights, so a checkpoint holds kilobytes and `rebuild` replays the weights bit-identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from l2o.estimators.base import TaskStream
from l2o.ledger import Ledger
from l2o.noise import mix
from l2o.policy import ZOPolicy

INNER_METHODS = ("zo-finetuner", "zo-finetuner+gv")
META_LOSSES = ("final", "mean")


def inner_seed(seed: int, episode: int) -> int:
    """The inner run's optimizer seed in an episode (its directions are z(derive_seed(this, step, j), b))."""
    return mix(seed, 0x1AA, episode)


@dataclass
class InnerState:
    """Where one inner fine-tuning run is: optimizer step, policy features, ledger records since pretrained."""

    step: int = 0
    features: dict | None = None
    records: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        f = None
        if self.features is not None:
            f = dict(self.features)
            if f.get("prev_sigma") is not None:
                f["prev_sigma"] = [float(x) for x in f["prev_sigma"]]
        return {"step": self.step, "features": f, "records": [dict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> "InnerState":
        return cls(int(d["step"]), d.get("features"), [dict(r) for r in d.get("records", [])])


@dataclass
class UnrollResult:
    meta_loss: float
    train_losses: list[float]
    forwards: int
    sigma: torch.Tensor | None = None      # the policy's sigma at the unroll's first step
    effective_step: float = 1.0            # mean E||d||^2 / D over the steps


class Unroller:
    """Runs K inner steps of `method` with a policy from the model's current weights (`run`). `hparams`: the
    method's other declared hyperparameters (zo-finetuner+gv: pool_size, alpha, ...); unset ones take its defaults."""

    def __init__(self, model: nn.Module, method: str = "zo-finetuner", lr: float = 1e-5, eps: float = 1e-3,
                 size_rule: str = "numel", batch_size: int = 8, meta_loss: str = "final", meta_batches: int = 1,
                 noise=None, seed: int = 0, **hparams):
        if method not in INNER_METHODS:
            raise ValueError(f"the inner optimizer must be one of {', '.join(INNER_METHODS)}, got {method!r}")
        if meta_loss not in META_LOSSES:
            raise ValueError(f"the meta-loss must be one of {', '.join(META_LOSSES)}, got {meta_loss!r}")
        if meta_batches < 1:
            raise ValueError(f"meta_batches must be >= 1, got {meta_batches!r}")
        self.model, self.method, self.lr, self.eps = model, method, float(lr), float(eps)
        self.size_rule, self.batch_size, self.noise = size_rule, int(batch_size), noise
        self.meta_loss, self.meta_batches = meta_loss, int(meta_batches)
        self.extra = dict(hparams)
        self.seed = int(seed)  # of the inner runs' directions (episode e: inner_seed(seed, e))

    def optimizer(self, policy: ZOPolicy, state: InnerState, seed: int, collective=None):
        from l2o.optim import build_optimizer

        kw = dict(self.extra, lr=self.lr, eps=self.eps, seed=seed, policy=policy, noise=self.noise,
                  policy_batch_size=self.batch_size, policy_size_rule=self.size_rule)
        if collective is not None:
            kw["collective"] = collective
        opt = build_optimizer(self.method, self.model, **kw)
        opt.state["zo"]["step"] = state.step
        if state.features is not None:
            opt.policy_scales.load_state_dict(state.features)
        return opt

    def heldout_loss(self, opt, stream: TaskStream, u: int) -> float:
        """mean_m L(theta; heldout batch u M + m), forward only."""
        total = 0.0
        for m in range(self.meta_batches):
            batch = stream.heldout(u * self.meta_batches + m)
            total += opt.engine.loss(lambda: stream.loss(self.model, batch))
        return total / self.meta_batches

    @torch.no_grad()
    def run(self, policy: ZOPolicy, state: InnerState, stream: TaskStream, episode: int, steps: int,
            collective=None) -> tuple[UnrollResult, InnerState]:
        """K = `steps` inner steps of episode `episode` from `state` (the weights must be the state's); returns
        the result and the state after them (its records extended by this unroll's updates)."""
        opt = self.optimizer(policy, state, inner_seed(self.seed, episode), collective)
        losses, metas, sigma, eff = [], [], None, 0.0
        for k in range(steps):
            u = state.step + k
            batch = stream.train(u)
            opt.step(lambda: stream.loss(self.model, batch))
            losses.append(float(opt.last.loss))
            eff += opt.last.effective_step or 0.0
            if sigma is None and opt.sigma is not None:
                sigma = opt.sigma.detach().clone()
            if self.meta_loss == "mean" or k == steps - 1:
                metas.append(self.heldout_loss(opt, stream, u + 1))
        meta = sum(metas) / len(metas) if metas else math.nan
        forwards = opt.forward_passes + len(metas) * self.meta_batches  # every rank's, as the optimizer counts
        records = [{k: v for k, v in r.items() if k != "h"} for r in opt.ledger.records if "seal" not in r]
        after = InnerState(opt.step_count, opt.policy_scales.state_dict(), state.records + records)
        return UnrollResult(meta, losses, forwards, sigma, eff / max(1, steps)), after


def rebuild(engine, state: InnerState) -> None:
    """Replay a run's updates onto the weights (which must be the pretrained ones): bit-identical to the run."""
    for d, step, decay, rounding, params in Ledger({}, state.records).updates():
        engine.update(d, step, decay=decay, rounding_seed=rounding, params=params)
