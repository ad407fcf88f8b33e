"""A truncated unroll: K steps of the deployed optimizer, the meta-loss on held-out batches (forward only).

The inner run is what a user deploys (`fine_tune --optimizer zo-finetuner[+<method>] --policy ...`): any
registered composition of a method with the policy's per-block scales (l2o.optim.zo_finetuner.compose), built
through the optimizer registry (`INNER_METHODS`, derived from it). Per unroll of K steps from the run's state
(its step u, the policy's recurrent features, the method's own state, the weights in the model):

    for k < K:   theta <- ZO step on train batch u + k, directions from (seed, u + k)     (writes the weights)
    meta-loss    final: mean_m L(theta_{u+K}; heldout batch (u+K) M + m)
                 mean:  (1/K) sum_{k=1..K} mean_m L(theta_{u+k}; heldout batch (u+k) M + m)

Both signs of an antithetic pair use the same (seed, u) and the same batches: common random numbers.
`InnerState` is the run's resumable state: the step, the features, the method's scalar state (BSZO's noise
estimate), its perturbation family's binding (Sparse-MeZO's thresholds, from the run's first weights) and its
ledger records since the pretrained weights, so a checkpoint holds kilobytes and `Unroller.rebuild` replays the
weights bit-identically. A method with an update rule (zo-sgd-mmt's momentum, HiZOO's preconditioner, LOZO-M's
factored momentum: l2o/updates.py) carries the rule's buffers in memory from one unroll to the next (one
parameter copy per run held: ES's trajectory, each of PES's 2N runs); a checkpoint leaves them out and
`rebuild` makes them again from the records, as they depend on the ledger's lines alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from l2o.estimators.base import TaskStream
from l2o.ledger import Ledger, apply_updates
from l2o.noise import mix
from l2o.policy import ZOPolicy

# what an unroll needs of an inner method, and why (a composition that lacks one is refused with the reason)
UNROLL_NEEDS = (
    ("replayable", lambda cls: cls.replayable, "an unroll's state is its ledger records, and its ledger alone does "
                                               "not rebuild its weights"),
    ("one closure", lambda cls: not cls.splits, "an unroll feeds one train batch per step, and its closure takes "
                                                "(split, task)"),
)


def unroll_refusal(cls) -> str | None:
    """Why ES/PES cannot unroll the registered method `cls` (None: they can): it must compose a method with the
    policy (zo_finetuner.compose) and have what `UNROLL_NEEDS` names."""
    if not getattr(cls, "base_method", None):
        return f"{cls.method} is not a composition with the learned policy (zo_finetuner.compose)"
    return next((f"{cls.method}: {why}" for _, ok, why in UNROLL_NEEDS if not ok(cls)), None)


def inner_method_problem(method: str) -> str | None:
    """None if ES/PES can unroll `method`; else what the refusal says after the option's name: the choices, the
    name given and, for a registered method, why (`unroll_refusal`). Unroller and meta_train's check word it once."""
    if method in INNER_METHODS:
        return None
    from l2o.optim import REGISTRY

    why = f" ({unroll_refusal(REGISTRY[method])})" if method in REGISTRY else ""
    return f"must be one of {', '.join(INNER_METHODS)}, got {method!r}{why}"


def _inner_methods() -> tuple[str, ...]:
    from l2o.optim import REGISTRY

    return tuple(name for name, cls in REGISTRY.items() if unroll_refusal(cls) is None)


INNER_METHODS = _inner_methods()  # every policy composition ES/PES can unroll, in the registry's order
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
    scalars: dict = field(default_factory=dict)   # the optimizer's state["zo"] beyond step and forwards (BSZO's)
    family: dict | None = None                    # its perturbation family's config (Sparse-MeZO: thresholds)
    rule: dict | None = field(default=None, repr=False, compare=False)  # its update rule's buffers (memory only)

    def to_dict(self) -> dict:
        f = None
        if self.features is not None:
            f = dict(self.features)
            if f.get("prev_sigma") is not None:
                f["prev_sigma"] = [float(x) for x in f["prev_sigma"]]
        return {"step": self.step, "features": f, "records": [dict(r) for r in self.records],
                "scalars": dict(self.scalars), "family": self.family}

    @classmethod
    def from_dict(cls, d: dict) -> "InnerState":
        return cls(int(d["step"]), d.get("features"), [dict(r) for r in d.get("records", [])],
                   dict(d.get("scalars") or {}), d.get("family"))


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
        problem = inner_method_problem(method)
        if problem:
            raise ValueError(f"the inner optimizer {problem}")
        if meta_loss not in META_LOSSES:
            raise ValueError(f"the meta-loss must be one of {', '.join(META_LOSSES)}, got {meta_loss!r}")
        if meta_batches < 1:
            raise ValueError(f"meta_batches must be >= 1, got {meta_batches!r}")
        self.model, self.method, self.lr, self.eps = model, method, float(lr), float(eps)
        self.size_rule, self.batch_size, self.noise = size_rule, int(batch_size), noise
        self.meta_loss, self.meta_batches = meta_loss, int(meta_batches)
        self.extra = dict(hparams)
        self.seed = int(seed)  # of the inner runs' directions (episode e: inner_seed(seed, e))

    def optimizer(self, policy: ZOPolicy | None, state: InnerState, seed: int, collective=None, rule: bool = True):
        """The inner method where the run `state` is (the weights must be its): its step, the policy's features,
        the method's scalars, family binding and (`rule`) update-rule buffers, from memory or else rebuilt from
        the records."""
        from l2o.optim import build_optimizer

        kw = dict(self.extra, lr=self.lr, eps=self.eps, seed=seed, policy=policy, noise=self.noise,
                  policy_batch_size=self.batch_size, policy_size_rule=self.size_rule)
        if collective is not None:
            kw["collective"] = collective
        opt = build_optimizer(self.method, self.model, **kw)
        opt.state["zo"].update(copy.deepcopy(state.scalars), step=state.step)
        if state.features is not None and opt.policy_scales is not None:
            opt.policy_scales.load_state_dict(state.features)
        if state.family is not None:
            opt.adopt_family(state.family)
        if rule and opt.engine.rule is not None:
            if state.rule is not None:
                opt.engine.rule.load_state_dict(state.rule)
            else:
                apply_updates(opt.engine, Ledger({}, state.records), write=False)
        return opt

    @torch.no_grad()
    def rebuild(self, state: InnerState) -> None:
        """Replay a run's updates onto the weights (which must be the pretrained ones) through the method's own
        engine (its family and update rule): bit-identical to the run; the rule's buffers come back into `state`."""
        opt = self.optimizer(None, state, 0, rule=False)
        try:
            apply_updates(opt.engine, Ledger({}, state.records))
            if opt.engine.rule is not None:
                state.rule = _taken(opt.engine.rule)
        finally:
            opt.engine.remove_hooks()

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
        zo = opt.state["zo"]
        after = InnerState(opt.step_count, opt.policy_scales.state_dict(), state.records + records,
                           {k: v for k, v in zo.items() if k not in ("step", "forwards")}, opt.engine.family.config(),
                           _taken(opt.engine.rule))
        return UnrollResult(meta, losses, forwards, sigma, eff / max(1, steps)), after


def _taken(rule) -> dict | None:
    """The rule's buffers, taken from an optimizer that is done (no copy: the next unroll's load copies them)."""
    return None if rule is None else {name: dict(store) for name, store in rule.buffers.items()}
