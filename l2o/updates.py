"""Stateful update rules: what the engine does to a block's direction before it moves the weights.

`Engine.update(d, step, ..., params)` materialises x_b = s_b sum_j w_j z_j for each block b (float32) and,
with a rule, moves the weights by  theta_b <- theta_b - step * rule(b, x_b, params) - decay * theta_b.
A rule keeps per-block buffers (momentum, Adam's moments, HiZOO's preconditioner) in float32 on the block's
device, made at its first use. Its state depends only on the sequence of (d, params) it was given, never on
the weights, so a ledger (whose lines carry d and params) rebuilds it: `Engine.update(..., write=False)`.

    momentum   m_b <- beta m_b + x_b   (m_b = x_b at the first step);  returns m_b          (torch SGD's rule)
    adam       m <- b1 m + (1 - b1) x;  v <- b2 v + (1 - b2) x^2;  t = params["t"]
               returns (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)                    (torch Adam's rule)
    hizoo      P_b = H_b^(-1/2), H_b = 1 at the start (HiZOO's diagonal Hessian estimate):
               with z = x_b / s_b (the direction without its block scale),
               H <- (1 - a) H + a c H z^2, i.e. P <- P (1 - a + a c z^2)^(-1/2),  c = params["c"], a = params["a"];
               returns s_b P z = P x_b.  P also preconditions every perturbation (`precondition(b)`).
               A block with s_b = 0 is neither perturbed nor moved, and its P is left as it is.

`RULES` names them; a ledger header records the rule's `config()` and `make_rule` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from l2o.perturbations import from_config, outer_sum


class UpdateRule:
    """Interface: `transform(b, x, params) -> the update direction` (may work in place on x), per-block buffers
    in `self.buffers[name][b.index]`; `precondition(b)`: a tensor multiplying every z_b, or None."""

    name = "abstract"
    buffer_names: tuple[str, ...] = ()

    def __init__(self):
        self.buffers: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.buffer_names}

    def buffer(self, name: str, b, init: str = "zeros") -> torch.Tensor:
        store = self.buffers[name]
        if b.index not in store:
            make = torch.ones if init == "ones" else torch.zeros
            store[b.index] = make(b.param.shape, dtype=torch.float32, device=b.param.device)
        return store[b.index]

    def direction(self, engine, b, d, params: dict) -> torch.Tensor:
        """The update direction of block b for direction d (float32): d_b as the engine makes it (without the
        preconditioner), through `transform`. A rule that needs more than d_b (LOZO-M's factors) overrides this."""
        return self.transform(b, engine.direction_tensor(d, b, precondition=False), params)

    def transform(self, b, x: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError

    def precondition(self, b) -> torch.Tensor | None:
        return None

    def config(self) -> dict:
        return {"name": self.name}

    def state_dict(self) -> dict:
        return {n: {i: t.clone() for i, t in store.items()} for n, store in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {n: {int(i): t.clone() for i, t in state.get(n, {}).items()} for n in self.buffer_names}

    def copies(self) -> float:
        """Parameter-sized float32 buffers held (for the memory report)."""
        return float(len(self.buffer_names))


class Momentum(UpdateRule):
    name, buffer_names = "momentum", ("m",)

    def __init__(self, beta: float = 0.9):
        super().__init__()
        self.beta = float(beta)

    def transform(self, b, x, params):
        store = self.buffers["m"]
        if b.index not in store:
            store[b.index] = x.clone()
        else:
            store[b.index].mul_(self.beta).add_(x)
        return x.copy_(store[b.index])

    def config(self):
        return {"name": self.name, "beta": self.beta}


class Adam(UpdateRule):
    name, buffer_names = "adam", ("m", "v")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def transform(self, b, x, params):
        t = int(params["t"])
        m, v = self.buffer("m", b), self.buffer("v", b)
        m.mul_(self.beta1).add_(x * (1 - self.beta1))                  # multiplies, then adds: no fused
        v.mul_(self.beta2).add_((x * x).mul_(1 - self.beta2))          # multiply-add, the same bits everywhere
        denom = v.sqrt().div_(math.sqrt(1 - self.beta2 ** t)).add_(self.eps)  # sqrt(v_hat) + eps, as torch's Adam
        return torch.div(m, denom, out=x).div_(1 - self.beta1 ** t)            # m_hat / (sqrt(v_hat) + eps)

    def config(self):
        return {"name": self.name, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class Hessian(UpdateRule):
    name, buffer_names = "hizoo", ("p",)

    def direction(self, engine, b, d, params):
        """s_b P_b x_b with x_b = d_b / s_b, the unscaled direction: a per-block scale (a learned policy's)
        multiplies the preconditioned step as it multiplies the perturbation s_b P_b z_b, while P's EMA reads z as
        HiZOO's does (fed s_b z, the policy's scale would enter the curvature estimate as s_b^2).
        A block with s_b = 0 was not perturbed (its perturbation s_b P z is zero), so c says nothing about its
        curvature: its P stays as it is (HiZOO estimates the Hessian of the perturbed parameters) and its step is 0."""
        s = d.scale(b.index)
        if s == 0.0:
            return torch.zeros(b.param.shape, dtype=torch.float32, device=b.param.device)
        x = engine.direction_tensor(replace(d, block_scales=None), b, precondition=False)
        return self.transform(b, x, params).mul_(s)

    def transform(self, b, x, params):
        a, c = float(params["a"]), float(params["c"])
        p = self.buffer("p", b, init="ones")
        p.div_((x * x).mul_(a * c).add_(1.0 - a).sqrt_())    # P <- P / sqrt(1 - a + a c x^2) (IEEE sqrt, divide)
        return x.mul_(p)

    def precondition(self, b):
        return self.buffers["p"].get(b.index)


class LowRankMomentum(UpdateRule):
    """LOZO-M's momentum, kept in factored form: for a matrix block (LOZO's z = U V^T, l2o.perturbations.LowRank)
    N_b (m x r) with N <- beta N + (1 - beta) g U (N = g U at the first step) and, on the step V is redrawn,
    N <- beta N V_old^T V / n + (1 - beta) g U (n = rows of V; params["old"] is V_old's key); the update
    direction is N V^T. A vector block keeps a dense EMA m <- beta m + (1 - beta) g z (m = g z at first)."""

    name, buffer_names = "lozo-m", ("n",)

    def __init__(self, beta: float = 0.9):
        super().__init__()
        self.beta = float(beta)

    def direction(self, engine, b, d, params):
        (seed, key, coeff), = d.terms(b.index, 1.0) or [(d.seeds[0], d.keys[0], 0.0)]
        store, beta = self.buffers["n"], self.beta
        if b.param.ndim < 2:
            x = engine.direction_tensor(d, b, precondition=False)
            n = store.get(b.index)
            store[b.index] = x.clone() if n is None else n.mul_(beta).add_(x.mul(1 - beta))
            return x.copy_(store[b.index])
        u, v = engine.family.factors(engine.noise, b, seed, key)
        n = store.get(b.index)
        if n is None:
            n = u.mul_(coeff)
        elif "old" in params:
            _, v_old = engine.family.factors(engine.noise, b, seed, int(params["old"]))
            n = _times(n, _gram(v_old, v), beta / v.shape[0]).add_(u.mul_((1 - beta) * coeff))
        else:
            n = n.mul_(beta).add_(u.mul_((1 - beta) * coeff))
        store[b.index] = n
        return outer_sum(n, v, torch.empty(n.shape[0], v.shape[0], dtype=torch.float32, device=n.device)).view(
            b.param.shape)

    def config(self):
        return {"name": self.name, "beta": self.beta}

    def copies(self) -> float:
        return 0.0  # m x r per matrix (and the vectors' dense EMA): a small fraction of one copy


def _gram(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """a^T b (r x r) with every entry the correctly rounded sum (math.fsum) of exact float64 products of the
    float32 factors: no reduction order a device picks changes it."""
    a64, b64 = a.double().cpu().numpy(), b.double().cpu().numpy()
    return [[math.fsum(a64[:, i] * b64[:, j]) for j in range(b64.shape[1])] for i in range(a64.shape[1])]


def _times(n: torch.Tensor, g: list[list[float]], scale: float) -> torch.Tensor:
    """scale * n g for n (m x r) and a small r x r g: columns as products, then sums, in a fixed order."""
    r = len(g)
    out = torch.empty_like(n)
    for i in range(r):
        col = out[:, i]
        torch.mul(n[:, 0], g[0][i] * scale, out=col)
        for k in range(1, r):
            col.add_(n[:, k] * (g[k][i] * scale))
    return out


RULES = {cls.name: cls for cls in (Momentum, Adam, Hessian, LowRankMomentum)}


def make_rule(spec=None) -> UpdateRule | None:
    """A rule from its `config()` (a ledger header's) or an instance; None: plain steps (no rule)."""
    if spec is None or isinstance(spec, UpdateRule):
        return spec
    return from_config(RULES, spec, "update rule")
