"""Scalars across ranks: everything a multi-process zeroth-order step communicates (DESIGN.md, "Scale").

Ranks that share (seed, step) generate the same directions z(seed_j, b) themselves, so a step needs
only the losses it evaluated; every rank then applies the identical update from the same seeds.

    direction-parallel:  the step's independent evaluations l_i = L(theta + eps_i d_i) are dealt
                         round-robin (rank r evaluates i = r, r + N, ...) and gathered:
                         8 * ceil(n / N) bytes sent per rank per batch of n evaluations
    data-parallel:       rank r evaluates every l_i on its shard of the global batch as (total_ri, w_r)
                         and  l_i = sum_r total_ri / sum_r w_r  (example-weighted mean, summed in rank
                         order, so every rank gets the same float): 8 * (n + 1) bytes sent per rank
    consistency guard:   every K steps the ranks compare a float64 fingerprint of their weights

`Collective` is the one primitive both need: an all-gather of a few float64 values. `LocalCollective`
is the single-process no-op; `TorchCollective` uses an initialised `torch.distributed` process group
(gloo, nccl, ...: whatever Lightning's strategy or torchrun set up) and counts the bytes it sends.
Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from l2o.errors import UserError

PARALLEL_MODES = ("data", "direction")


class Collective(Protocol):
    """world_size N, this process's rank, and an all-gather of float64 scalars (same length on every rank)."""

    world_size: int
    rank: int
    bytes_sent: int

    def all_gather(self, values: Sequence[float]) -> list[list[float]]:
        """[values of rank 0, values of rank 1, ...] on every rank."""
        ...


class LocalCollective:
    """One process: nothing crosses a wire."""

    world_size = 1
    rank = 0

    def __init__(self):
        self.bytes_sent = 0

    def all_gather(self, values: Sequence[float]) -> list[list[float]]:
        return [[float(v) for v in values]]


class TorchCollective:
    """`torch.distributed.all_gather` of one float64 tensor (on the GPU for nccl, on the CPU otherwise).

    `bytes_sent` counts this rank's payload (8 bytes per value); each rank receives (N - 1) times that.
    """

    def __init__(self, group=None, device: str | torch.device | None = None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchCollective needs an initialised torch.distributed process group")
        self._dist, self.group = dist, group
        self.world_size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if device is None:
            nccl = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.device = torch.device(device)
        self.bytes_sent = 0

    def all_gather(self, values: Sequence[float]) -> list[list[float]]:
        x = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        self._dist.all_gather(out, x, group=self.group)
        self.bytes_sent += 8 * x.numel()
        return [t.tolist() for t in out]


# ---------------------------------------------------------------------- direction- vs data-parallel
def my_share(n: int, world_size: int, rank: int) -> list[int]:
    """Round-robin: the indices of n independent evaluations that `rank` evaluates."""
    return list(range(rank, n, world_size))


def gather_round_robin(collective: Collective, n: int, mine: list[float]) -> list[float]:
    """Direction-parallel: every rank's `my_share` results -> all n results in their original order."""
    w = collective.world_size
    width = -(-n // w)  # ceil(n / N): every rank sends the same number of values
    rows = collective.all_gather(list(mine) + [math.nan] * (width - len(mine)))
    return [rows[i % w][i // w] for i in range(n)]


def reduce_shards(collective: Collective, totals: list[float], weight: float) -> list[float]:
    """Data-parallel: l_i = sum_r total_ri / sum_r w_r, summed in rank order (identical on every rank)."""
    rows = collective.all_gather(list(totals) + [weight])
    w = sum(row[-1] for row in rows)
    return [sum(row[i] for row in rows) / w for i in range(len(totals))]


def direction_efficiency(batches: Sequence[int], world_size: int) -> float:
    """Fraction of rank-evaluations that do useful work when each batch of n evaluations takes
    ceil(n / N) rounds: 1.0 when every batch is a multiple of N (e.g. GV's pool of 4 plus 2 on 2 ranks)."""
    rounds = sum(-(-n // world_size) for n in batches)
    return sum(batches) / (world_size * rounds) if rounds else 1.0


def auto_parallel(batches: Sequence[int], world_size: int, batch_size: int) -> str:
    """The default mode: "direction" when the step's evaluation batches keep every rank busy in every
    round (bit-identical to one process, one noise sweep per evaluation split over ranks as well),
    else "data" (every forward shrinks N-fold), unless the batch has fewer examples than ranks."""
    if world_size == 1 or direction_efficiency(batches, world_size) == 1.0 or batch_size < world_size:
        return "direction"
    return "data"


def check_parallel_mode(mode: str) -> str:
    if mode not in PARALLEL_MODES:
        raise UserError(f"parallel mode must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
    return mode


# ---------------------------------------------------------------------- consistency guard
class ReplicaDivergence(UserError):
    """The ranks' weights differ (e.g. through a nondeterministic kernel); the run cannot go on."""


@torch.no_grad()
def weight_fingerprint(params: Sequence[torch.Tensor]) -> list[float]:
    """Three float64 sums: sum theta, sum theta^2, sum_b (b + 1) sum theta_b (the last sees block swaps)."""
    s = s2 = sb = 0.0
    for b, p in enumerate(params):
        x = p.detach().to(torch.float64)
        t = float(x.sum())
        s, s2, sb = s + t, s2 + float((x * x).sum()), sb + (b + 1) * t
    return [s, s2, sb]


def check_replicas(collective: Collective, params: Sequence[torch.Tensor], step: int) -> None:
    """Raise `ReplicaDivergence` naming `step` on every rank if any rank's fingerprint differs from rank 0's."""
    if collective.world_size == 1:
        return
    rows = collective.all_gather(weight_fingerprint(params))
    bits = [[v.hex() for v in row] for row in rows]  # bitwise, so NaN == NaN
    bad = [r for r, row in enumerate(bits) if row != bits[0]]
    if bad:
        raise ReplicaDivergence(
            f"the ranks' weights diverged by step {step}: the float64 fingerprint of rank {bad[0]} "
            f"{rows[bad[0]]} differs from rank 0's {rows[0]} (a nondeterministic kernel?); the run stops")
