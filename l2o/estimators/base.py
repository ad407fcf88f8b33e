"""What every meta-gradient estimator shares (learned_optimization's `GradientEstimator` vocabulary).

    out = estimator.estimate(policy, streams, step)   # the meta-gradient at the policy's parameters psi
    out.grad        one tensor per policy parameter (policy.parameters() order): d meta-loss / d psi
    out.meta_loss   the meta-loss the estimate is for;  out.metrics  diagnostics (TensorBoard)
    estimator.state_dict() / load_state_dict()         the unroll state (trajectory, particles): resume

A **task stream** is one task's batches, each a pure function of its index: `train(i)` for inner step i
and `heldout(i)` for the meta-loss. `streams(key)` is the task family, keyed by meta-step (the look-ahead)
or by episode (ES and PES: one fine-tuning run from the pretrained weights per episode).

The forward-only estimators perturb the policy in **coordinates**: all of its parameters, or a
low-dimensional part of them (`PARAMETRISATIONS`). Antithetic ES with N pairs in P coordinates has, for a
locally linear meta-loss, cos^2(g_ES, grad) ~ Beta(N/2, (P-1)/2) (tests/test_estimators.py derives it),
so its expected cosine is about sqrt(N / (N + P)): 0.008 for SmolLM2's 122k policy parameters at N = 8,
0.17 for its 272 output biases.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from l2o.noise import mix
from l2o.policy import POLICY_TENSORS, ZOPolicy

# the policy tensors ES/PES perturb: every parameter, the output layer, or only its bias (one per block:
# sigma_b = |w2_b h_b + b2_b|, so b2 sets each block's level of sigma and w2 how it follows the features);
# "type": the bias tied within each kind of block (every layer's q_proj weight moves together, ...)
PARAMETRISATIONS = {"all": POLICY_TENSORS, "head": ("w2", "b2"), "bias": ("b2",), "type": ("b2",)}
TAG_POLICY_NOISE = 0xE5


@dataclass
class TaskStream:
    """One task's batches for meta-training; `loss(model, batch)` is its training objective."""

    name: str
    loss: Callable[[Any, Any], torch.Tensor]
    train: Callable[[int], Any]
    heldout: Callable[[int], Any]


@dataclass
class EstimatorOut:
    meta_loss: float
    grad: list[torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    sigma: torch.Tensor | None = None   # per-block sigma at the current state (detached), for histograms
    task: str = ""
    forwards: int = 0                   # forward passes this estimate took (all ranks together)

    def assign_grad(self, policy: ZOPolicy) -> None:
        for p, g in zip(policy.parameters(), self.grad):
            p.grad = g.to(device=p.device, dtype=p.dtype).clone()


class GradientEstimator:
    """Base class: `estimate(policy, streams, step) -> EstimatorOut`; the unroll state in `state_dict()`."""

    name = "estimator"

    def estimate(self, policy: ZOPolicy, streams: Callable[[int], TaskStream], step: int) -> EstimatorOut:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def close(self) -> None:
        """Release files and hooks (parked weights); the model keeps its current weights."""
        return None


def block_kind(name: str) -> str:
    """A block's name without its layer number:
    model.layers.3.mlp.up_proj.weight -> model.layers.#.mlp.up_proj.weight."""
    return re.sub(r"\.\d+\.", ".#.", name)


class Coordinates:
    """The policy coordinates an ES-type estimator perturbs (one parametrisation), as a vector of P floats.

    `noise(key)` draws epsilon ~ N(0, I_P) in float64 from a CPU generator keyed by `key` (the same vector on
    every rank and device); `perturbed(policy, delta)` is a frozen float32 copy of the policy with psi + U delta;
    `grads(policy, g)` is U g as one tensor per policy parameter (zeros elsewhere). U places the coordinates in
    their tensors; for "type" it copies coordinate k to the output bias of every block of kind k, so the
    estimate is U^T grad (the gradient projected on the tied directions) and the update moves a kind together."""

    def __init__(self, policy: ZOPolicy, which: str = "bias"):
        if which not in PARAMETRISATIONS:
            raise ValueError(f"the ES parametrisation must be one of {', '.join(PARAMETRISATIONS)}, got {which!r}")
        self.which, self.names = which, PARAMETRISATIONS[which]
        self.shapes = [tuple(getattr(policy, n).shape) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dim, self.group = sum(self.sizes), None
        if which == "type":
            kinds = [block_kind(n) for n in policy.block_names]
            self.kinds = list(dict.fromkeys(kinds))
            self.group = torch.tensor([self.kinds.index(k) for k in kinds])  # block -> its kind's coordinate
            self.dim = len(self.kinds)

    def noise(self, key: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix(TAG_POLICY_NOISE, key) & ((1 << 63) - 1))
        return torch.randn(self.dim, generator=g, dtype=torch.float64)

    def _parts(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """U v, by tensor name."""
        flat = v[self.group] if self.group is not None else v
        return {n: part.view(shape) for n, part, shape in zip(self.names, flat.split(self.sizes), self.shapes)}

    def perturbed(self, policy: ZOPolicy, delta: torch.Tensor | None) -> ZOPolicy:
        tensors = policy.tensors()
        if delta is not None:
            for name, part in self._parts(delta).items():
                tensors[name] = (tensors[name].double() + part).float()
        copy = ZOPolicy.from_tensors(tensors, policy.config())
        copy.base_model, copy.base_fingerprint = policy.base_model, policy.base_fingerprint
        return copy

    def grads(self, policy: ZOPolicy, g: torch.Tensor) -> list[torch.Tensor]:
        parts = self._parts(g)
        return [parts[n].to(getattr(policy, n).dtype) if n in parts else torch.zeros_like(getattr(policy, n))
                for n in POLICY_TENSORS]


def antithetic_gradient(deltas: list[float], vectors: list[torch.Tensor], std: float) -> tuple[torch.Tensor, dict]:
    """g = (1/N) sum_i (L_i+ - L_i-) / (2 std) v_i, and its diagnostics.

    v_i is the pair's perturbation direction (ES: epsilon_i; PES: the accumulated sum of the episode's
    epsilons). `snr` = ||E g||^2 / E||g - E g||^2 for the N-pair mean, estimated without bias from the
    per-pair estimates g_i: (||g||^2 - V/N) / (V/N) with V = sum_i ||g_i - g||^2 / (N - 1); about N / (P + 1)
    for a locally linear meta-loss, near 0 when the estimate is noise (nan for N = 1)."""
    per = [d / (2.0 * std) * v for d, v in zip(deltas, vectors)]
    n = len(per)
    g = torch.stack(per).mean(0)
    metrics = {"delta_loss_abs": sum(abs(d) for d in deltas) / n}
    if n > 1:
        var = float(sum(((gi - g) ** 2).sum() for gi in per)) / (n - 1)
        noise = var / n
        metrics["snr"] = (float((g ** 2).sum()) - noise) / noise if noise > 0 else math.inf
    else:
        metrics["snr"] = math.nan
    return g, metrics
