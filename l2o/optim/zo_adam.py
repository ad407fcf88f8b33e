"""ZO-Adam (ZO-Bench, Zhang et al. 2024, arXiv 2402.11592; MeZO's estimate fed to torch Adam).

    g   = [L(theta + eps z) - L(theta - eps z)] / (2 eps),   x = g z
    m   <- b1 m + (1 - b1) x;   v <- b2 v + (1 - b2) x^2;   t = the number of updates so far
    theta <- theta - lr [ (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + adam_eps) + wd theta ]    (2 forwards)

m and v are two float32 buffers per block (+2 parameter copies in fp32), kept by the engine's Adam rule
(l2o/updates.py) and rebuilt from the ledger when a checkpoint holds none. Weight decay is decoupled (AdamW's
form; ZO-Bench's Adam runs at weight decay 0). Adam normalises each coordinate, so the step's length does
not follow the gradient's: no effective step is logged, and per-block policy scales would cancel in the
update (no zo-finetuner variant). ZO-Bench's grid: lr {1e-4 .. 1e-8}, eps {1e-3, 1e-4, 1e-5}; torch's betas.
"""

from __future__ import annotations

from l2o.footprint import Buffer
from l2o.hparams import HP
from l2o.optim.base import _check
from l2o.optim.mezo import MeZO
from l2o.updates import Adam


class ZOAdam(MeZO):
    method = "zo-adam"
    paper = "ZO-Bench, Zhang et al. 2024, arXiv 2402.11592"
    summary = "Adam on g z (m, v kept per coordinate)"
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta: Adam's step is about lr per coordinate",
           "ZO-Bench's SST-2/OPT-1.3B grid {1e-4 .. 1e-8}", low=0),
        HP("beta1", float, 0.9, "Adam's first-moment rate", "torch Adam (ZO-Bench)", low=0, high=1),
        HP("beta2", float, 0.999, "Adam's second-moment rate", "torch Adam (ZO-Bench)", low=0, high=1),
        HP("adam_eps", float, 1e-8, "Adam's denominator epsilon", "torch Adam (ZO-Bench)", low=0, open_low=True),
    )

    @classmethod
    def validate(cls, hp):
        _check(hp["beta1"] < 1 and hp["beta2"] < 1, f"{cls.method}: beta1 and beta2 must be < 1")

    buffers = (Buffer("Adam's m and v", copies=2),)

    def make_rule(self, hp):
        return Adam(hp["beta1"], hp["beta2"], hp["adam_eps"])

    def update_params(self) -> dict:
        return {"t": self.ledger.num_updates + 1}   # Adam's bias corrections count applied updates

    def effective_step(self, scales) -> float | None:
        return None
