"""The noise engine: the only code that perturbs or updates weights.

Every zeroth-order method here needs two operations (DESIGN.md):

    evaluate:  loss at  theta_b + eps * s_b * sum_j w_j z(seed_j, b)   for every block b
    update:    theta_b <- theta_b - step * s_b * sum_j w_j z(seed_j, b)  (- decay * theta_b)

A `Direction` is (seeds, weights, optional per-block scales s_b, optional second keys). Methods only choose
directions. What a term (seed, key) means is the engine's perturbation family (l2o/perturbations.py: Gaussian
z by default, Rademacher, LOZO's low-rank U V^T, Sparse-MeZO's mask); a stateful update rule (l2o/updates.py:
momentum, Adam, HiZOO's preconditioner P, which also scales every perturbation) turns d_b into the step.

Evaluation never mutates the stored weights, so they are bit-identical afterwards in every dtype
(MeZO's in-place +eps/-2eps/+eps is not exact, least of all in bf16/fp16). Instead, forward
pre-hooks on the modules that own each block swap in a temporary perturbed tensor for the duration
of that module's forward and put the original tensor object back right after. The hooks exist only
while `evaluate` runs: between evaluations the model holds nothing of the engine's. A bf16/fp16
temporary is rounded stochastically, keyed by (seeds, block), so E[theta~] = theta + eps d. At most one
tensor-sized temporary is alive at a time (multi-seed directions accumulate into it in place), besides a
tied block's (embedding and lm_head), which is made once and kept until the forward ends; each forward
costs one noise sweep. A MeZO step is therefore 3 sweeps (+eps forward, -eps forward,
update) against the reference code's 4 (+eps, -2eps, +eps restore, update).

Placed models (l2o.placement): a block is perturbed on the device where its module runs, from the copy
the placement hook has just put in place (the engine's swap-in runs inside that hook), and updated where
its weights live (a block's tensor is its home: the parameter, or its store's tensor when offloaded).

`differentiable(d, alpha, scales)` is the same swap-in with autograd to the per-block scales (the
meta-gradient of a learned policy): the perturbed tensor of block b is the output of a tiny autograd
function of s_b whose backward is alpha * <gradient, z_b>, and autograd saves (seed, b) for it instead of
its values, so no perturbed tensor outlives its module's forward.

Updates are made in place in fp32 and fp64 (each in its own precision), and for bf16/fp16 weights
accumulate in float32 and write back with stochastic rounding keyed by (rounding seed, block), which
makes them unbiased and reproducible. Every number involved is a function of (key, element index) and
every operation an IEEE multiply or add rounded once (l2o/noise.py), so a run, its resume and its
ledger's replay give the same bits on the CPU and on any GPU.
"""

from __future__ import annotations

import contextlib
from collections import Counter
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from l2o.blocks import Block, as_blocks, storage_key
from l2o.errors import UserError
from l2o.noise import TAG_EVAL_ROUND, NoiseSource, make_noise, mix, stochastic_round_
from l2o.perturbations import make_family
from l2o.placement import after_placement, homes
from l2o.updates import make_rule

_LOW_PRECISION = (torch.bfloat16, torch.float16)


class OffloadedBackward(UserError):
    """A backward through perturbed weights of an offloaded model (not supported)."""


@dataclass(frozen=True)
class Direction:
    """d_b = s_b * sum_j weights[j] * z((seeds[j], keys[j]), b). A term's key is a second, longer-lived key
    (LOZO's V); the perturbation family decides what it means (l2o/perturbations.py); 0 for most."""

    seeds: tuple[int, ...]
    weights: tuple[float, ...] = ()
    block_scales: Sequence[float] | torch.Tensor | None = None
    keys: tuple[int, ...] = ()

    def __post_init__(self):
        seeds = tuple(int(s) for s in self.seeds)
        weights = tuple(float(w) for w in self.weights) if self.weights else (1.0,) * len(seeds)
        keys = tuple(int(k) for k in self.keys) if self.keys else (0,) * len(seeds)
        if not seeds:
            raise ValueError("a direction needs at least one seed")
        if len(weights) != len(seeds) or len(keys) != len(seeds):
            raise ValueError(f"{len(seeds)} seeds but {len(weights)} weights and {len(keys)} keys")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "keys", keys)

    @classmethod
    def single(cls, seed: int, block_scales=None) -> "Direction":
        return cls((seed,), (1.0,), block_scales)

    def scale(self, b: int) -> float:
        if self.block_scales is None:
            return 1.0
        return float(self.block_scales[b])

    def terms(self, b: int, alpha: float) -> list[tuple[int, int, float]]:
        """(seed, key, coefficient) of block b's terms, scaled by alpha and s_b; zero terms dropped."""
        c = alpha * self.scale(b)
        return [(s, k, c * w) for s, k, w in zip(self.seeds, self.keys, self.weights) if c * w != 0.0]


@dataclass
class Counters:
    """Work done, for tests and benchmarks. A *sweep* is one pass over all blocks' weights;
    `noise_sweeps` counts z(seed, b) generations in units of whole-model sweeps (element-weighted).
    `noise_calls` counts host-side noise calls (generator fills, table reads, index uploads) and
    `max_calls_per_z` the most that one z(seed, b) generation took: 1-2 on the block path (accelerators)
    whatever the block's size, one per chunk on the CPU's chunked path."""

    forwards: int = 0
    sweeps: int = 0
    noise_elems: int = 0
    total_elems: int = 1
    noise_calls: int = 0
    noise_generations: int = 0
    max_calls_per_z: int = 0

    @property
    def noise_sweeps(self) -> float:
        return self.noise_elems / self.total_elems

    @property
    def noise_calls_per_sweep(self) -> float:
        return self.noise_calls / max(1, self.sweeps)

    def as_dict(self) -> dict:
        return {"forwards": self.forwards, "sweeps": self.sweeps, "noise_sweeps": self.noise_sweeps,
                "noise_calls": self.noise_calls, "max_calls_per_z": self.max_calls_per_z}


class Engine:
    """Applies directions to a model's trainable blocks: `evaluate(closure, d, eps)`, `update(d, step)`.

    `model`: an `nn.Module` (its trainable parameters, tie-deduplicated, in `named_parameters` order,
    are the blocks). `noise`: "gaussian" (default), "table", or a `NoiseSource`. `named_params`: an
    explicit (name, parameter) list to drive instead (e.g. a frozen backbone under a trainable adapter,
    as Bilevel-ZOFO's outer ZO step does); each must belong to a submodule of `model`.
    `family`: how a term becomes z_b (l2o/perturbations.py; default gaussian). `rule`: a stateful update
    rule (l2o/updates.py: momentum, Adam, HiZOO's preconditioner), or None for plain steps.
    """

    def __init__(self, model: nn.Module, noise: str | NoiseSource | None = None, named_params=None, family=None,
                 rule=None):
        if not isinstance(model, nn.Module):
            raise TypeError(
                "zeroth-order optimizers take the model (an nn.Module), not a parameter list: they "
                "perturb weights inside each module's forward so the stored weights stay exact")
        self.model = model
        self.blocks: list[Block] = as_blocks(list(named_params) if named_params is not None else model)
        self.noise = make_noise(noise)
        self.family = make_family(family)
        self.family.bind(self.blocks)
        self.rule = make_rule(rule)
        self.counters = Counters(total_elems=max(1, sum(b.param.numel() for b in self.blocks)))
        self.offloaded = False  # some block lives off its module (l2o.placement); set by _find_owners
        self._owners = self._find_owners()
        held = Counter(b.index for lst in self._owners.values() for _, b in lst)
        self._shared = {i for i, n in held.items() if n > 1}  # tied blocks: perturbed once per evaluation
        self._reuse: dict[int, torch.Tensor] = {}
        self._hooks: list = []  # only non-empty inside `evaluate`: no trace on the model between calls
        self._active: tuple[Direction, float] | None = None
        self._stash: dict[tuple[int, str], torch.Tensor] = {}
        self._hit: set[int] = set()
        self._warned_unused = False
        self._scales: torch.Tensor | None = None
        self._live: dict = {}

    # ------------------------------------------------------------------ bookkeeping
    def _find_owners(self) -> dict[nn.Module, list[tuple[str, Block]]]:
        """module -> [(parameter name, block)] for every module that holds a block's tensor, matched by
        storage, so that an offloaded weight (a meta placeholder on its module, l2o.placement) is
        matched through its home and both modules of a tie that offloading split find their block."""
        by_key = {storage_key(b.param): b for b in self.blocks}
        offloaded = homes(self.model)
        owners: dict[nn.Module, list[tuple[str, Block]]] = {}
        for prefix, module in self.model.named_modules(remove_duplicate=False):
            for name, p in module._parameters.items():
                if p is None:
                    continue
                b = by_key.get(storage_key(offloaded.get(f"{prefix}.{name}" if prefix else name, p)))
                if b is not None and (name, b) not in owners.get(module, []):
                    owners.setdefault(module, []).append((name, b))
        found = {b.index for lst in owners.values() for _, b in lst}
        if len(found) != len(self.blocks):
            raise ValueError("some trainable parameters are not owned by any submodule of the model")
        self.offloaded = bool(offloaded)
        return owners

    def _install_hooks(self) -> None:
        """The swap-in around each owner's forward: after a placement hook has loaded an offloaded
        module's weights (l2o.placement.after_placement), plain forward hooks otherwise."""
        self.remove_hooks()
        for module in self._owners:
            handle = after_placement(module, self._pre_hook, self._post_hook)
            if handle is not None:
                self._hooks.append(handle)
                continue
            self._hooks.append(module.register_forward_pre_hook(self._pre_hook))
            self._hooks.append(module.register_forward_hook(self._post_hook, always_call=True))

    def remove_hooks(self) -> None:
        """Remove this engine's hooks (`evaluate` does it itself; kept for callers that did it by hand)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @property
    def num_params(self) -> int:
        return self.counters.total_elems

    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    # ------------------------------------------------------------------ direction arithmetic
    def _count(self, b: Block, calls_before: int) -> None:
        """Book one z(seed, b) generation that took `noise.calls - calls_before` host calls."""
        c, calls = self.counters, self.noise.calls - calls_before
        c.noise_elems += b.param.numel()
        c.noise_calls += calls
        c.noise_generations += 1
        c.max_calls_per_z = max(c.max_calls_per_z, calls)

    def _precondition(self, b: Block) -> torch.Tensor | None:
        return None if self.rule is None else self.rule.precondition(b)

    def _accumulate(self, out: torch.Tensor, b: Block, terms, precondition: bool = True) -> None:
        """out (float32 or float64) += P_b * sum_j coeff_j z((seed_j, key_j), b), one term at a time, in place;
        P_b the rule's preconditioner (1 without one)."""
        pre = self._precondition(b) if precondition else None
        target = out if pre is None else torch.zeros_like(out)
        for seed, key, coeff in terms:
            before = self.noise.calls
            self.family.add(self.noise, target, b, seed, key, coeff)
            self._count(b, before)
        if pre is not None:
            out.add_(target.mul_(pre.to(target.dtype)))   # multiply, then add: the same bits on every device

    def direction_tensor(self, d: Direction, b: Block, precondition: bool = True) -> torch.Tensor:
        """d_b materialised as a float32 tensor (P_b z with a preconditioning rule, unless told not to)."""
        out = torch.zeros(b.param.shape, dtype=torch.float32, device=b.param.device)
        self._accumulate(out, b, d.terms(b.index, 1.0), precondition=precondition)
        return out

    def _perturbed(self, b: Block, d: Direction, eps: float, live: torch.Tensor | None = None) -> torch.Tensor:
        """theta_b + eps * d_b as a new tensor in theta_b's dtype, from `live` (the tensor the module holds for
        this forward: for an offloaded weight, the execution-device copy of its home) or else the block's own
        tensor. bf16/fp16 are rounded stochastically, keyed by (seeds, block): rounding to nearest would leave
        entries with |eps d| < ulp/2 unperturbed (most bf16 weights near 1 at eps = 1e-3) while the update
        moves them along d, so E[theta~] = theta + eps d."""
        p = (b.param if live is None else live).detach()
        terms = d.terms(b.index, eps)
        if not terms:
            return p
        round_seed = mix(TAG_EVAL_ROUND, b.index, *d.seeds)
        if len(terms) == 1 and self._precondition(b) is None:  # one pass: out = p + coeff z, rounded in the pass
            out = torch.empty_like(p, memory_format=torch.contiguous_format)
            seed, key, coeff = terms[0]
            before = self.noise.calls
            self.family.axpy(self.noise, out, p, b, seed, key, coeff, round_seed=round_seed)
            self._count(b, before)
            return out
        acc = p.to(_acc_dtype(p), memory_format=torch.contiguous_format, copy=True)
        self._accumulate(acc, b, terms)
        if p.dtype not in _LOW_PRECISION:
            return acc
        rounded = torch.empty_like(p, memory_format=torch.contiguous_format)
        stochastic_round_(rounded, acc, round_seed, overwrite_src=True, path=self.noise.path)
        return rounded

    def dot(self, g: torch.Tensor, b: Block, d: Direction) -> float:
        """<g, d_b / s_b> (the block scale left out), z regenerated one term at a time: O(one block)."""
        acc = _acc_dtype(g)
        gf = g.detach().to(acc)
        buf = torch.empty(b.param.shape, dtype=torch.float32, device=g.device)
        total = 0.0
        for seed, key, w in zip(d.seeds, d.keys, d.weights):
            before = self.noise.calls
            self.family.write(self.noise, buf, b, seed, key)
            self._count(b, before)
            total += w * float(torch.dot(gf.reshape(-1), buf.reshape(-1).to(acc)))
        return total

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, module, args):
        if self._active is None:
            return
        d, eps = self._active
        for name, b in self._owners[module]:
            key = (id(module), name)
            if key in self._stash:  # re-entrant call of the same module: already perturbed
                continue
            live = self._stash[key] = module._parameters[name]
            if self._scales is None:
                module._parameters[name] = self._perturbed_once(b, d, eps, live)
            else:  # differentiable in s_b; remembered so that autograd saves (seed, b), not the tensor
                out = _Shift.apply(self._scales[b.index], self, b, d, eps)
                self._live[id(out)] = weakref.ref(out)
                module._parameters[name] = out
            self._hit.add(b.index)

    def _perturbed_once(self, b: Block, d: Direction, eps: float, live: torch.Tensor) -> torch.Tensor:
        """`_perturbed`, made once per evaluation for a block that several modules hold (tied embedding and
        lm_head): the second module reuses the first's tensor (same device) instead of generating it again."""
        cached = self._reuse.get(b.index)
        if cached is not None and cached.device == live.device:
            return cached
        out = self._perturbed(b, d, eps, live)
        if b.index in self._shared:
            self._reuse[b.index] = out
        return out

    def _post_hook(self, module, args, output):
        if not self._stash:
            return
        for name, _ in self._owners[module]:
            original = self._stash.pop((id(module), name), None)
            if original is not None:
                module._parameters[name] = original

    # ------------------------------------------------------------------ public operations
    @torch.no_grad()
    def evaluate(self, closure: Callable[[], torch.Tensor | float], d: Direction, eps: float) -> float:
        """The loss at theta + eps * d; theta is bit-identical afterwards (it is never written)."""
        self._active, self._stash, self._hit, self._reuse = (d, float(eps)), {}, set(), {}
        try:
            self._install_hooks()
            loss = closure()
        finally:
            self.remove_hooks()
            self._active, self._reuse = None, {}
            self._restore_stash()
        self.counters.forwards += 1
        self.counters.sweeps += 1
        if len(self._hit) != len(self.blocks) and not self._warned_unused:
            unused = [b.name for b in self.blocks if b.index not in self._hit]
            warnings.warn(
                f"{len(unused)} trainable block(s) were not used by the forward and so were not "
                f"perturbed (e.g. {unused[:3]}); they still receive updates, as in MeZO", stacklevel=2)
            self._warned_unused = True
        return float(loss)

    @contextlib.contextmanager
    def differentiable(self, d: Direction, alpha: float, scales: torch.Tensor):
        """Inside: every forward sees theta_b + alpha * s_b * sum_j w_j z(seed_j, b), differentiable in `scales`.

        `scales` is a [num_blocks] tensor with autograd (d.block_scales is ignored). Offloaded weights are
        refused: the backward regenerates a perturbed weight where no copy of it is left. A backward run inside
        the context sends d loss / d s_b = alpha * <grad_b L(theta'), z_b> straight to `scales`: the
        gradient at theta' is consumed block by block as the backward produces it, z_b regenerated from
        its seed; neither theta' nor that gradient is ever stored whole (autograd saves (seed, b) for a
        perturbed weight and regenerates it in the backward). The stored weights are never written.
        The backward must run inside the context when activation checkpointing recomputes forwards.
        """
        if self.offloaded:
            raise OffloadedBackward("the differentiable (look-ahead) path needs every trainable weight resident "
                                    "on its device; offloaded models take forward-only estimators")
        self._install_hooks()
        unit = Direction(d.seeds, d.weights)
        self._active, self._stash, self._hit = (unit, float(alpha)), {}, set()
        self._scales, self._live = scales, {}
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                yield self
        finally:
            self.remove_hooks()
            self._active, self._scales, self._live = None, None, {}
            self._restore_stash()
        self.counters.forwards += 1
        self.counters.sweeps += 1

    def _pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        ref = self._live.get(id(base))
        if ref is None or ref() is not base:
            return t
        return _Regenerate(base._l2o_shift, tuple(t.shape), tuple(t.stride()), t.storage_offset())

    def _restore_stash(self) -> None:
        for (mid, name), original in list(self._stash.items()):  # only after an exception
            for module in self._owners:
                if id(module) == mid:
                    module._parameters[name] = original
        self._stash = {}

    @torch.no_grad()
    def loss(self, closure: Callable[[], torch.Tensor | float]) -> float:
        """The unperturbed loss (counted as a forward)."""
        self.counters.forwards += 1
        return float(closure())

    @torch.no_grad()
    def update(self, d: Direction, step: float, decay: float = 0.0, rounding_seed: int = 0, params: dict | None = None,
               write: bool = True) -> None:
        """theta_b <- theta_b - step * d_b - decay * theta_b (decay only on blocks that decay). With a rule,
        d_b is first turned into rule(b, d_b, params) (momentum, Adam, HiZOO: l2o/updates.py), whose state
        advances; `write=False` advances only that state (rebuilding it from a ledger), weights untouched.

        fp32 and fp64 weights are updated in place in their own precision; bf16/fp16 accumulate in float32
        and are written back with stochastic rounding keyed by (rounding_seed, block)."""
        for b in self.blocks:
            wd = decay if (decay and b.decays) else 0.0
            if self.rule is not None:
                x = self.rule.direction(self, b, d, params or {})
                if write and (step or wd):
                    self._apply(b, x, step, wd, rounding_seed)
                continue
            terms = d.terms(b.index, -step)
            if not terms and not wd:
                continue
            p = b.param.data
            if p.dtype not in _LOW_PRECISION:
                if wd:
                    p.mul_(1.0 - wd)
                self._accumulate(p, b, terms)
                continue
            round_seed = mix(0x5C0DE, rounding_seed, b.index)
            if len(terms) == 1 and not wd:  # one pass where the source fuses add and rounding
                seed, key, coeff = terms[0]
                before = self.noise.calls
                self.family.axpy(self.noise, p, p, b, seed, key, coeff, round_seed=round_seed)
                self._count(b, before)
                continue
            acc = p.to(torch.float32)
            if wd:
                acc.mul_(1.0 - wd)
            self._accumulate(acc, b, terms)
            stochastic_round_(p, acc, round_seed, overwrite_src=True, path=self.noise.path)
        self.counters.sweeps += 1

    @torch.no_grad()
    def first_order_update(self, blocks: Sequence[Block], grads, rule, step: float, params: dict,
                           rounding_seed: int = 0) -> None:
        """theta_b <- theta_b - step * rule(b, g_b, params) for tensors that are not the engine's ZO blocks but
        are trained by backprop (Bilevel-ZOFO's adapter copies, with the `adam` rule): the same rules and the
        same write-back as the ZO updates, so every weight write stays here. A None gradient leaves its
        tensor (and the rule's state for it) as they are."""
        for b, g in zip(blocks, grads):
            if g is not None:
                x = rule.transform(b, g.detach().to(torch.float32, copy=True), params)
                self._apply(b, x, step, 0.0, mix(rounding_seed, b.index))

    def _apply(self, b: Block, x: torch.Tensor, step: float, wd: float, rounding_seed: int) -> None:
        """theta_b <- (1 - wd) theta_b - step * x (x float32, consumed): a multiply, then an add (the same bits on
        every device); in place in full precision, stochastic rounding of the float32 result in bf16/fp16."""
        p = b.param.data
        delta = x.mul_(-step)
        if p.dtype not in _LOW_PRECISION:
            if wd:
                p.mul_(1.0 - wd)
            p.add_(delta.to(p.dtype))
            return
        acc = p.to(torch.float32)
        if wd:
            acc.mul_(1.0 - wd)
        stochastic_round_(p, acc.add_(delta), mix(0x5C0DE, rounding_seed, b.index), overwrite_src=True,
                          path=self.noise.path)

    @torch.no_grad()
    def add_(self, deltas: dict[str, torch.Tensor], rounding_seed: int = 0) -> None:
        """theta_b <- theta_b + deltas[name_b] for the blocks named in `deltas` (a stored float32 change,
        e.g. a meta-initialisation): accumulated in float32, stochastic rounding in bf16/fp16."""
        for b in self.blocks:
            if b.name in deltas:
                p = b.param.data
                acc = p.to(_acc_dtype(p)) + deltas[b.name].to(device=p.device, dtype=_acc_dtype(p))
                self._write(p, acc, mix(0x5C0DE, rounding_seed, b.index))
        self.counters.sweeps += 1

    @torch.no_grad()
    def assign(self, b: Block, value: torch.Tensor) -> None:
        """theta_b <- value (e.g. pretrained weights re-read from the model files), rounded to nearest."""
        b.param.data.copy_(value.reshape(b.param.shape))

    @torch.no_grad()
    def assign_bytes(self, b: Block, read_into: Callable[[memoryview], int]) -> None:
        """theta_b <- its raw bytes in the stored dtype (exact), e.g. a parked copy read back from a file:
        `read_into(buffer)` fills the buffer and returns the bytes it wrote. On the CPU the bytes go
        straight into the weights' memory (no temporary); elsewhere through one host buffer of the block."""
        p = b.param.data
        n = p.numel() * p.element_size()
        direct = p.device.type == "cpu" and p.is_contiguous()
        host = p.view(-1).view(torch.uint8) if direct else torch.empty(n, dtype=torch.uint8)
        got = read_into(memoryview(host.numpy()))
        if got != n:
            raise EOFError(f"block {b.name}: {got} of {n} bytes")
        if not direct:
            p.copy_(host.view(p.dtype).view(p.shape))

    @torch.no_grad()
    def momentum_step(self, b: Block, grad: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float,
                      rounding_seed: int = 0, consume: bool = False) -> torch.Tensor:
        """First-order SGD with momentum on one block (torch.optim.SGD's rule):

            m_b <- momentum * m_b + g_b   (m_b <- g_b at the first step);   theta_b <- theta_b - lr * m_b

        m_b is kept in the weights' dtype. In full precision it is updated in place (with `consume` the
        first step adopts `grad` itself as m_b: no copy); in bf16/fp16 the arithmetic is fp32 and both m_b
        and theta_b are written back with stochastic rounding (unbiased). Returns m_b."""
        p = b.param.data
        if p.dtype not in _LOW_PRECISION:
            g = grad.detach().to(p.dtype)
            if buf is None:
                buf = g if (consume or g is not grad) else g.clone()
            else:
                buf.mul_(momentum).add_(g)
            p.sub_(buf, alpha=lr)
            return buf
        acc = grad.to(torch.float32)
        if buf is None:
            buf = torch.empty_like(p)
        else:
            acc = acc.add(buf.to(torch.float32), alpha=momentum)
        self._write(buf, acc, mix(0xB0F, rounding_seed, b.index))
        self._write(p, p.to(torch.float32).sub_(acc, alpha=lr), mix(0x5C0DE, rounding_seed, b.index))
        return buf

    def _write(self, dst: torch.Tensor, src: torch.Tensor, seed: int) -> None:
        """dst <- src (float32/64): exact in full precision, stochastic rounding into bf16/fp16."""
        if dst.dtype in _LOW_PRECISION and src.dtype != dst.dtype:
            stochastic_round_(dst, src.to(torch.float32), seed, path=self.noise.path)
        else:
            dst.copy_(src)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _Shift(torch.autograd.Function):
    """theta'_b = theta_b + alpha * s_b * dir_b with d theta'_b / d s_b = alpha * dir_b (dir_b regenerated)."""

    @staticmethod
    def forward(ctx, scale, engine, b, d, alpha):
        coeff = alpha * float(scale)
        out = engine._perturbed(b, d, coeff) if coeff != 0.0 else b.param.detach().clone()
        ctx.key, ctx.like = (engine, b, d, alpha), (scale.dtype, scale.device)
        out._l2o_shift = (engine, b, d, coeff)
        return out

    @staticmethod
    def backward(ctx, g):
        engine, b, d, alpha = ctx.key
        dtype, device = ctx.like
        return torch.tensor(alpha * engine.dot(g, b, d), dtype=dtype, device=device), None, None, None, None


@dataclass(frozen=True)
class _Regenerate:
    """A perturbed weight as autograd saves it: how to make it again, not its values."""

    shift: tuple
    size: tuple
    stride: tuple
    offset: int


def _unpack(saved):
    if not isinstance(saved, _Regenerate):
        return saved
    engine, b, d, coeff = saved.shift
    with torch.no_grad():
        full = engine._perturbed(b, d, coeff) if coeff != 0.0 else b.param.detach()
    return full.as_strided(saved.size, saved.stride, saved.offset)


