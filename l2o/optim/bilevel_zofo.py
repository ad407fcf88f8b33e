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
peft is only used to create the adapter once (`l2o.peft_modes.apply_peft`). The method subclasses the
shared `ZOOptimizer` (registered as "bilevel-zofo"; param groups theta / lower / upper, so Lightning
counts its steps and LR schedulers scale all three learning rates).

The closure contract: `closure(split, task) -> loss` returns the loss (a tensor, differentiable when
grad is enabled) of this step's batch of `split` for `task`, with the model as it is when called (the
optimizer installs the adapter copy and perturbs theta first). Splits: "lower" (a D_g batch of the
lower task), "upper_f" and "upper_g" (the upper step's D_f and D_g batches); `l2o.streams.BilevelStreams`
makes them. Called directly: `opt.step(closure, task=k, upper_tasks=[...])`. Under Lightning, whose
wrapper calls the closure without arguments, pass it by name: `opt.step(loss=closure, task=..., ...)`.
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
from l2o.engine import Direction
from l2o.hparams import HP
from l2o.noise import derive_seed
from l2o.optim.base import NonFiniteLoss, StepResult, ZOOptimizer, _check
from l2o.wrappers import unwrap_peft

__all__ = ["PAPER_SWEEPS", "AdapterSlots", "BilevelZOFO", "UpperResult", "backbone_params",
           "check_hyperparameters"]

# OPT-13B single-task sweeps of the official code (algorithms.md 5.3): (task, peft) -> (lower lr, upper lr, lam)
PAPER_SWEEPS = {
    ("rte", "lora"): (1e-4, 1e-7, 1e4), ("rte", "prefix"): (1e-2, 1e-4, 10.0), ("rte", "prompt"): (1e-2, 1e-6, 1e5),
    ("copa", "lora"): (1e-4, 1e-7, 1e6), ("copa", "prefix"): (1e-3, 1e-8, 1e5), ("copa", "prompt"): (1e-2, 1e-8, 1e4),
    ("squad", "lora"): (1e-4, 1e-7, 1e3), ("squad", "prefix"): (1e-2, 1e-7, 1e5),
    ("squad", "prompt"): (1e-2, 1e-7, 1e4),
}

Loss = Callable[[str, int], torch.Tensor]  # closure(split, task) -> the loss of that batch


def check_hyperparameters(**hp) -> dict:
    """The declared defaults overridden by `hp`, every value checked (ConfigError, one sentence)."""
    return BilevelZOFO.resolve(hp)


# ---------------------------------------------------------------------------------------- parameters
def _adapter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def backbone_params(model: nn.Module, exclude: set[int] | None = None) -> list[tuple[str, nn.Parameter]]:
    """The backbone's (name, parameter) blocks under a PEFT wrapper, named as in the plain base model
    (peft's `.base_layer.` removed), tied weights once; adapter parameters (`exclude`, by default the
    ones that require grad) left out."""
    exclude = _adapter_ids(model) if exclude is None else exclude
    base = unwrap_peft(model)
    out = []
    for name, p in named_blocks(base, trainable_only=False):
        if id(p) in exclude:
            continue
        out.append((name.replace(".base_layer.", "."), p))
    return out


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


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise NonFiniteLoss(x)
    return x




class BilevelZOFO(ZOOptimizer):
    """Bilevel-ZOFO over a PEFT-wrapped model; `step(closure)` with `closure(split, task) -> loss`.

    Args:
        model: a model prepared with `apply_peft(model, "lora" | "prefix" | "prompt")` (only the adapter
            requires grad); its current adapter values initialise every copy.
        num_tasks: PEFT copies (p, w) per task; 1 for single-task fine-tuning.
        the declared hyperparameters (`BilevelZOFO.declared()`): lam, lower_lr, upper_lr, theta_lr, eps,
            t_low, one_sided, num_directions, theta_clip.
        seed: directions of upper step u are derive_seed(seed, u, j). noise: the engine's noise source.
    """

    method = "bilevel-zofo"
    paper = "Shirkavand et al. 2025, arXiv 2502.03604"
    summary = "first-order PEFT steps inside; every t_low steps a ZO-SGD step on the backbone θ"
    # RTE/LoRA values of the official OPT-13B sweeps; eps 1e-3 and T_low 30 as in every single-task sweep
    hyperparameters = (
        HP("lam", float, 1e4, "penalty weight lambda", "official RTE/LoRA sweep", low=0),
        HP("lower_lr", float, 1e-4, "Adam lr of the lower PEFT copy w", "official RTE/LoRA sweep", low=0),
        HP("upper_lr", float, 1e-7, "Adam lr of the upper PEFT copy p", "official RTE/LoRA sweep", low=0),
        HP("theta_lr", float, 1e-7, "ZO-SGD lr of the backbone theta", "ours (the official code runs Adam on theta)",
           low=0),
        HP("eps", float, 1e-3, "perturbation scale epsilon of the backbone's ZO estimate", "official sweeps",
           low=0, open_low=True),
        HP("t_low", int, 30, "lower steps per upper step", "official single-task sweeps", low=1),
        HP("one_sided", bool, True, "forward differences (reusing the unperturbed losses)", "official code"),
        HP("num_directions", int, 1, "seeded directions per task and upper step", "official code", low=1),
        HP("theta_clip", float, None, "clip |projected gradient| of theta to this (unset: no clip)", "ours",
           low=0, open_low=True),
    )
    dropped = ("lr", "weight_decay")
    replayable = False   # the adapter's first-order steps are not seeds: the backbone's log is its own
    distributed = False  # the first-order inner level would need adapter gradients all-reduced
    needs_adapter = True
    splits = ("lower", "upper_f", "upper_g")

    def __init__(self, model: nn.Module, *, num_tasks: int = 1, seed: int = 0, noise=None, **hyperparameters):
        _check(isinstance(num_tasks, int) and num_tasks >= 1, f"bilevel-zofo: num_tasks must be >= 1, got {num_tasks!r}")
        self.model = model
        self.slots = AdapterSlots(model)
        self.backbone = backbone_params(model, exclude=set(map(id, self.slots.current())))
        super().__init__(model, seed=seed, noise=noise, **hyperparameters)
        lower_lr, upper_lr = self._level_lrs
        self.init_copy = [t.detach().clone() for t in self.slots.current()]
        self.p = [self.slots.clone(self.init_copy) for _ in range(num_tasks)]
        self.w = [self.slots.clone(self.init_copy) for _ in range(num_tasks)]
        self.add_param_group({"params": [q for c in self.w for q in c], "lr": float(lower_lr), "name": "lower"})
        self.add_param_group({"params": [q for c in self.p for q in c], "lr": float(upper_lr), "name": "upper"})
        self.lower_opt = [torch.optim.Adam(c, lr=float(lower_lr)) for c in self.w]
        self.upper_opt = [torch.optim.Adam(c, lr=float(upper_lr)) for c in self.p]
        self.state["zo"].update(upper_steps=0, backwards=0)
        self.log: list[dict] = []  # every backbone update, for resume (replay) and the meta-init delta
        self.last_lower: float = float("nan")
        self.last_upper: UpperResult | None = None
        self._installed: tuple[str, int] | None = None
        self._call: tuple[Loss, int, Sequence[int] | None] | None = None
        self.install("p", 0)

    def _group_defaults(self, hp: dict) -> dict:
        """Group "theta": the backbone's ZO-SGD, its lr (theta_lr) where LR schedulers look for it; the
        adapters' Adam lrs become groups "lower" and "upper"."""
        self._level_lrs = (hp["lower_lr"], hp["upper_lr"])
        return {**{k: v for k, v in hp.items() if k not in ("lower_lr", "upper_lr", "theta_lr")},
                "lr": hp["theta_lr"], "name": "theta"}

    def forwards_per_step(self) -> float:
        """A lower step's forward every step, and every t_low-th step an upper step's 3 + 3q (one-sided) or
        3 + 6q forwards (one task): the mean per step over t_low steps."""
        q, t_low = self.hp["num_directions"], self.hp["t_low"]
        upper = 3 + (3 if self.hp["one_sided"] else 6) * q
        mean = 1 + upper / t_low
        return int(mean) if mean == int(mean) else mean

    def evaluation_batches(self) -> list[int]:
        """One process evaluates everything in turn: the lower step's forward (the upper step's come every t_low)."""
        return [1]

    def _engine_params(self):
        return self.backbone  # the engine perturbs and moves the backbone; the adapter learns first-order

    # ------------------------------------------------------------------ hyperparameters and counters
    def _group(self, name: str) -> dict:
        return next(g for g in self.param_groups if g["name"] == name)

    @property
    def num_tasks(self) -> int:
        return len(self.p)

    @property
    def counters(self) -> dict:
        return self.state["zo"]

    @property
    def backward_passes(self) -> int:
        return self.counters["backwards"]

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
    def _loss(self, closure: Loss, split: str, task: int, grad: bool = False) -> torch.Tensor:
        self._evaluations += 1  # the base class counts a step's forwards from this
        with torch.set_grad_enabled(grad):
            return closure(split, task)

    def _zo_loss(self, closure: Loss, split: str, task: int, d: Direction, eps: float) -> float:
        self._evaluations += 1
        return _finite(self.engine.evaluate(lambda: closure(split, task), d, eps))

    def terms(self, closure: Loss, task: int = 0) -> dict:
        """The objective's terms at the current theta (no update): for tests and diagnostics."""
        lam = self.hp["lam"]
        with torch.no_grad():
            self.install("p", task)
            lf, lgp = float(self._loss(closure, "upper_f", task)), float(self._loss(closure, "upper_g", task))
            self.install("w", task)
            lgw = float(self._loss(closure, "upper_g", task))
            self.install("p", task)
        return {"upper": lf, "upper_g": lgp, "lower_g": lgw, "penalty": lam * (lgp - lgw),
                "objective": lf + lam * (lgp - lgw)}

    # ------------------------------------------------------------------ the two levels
    def lower_step(self, closure: Loss, task: int = 0) -> float:
        """One first-order Adam step on w_task with the "lower" batch; returns L(theta, w; batch)."""
        self.install("w", task)
        opt = self.lower_opt[task]
        opt.param_groups[0]["lr"] = self._group("lower")["lr"]
        loss = self._loss(closure, "lower", task, grad=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            self.counters["skipped"] += 1
            warnings.warn(f"bilevel-zofo: non-finite lower loss at step {self.step_count}; w not updated",
                          stacklevel=2)
            self.install("p", task)
            return value
        grads = torch.autograd.grad(loss, self.w[task], allow_unused=True)
        self.counters["backwards"] += 1
        _adam_step(opt, self.w[task], grads)
        self.install("p", task)
        return value

    def _p_gradient(self, closure: Loss, k: int, lam: float) -> tuple[list, float, float]:
        """Exact FO gradient of L(p; D_f) + lam L(p; D_g) w.r.t. p_k only (backbone frozen), with
        L(p; D_f) and L(p; D_g); two backward passes, so only one graph is alive at a time."""
        self.install("p", k)
        lf = self._loss(closure, "upper_f", k, grad=True)
        lf0 = _finite(float(lf.detach()))
        gf = torch.autograd.grad(lf, self.p[k], allow_unused=True)
        del lf
        lgp = self._loss(closure, "upper_g", k, grad=True)
        lgp0 = _finite(float(lgp.detach()))
        gg = torch.autograd.grad(lgp, self.p[k], allow_unused=True)
        del lgp
        self.counters["backwards"] += 2
        grads = [None if a is None and b is None else (a if b is None else (lam * b if a is None else a + lam * b))
                 for a, b in zip(gf, gg)]
        return grads, lf0, lgp0

    def _objective_at(self, closure: Loss, k: int, d: Direction, eps: float, lam: float) -> float:
        self.install("p", k)
        lf = self._zo_loss(closure, "upper_f", k, d, eps)
        lgp = self._zo_loss(closure, "upper_g", k, d, eps)
        self.install("w", k)
        lgw = self._zo_loss(closure, "upper_g", k, d, eps)
        return lf + lam * (lgp - lgw)

    def _measure_task(self, closure: Loss, i: int, k: int, res: UpperResult) -> list:
        """Task k's part of an upper step: its p-gradient (returned), its terms and ZO estimates (in res)."""
        lam, eps, q = self.hp["lam"], self.hp["eps"], self.hp["num_directions"]
        grads, lf0, lgp0 = self._p_gradient(closure, k, lam)
        self.install("w", k)
        lgw0 = _finite(float(self._loss(closure, "upper_g", k)))
        f0 = lf0 + lam * (lgp0 - lgw0)
        res.tasks.append(k)
        res.upper_loss.append(lf0)
        res.upper_g_loss.append(lgp0)
        res.lower_g_loss.append(lgw0)
        res.penalty.append(lam * (lgp0 - lgw0))
        res.objective.append(f0)
        # ZO estimate of grad_theta F along seeded directions (theta never written here)
        for j in range(q):
            s = derive_seed(self.seed, self.counters["upper_steps"], i * q + j)
            d = Direction.single(s)
            fp = self._objective_at(closure, k, d, eps, lam)
            if self.hp["one_sided"]:
                g = (fp - f0) / eps
            else:
                g = (fp - self._objective_at(closure, k, d, -eps, lam)) / (2 * eps)
            res.seeds.append(s)
            res.projected_grads.append(g)
        return grads

    def upper_step(self, closure: Loss, tasks: Sequence[int] = (0,)) -> UpperResult:
        """One upper step over `tasks`: FO Adam on each p_task, one ZO-SGD step on theta along the tasks'
        directions combined (every task's estimate counts)."""
        u = self.counters["upper_steps"]
        res = UpperResult()
        try:
            p_grads = [(k, self._measure_task(closure, i, k, res)) for i, k in enumerate(tasks)]
        except NonFiniteLoss as err:
            self.counters["skipped"] += 1
            warnings.warn(f"bilevel-zofo: non-finite loss ({err.args[0]}) in upper step {u}; p and theta not "
                          "updated", stacklevel=2)
            res.skipped = True
            p_grads = []
        for k, gp in p_grads:
            self.upper_opt[k].param_groups[0]["lr"] = self._group("upper")["lr"]
            _adam_step(self.upper_opt[k], self.p[k], gp)
        if not res.skipped:
            clip = self.hp["theta_clip"]
            used = [max(-clip, min(clip, g)) for g in res.projected_grads] if clip else res.projected_grads
            n = len(tasks) * self.hp["num_directions"]
            self.apply_theta_update(res.seeds, [g / n for g in used], self._group("theta")["lr"],
                                    derive_seed(self.seed, u, 1 << 20))
        self.install("p", tasks[0] if tasks else 0)
        self.counters["upper_steps"] += 1
        self.last_upper = res
        return res

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
    def step(self, closure: Loss | None = None, *, loss: Loss | None = None, task: int = 0,
             upper_tasks: Sequence[int] | None = None):
        """One global step: a lower step on `task`, and on every t_low-th step an upper step over
        `upper_tasks` (default: [task]). `closure(split, task)` (or `loss=`, see the module docstring)
        returns the loss of this step's batch of that split. Returns the lower loss as a tensor."""
        fn = loss if loss is not None else closure
        if fn is None:
            raise ValueError("bilevel-zofo: step() needs closure(split, task) -> the loss of that batch")
        if loss is not None and closure is not None:
            closure()  # Lightning's wrapper of its (empty) closure: runs its hooks
        self._call = (fn, int(task), upper_tasks)
        return super().step(fn)

    def _step(self, closure) -> StepResult:
        fn, task, upper_tasks = self._call
        self.last_lower = self.lower_step(fn, task)
        due = self.is_upper_step()
        self.last_upper = self.upper_step(fn, list(upper_tasks) if upper_tasks is not None else [task]) if due else None
        up = self.last_upper
        return StepResult(loss=self.last_lower, projected_grads=list(up.projected_grads) if up else [],
                          skipped=not math.isfinite(self.last_lower) or bool(up and up.skipped))

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

    def _check_state(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"this state was saved by {state.get('method')!r}, not {self.method!r}")
        if state["adapter_names"] != self.slots.names or state["backbone_names"] != [n for n, _ in self.backbone]:
            raise ValueError("this bilevel-zofo state was saved for a model with different parameters")
        if len(state["p"]) != self.num_tasks:
            raise ValueError(f"this state holds {len(state['p'])} task(s) but the optimizer has {self.num_tasks}")
        if state["log"][:len(self.log)] != self.log:
            raise ValueError("cannot resume: this model's backbone has had updates the saved run did not make")

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore copies, Adam states and counters, and bring the backbone to the saved point by replaying
        the saved backbone updates this model has not had yet (bit-identical to the uninterrupted run)."""
        self._check_state(state)
        for entry in state["log"][len(self.log):]:
            self.apply_theta_update(entry["seeds"], entry["weights"], entry["step"], entry["rounding"])
        for mine, theirs in zip(self.p + self.w, state["p"] + state["w"]):
            for q, t in zip(mine, theirs):
                q.copy_(t)
        for o, s in zip(self.lower_opt + self.upper_opt, state["lower_opt"] + state["upper_opt"]):
            o.load_state_dict(s)
        for g in self.param_groups:
            g["lr"] = state["lrs"][g["name"]]
            g.update(state["hp"])
        self.seed = int(state["seed"])
        self.state["zo"] = dict(state["counters"])
        self.install("p", 0)

    # ------------------------------------------------------------------ the backbone's change
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


def _adam_step(opt: torch.optim.Optimizer, params: Sequence[nn.Parameter], grads) -> None:
    for prm, g in zip(params, grads):
        prm.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)
