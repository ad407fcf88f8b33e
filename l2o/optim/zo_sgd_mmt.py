"""ZO-SGD-MMT (ZO-Bench, Zhang et al. 2024, arXiv 2402.11592; ZO-SGD with torch SGD momentum): MeZO's estimate
fed to heavy-ball momentum.

    g   = [L(theta + eps z) - L(theta - eps z)] / (2 eps)
    m   <- beta m + g z          (m = g z at the first step)
    theta <- theta - lr ( m + wd theta )                     (2 forwards per step)

m is one float32 buffer per block (+1 parameter copy in fp32), kept by the engine's momentum rule
(l2o/updates.py); it is a function of the ledger's lines, so replay and a checkpoint without it rebuild it.
In steady state the expected update is lr / (1 - beta) times MeZO's, so that is the effective step logged
(10 at beta = 0.9). ZO-Bench's grid: lr {1e-5 .. 1e-8}, eps {1e-3, 1e-4, 1e-5}, momentum 0.9.
"""

from __future__ import annotations

from l2o.footprint import Buffer
from l2o.hparams import HP
from l2o.optim.mezo import MeZO
from l2o.updates import Momentum


class ZOSGDMMT(MeZO):
    method = "zo-sgd-mmt"
    paper = "ZO-Bench, Zhang et al. 2024, arXiv 2402.11592"
    summary = "m ← βm + g z, θ ← θ − η m (MeZO's estimate, heavy-ball momentum)"
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta", "ZO-Bench's SST-2/OPT-1.3B grid {1e-5 .. 1e-8}", low=0),
        HP("momentum", float, 0.9, "momentum beta", "ZO-Bench's sweeps (0.9)", low=0, high=1),
    )

    buffers = (Buffer("momentum m"),)

    def make_rule(self, hp):
        return Momentum(hp["momentum"])

    def effective_step(self, scales) -> float | None:
        return self.scales_second_moment(scales) / (1.0 - self.hp["momentum"]) if self.hp["momentum"] < 1 else None
