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
Effective step. The update is -lr g v with g = v . grad to first order, so E[dtheta] = -lr E[v v'] grad. Split
each z_i into its slope xi_i = z_i . u along u = grad/|grad| (xi_i iid N(0, 1), which alone set the ranking, as
l_i = L + eps |grad| xi_i to first order) and a part orthogonal to u (independent of the ranking, zero mean):
    E[dtheta] = -lr E[(v . u)^2] grad,    v . u = sum_i w_i xi_i,   w from ranking xi ascending
which is larger than E||v||^2 / D = sum_i w_i^2 because the ranking picks large slopes. With Phi, phi the normal
cdf and pdf, n = floor(alpha M), T the sum of the n smallest xi and Z the sum of all (E[TZ] = n, E[Z^2] = M):
    Greedy:  E[(v . u)^2] = E[xi_(1)^2] = M int x^2 phi (1 - Phi)^(M-1) dx
    GV:      v . u = (1/n + 1/(M-n)) T - Z/(M-n),  so E[(v . u)^2] = c^2 E[T^2] - 2 c n/(M-n) + M/(M-n)^2
             (c = 1/n + 1/(M-n))
             E[T^2] = M int x^2 phi P_{M-1,n-1}(Phi) dx - 2 M(M-1) int x phi^2 P_{M-2,n-2}(Phi) dx
             with P_{N,j}(p) = P(Binomial(N, p) <= j)  (both of two pool members among the n smallest iff at most n-2
             of the others lie below the larger one; int_{-inf}^y x phi = -phi(y) does the inner integral)
evaluated by quadrature (`guide_alignment`; error < 1e-9): GV 2 at M = 2 (where it is sum w^2: the ranking does
nothing), 2.10 at M = 4, Greedy 1 at M = 2 and 1.55 at M = 4. The logged effective step is this times the
per-block scales' sum n_b s_b^2 / D. To second order the ranking also sees eps^2/2 z'Hz, which lowers the
alignment towards sum w^2 (no ranking) when eps |grad| is not large against it.

The published code rebuilds v by re-seeding before every tensor, so v is not built from the z_i it
evaluated (only the first tensor matches). Here z_i is regenerated from the same (seed_i, block)
keys that were evaluated, always; tests/test_optim.py proves it.
"""

from __future__ import annotations

import functools
import math

import torch

from l2o.hparams import HP
from l2o.optim.base import StepResult, ZOOptimizer, _check


def _integral(values: torch.Tensor, step: float) -> float:
    return float(values.sum()) * step   # trapezoid = sum on a grid where the integrand vanishes at both ends


def _binom_cdf(n: int, j: int, p: torch.Tensor) -> torch.Tensor:
    """P(Binomial(n, p) <= j), elementwise in p (0 for j < 0)."""
    return sum((math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j + 1)), torch.zeros_like(p))


@functools.lru_cache(maxsize=None)
def guide_alignment(pool_size: int, alpha: float = 0.5, greedy: bool = False) -> float:
    """E[(v . u)^2] of the guide for a unit gradient direction u, to first order (the module docstring)."""
    m = pool_size
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    step = float(x[1] - x[0])
    pdf, cdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi), torch.special.ndtr(x)
    n = 1 if greedy else math.floor(alpha * m)
    t2 = m * _integral(x * x * pdf * _binom_cdf(m - 1, n - 1, cdf), step)
    if n >= 2:
        t2 -= 2 * m * (m - 1) * _integral(x * pdf * pdf * _binom_cdf(m - 2, n - 2, cdf), step)
    if greedy:
        return t2
    c = 1 / n + 1 / (m - n)
    return c * c * t2 - 2 * c * n / (m - n) + m / (m - n) ** 2


class MeZOGV(ZOOptimizer):
    method = "mezo-gv"
    paper = "Jin, Cen, Tan 2026, arXiv 2601.04710"
    summary = "g v, v = mean(best ⌊αM⌋ z) − mean(rest) of a pool of M one-sided losses"
    greedy = False
    hyperparameters = (
        HP("pool_size", int, 4, "candidate directions M per step (M = 2: GV is MeZO at 2 lr, Greedy MeZO to first "
           "order)", "GV Table III (M = 2 or 4)", low=2),
        HP("alpha", float, 0.5, "elite fraction: v = mean of the best floor(alpha M) minus mean of the rest",
           "GV experiments (alpha = 0.5 unless stated)", low=0, open_low=True, high=1),
    )

    @classmethod
    def validate(cls, hp):
        if cls.greedy:
            return
        _check(hp["alpha"] < 1 and math.floor(hp["alpha"] * hp["pool_size"]) >= 1,
               f"{cls.method}: alpha must be in (0, 1) with floor(alpha * pool_size) >= 1, got {hp['alpha']!r}")

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
        alignment = guide_alignment(self.hp["pool_size"], self.hp.get("alpha", 0.5), self.greedy)  # greedy: no alpha
        return StepResult(loss=(plus + minus) / 2, projected_grads=[g], losses=pool + [plus, minus],
                          effective_step=alignment * self.scales_second_moment(scales), pair=(plus, minus))


class MeZOGreedy(MeZOGV):
    method = "mezo-greedy"
    summary = "g z*, z* = argmin of a pool of M one-sided losses"
    greedy = True
    dropped = ("alpha",)
