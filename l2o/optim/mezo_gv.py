"""MeZO-GV and MeZO-Greedy (Jin, Cen, Tan 2026, arXiv 2601.04710): steer the noise with a pool.

    pool:    l_i = L(theta + eps z_i),  i = 1..M              (one-sided, M forwards)
    GV:      v = mean(z_i, i in lowest floor(alpha M)) - mean(z_i, rest)      (not normalised)
    Greedy:  v = z_{argmin l}
    then a two-point step along v:  g = [L(theta + eps v) - L(theta - eps v)] / (2 eps),
             theta <- theta - lr (g v + wd theta)                 (M + 2 forwards per step)

Pool size. The default is M = 4 with alpha = 1/2 (the paper's Table III). At M = 2 the pool is idle:
    GV(M=2):     v = z_best - z_worst, and the SPSA step g v is unchanged when v -> -v (g flips with v),
                 so the ranking has no effect; v ~ sqrt(2) N(0, I), i.e. exactly MeZO at 2 lr and sqrt(2) eps.
    Greedy(M=2): with X_i = z_i . grad, min(X1, X2) and max(X1, X2) mirror each other, so
                 E[min^2] = E[X^2]: MeZO's first-order expected step, at twice MeZO's forwards.
Effective step E||v||^2 / D = sum_i w_i^2 (GV: 1/(aM) + 1/((1-a)M), 1 at M = 4; 2 at M = 2; Greedy: 1).

The published code rebuilds v by re-seeding before every tensor, so v is not built from the z_i it
evaluated (only the first tensor matches). Here z_i is regenerated from the same (seed_i, block)
keys that were evaluated, always; tests/test_optim.py proves it.
"""

from __future__ import annotations

import math

from l2o.optim.base import StepResult, ZOOptimizer, _check


class MeZOGV(ZOOptimizer):
    method = "mezo-gv"
    greedy = False

    def __init__(self, model, lr=1e-6, eps=1e-3, weight_decay=0.0, pool_size: int = 2, alpha: float = 0.5, **kw):
        _check(isinstance(pool_size, int) and pool_size >= 2,
               f"{self.method}: pool_size must be an integer >= 2, got {pool_size!r}")
        _check(0 < alpha < 1 and math.floor(alpha * pool_size) >= 1,
               f"{self.method}: alpha must be in (0, 1) with floor(alpha * pool_size) >= 1, got {alpha!r}")
        super().__init__(model, lr, eps, weight_decay, pool_size=pool_size, alpha=float(alpha), **kw)

    def guide_weights(self, pool_losses: list[float]) -> list[float]:
        """Weights w_i of the guide v = sum_i w_i z_i, from the pool's one-sided losses."""
        m = len(pool_losses)
        order = sorted(range(m), key=lambda i: pool_losses[i])
        w = [0.0] * m
        if self.greedy:
            w[order[0]] = 1.0
            return w
        n_top = math.floor(self.hp["alpha"] * m)
        for i in order[:n_top]:
            w[i] = 1.0 / n_top
        for i in order[n_top:]:
            w[i] = -1.0 / (m - n_top)
        return w

    def evaluation_batches(self) -> list[int]:
        return [self.hp["pool_size"], 2]

    def _step(self, closure) -> StepResult:
        eps, scales = self.hp["eps"], self.current_scales()
        seeds = self.seeds(self.hp["pool_size"])
        pool = self.evaluate_many(closure, [(self.direction([s], scales=scales), eps) for s in seeds])
        w = self.guide_weights(pool)
        v = self.direction(seeds, w, scales)
        plus, minus = self.evaluate_many(closure, [(v, eps), (v, -eps)])
        g = (plus - minus) / (2 * eps)
        self._apply_update(v, g)
        # logged: the pair's mean, not plus = L(theta + eps v), which v's guidance biases low by ~ eps g
        return StepResult(loss=(plus + minus) / 2, projected_grads=[g], losses=pool + [plus, minus],
                          effective_step=sum(x * x for x in w) * self.scales_second_moment(scales))


class MeZOGreedy(MeZOGV):
    method = "mezo-greedy"
    greedy = True
