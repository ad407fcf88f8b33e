"""ZO-SGD-Sign (ZO-Bench, Zhang et al. 2024, arXiv 2402.11592; its `zo_sign_opt` trainer): MeZO's step with the
projected gradient replaced by its sign.

    g     = [L(theta + eps z) - L(theta - eps z)] / (2 eps)
    theta <- theta - lr ( sign(g) z + wd theta )            (2 forwards per step)

Every step has the same length whatever |g|: lr sets the step, the loss only its sign. The expected update is
-lr sqrt(2/pi) grad / |grad| (z Gaussian), not proportional to the gradient, so no effective step (the lr
multiplier of grad) is logged. ZO-Bench's defaults: lr from its grid {1e-4 .. 1e-8} for full fine-tuning,
eps 1e-3.
"""

from __future__ import annotations

import math

from l2o.hparams import HP
from l2o.optim.mezo import MeZO


class ZOSGDSign(MeZO):
    method = "zo-sgd-sign"
    paper = "ZO-Bench, Zhang et al. 2024, arXiv 2402.11592"
    summary = "sign(g) z, g = [L(θ+εz) − L(θ−εz)]/2ε"
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta: the step is lr z whatever |g|",
           "ZO-Bench's SST-2/OPT-1.3B grid {1e-4, 1e-6, 1e-8} (its middle)", low=0),
    )

    def update_weights(self, grads: list[float]) -> list[float]:
        q = len(grads)
        return [math.copysign(1.0, g) / q if g else 0.0 for g in grads]

    def effective_step(self, scales) -> float | None:
        return None
