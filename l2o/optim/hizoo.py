"""HiZOO (Zhao et al., ICLR 2025, arXiv 2402.15173): SPSA along z preconditioned by a diagonal Hessian estimate.

    H = 1 (per weight) at the start;  P = H^(-1/2)
    f0 = L(theta);  L+- = L(theta +- eps P z)                       (3 forwards per step)
    g = (L+ - L-) / (2 eps),   c = |L+ + L- - 2 f0| / (2 eps^2)
    H <- (1 - a) H + a c H z^2          i.e.  P <- P (1 - a + a c z^2)^(-1/2)
    theta <- theta - lr ( g P z + wd theta )                        (P already updated, as the official code)

P is one float32 buffer per block (+1 parameter copy in fp32), the engine's `hizoo` rule (l2o/updates.py): it
preconditions every perturbation the engine makes and is rebuilt from the ledger (whose lines carry a and c)
when a checkpoint holds none. a (`hessian_smooth`) must scale like eps^2 (the official README's example:
1e-8 at eps 1e-3; its script's default 0 makes HiZOO MeZO with f0 computed for nothing). Logged loss: f0.
Effective step: the mean of P^2 (E||P z||^2 / D). With per-block scales s_b (a learned policy's: zo-finetuner+hizoo)
the perturbations and the step are along s_b P z, and the EMA still reads z (l2o.updates.Hessian.direction);
a block with s_b = 0 is neither perturbed nor moved, and its P stays as it is (the estimate is of perturbed weights).
"""

from __future__ import annotations

import torch

from l2o.footprint import Buffer
from l2o.hparams import HP
from l2o.optim.base import StepResult, ZOOptimizer
from l2o.updates import Hessian


class HiZOO(ZOOptimizer):
    method = "hizoo"
    paper = "Zhao et al. 2025, arXiv 2402.15173"
    summary = "g P z, P = H^(-1/2), H an EMA of the diagonal Hessian estimate |L+ + L− − 2L0|/(2ε²) H z²"
    hyperparameters = (
        HP("hessian_smooth", float, 1e-8, "EMA rate a of the diagonal Hessian (scale it like eps^2)",
           "HiZOO README (constant 1e-8 at eps 1e-3)", low=0, high=1),
    )

    buffers = (Buffer("preconditioner P"),)

    def make_rule(self, hp):
        return Hessian()

    def evaluation_batches(self) -> list[int]:
        return [3]

    def _step(self, closure) -> StepResult:
        eps, scales = self.hp["eps"], self.current_scales()
        z = self.direction(self.seeds(1), scales=scales)
        f0, plus, minus = self.evaluate_many(closure, [(None, 0.0), (z, eps), (z, -eps)])
        g = (plus - minus) / (2 * eps)
        c = abs(plus + minus - 2 * f0) / (2 * eps * eps)
        self._apply_update(z, g, {"a": self.hp["hessian_smooth"], "c": c})
        return StepResult(loss=f0, projected_grads=[g], losses=[f0, plus, minus], effective_step=self._mean_p2(scales),
                          pair=(plus, minus))

    def _mean_p2(self, scales) -> float:
        """sum_b s_b^2 sum(P_b^2) / D: E||P z||^2 / D."""
        rule, total = self.engine.rule, 0.0
        for b in self.blocks:
            p = rule.precondition(b)
            s2 = 1.0 if scales is None else float(scales[b.index]) ** 2
            total += s2 * (float(torch.dot(p.view(-1), p.view(-1))) if p is not None else b.param.numel())
        return total / self.engine.num_params
