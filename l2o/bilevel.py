"""Bilevel-ZOFO (Shirkavand et al., arXiv 2502.03604): first-order PEFT inside, zeroth-order backbone outside.

Two copies of one PEFT module per task, p (upper) and w (lower), and the penalty minimax

    min_{theta, p} max_w  F = L(theta, p; D_f) + lam * [ L(theta, p; D_g) - L(theta, w; D_g) ]

with each task's training sample split 2:1 (seeded) into D_g and D_f.

- lower level, every global step: one first-order Adam step on w with a D_g batch;
- upper level, every `t_low` global steps: p gets the exact first-order gradient of
  L(theta,p;D_f) + lam L(theta,p;D_g) (backprop through the PEFT only; an Adam step at `upper_lr`),
  and the backbone theta gets a zeroth-order estimate of grad_theta F along seeded directions,
  applied as a ZO-SGD step through `l2o.engine.Engine` (the only code that perturbs or moves weights).

Differences from the official code (github.com/Peiran225/bilevel_ZOFO @ d2a89bd), on purpose:
- theta is never given a full-size `.grad` and there is no Adam over the backbone: the step is
  theta <- theta - theta_lr * g * z with z regenerated from its seed (inference-level memory: the
  official upper Adam needs a d-sized grad plus 2d Adam states). There is no ZO-Adam mode: it would
  cost those 3d floats and a weight write outside the engine. `theta_clip` (a scalar clip of the
  projected gradient, no memory) is offered instead for large `lam`.
- LoRA is initialised as peft does (A Kaiming-uniform, B zero); the official single-task LoRA class
  zeroes both, so its LoRA never learns.
- meta-training combines the ZO estimates of *every* task of an upper step (distinct seeds per task,
  one update sweep); the official multi-task code resets theta.grad per task so only the last counts.
- the one-sided difference reuses the unperturbed L_f(p), L_g(p) of the p-gradient pass: an upper step
  costs, per task, 3 + 3q forwards (q directions) and 2 PEFT backward passes (one per batch, so only
  one graph is alive at a time), against the official 8 forwards; `one_sided=False` gives the central
  difference (3 + 6q forwards; the unperturbed L(w; D_g) is still computed, for the penalty's log).

The two copies are two sets of `nn.Parameter`s swapped into the adapter's slots (module attributes);
peft is only used to create the adapter once (`l2o.peft_modes.apply_peft`). The object is a
`torch.optim.Optimizer` (param groups lower / upper / theta, so Lightning counts its steps and LR
schedulers scale all three learning rates); `step(closure)` takes a closure that returns the step's
`BilevelBatch` (see `BilevelStreams`).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from l2o.blocks import named_blocks
from l2o.errors import ConfigError
from l2o.engine import Direction, Engine
from l2o.noise import derive_seed, mix

__all__ = ["DEFAULTS", "PAPER_SWEEPS", "AdapterSlots", "BilevelBatch", "BilevelStreams", "BilevelZOFO",
           "UpperResult", "apply_meta_init", "backbone_params", "check_hyperparameters", "export_meta_init",
           "split_dg_df"]

# OPT-13B single-task sweeps of the official code (algorithms.md 5.3): (task, peft) -> (lower lr, upper lr, lam)
PAPER_SWEEPS = {
    ("rte", "lora"): (1e-4, 1e-7, 1e4), ("rte", "prefix"): (1e-2, 1e-4, 10.0), ("rte", "prompt"): (1e-2, 1e-6, 1e5),
    ("copa", "lora"): (1e-4, 1e-7, 1e6), ("copa", "prefix"): (1e-3, 1e-8, 1e5), ("copa", "prompt"): (1e-2, 1e-8, 1e4),
    ("squad", "lora"): (1e-4, 1e-7, 1e3), ("squad", "prefix"): (1e-2, 1e-7, 1e5),
    ("squad", "prompt"): (1e-2, 1e-7, 1e4),
}
# RTE/LoRA values; eps 1e-3 and T_low 30 as in every single-task sweep. theta_lr is ours (ZO-SGD on theta).
DEFAULTS = dict(lam=1e4, lower_lr=1e-4, upper_lr=1e-7, theta_lr=1e-7, eps=1e-3, t_low=30, one_sided=True,
                num_directions=1, theta_clip=None)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------- data
def split_dg_df(examples: Sequence, seed: int = 0) -> tuple[list, list]:
    """A seeded 2:1 split of a task's training sample into (D_g, D_f); both non-empty when len >= 2."""
    n = len(examples)
    _check(n >= 2, f"bilevel-zofo needs at least 2 training examples per task (got {n}) to split into D_g and D_f")
    g = torch.Generator().manual_seed(mix(0xB11E, seed))
    perm = torch.randperm(n, generator=g).tolist()
    n_g = min(n - 1, max(1, round(2 * n / 3)))
    return [examples[i] for i in perm[:n_g]], [examples[i] for i in perm[n_g:]]


class _Stream:
    """Batch i: epoch e = i // n_batches reads a permutation seeded by (seed, e)."""

    def __init__(self, examples: Sequence, batch_size: int, seed: int):
        _check(len(examples) > 0, "an example stream needs at least one example")
        self.examples, self.seed = list(examples), seed
        self.batch_size = min(batch_size, len(self.examples))
        self.n_batches = max(1, len(self.examples) // self.batch_size)

    def batch(self, i: int) -> list:
        epoch, pos = divmod(int(i), self.n_batches)
        g = torch.Generator().manual_seed(mix(0xDA7B, self.seed, epoch))
        perm = torch.randperm(len(self.examples), generator=g)
        return [self.examples[j] for j in perm[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()]


@dataclass
class BilevelBatch:
    """What one global step needs: the lower (D_g) batch of `task`, and on upper steps one
    (task, D_f batch, D_g batch) triple per task of the upper step."""

    lower: list
    task: int = 0
    upper: list[tuple[int, list, list]] | None = None


class BilevelStreams:
    """Deterministic batches by global step for one or many tasks (a resumed run sees the same batches).

    `tasks`: a list of (D_g, D_f) pairs. Cycle c = t // t_low uses the task subset S_c (all tasks when
    there are at most `tasks_per_step`, else a seeded sample without replacement); the lower steps of
    the cycle go round-robin over S_c, and step t with (t + 1) % t_low == 0 is also an upper step over S_c.
    """

    def __init__(self, tasks: Sequence[tuple[Sequence, Sequence]], batch_size: int, t_low: int,
                 tasks_per_step: int = 1, seed: int = 0):
        _check(len(tasks) > 0, "BilevelStreams needs at least one task")
        _check(t_low >= 1 and tasks_per_step >= 1, "t_low and tasks_per_step must be >= 1")
        self.t_low, self.seed = int(t_low), int(seed)
        self.tasks_per_step = min(int(tasks_per_step), len(tasks))
        self.lower = [_Stream(g, batch_size, mix(seed, k, 1)) for k, (g, _) in enumerate(tasks)]
        self.upper_g = [_Stream(g, batch_size, mix(seed, k, 2)) for k, (g, _) in enumerate(tasks)]
        self.upper_f = [_Stream(f, batch_size, mix(seed, k, 3)) for k, (_, f) in enumerate(tasks)]

    def cycle_tasks(self, cycle: int) -> list[int]:
        n = len(self.lower)
        if self.tasks_per_step >= n:
            return list(range(n))
        g = torch.Generator().manual_seed(mix(0x7A5C, self.seed, cycle))
        return sorted(torch.randperm(n, generator=g)[:self.tasks_per_step].tolist())

    def is_upper(self, step: int) -> bool:
        return (int(step) + 1) % self.t_low == 0

    def batch(self, step: int) -> BilevelBatch:
        cycle, pos = divmod(int(step), self.t_low)
        tasks = self.cycle_tasks(cycle)
        k = tasks[pos % len(tasks)]
        upper = None
        if self.is_upper(step):
            upper = [(j, self.upper_f[j].batch(cycle), self.upper_g[j].batch(cycle)) for j in tasks]
        return BilevelBatch(lower=self.lower[k].batch(step), task=k, upper=upper)


# ---------------------------------------------------------------------------------------- parameters
def _adapter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def backbone_params(model: nn.Module, exclude: set[int] | None = None) -> list[tuple[str, nn.Parameter]]:
    """The backbone's (name, parameter) blocks under a PEFT wrapper, named as in the plain base model
    (peft's `.base_layer.` removed), tied weights once; adapter parameters (`exclude`, by default the
    ones that require grad) left out."""
    exclude = _adapter_ids(model) if exclude is None else exclude
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    out = []
    for name, p in named_blocks(base, trainable_only=False):
        if id(p) in exclude:
            continue
        out.append((name.replace(".base_layer.", "."), p))
    return out


def check_hyperparameters(lam=DEFAULTS["lam"], lower_lr=DEFAULTS["lower_lr"], upper_lr=DEFAULTS["upper_lr"],
                          theta_lr=DEFAULTS["theta_lr"], eps=DEFAULTS["eps"], t_low=DEFAULTS["t_low"],
                          one_sided=True, num_directions=1, theta_clip=None) -> None:
    """ValueError (one sentence) on a bad Bilevel-ZOFO hyperparameter."""
    for name, v in (("lam", lam), ("lower_lr", lower_lr), ("upper_lr", upper_lr), ("theta_lr", theta_lr)):
        _check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
               f"bilevel-zofo: {name} must be a finite number >= 0, got {v!r}")
    _check(isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0,
           f"bilevel-zofo: eps must be a finite number > 0, got {eps!r}")
    for name, v in (("t_low", t_low), ("num_directions", num_directions)):
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               f"bilevel-zofo: {name} must be an integer >= 1, got {v!r}")
    _check(isinstance(one_sided, bool), f"bilevel-zofo: one_sided must be true or false, got {one_sided!r}")
    _check(theta_clip is None or (isinstance(theta_clip, (int, float)) and math.isfinite(theta_clip)
                                  and theta_clip > 0),
           f"bilevel-zofo: theta_clip must be a number > 0 or None, got {theta_clip!r}")


class AdapterSlots:
    """The adapter's parameter slots (module, attribute); copies of the adapter are swapped in and out
    by assigning `module._parameters[attr]`, so each copy keeps its own Parameter objects (and Adam state)."""

    def __init__(self, model: nn.Module):
        self.slots: list[tuple[nn.Module, str]] = []
        self.names: list[str] = []
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for attr, p in module._parameters.items():
                if p is None or not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                self.slots.append((module, attr))
                self.names.append(f"{mod_name}.{attr}" if mod_name else attr)
        _check(bool(self.slots), "bilevel-zofo needs a PEFT adapter (lora, prefix or prompt): the model has no "
                                 "trainable parameters; call l2o.peft_modes.apply_peft(model, mode) first")

    def current(self) -> list[nn.Parameter]:
        return [m._parameters[a] for m, a in self.slots]

    def clone(self, source: Sequence[torch.Tensor] | None = None) -> list[nn.Parameter]:
        src = self.current() if source is None else source
        return [nn.Parameter(t.detach().clone(), requires_grad=True) for t in src]

    def install(self, params: Sequence[nn.Parameter]) -> None:
        for (m, a), p in zip(self.slots, params):
            m._parameters[a] = p


@dataclass
class UpperResult:
    """What one upper step measured (per task lists are in the order of the step's tasks)."""

    tasks: list[int] = field(default_factory=list)
    upper_loss: list[float] = field(default_factory=list)      # L(theta, p; D_f)
    upper_g_loss: list[float] = field(default_factory=list)    # L(theta, p; D_g)
    lower_g_loss: list[float] = field(default_factory=list)    # L(theta, w; D_g)
    penalty: list[float] = field(default_factory=list)         # lam * [L(p; D_g) - L(w; D_g)]
    objective: list[float] = field(default_factory=list)       # F at theta
    projected_grads: list[float] = field(default_factory=list)  # one per (task, direction), before clipping
    seeds: list[int] = field(default_factory=list)
    skipped: bool = False


class _NonFinite(Exception):
    pass


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise _NonFinite(x)
    return x


class BilevelZOFO(torch.optim.Optimizer):
    """Bilevel-ZOFO as a `torch.optim.Optimizer` over a PEFT-wrapped model.

    Args:
        model: a model prepared with `apply_peft(model, "lora" | "prefix" | "prompt")` (only the adapter
            requires grad); its current adapter values initialise every copy.
        tokenizer, objective: the task loss `objective.loss(model, tokenizer, batch)` (differentiable), or
            one objective per task (a list) for meta-training over tasks of different kinds.
        num_tasks: PEFT copies (p, w) per task; 1 for single-task fine-tuning.
        lam: penalty weight lambda. lower_lr: Adam on w. upper_lr: Adam on p.
        theta_lr: ZO-SGD step on the backbone. eps: ZO perturbation scale.
        t_low: lower steps per upper step. one_sided: forward difference (reuses the unperturbed losses)
            or central difference. num_directions: seeded directions per task and upper step.
        theta_clip: clip |projected gradient| to this value (None: no clip).
        seed: directions of upper step u are derive_seed(seed, u, j). noise: the engine's noise source.
    """

    method = "bilevel-zofo"

    def __init__(self, model: nn.Module, tokenizer, objective, *, num_tasks: int = 1, lam: float = DEFAULTS["lam"],
                 lower_lr: float = DEFAULTS["lower_lr"], upper_lr: float = DEFAULTS["upper_lr"],
                 theta_lr: float = DEFAULTS["theta_lr"], eps: float = DEFAULTS["eps"],
                 t_low: int = DEFAULTS["t_low"], one_sided: bool = True, num_directions: int = 1,
                 theta_clip: float | None = None, seed: int = 0, noise=None):
        check_hyperparameters(lam=lam, lower_lr=lower_lr, upper_lr=upper_lr, theta_lr=theta_lr, eps=eps, t_low=t_low,
                              one_sided=one_sided, num_directions=num_directions, theta_clip=theta_clip)
        _check(isinstance(num_tasks, int) and num_tasks >= 1, f"bilevel-zofo: num_tasks must be >= 1, got {num_tasks!r}")
        self.model, self.tokenizer = model, tokenizer
        self.objectives = list(objective) if isinstance(objective, (list, tuple)) else [objective] * num_tasks
        _check(len(self.objectives) == num_tasks, f"bilevel-zofo: {len(self.objectives)} objectives for {num_tasks} tasks")
        self.objective = self.objectives[0]
        self.slots = AdapterSlots(model)
        adapter = set(map(id, self.slots.current()))
        self.backbone = backbone_params(model, exclude=adapter)
        self.engine = Engine(model, noise, named_params=self.backbone)
        self.init_copy = [t.detach().clone() for t in self.slots.current()]
        self.p = [self.slots.clone(self.init_copy) for _ in range(num_tasks)]
        self.w = [self.slots.clone(self.init_copy) for _ in range(num_tasks)]
        groups = [
            {"params": [q for c in self.w for q in c], "lr": float(lower_lr), "name": "lower"},
            {"params": [q for c in self.p for q in c], "lr": float(upper_lr), "name": "upper"},
            {"params": [p for _, p in self.backbone], "lr": float(theta_lr), "name": "theta"},
        ]
        super().__init__(groups, dict(lam=float(lam), eps=float(eps), t_low=int(t_low), one_sided=bool(one_sided),
                                      num_directions=int(num_directions), theta_clip=theta_clip))
        self.lower_opt = [torch.optim.Adam(c, lr=float(lower_lr)) for c in self.w]
        self.upper_opt = [torch.optim.Adam(c, lr=float(upper_lr)) for c in self.p]
        self.seed = int(seed)
        self.state["bilevel"] = {"step": 0, "upper_steps": 0, "forwards": 0, "backwards": 0, "skipped": 0}
        self.log: list[dict] = []  # every backbone update, for resume (replay) and the meta-init delta
        self.last_lower: float = float("nan")
        self.last_upper: UpperResult | None = None
        self._installed: tuple[str, int] | None = None
        self.install("p", 0)

    # ------------------------------------------------------------------ hyperparameters and counters
    def _group(self, name: str) -> dict:
        return next(g for g in self.param_groups if g["name"] == name)

    @property
    def hp(self) -> dict:
        return self.param_groups[0]

    @property
    def num_tasks(self) -> int:
        return len(self.p)

    @property
    def counters(self) -> dict:
        return self.state["bilevel"]

    @property
    def forward_passes(self) -> int:
        return self.counters["forwards"]

    @property
    def backward_passes(self) -> int:
        return self.counters["backwards"]

    @property
    def step_count(self) -> int:
        return self.counters["step"]

    def is_upper_step(self, step: int | None = None) -> bool:
        t = self.step_count if step is None else step
        return (t + 1) % self.hp["t_low"] == 0

    def install(self, which: str, task: int = 0) -> None:
        """Put copy `which` ("p" | "w" | "init") of `task` into the adapter slots."""
        if which == "init":
            self.slots.install(self.slots.clone(self.init_copy))
        else:
            self.slots.install((self.p if which == "p" else self.w)[task])
        self._installed = (which, task)

    # ------------------------------------------------------------------ losses
    def _loss(self, batch, task: int, grad: bool = False) -> torch.Tensor:
        self.counters["forwards"] += 1
        with torch.set_grad_enabled(grad):
            return self.objectives[task].loss(self.model, self.tokenizer, batch)

    def _zo_loss(self, batch, task: int, d: Direction, eps: float) -> float:
        self.counters["forwards"] += 1
        obj = self.objectives[task]
        return _finite(self.engine.evaluate(lambda: obj.loss(self.model, self.tokenizer, batch), d, eps))

    def terms(self, task: int, batch_f, batch_g) -> dict:
        """The objective's terms at the current theta (no update): for tests and diagnostics."""
        lam = self.hp["lam"]
        with torch.no_grad():
            self.install("p", task)
            lf, lgp = float(self._loss(batch_f, task)), float(self._loss(batch_g, task))
            self.install("w", task)
            lgw = float(self._loss(batch_g, task))
            self.install("p", task)
        return {"upper": lf, "upper_g": lgp, "lower_g": lgw, "penalty": lam * (lgp - lgw),
                "objective": lf + lam * (lgp - lgw)}

    # ------------------------------------------------------------------ the two levels
    def lower_step(self, batch, task: int = 0) -> float:
        """One first-order Adam step on w_task with a D_g batch; returns L(theta, w; batch)."""
        self.install("w", task)
        opt = self.lower_opt[task]
        opt.param_groups[0]["lr"] = self._group("lower")["lr"]
        loss = self._loss(batch, task, grad=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            self.counters["skipped"] += 1
            warnings.warn(f"bilevel-zofo: non-finite lower loss at step {self.step_count}; w not updated",
                          stacklevel=2)
            self.install("p", task)
            return value
        grads = torch.autograd.grad(loss, self.w[task], allow_unused=True)
        self.counters["backwards"] += 1
        for q, gq in zip(self.w[task], grads):
            q.grad = gq
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.install("p", task)
        return value

    def upper_step(self, batches: Sequence[tuple[int, list, list]]) -> UpperResult:
        """One upper step over (task, D_f batch, D_g batch) triples: FO Adam on each p_task, one ZO-SGD
        step on theta along the tasks' directions combined (every task's estimate counts)."""
        lam, eps, q = self.hp["lam"], self.hp["eps"], self.hp["num_directions"]
        one_sided, clip = self.hp["one_sided"], self.hp["theta_clip"]
        u = self.counters["upper_steps"]
        res = UpperResult()
        seeds, grads, p_grads = [], [], []
        try:
            for i, (k, bf, bg) in enumerate(batches):
                # (a) exact FO gradient of L(p; D_f) + lam L(p; D_g) w.r.t. p only (backbone frozen); two
                #     backward passes, so only one graph is alive at a time
                self.install("p", k)
                lf = self._loss(bf, k, grad=True)
                lf0 = _finite(float(lf.detach()))
                gf = torch.autograd.grad(lf, self.p[k], allow_unused=True)
                del lf
                lgp = self._loss(bg, k, grad=True)
                lgp0 = _finite(float(lgp.detach()))
                gg = torch.autograd.grad(lgp, self.p[k], allow_unused=True)
                del lgp
                self.counters["backwards"] += 2
                p_grads.append((k, [None if a is None and b is None else
                                    (a if b is None else (lam * b if a is None else a + lam * b))
                                    for a, b in zip(gf, gg)]))
                self.install("w", k)
                lgw0 = _finite(float(self._loss(bg, k)))
                f0 = lf0 + lam * (lgp0 - lgw0)
                res.tasks.append(k)
                res.upper_loss.append(lf0)
                res.upper_g_loss.append(lgp0)
                res.lower_g_loss.append(lgw0)
                res.penalty.append(lam * (lgp0 - lgw0))
                res.objective.append(f0)
                # (b) ZO estimate of grad_theta F along seeded directions (theta never written here)
                for j in range(q):
                    s = derive_seed(self.seed, u, i * q + j)
                    d = Direction.single(s)
                    fp = self._objective_at(k, bf, bg, d, eps, lam)
                    if one_sided:
                        g = (fp - f0) / eps
                    else:
                        g = (fp - self._objective_at(k, bf, bg, d, -eps, lam)) / (2 * eps)
                    seeds.append(s)
                    grads.append(g)
        except _NonFinite as err:
            self.counters["skipped"] += 1
            warnings.warn(f"bilevel-zofo: non-finite loss ({err.args[0]}) in upper step {u}; p and theta not "
                          "updated", stacklevel=2)
            res.skipped = True
            self.install("p", batches[0][0] if batches else 0)
            self.counters["upper_steps"] += 1
            self.last_upper = res
            return res
        # (c) the updates: Adam on each p, one ZO-SGD sweep on theta
        for k, gp in p_grads:
            opt = self.upper_opt[k]
            opt.param_groups[0]["lr"] = self._group("upper")["lr"]
            for prm, gq in zip(self.p[k], gp):
                prm.grad = gq
            opt.step()
            opt.zero_grad(set_to_none=True)
        res.seeds, res.projected_grads = seeds, list(grads)
        used = [max(-clip, min(clip, g)) for g in grads] if clip else grads
        n = len(batches) * q
        self.apply_theta_update(seeds, [g / n for g in used], self._group("theta")["lr"],
                                derive_seed(self.seed, u, 1 << 20))
        self.install("p", batches[0][0] if batches else 0)
        self.counters["upper_steps"] += 1
        self.last_upper = res
        return res

    def _objective_at(self, k, bf, bg, d: Direction, eps: float, lam: float) -> float:
        self.install("p", k)
        lf = self._zo_loss(bf, k, d, eps)
        lgp = self._zo_loss(bg, k, d, eps)
        self.install("w", k)
        lgw = self._zo_loss(bg, k, d, eps)
        return lf + lam * (lgp - lgw)

    def apply_theta_update(self, seeds: Sequence[int], weights: Sequence[float], step: float,
                           rounding_seed: int) -> None:
        """theta <- theta - step * sum_j weights_j z(seed_j) through the engine; logged for replay."""
        if step == 0.0 or not any(weights):
            self.log.append({"seeds": list(seeds), "weights": list(weights), "step": 0.0, "rounding": rounding_seed})
            return
        self.engine.update(Direction(tuple(seeds), tuple(weights)), step, rounding_seed=rounding_seed)
        self.log.append({"seeds": [int(s) for s in seeds], "weights": [float(w) for w in weights],
                         "step": float(step), "rounding": int(rounding_seed)})

    # ------------------------------------------------------------------ torch.optim API
    def step(self, closure: Callable[[], BilevelBatch] | None = None):
        """One global step: `closure()` returns the step's `BilevelBatch`; a lower step, and on every
        t_low-th step an upper step. Returns the lower loss as a tensor."""
        if closure is None:
            raise ValueError("bilevel-zofo: step() needs a closure that returns the step's BilevelBatch")
        data = closure()
        if not isinstance(data, BilevelBatch):
            raise TypeError("bilevel-zofo: the closure must return a BilevelBatch (see l2o.bilevel.BilevelStreams)")
        due = self.is_upper_step()
        if due != (data.upper is not None):
            raise ValueError(f"bilevel-zofo: step {self.step_count} {'is' if due else 'is not'} an upper step "
                             f"(t_low {self.hp['t_low']}) but the batch {'lacks' if due else 'has'} upper batches")
        self.last_lower = self.lower_step(data.lower, data.task)
        self.last_upper = self.upper_step(data.upper) if due else None
        self.counters["step"] += 1
        return torch.tensor(self.last_lower)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for c in self.p + self.w:
            for q in c:
                q.grad = None

    def state_dict(self) -> dict:
        return {
            "method": self.method, "seed": self.seed, "counters": dict(self.counters),
            "lrs": {g["name"]: g["lr"] for g in self.param_groups},
            "hp": {k: self.hp[k] for k in ("lam", "eps", "t_low", "one_sided", "num_directions", "theta_clip")},
            "adapter_names": list(self.slots.names), "backbone_names": [n for n, _ in self.backbone],
            "p": [[t.detach().clone() for t in c] for c in self.p],
            "w": [[t.detach().clone() for t in c] for c in self.w],
            "lower_opt": [copy.deepcopy(o.state_dict()) for o in self.lower_opt],
            "upper_opt": [copy.deepcopy(o.state_dict()) for o in self.upper_opt],
            "log": [dict(e) for e in self.log],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore copies, Adam states and counters, and bring the backbone to the saved point by replaying
        the saved backbone updates this model has not had yet (bit-identical to the uninterrupted run)."""
        if state.get("method") != self.method:
            raise ValueError(f"this state was saved by {state.get('method')!r}, not {self.method!r}")
        if state["adapter_names"] != self.slots.names or state["backbone_names"] != [n for n, _ in self.backbone]:
            raise ValueError("this bilevel-zofo state was saved for a model with different parameters")
        if len(state["p"]) != self.num_tasks:
            raise ValueError(f"this state holds {len(state['p'])} task(s) but the optimizer has {self.num_tasks}")
        saved_log, n = state["log"], len(self.log)
        if saved_log[:n] != self.log:
            raise ValueError("cannot resume: this model's backbone has had updates the saved run did not make")
        for entry in saved_log[n:]:
            self.apply_theta_update(entry["seeds"], entry["weights"], entry["step"], entry["rounding"])
        for mine, theirs in zip(self.p + self.w, state["p"] + state["w"]):
            for q, t in zip(mine, theirs):
                q.copy_(t)
        for o, s in zip(self.lower_opt + self.upper_opt, state["lower_opt"] + state["upper_opt"]):
            o.load_state_dict(s)
        for g in self.param_groups:
            g["lr"] = state["lrs"][g["name"]]
        self.hp.update(state["hp"])
        for g in self.param_groups:
            g.update(state["hp"])
        self.seed = int(state["seed"])
        self.state["bilevel"] = dict(state["counters"])
        self.install("p", 0)

    # ------------------------------------------------------------------ backbone delta, adaptation
    def backbone_delta(self) -> dict[str, torch.Tensor]:
        """theta - theta_base per changed backbone tensor (float32, CPU), regenerated from the update log
        (sum of -step * w_j z(seed_j)); equal to the stored change up to float rounding (stochastic
        rounding in bf16/fp16). No copy of the base is kept."""
        out = {}
        live = [e for e in self.log if e["step"] != 0.0]
        for b, (name, _) in zip(self.engine.blocks, self.backbone):
            acc = None
            for e in live:
                d = Direction(tuple(e["seeds"]), tuple(e["weights"]))
                t = self.engine.direction_tensor(d, b).mul_(-e["step"])
                acc = t if acc is None else acc.add_(t)
            if acc is not None and bool(acc.any()):
                out[name] = acc.cpu()
        return out

    def quick_adapt(self, train: Sequence, evaluate_on: Sequence, steps: int = 5, lr: float = 2e-4,
                    batch_size: int = 1, eval_batch_size: int = 16, seed: int = 0, objective=None) -> dict:
        """Meta-test adaptation on the current backbone: a fresh adapter (the initial values), `steps`
        first-order AdamW steps on `train` (batches of `batch_size`, seeded order), then the metric on
        `evaluate_on`, before ('zero_shot') and after ('adapted'). The training copies are untouched."""
        obj = objective or self.objective
        metric = "accuracy" if evaluate_on and evaluate_on[0].candidates else "f1"
        fresh = self.slots.clone(self.init_copy)
        self.slots.install(fresh)
        try:
            zero = obj.evaluate(self.model, self.tokenizer, list(evaluate_on), eval_batch_size)[metric]
            opt = torch.optim.AdamW(fresh, lr=lr)
            stream = _Stream(list(train), batch_size, mix(0xADA9, seed))
            losses = []
            for i in range(steps):
                with torch.enable_grad():
                    loss = obj.loss(self.model, self.tokenizer, stream.batch(i))
                    grads = torch.autograd.grad(loss, fresh, allow_unused=True)
                for q, gq in zip(fresh, grads):
                    q.grad = gq
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            adapted = obj.evaluate(self.model, self.tokenizer, list(evaluate_on), eval_batch_size)[metric]
        finally:
            which, task = self._installed or ("p", 0)
            self.install(which, task)
        return {"metric": metric, "zero_shot": zero, "adapted": adapted, "losses": losses}


# ------------------------------------------------------------------------------------------- the zoo
META_INIT_KIND = "bilevel-meta-init"


def export_meta_init(directory, delta: dict[str, torch.Tensor], base_model: str, base_fingerprint: str,
                     training: dict | None = None, card: dict | None = None):
    """Write a `bilevel-meta-init` zoo artefact: the changed backbone tensors (difference from the base)."""
    from zoo import save_artefact

    if not delta:
        raise ValueError("the meta-initialisation is identical to the base: no backbone tensor changed")
    config = {"kind": META_INIT_KIND, "base_model": base_model, "base_fingerprint": base_fingerprint,
              "arch": {"delta": True}, "training": dict(training or {})}
    how = ("```python\nfrom l2o.models import load_base\nfrom l2o.bilevel import apply_meta_init\n"
           f"model, tok, info = load_base({base_model!r})\n"
           "apply_meta_init(model, \"<base>/meta-init@<version>\")   # adds the stored difference; checks the "
           "base fingerprint\n```\n\nor `fine_tune --init zoo:<base>/meta-init@<version> ...`. The tensors are "
           "differences theta_meta - theta_base keyed by parameter name (names of the plain base model); "
           "apply them to the unmodified base, then attach a fresh PEFT adapter and adapt.")
    card = {"tasks": (training or {}).get("tasks", []), "steps": (training or {}).get("steps"),
            "metrics": (training or {}).get("metrics", {}), "how_to_use": how,
            "description": "Bilevel-ZOFO meta-initialisation of the backbone, trained over a task family.",
            **(card or {})}
    return save_artefact(directory, {k: v.detach().float().cpu().contiguous() for k, v in delta.items()},
                         config, card)


@torch.no_grad()
def apply_meta_init(model: nn.Module, spec, *, registry=None, model_name: str | None = None) -> list[str]:
    """Add a `bilevel-meta-init` artefact (zoo id, folder or file:// URL) to `model`'s backbone in place.

    The artefact's base fingerprint must match `model` (a PEFT wrapper is looked through); refused with
    a `ZooError` otherwise. Returns the names of the tensors changed."""
    from l2o.models import fingerprint
    from zoo import ZooError, load

    spec = str(spec)
    if spec.startswith("zoo:"):
        spec = spec[4:]
    tensors, config = load(spec, expected_fingerprint=fingerprint(model), expected_kind=META_INIT_KIND,
                           model_name=model_name, registry=registry)
    params = dict(backbone_params(model, exclude=set()) if not (hasattr(model, "peft_config"))
                  else backbone_params(model))
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ZooError(f"the meta-initialisation names tensors the model lacks, e.g. {missing[0]!r}")
    for name, delta in tensors.items():
        p = params[name]
        if tuple(delta.shape) != tuple(p.shape):
            raise ZooError(f"meta-initialisation tensor {name!r} has shape {list(delta.shape)} but the model's "
                           f"is {list(p.shape)}")
    for name, delta in tensors.items():
        p = params[name]
        p.copy_((p.float() + delta.to(p.device)).to(p.dtype))
    return sorted(tensors)
