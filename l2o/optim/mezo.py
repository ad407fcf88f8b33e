"""MeZO (Malladi et al. 2023, arXiv 2305.17333), also ZO-Bench's ZO-SGD: SPSA along seeded Gaussian directions.

    g_j   = [L(theta + eps z_j) - L(theta - eps z_j)] / (2 eps)     (projected gradient, a scalar)
    theta <- theta - lr * ( (1/q) sum_j g_j z_j + wd * theta )

Effective step E||d||^2 / D = 1 (sum_b n_b s_b^2 / D with per-block scales s_b), whatever q.
`num_directions` q > 1 averages q estimates (n-SPSA). `one_sided=True` uses
g_j = [L(theta + eps z_j) - L(theta)] / eps with one shared L(theta): 1 + q forwards instead of 2q.
"""

from __future__ import annotations

from l2o.optim.base import StepResult, ZOOptimizer
from l2o.hparams import HP


class MeZO(ZOOptimizer):
    method = "mezo"
    paper = "Malladi et al. 2023, arXiv 2305.17333"
    summary = "g z, g = [L(θ+εz) − L(θ−εz)]/2ε"
    hyperparameters = (
        HP("num_directions", int, 1, "n-SPSA: directions q averaged per step", "MeZO (n = 1 in every LLM run)", low=1),
        HP("one_sided", bool, False, "one-sided differences [L(θ+εz) − L(θ)]/ε: 1 + q forwards", "MeZO (two-sided)"),
    )

    def evaluation_batches(self) -> list[int]:
        q = self.hp["num_directions"]
        return [1 + q] if self.hp["one_sided"] else [2 * q]

    def _step(self, closure) -> StepResult:
        q, eps, scales = self.hp["num_directions"], self.hp["eps"], self.current_scales()
        seeds = self.seeds(q)
        dirs = [self.direction([s], scales=scales) for s in seeds]
        if self.hp["one_sided"]:   # f0 = L(theta) and L(theta + eps z_j): 1 + q independent forwards
            losses = self.evaluate_many(closure, [(None, 0.0)] + [(d, eps) for d in dirs])
            f0 = losses[0]
            grads = [(plus - f0) / eps for plus in losses[1:]]
        else:                      # L(theta + eps z_j), L(theta - eps z_j): 2q independent forwards
            losses = self.evaluate_many(closure, [(d, sign * eps) for d in dirs for sign in (1, -1)])
            grads = [(plus - minus) / (2 * eps) for plus, minus in zip(losses[0::2], losses[1::2])]
        self._apply_update(self.direction(seeds, self.update_weights(grads), scales), 1.0, self.update_params())
        train_loss = losses[0] if self.hp["one_sided"] else sum(losses) / len(losses)  # f0, or the pairs' mean
        pair = (losses[-1], 2 * losses[0] - losses[-1]) if self.hp["one_sided"] else (losses[-2], losses[-1])
        return StepResult(loss=train_loss, projected_grads=grads, losses=losses,
                          effective_step=self.effective_step(scales), pair=pair)

    def update_weights(self, grads: list[float]) -> list[float]:
        """w_j of the update theta <- theta - lr sum_j w_j z_j: the mean estimate, g_j / q."""
        return [g / len(grads) for g in grads]

    def update_params(self) -> dict | None:
        """Per-update parameters of the engine's rule (none for plain steps)."""
        return None

    def effective_step(self, scales) -> float | None:
        """E||d||^2 / D of the update's direction per unit of projected gradient (see the module docstring)."""
        return self.scales_second_moment(scales)


class ZOSGD(MeZO):
    """ZO-SGD as ZO-Bench (Zhang et al. 2024, arXiv 2402.11592) names it: its `zo_sgd` trainer is MeZO's step
    (the update above; `--perturbation_mode one_side` is `one_sided`), so this is MeZO under ZO-Bench's name:
    the same weights for the same seed and hyperparameters. The sign, momentum, conservative and Adam variants
    the benchmark builds on it are `zo-sgd-sign`, `zo-sgd-mmt`, `zo-sgd-cons` and `zo-adam`."""

    method = "zo-sgd"
    paper = "ZO-Bench, Zhang et al. 2024, arXiv 2402.11592"
    summary = "g z, g = [L(θ+εz) − L(θ−εz)]/2ε (MeZO's step, ZO-Bench's name)"
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta", "ZO-Bench's SST-2/OPT-1.3B grid {1e-4 .. 1e-8} (its middle)", low=0),
    )
