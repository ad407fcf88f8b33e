"""LOZO and LOZO-M (Chen et al. 2024, arXiv 2410.07698; github.com/optsuite/LOZO): low-rank perturbations.

For a matrix block W (m x n, trailing dims flattened) the perturbation is z = U V^T, U (m x r) drawn fresh each
step and V (n x r) kept for nu steps (`interval`); vector blocks (biases, norms) use Gaussian z as MeZO:

    epoch = t // nu;  U from the step's seed, V from key(epoch)      (a direction term (seed, key): l2o.engine)
    g = [L(theta + eps U V^T) - L(theta - eps U V^T)] / (2 eps)
    LOZO:    theta <- theta - lr ( g U V^T + wd theta )                                (2 forwards per step)
    LOZO-M:  N <- beta N + (1 - beta) g U   (N = g U at the first step; on the step V is redrawn,
             N <- beta N V_old^T V / n + (1 - beta) g U);   theta <- theta - lr ( N V^T + wd theta )

As the official code, U V^T is not divided by r: E z^2 = r per matrix entry, so the effective step logged
is r on matrices (sum_b n_b s_b^2 m_b / D). V is never stored: it is regenerated from its key (the ledger line
records the key), and LOZO-M's N (m x r per matrix, a dense EMA per vector) is the engine's `lozo-m` rule.
Defaults: rank 2 and nu 50 (the official `rank_r`, `step_interval`), lr 1e-7 (its lozo.sh), eps 1e-3,
LOZO-M's beta 0.9 (its medium-model script).
"""

from __future__ import annotations

from l2o.footprint import Buffer
from l2o.hparams import HP
from l2o.noise import derive_seed
from l2o.optim.base import StepResult, ZOOptimizer
from l2o.perturbations import LowRank
from l2o.updates import LowRankMomentum

V_INDEX = 1 << 21  # derive_seed index of V's key, apart from the steps' seeds


class LOZO(ZOOptimizer):
    method = "lozo"
    paper = "Chen et al. 2024, arXiv 2410.07698"
    summary = "g U Vᵀ, U fresh each step, V kept for ν steps (vectors: g z)"
    hyperparameters = (
        HP("lr", float, 1e-7, "learning rate eta", "LOZO's lozo.sh (OPT, 1e-7)", low=0),
        HP("rank", int, 2, "rank r of the matrix perturbations U V^T", "LOZO code (rank_r = 2)", low=1),
        HP("interval", int, 50, "steps nu that V is kept", "LOZO code (step_interval = 50)", low=1),
    )

    def make_family(self, hp):
        return LowRank(hp["rank"])

    def evaluation_batches(self) -> list[int]:
        return [2]

    def v_key(self, t: int) -> int:
        """The key of the V in use at step t (one per interval of nu steps)."""
        return derive_seed(self.seed, t // self.hp["interval"], V_INDEX)

    def update_params(self) -> dict | None:
        return None

    def _step(self, closure) -> StepResult:
        eps, scales, seeds, keys = self.hp["eps"], self.current_scales(), self.seeds(1), [self.v_key(self.step_count)]
        d = self.direction(seeds, scales=scales, keys=keys)
        plus, minus = self.evaluate_many(closure, [(d, eps), (d, -eps)])
        g = (plus - minus) / (2 * eps)
        self._apply_update(self.direction(seeds, [g], scales, keys), 1.0, self.update_params())  # g inside: LOZO-M's N
        return StepResult(loss=(plus + minus) / 2, projected_grads=[g], losses=[plus, minus],
                          effective_step=self.scales_second_moment(scales), pair=(plus, minus))


class LOZOM(LOZO):
    method = "lozo-m"
    summary = "N Vᵀ, N ← βN + (1−β) g U (factored momentum, re-projected when V is redrawn)"
    hyperparameters = (
        HP("momentum", float, 0.9, "momentum beta of the factored EMA N", "LOZO's medium-model script (beta1 0.9)",
           low=0, high=1),
    )

    buffers = (Buffer("factored momentum N", rank="rank"),)

    def make_rule(self, hp):
        return LowRankMomentum(hp["momentum"])

    def update_params(self) -> dict | None:
        t = self.step_count
        if t > 0 and t % self.hp["interval"] == 0:       # V redrawn this step: N is re-projected from V_old
            return {"old": self.v_key(t - 1)}
        return None
