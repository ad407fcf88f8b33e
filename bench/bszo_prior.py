"""BSZO's default prior across seeds: how far apart the seeds' effective steps are, and what noise it credits.

    OMP_NUM_THREADS=1 python bench/bszo_prior.py --seeds 40 --steps 50 100 400

On a linear loss L = a.theta + 5 + N(0, s^2) (n = 1000, |a|^2 = 0.01, the issue's case; fresh noise at every
evaluation, as bf16 rounding or dropout make it) at noise fractions sigma_n^2 / E[y^2] of 0, 1/2 and 1, it
runs BSZO (lr 0, so every step sees the same gradient) with the default rule and prints, per run length, the
seeds' run-mean effective step (min, median, max, and (max - min) / median) and the credited noise variance
sigma_e^2 over the true 2 s^2 / eps^2 at the end of the run (median over seeds), and how many seeds credit no
noise at all (sigma_e at its floor, 0.1 sigma_p).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPS = 1e-2


class NoisyLinear(torch.nn.Module):
    """L = a . theta + 5 + N(0, s^2), fresh noise at every evaluation; |a| = scale, so one-sided observations
    y = (L(theta + eps z) - L(theta)) / eps have signal variance scale^2 and noise variance 2 s^2 / eps^2."""

    def __init__(self, dim: int = 1000, scale: float = 0.1, s: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.theta = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.a = torch.randn(dim, generator=g, dtype=torch.float64) * scale / math.sqrt(dim)
        self.s, self.g = s, torch.Generator().manual_seed(100 + seed)

    def forward(self):
        return self.a @ self.theta + 5.0 + self.s * torch.randn((), generator=self.g, dtype=torch.float64)


def noise_for(fraction: float, scale: float = 0.1) -> tuple[float, float]:
    """(scale, s) giving sigma_n^2 / (|a|^2 + sigma_n^2) = fraction at eps = EPS (fraction 1: no signal)."""
    if fraction >= 1:
        return 0.0, 1e-3
    return scale, scale * EPS * math.sqrt(fraction / (1 - fraction) / 2)


def run(model, seed: int, steps: int, **kw):
    """BSZO at lr 0 for `steps` steps: (optimizer, run-mean effective step)."""
    from l2o.optim import BSZO

    opt = BSZO(model, lr=0.0, eps=EPS, seed=seed, **kw)
    effs = []
    for _ in range(steps):
        opt.step(model)
        effs.append(opt.last.effective_step)
    return opt, statistics.mean(effs)


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.bszo_prior", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 400])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    args = ap.parse_args(argv)
    print("| noise fraction | steps | run-mean effective step: min / median / max | (max - min) / median | "
          "credited / true noise variance (median) | seeds crediting no noise |\n|---|---|---|---|---|---|")
    for frac in args.fractions:
        scale, s = noise_for(frac)
        for steps in args.steps:
            effs, ratios, floored = [], [], 0
            for seed in range(args.seeds):
                opt, eff = run(NoisyLinear(scale=scale, s=s, seed=seed), seed, steps)
                zo = opt.state["zo"]
                effs.append(eff)
                floored += zo["f"] == 0.0
                if s > 0:
                    ratios.append(zo["sigma_e"] ** 2 / (2 * s * s / EPS ** 2))
            med = statistics.median(effs)
            credited = f"{statistics.median(ratios):.2f}" if ratios else "no noise"
            print(f"| {frac:g} | {steps} | {min(effs):.3f} / {med:.3f} / {max(effs):.3f} | "
                  f"{(max(effs) - min(effs)) / med:.3f} | {credited} | {floored}/{args.seeds} |", flush=True)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.bszo_prior", main, resumable=False))
