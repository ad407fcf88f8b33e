"""Perturbation families: how a direction term's key becomes z_b, the block's perturbation, from the noise source.

A term is (seed, key): `key` is a second, longer-lived key (LOZO's V, kept for nu steps); families that do not
need one ignore it (0). Every family is a pure function of (term, block, and for "masked" the block's weights),
so z_b is regenerated, never stored, and the engine and a ledger's replay make the same z_b.

    gaussian     z = N(0, I), the noise source's z(seed, b)                                       E z^2 = 1
    rademacher   z = +-1: the sign of the Gaussian z(seed, b) (0 counts as +)                      E z^2 = 1
    lowrank      matrices (m x n, n = the product of the trailing dims): z = U V^T with
                 U = z(seed, b) as m x r, V = z(key, b) as n x r (LOZO); vectors: gaussian         E z^2 = r
    masked       z = N(0, I) * 1{|theta_b| <= h_b}: only weights at most h_b in magnitude move (Sparse-MeZO);
                 h_b is the (1 - sparsity) quantile of |theta_b| when the family is bound
                                                     E z^2 = the share of |theta_b| <= h_b when z_b was last made

`FAMILIES` names them; the ledger header records `config()`, and `make_family(config)` rebuilds exactly that
family (refusing one it cannot make), so a ledger names what its replay needs.
"""

from __future__ import annotations

import torch

from l2o.errors import ConfigError
from l2o.noise import stochastic_round_


class Perturbation:
    """Interface: `write(noise, out, b, seed, key)`: out <- z(seed, key, b) (float32, b's shape); `add`:
    out += alpha * z (float32 or float64); `axpy`: out <- base + alpha * z in out's dtype (bf16/fp16 rounded
    stochastically with `round_seed`); `second_moment(b)`: E z_b^2 per element. Arithmetic is a multiply, then
    an add (no fused multiply-add), so z and every sum of terms have the same bits on every device."""

    name = "abstract"

    def bind(self, blocks) -> None:
        """Called once by the engine with its blocks (a family that reads the weights prepares itself here)."""

    def write(self, noise, out: torch.Tensor, b, seed: int, key: int) -> None:
        raise NotImplementedError

    def add(self, noise, out, b, seed, key, alpha) -> None:
        z = torch.empty(out.shape, dtype=torch.float32, device=out.device)
        self.write(noise, z, b, seed, key)
        out.add_(z.to(out.dtype).mul_(alpha))

    def axpy(self, noise, out, base, b, seed, key, alpha, round_seed=None) -> None:
        if out.dtype in (torch.float32, torch.float64):
            if out is not base:
                out.copy_(base)
            return self.add(noise, out, b, seed, key, alpha)
        acc = base.to(torch.float32, copy=True)
        self.add(noise, acc, b, seed, key, alpha)
        stochastic_round_(out, acc, round_seed, overwrite_src=True, path=noise.path)

    def second_moment(self, b) -> float:
        return 1.0

    def second_moments(self, blocks) -> list[float]:
        """`second_moment(b)` for each block (one call, so a family that counts on the device syncs once)."""
        return [self.second_moment(b) for b in blocks]

    def support(self, b) -> float:
        """The share of block b's entries a z_b moves (1 but under a mask)."""
        return 1.0

    def config(self) -> dict:
        return {"name": self.name}


class Gaussian(Perturbation):
    """The noise source's z(seed, b) itself (MeZO and every method before this module)."""

    name = "gaussian"

    def write(self, noise, out, b, seed, key):
        noise.write(out, seed, b.index)

    def add(self, noise, out, b, seed, key, alpha):
        noise.add(out, seed, b.index, alpha)

    def axpy(self, noise, out, base, b, seed, key, alpha, round_seed=None):
        noise.axpy(out, base, seed, b.index, alpha, round_seed=round_seed)


class Rademacher(Perturbation):
    """z = +-1 with equal probability: the sign of the source's Gaussian (portable as the Gaussian is)."""

    name = "rademacher"

    def write(self, noise, out, b, seed, key):
        noise.write(out, seed, b.index)
        out.ge_(0.0).mul_(2.0).sub_(1.0)


def outer_sum(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (m x n) <- a b^T = sum_k a[:, k] b[:, k]^T, as r outer products added in order k = 0, 1, ...: each
    entry is a product, then sums, so no reduction order or fused multiply-add a device picks changes a bit."""
    torch.mul(a[:, :1], b[:, 0], out=out)
    for k in range(1, a.shape[1]):
        out.add_(a[:, k:k + 1] * b[:, k])
    return out


class LowRank(Perturbation):
    """LOZO's z_b = U V^T for a matrix block (U from the term's seed, V from its key), Gaussian for a vector."""

    name = "lowrank"

    def __init__(self, rank: int = 2):
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"lowrank: rank must be an integer >= 1, got {rank!r}")
        self.rank = rank

    def factors(self, noise, b, seed: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V): m x r from (seed, b) and n x r from (key, b), float32 on the block's device."""
        m = b.param.shape[0]
        n = b.param.numel() // m
        u = torch.empty(m, self.rank, dtype=torch.float32, device=b.param.device)
        v = torch.empty(n, self.rank, dtype=torch.float32, device=b.param.device)
        noise.write(u, seed, b.index)
        noise.write(v, key, b.index)
        return u, v

    def write(self, noise, out, b, seed, key):
        if b.param.ndim < 2:
            return noise.write(out, seed, b.index)
        u, v = self.factors(noise, b, seed, key)
        outer_sum(u, v, out.view(u.shape[0], v.shape[0]))

    def second_moment(self, b) -> float:
        return float(self.rank) if b.param.ndim >= 2 else 1.0

    def config(self) -> dict:
        return {"name": self.name, "rank": self.rank}


class Masked(Perturbation):
    """Sparse-MeZO's z_b * 1{|theta_b| <= h_b}, the mask read from the weights as they are when z_b is made
    (on the fly: no mask is stored); h_b fixed when bound, from the weights then (or given, on replay).
    E z_b^2 is the mask's share when z_b was last made (counted then, on the device: no extra pass over the
    weights), so a step's effective step is its own mask's, the same whether the family was bound at the run's
    start or on a resumed run's moved weights; before any z_b is made, the share at binding."""

    name = "masked"

    def __init__(self, sparsity: float = 0.75, thresholds: list[float] | None = None):
        if not 0 <= sparsity < 1:
            raise ConfigError(f"masked: sparsity must be in [0, 1), got {sparsity!r}")
        self.sparsity = float(sparsity)
        self.thresholds = None if thresholds is None else [float(h) for h in thresholds]
        self.active: list[float] = []
        self.counts: dict[int, torch.Tensor | int] = {}  # block -> entries the last z_b moved (on its device till read)

    def bind(self, blocks) -> None:
        if self.thresholds is None:
            self.thresholds = [threshold(b.param.detach(), self.sparsity) for b in blocks]
        if len(self.thresholds) != len(blocks):
            raise ConfigError(f"masked: {len(self.thresholds)} thresholds for {len(blocks)} blocks")
        self.active = [float((b.param.detach().abs() <= h).float().mean()) for b, h in zip(blocks, self.thresholds)]
        self.counts = {}

    def mask(self, b) -> torch.Tensor:
        return b.param.detach().abs() <= self.thresholds[b.index]

    def write(self, noise, out, b, seed, key):
        noise.write(out, seed, b.index)
        mask = self.mask(b)
        out.mul_(mask)
        self.counts[b.index] = mask.sum()

    def second_moment(self, b) -> float:
        return self.second_moments([b])[0]

    def second_moments(self, blocks) -> list[float]:
        on_device = [b.index for b in blocks if isinstance(self.counts.get(b.index), torch.Tensor)]
        for device in {self.counts[i].device for i in on_device}:  # one transfer per device; kept as ints after
            here = [i for i in on_device if self.counts[i].device == device]
            self.counts.update(zip(here, torch.stack([self.counts[i] for i in here]).tolist()))
        at_bind = self.active or [1.0 - self.sparsity] * (1 + max(b.index for b in blocks))
        return [self.counts[b.index] / b.param.numel() if b.index in self.counts else at_bind[b.index] for b in blocks]

    def support(self, b) -> float:
        return self.second_moment(b)

    def config(self) -> dict:
        return {"name": self.name, "sparsity": self.sparsity, "thresholds": list(self.thresholds or [])}


def threshold(weights: torch.Tensor, sparsity: float) -> float:
    """h with a share (1 - sparsity) of the entries at most h in magnitude (the smallest ones perturbed)."""
    flat = weights.reshape(-1).abs().float()
    k = max(1, round((1.0 - sparsity) * flat.numel()))
    return float(torch.kthvalue(flat.cpu(), k).values)


FAMILIES = {cls.name: cls for cls in (Gaussian, Rademacher, LowRank, Masked)}


def make_family(spec=None) -> Perturbation:
    """A family from its name, its `config()` dict (a ledger header's), or an instance; None: gaussian."""
    if spec is None:
        return Gaussian()
    if isinstance(spec, Perturbation):
        return spec
    return from_config(FAMILIES, {"name": spec} if isinstance(spec, str) else spec, "perturbation family")


def from_config(registry: dict, config: dict, what: str):
    """registry[config["name"]](**the rest), or ConfigError in one sentence (unknown name, settings it cannot take)."""
    config = dict(config)
    cls = registry.get(config.pop("name", None))
    if cls is None:
        raise ConfigError(f"unknown {what} {config!r}: this version knows {', '.join(registry)}")
    try:
        return cls(**config)
    except TypeError:
        raise ConfigError(f"{what} {cls.name!r} has settings this version cannot make ({', '.join(config)})") from None
