"""BSZO (Feng & Huang 2026, arXiv 2601.01452): a Kalman filter over k projected-gradient coordinates.

    seeds z_1..z_k fresh each step;  f0 = L(theta)
    prior mu = 0, Sigma = sigma_p^2 I_k;  observation noise sigma_e (kept across steps)
    for i = 1..k:  y_i = (L(theta + eps z_i) - f0) / eps;  Kalman update along d = e_i
    m - k extra updates along the most uncertain direction:
        "bszo":   d = e_j, j = argmax diag(Sigma), reusing the cached y_j        (0 forwards)
        "bszo-b": d = principal eigenvector of Sigma, y = (L(theta + eps sum_i d_i z_i) - f0)/eps (1 forward)
    Kalman update:  K = Sigma d / (d'Sigma d + sigma_e^2 |d|^2);  mu += K (y - d'mu);  Sigma -= K d'Sigma
    noise adaptation before each update: r = (y - d'mu)/|d|;  sigma_e^2 <- (1-a) sigma_e^2 + a r^2,
        sigma_e floored at 0.1 of its initial value
    theta <- theta - lr (sum_i mu_i z_i + wd theta)             (1 + k forwards per step; bszo-b: 1 + m)

sigma_p = sigma_e(initial) = sqrt(n_trainable / 1e6) ("auto"), as the official code.
"""

from __future__ import annotations

import math

import torch

from l2o.optim.base import StepResult, ZOOptimizer, _check


def kalman_update(mu: torch.Tensor, sigma: torch.Tensor, d: torch.Tensor, y: float, noise_var: float):
    """One sequential Bayesian linear-regression update; returns (mu, Sigma), Sigma symmetric PSD."""
    sd = sigma @ d
    denom = float(d @ sd) + noise_var * float(d @ d)
    k = sd / denom
    mu = mu + k * (y - float(d @ mu))
    sigma = sigma - torch.outer(k, sd)
    sigma = 0.5 * (sigma + sigma.T)
    return mu, sigma


def batch_posterior(D: torch.Tensor, Y: torch.Tensor, prior_var: float, noise_var: float):
    """Closed-form posterior of y = D g + noise(var noise_var |d|^2), g ~ N(0, prior_var I)."""
    r_inv = torch.diag(1.0 / (noise_var * (D * D).sum(1)))
    precision = torch.eye(D.shape[1], dtype=D.dtype) / prior_var + D.T @ r_inv @ D
    sigma = torch.linalg.inv(precision)
    return sigma @ D.T @ r_inv @ Y, sigma


class BSZO(ZOOptimizer):
    method = "bszo"
    reevaluate_extra = False

    def __init__(self, model, lr=1e-6, eps=1e-4, weight_decay=0.0, k: int = 2, m: int | None = None,
                 sigma_prior: float | str = "auto", sigma_noise: float | str = "auto",
                 noise_ema: float = 0.1, adaptive_noise: bool = True, **kw):
        _check(isinstance(k, int) and k >= 1, f"{self.method}: k must be an integer >= 1, got {k!r}")
        m = k + 1 if m is None else m
        _check(isinstance(m, int) and m >= k, f"{self.method}: m must be an integer >= k ({k}), got {m!r}")
        _check(0 <= noise_ema <= 1, f"{self.method}: noise_ema must be in [0, 1], got {noise_ema!r}")
        super().__init__(model, lr, eps, weight_decay, k=k, m=m, noise_ema=float(noise_ema),
                         adaptive_noise=bool(adaptive_noise), **kw)
        auto = math.sqrt(self.engine.num_params / 1e6)
        sp = auto if sigma_prior == "auto" else float(sigma_prior)
        se = auto if sigma_noise == "auto" else float(sigma_noise)
        _check(sp > 0 and se > 0, f"{self.method}: sigma_prior and sigma_noise must be > 0")
        self.hp["sigma_prior"], self.hp["sigma_noise_init"] = sp, se
        self.state["zo"]["sigma_e"] = se

    def _observe(self, mu, sigma, d, y):
        zo, hp = self.state["zo"], self.hp
        if hp["adaptive_noise"]:
            r = (y - float(d @ mu)) / float(d.norm())
            var = (1 - hp["noise_ema"]) * zo["sigma_e"] ** 2 + hp["noise_ema"] * r * r
            zo["sigma_e"] = max(math.sqrt(var), 0.1 * hp["sigma_noise_init"])
        return kalman_update(mu, sigma, d, y, zo["sigma_e"] ** 2)

    def evaluation_batches(self) -> list[int]:
        extra = self.hp["m"] - self.hp["k"] if self.reevaluate_extra else 0
        return [1 + self.hp["k"]] + [1] * extra

    def _step(self, closure) -> StepResult:
        hp, eps, scales = self.hp, self.hp["eps"], self.current_scales()
        k = hp["k"]
        seeds = self.seeds(k)
        mu = torch.zeros(k, dtype=torch.float64)
        sigma = torch.eye(k, dtype=torch.float64) * hp["sigma_prior"] ** 2
        # f0 = L(theta) and L(theta + eps z_i), i = 1..k: 1 + k independent forwards
        losses = self.evaluate_many(closure, [(None, 0.0)] + [(self.direction([s], scales=scales), eps)
                                                              for s in seeds])
        f0 = losses[0]
        ys = [(plus - f0) / eps for plus in losses[1:]]
        eye = torch.eye(k, dtype=torch.float64)
        for i in range(k):
            mu, sigma = self._observe(mu, sigma, eye[i], ys[i])
        for _ in range(hp["m"] - k):
            if self.reevaluate_extra:
                _, vecs = torch.linalg.eigh(sigma)
                d = vecs[:, -1]
                plus = self.evaluate(closure, self.direction(seeds, d.tolist(), scales), eps)
                losses.append(plus)
                y = (plus - f0) / eps
            else:
                j = int(torch.argmax(torch.diagonal(sigma)))
                d, y = eye[j], ys[j]
            mu, sigma = self._observe(mu, sigma, d, y)
        self._apply_update(self.direction(seeds, mu.tolist(), scales), 1.0)
        return StepResult(loss=f0, projected_grads=mu.tolist(), losses=losses)


class BSZOB(BSZO):
    """BSZO-B: extra observations along the principal eigenvector of Sigma, with a fresh forward."""

    method = "bszo-b"
    reevaluate_extra = True
