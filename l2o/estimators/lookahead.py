"""ZO Fine-tuner's meta-gradient: the one-step (or T-step) look-ahead estimator, in plain torch.

At the current LLM weights theta (a point on a first-order training trajectory), per unrolled step t:

    sigma_t  = policy(features(theta_t))                      WITH autograd to the policy's parameters
    s_t      = nf_t * sigma_t       (nf_t detached by default, as the authors' code)
    L+, L-   = L(theta_t +/- eps s_t z_t)                     no gradient (the Engine at t = 0)
    c_t      = (L+ - L-) / (2 eps)                            a detached scalar
    theta_{t+1} = theta_t - eta_meta * c_t * s_t * z_t        differentiable in sigma (and, t > 0, in theta_t)
    meta-loss = L(theta_T; same batch)                        with autograd through the LLM

Two ways to get the gradient, the same number:

- the lean path (default for T = 1): with c and nf detached, d meta-loss / d s_b = -eta_meta c <grad_b L(theta'), z_b>,
  and d s_b / d sigma carries nf (plus its scalar chain term when nf is not detached). The Engine swaps
  theta' = theta - eta_meta c s z into each module's forward as a perturbation (`Engine.differentiable`),
  the backward hands each block's gradient at theta' to a dot product with z_b regenerated from its seed
  as soon as it is produced, and autograd saves (seed, b) instead of theta'_b. Neither theta', the stacked
  z nor the gradient at theta' is ever stored whole: the peak is that of one first-order backward.
- the functional path (T > 1, or `lean=False`; small models only): theta_T is built as tensors and the LLM is
  evaluated at it with `torch.func.functional_call`, holding theta_t and z_t for every step.

In the functional path the LLM is evaluated at theta_T with `torch.func.functional_call`. Tied weights are
handled generically: each tie-deduplicated block is mapped back to every parameter name that shares its
storage, and all of them receive the same substituted tensor. The backward pass runs while the substitution
is still in place, so activation checkpointing (which recomputes forwards during backward) sees theta_T too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from l2o.engine import Direction, Engine
from l2o.estimators.base import EstimatorOut, GradientEstimator
from l2o.noise import derive_seed, mix
from l2o.policy import ZOPolicy, effective_sizes, features, normalization_factor, weight_stats


@dataclass
class TaskState:
    """The policy's recurrent inputs for one task: previous L+, L- and sigma (per-task in multi-task runs)."""

    prev_plus: float = 0.0
    prev_minus: float = 0.0
    prev_sigma: torch.Tensor | None = None

    def copy(self) -> "TaskState":
        return TaskState(self.prev_plus, self.prev_minus,
                         None if self.prev_sigma is None else self.prev_sigma.clone())

    def to_dict(self) -> dict:
        return {"prev_plus": self.prev_plus, "prev_minus": self.prev_minus,
                "prev_sigma": None if self.prev_sigma is None else self.prev_sigma.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskState":
        ps = d.get("prev_sigma")
        return cls(float(d["prev_plus"]), float(d["prev_minus"]),
                   None if ps is None else torch.tensor(ps, dtype=torch.float32))


@dataclass
class LookaheadResult:
    meta_loss: float
    plus: list[float] = field(default_factory=list)     # L+ of each unrolled step
    minus: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)        # projected gradients (L+ - L-) / 2 eps
    nf: list[float] = field(default_factory=list)
    effective_step: list[float] = field(default_factory=list)  # E||d||^2 / D = sum n_b s_b^2 / sum n_b (true n_b)
    sigma: torch.Tensor | None = None                   # sigma of the first step (detached)
    state: TaskState | None = None                      # the task state after the unroll


class _LossModule(nn.Module):
    """Wraps `loss_fn(model, batch)` as a module so functional_call can substitute the model's tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.fn: Callable | None = None
        self.after: Callable | None = None

    def forward(self, batch):
        loss = self.fn(self.model, batch)
        if self.after is not None:
            self.after(loss)  # e.g. backward while the substituted tensors are in place
        return loss


class FunctionalLoss:
    """loss_fn(model, batch) evaluated at substituted block tensors (one per optimizer block)."""

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor]):
        self.wrapper = _LossModule(model)

        def key(p):
            return (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape)) if p.numel() else (id(p),)

        by_key: dict = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_key.setdefault(key(p), []).append("model." + name)
        self.aliases = [by_key[key(p)] for p in params]

    def __call__(self, loss_fn, tensors: Sequence[torch.Tensor], batch, after=None) -> torch.Tensor:
        params = {name: t for names, t in zip(self.aliases, tensors) for name in names}
        self.wrapper.fn, self.wrapper.after = loss_fn, after
        try:
            return functional_call(self.wrapper, params, (batch,), tie_weights=False, strict=False)
        finally:
            self.wrapper.fn = self.wrapper.after = None


class Lookahead:
    """The look-ahead meta-gradient of a policy on one model.

    `step(loss_fn, batch, seed, state)` computes the meta-loss; with `backward=True` the policy's
    parameters receive its gradient (`.grad` accumulates). `freeze` = (c list, nf list) replaces the
    measured projected gradients and normalisers (finite-difference tests use it).
    """

    def __init__(self, model: nn.Module, policy: ZOPolicy, batch_size: int, eps: float = 1e-3,
                 eta_meta: float = 1e-6, unroll: int = 1, detach_nf: bool = True, noise=None,
                 lean: bool | None = None, size_rule: str = "numel"):
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {unroll!r}")
        if lean and unroll > 1:
            raise ValueError("the lean meta-gradient is one-step (unroll 1); unroll > 1 uses the functional path")
        self.lean = unroll == 1 if lean is None else bool(lean)
        self.model, self.policy = model, policy
        self.engine = Engine(model, noise)
        self.blocks = self.engine.blocks
        self.eps, self.eta_meta, self.unroll, self.detach_nf = float(eps), float(eta_meta), int(unroll), bool(detach_nf)
        pos = {n: i for i, n in enumerate(policy.block_names)}
        missing = [b.name for b in self.blocks if b.name not in pos]
        if missing:
            raise ValueError(f"the policy has no network for block {missing[0]!r} ({len(missing)} missing)")
        self.index = torch.tensor([pos[b.name] for b in self.blocks], dtype=torch.long)
        self.sizes = effective_sizes(model, [b.param for b in self.blocks], batch_size, rule=size_rule)
        self.numel = torch.tensor([float(b.param.numel()) for b in self.blocks], dtype=torch.float64)
        self.floss = FunctionalLoss(model, [b.param for b in self.blocks])

    def sigma(self, params: Sequence[torch.Tensor], state: TaskState) -> torch.Tensor:
        prev = state.prev_sigma if state.prev_sigma is not None else torch.ones(len(self.blocks))
        x = features(weight_stats(params), state.prev_plus, state.prev_minus, prev)
        full = torch.zeros(self.policy.num_blocks, x.shape[1], dtype=x.dtype)
        full[self.index] = x
        return self.policy(full)[self.index]

    def scales(self, sigma: torch.Tensor, nf: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.policy.normalize:
            return sigma, torch.ones((), dtype=sigma.dtype)
        f = normalization_factor(sigma, self.sizes) if nf is None else torch.tensor(nf, dtype=sigma.dtype)
        if self.detach_nf:
            f = f.detach()
        return f * sigma, f

    def effective_step(self, s: torch.Tensor) -> float:
        """E||d||^2 / D of the direction with block scales s, over the blocks' true sizes (1 for MeZO)."""
        return float((self.numel * s.detach().double() ** 2).sum() / self.numel.sum())

    def noise(self, seed: int) -> list[torch.Tensor]:
        d = Direction.single(seed)
        return [self.engine.direction_tensor(d, b) for b in self.blocks]

    def step(self, loss_fn: Callable, batch, seed: int, state: TaskState | None = None, backward: bool = True,
             freeze: tuple[Sequence[float], Sequence[float]] | None = None) -> LookaheadResult:
        state = (state or TaskState()).copy()
        if self.lean:
            return self._lean_step(loss_fn, batch, seed, state, backward, freeze)
        res = LookaheadResult(meta_loss=float("nan"))
        cur: list[torch.Tensor] = [b.param.detach() for b in self.blocks]
        for t in range(self.unroll):
            sigma = self.sigma([p.detach() for p in cur], state)
            s, nf = self.scales(sigma, None if freeze is None else freeze[1][t])
            s_list = s.detach().tolist()
            seed_t = mix(seed, t)
            zs = self.noise(seed_t)
            if t == 0:
                closure = lambda: loss_fn(self.model, batch)  # noqa: E731
                d = Direction.single(seed_t, s_list)
                plus = self.engine.evaluate(closure, d, self.eps)
                minus = self.engine.evaluate(closure, d, -self.eps)
            else:
                with torch.no_grad():
                    base = [p.detach() for p in cur]
                    plus = float(self.floss(loss_fn, [p + z * (self.eps * sc) for p, z, sc in zip(base, zs, s_list)],
                                            batch))
                    minus = float(self.floss(loss_fn, [p + z * (-self.eps * sc) for p, z, sc in zip(base, zs, s_list)],
                                             batch))
            c = (plus - minus) / (2 * self.eps) if freeze is None else float(freeze[0][t])
            cur = [p - (self.eta_meta * c) * (s[i] * zs[i]).to(p.dtype) for i, p in enumerate(cur)]
            res.plus.append(plus)
            res.minus.append(minus)
            res.c.append(c)
            res.nf.append(float(nf))
            res.effective_step.append(self.effective_step(s))
            if t == 0:
                res.sigma = sigma.detach().clone()
            state = TaskState(plus, minus, sigma.detach().float().clone())
        after = (lambda loss: loss.backward()) if backward else None
        if backward:
            meta = self.floss(loss_fn, cur, batch, after=after)
        else:
            with torch.no_grad():
                meta = self.floss(loss_fn, cur, batch)
        res.meta_loss = float(meta.detach())
        res.state = state
        return res

    def _lean_step(self, loss_fn: Callable, batch, seed: int, state: TaskState, backward: bool,
                   freeze) -> LookaheadResult:
        """T = 1 without stored copies: L(theta - eta c s z) through the Engine's swap-in, backward into s."""
        sigma = self.sigma([b.param.detach() for b in self.blocks], state)
        s, nf = self.scales(sigma, None if freeze is None else freeze[1][0])
        seed_0 = mix(seed, 0)
        d = Direction.single(seed_0, s.detach().tolist())
        closure = lambda: loss_fn(self.model, batch)  # noqa: E731
        plus = self.engine.evaluate(closure, d, self.eps)
        minus = self.engine.evaluate(closure, d, -self.eps)
        c = (plus - minus) / (2 * self.eps) if freeze is None else float(freeze[0][0])
        if backward:  # theta' = theta + (-eta c) s z, differentiable in s (and through s in sigma, nf)
            with self.engine.differentiable(Direction.single(seed_0), -self.eta_meta * c, s):
                meta = closure()
                meta.backward()
            meta = float(meta.detach())
        else:
            meta = self.engine.evaluate(closure, d, -self.eta_meta * c)
        return LookaheadResult(meta_loss=meta, plus=[plus], minus=[minus], c=[c], nf=[float(nf)],
                               effective_step=[self.effective_step(s)], sigma=sigma.detach().clone(),
                               state=TaskState(plus, minus, sigma.detach().float().clone()))


class LookaheadEstimator(GradientEstimator):
    """The look-ahead behind the estimator interface, with the first-order trajectory it is defined on.

    Per meta-step (the ZO Fine-tuner paper's `trainer_l2l*.py`): the stream keyed `step * world + rank` (each
    DDP rank its own task and trajectory), its train batch 0, the rank's direction seed; then the LLM moves
    one SGD-momentum step (lr linearly decayed to 0 within each restart period of `reset_every` meta-steps, or
    of `max_steps` without resets) and at the end of a period is reset to the pretrained weights (`files`).
    The state for a resume: the LLM's weights, the momentum, the step count and the per-task features.
    """

    name = "lookahead"

    def __init__(self, model: nn.Module, policy: ZOPolicy, files, batch_size: int, eps: float = 1e-3,
                 eta_meta: float = 1e-6, unroll: int = 1, detach_nf: bool = True, size_rule: str = "numel",
                 lr_llm: float = 0.01, momentum: float = 0.8, reset_every: int = 100, max_steps: int = 1,
                 seed: int = 0, rank: int = 0, world: int = 1):
        from l2o.weights import Trajectory

        self.lookahead = Lookahead(model, policy, batch_size=batch_size, eps=eps, eta_meta=eta_meta, unroll=unroll,
                                   detach_nf=detach_nf, size_rule=size_rule)
        self.model, self.files, self.engine = model, files, self.lookahead.engine
        self.trajectory = Trajectory(self.engine, lr_llm, momentum)
        self.lr_llm, self.reset_every, self.max_steps = float(lr_llm), int(reset_every), int(max_steps)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.task_state: dict[str, TaskState] = {}

    def estimate(self, policy: ZOPolicy, streams, step: int) -> EstimatorOut:
        stream = streams(step * self.world + self.rank)
        batch = stream.train(0)
        saved = [p.grad for p in policy.parameters()]
        for p in policy.parameters():
            p.grad = None
        self.lookahead.policy = policy
        res = self.lookahead.step(stream.loss, batch, seed=derive_seed(self.seed, step, self.rank),
                                  state=self.task_state.get(stream.name, TaskState()))
        grad = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in policy.parameters()]
        for p, g in zip(policy.parameters(), saved):
            p.grad = g
        self.task_state[stream.name] = res.state
        period = self.reset_every or max(1, self.max_steps)
        self.trajectory.lr = self.lr_llm * (1.0 - (step % period) / period)
        llm_loss = self.trajectory.step(stream.loss, self.model, batch)
        if self.reset_every and (step + 1) % self.reset_every == 0:
            self.files.restore()
            self.trajectory.reset()
        metrics = {"L_plus": res.plus[0], "L_minus": res.minus[0], "projected_grad": res.c[0], "nf": res.nf[0],
                   "effective_step": res.effective_step[0], "llm_loss": llm_loss, "llm_lr": self.trajectory.lr}
        forwards = 2 * len(res.plus) + 1 + 1  # L+ and L- per unrolled step, the meta-loss, the trajectory's step
        return EstimatorOut(res.meta_loss, grad, metrics, res.sigma, stream.name, forwards * self.world)

    def state_dict(self) -> dict:
        """Everything the trajectory is: its weights (one tensor per block), momentum and step count, and the
        policy's per-task features. (A first-order trajectory has no ledger: a checkpoint holds its weights.)
        The tensors are the live ones, not copies: the checkpoint is written before the next step."""
        return {"weights": {b.name: b.param.detach() for b in self.engine.blocks},
                "trajectory": self.trajectory.state_dict(),
                "task_state": {k: v.to_dict() for k, v in self.task_state.items()}}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        for b in self.engine.blocks:
            self.engine.assign(b, weights[b.name].to(device=b.param.device, dtype=b.param.dtype))
        self.trajectory.load_state_dict(state["trajectory"])
        self.task_state = {k: TaskState.from_dict(v) for k, v in state.get("task_state", {}).items()}

    def close(self) -> None:
        self.trajectory.remove()
