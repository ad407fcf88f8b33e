"""ZO-SGD-Cons (ZO-Bench, Zhang et al. 2024, arXiv 2402.11592; its `zo_conserv` trainer): a MeZO step that is
taken only where it lowers the batch loss.

    f0 = L(theta);  g = [L(theta + eps z) - L(theta - eps z)] / (2 eps)
    f- = L(theta - lr g z),  f+ = L(theta + lr g z)                (the two candidate steps, evaluated)
    theta <- the lowest of {theta: f0, theta - lr g z: f-, theta + lr g z: f+}
    (ties broken as ZO-Bench's code does: `choose` below; 5 forwards per step)

The candidates are evaluated like any perturbation (theta + c z with c = -+lr g), so nothing is written until
the chosen update; in bf16/fp16 the evaluated candidate and the applied update round stochastically with
different bits. ZO-Bench's conservative trainer applies no weight decay, so it takes none. Logged loss: f0.
Effective step: 1 when a step is taken (either sign: MeZO's direction), 0 when theta is kept.
"""

from __future__ import annotations

from l2o.hparams import HP
from l2o.optim.base import StepResult, ZOOptimizer


def choose(f0: float, f_minus: float, f_plus: float) -> int:
    """ZO-Bench's rule: -1 (theta - lr g z), +1 (theta + lr g z) or 0 (keep theta)."""
    if f_minus > f0:
        return 0 if f0 < f_plus else 1
    return -1 if f_minus < f_plus else 1


class ZOSGDCons(ZOOptimizer):
    method = "zo-sgd-cons"
    paper = "ZO-Bench, Zhang et al. 2024, arXiv 2402.11592"
    summary = "g z, g = [L(θ+εz) − L(θ−εz)]/2ε, kept only if L(θ ∓ ηgz) beats L(θ)"
    dropped = ("weight_decay",)
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta (also the length of the candidate steps)",
           "ZO-Bench's SST-2/OPT-1.3B grid {1e-5 .. 1e-8}", low=0),
        HP("eps", float, 1e-3, "perturbation scale epsilon", "ZO-Bench's grid {1e-2, 1e-3, 1e-4} (its middle)",
           low=0, open_low=True),
    )

    def evaluation_batches(self) -> list[int]:
        return [3, 2]

    def _step(self, closure) -> StepResult:
        eps, lr, scales = self.hp["eps"], self.hp["lr"], self.current_scales()
        z = self.direction(self.seeds(1), scales=scales)
        f0, plus, minus = self.evaluate_many(closure, [(None, 0.0), (z, eps), (z, -eps)])
        g = (plus - minus) / (2 * eps)
        f_minus, f_plus = self.evaluate_many(closure, [(z, -lr * g), (z, lr * g)])
        sign = choose(f0, f_minus, f_plus)
        if sign:
            self._apply_update(z, -sign * g)   # theta - lr (-sign g) z = theta + sign lr g z
        return StepResult(loss=f0, projected_grads=[g], losses=[f0, plus, minus, f_minus, f_plus],
                          effective_step=self.scales_second_moment(scales) if sign else 0.0, pair=(plus, minus))
