"""BSZO (Feng & Huang 2026, arXiv 2601.01452): a Kalman filter over k projected-gradient coordinates.

    seeds z_1..z_k fresh each step;  f0 = L(theta);  y_i = (L(theta + eps z_i) - f0) / eps
    prior mu = 0, Sigma = sigma_p^2 I_k;  observation noise sigma_e (kept across steps)
    for i = 1..k:  Kalman update along d = e_i with y_i
    m - k extra updates along the most uncertain direction:
        "bszo":   d = e_j, j = argmax diag(Sigma), reusing the cached y_j        (0 forwards)
        "bszo-b": d = principal eigenvector of Sigma, y = (L(theta + eps sum_i d_i z_i) - f0)/eps (1 forward)
    Kalman update:  K = Sigma d / (d'Sigma d + sigma_e^2 |d|^2);  mu += K (y - d'mu);  Sigma -= K d'Sigma
    theta <- theta - lr (sum_i mu_i z_i + wd theta)             (1 + k forwards per step; bszo-b: 1 + m)

The prior and the noise estimate (`sigma_prior`):
    "auto" (the paper's code): sigma_p = sigma_e(initial) = sqrt(n_trainable / 1e6); before each update
        r = (y - d'mu)/|d|,  sigma_e^2 <- (1-a) sigma_e^2 + a r^2,  sigma_e >= 0.1 sigma_e(initial).
        sigma_p does not depend on the observations, and at a fresh coordinate r = y, so sigma_e follows |y|:
        when sqrt(n/1e6) << |y| (PEFT, small models) the shrinkage gamma = sigma_p^2/(sigma_p^2+sigma_e^2) -> 0
        and BSZO does not move.
    "empirical" (empirical Bayes, scale-free): sigma_p^2 = running mean of y^2 (the marginal second moment
        of the observations: EMA with rate a, started at the first step's mean y^2), sigma_e(initial) = sigma_p;
        the noise update uses r^2 - d'Sigma d (the innovation's variance minus its prior part; unbiased for
        sigma_e^2|d|^2, so it may be negative), and sigma_e >= 0.1 sigma_p. gamma depends only on ratios of
        observed quantities, so it moves at every n (with exact losses gamma -> 1/(1 + 0.1^2) ~ 0.99).
    None (default): "auto" if at the first step sqrt(n/1e6)^2 >= 0.1 mean(y^2) (the paper's prior is at
        least of the observations' order, gamma(auto) >= ~0.1), else "empirical". The choice is kept in
        the state (`prior_mode`) and logged.
    a float: a fixed sigma_p (noise as "auto").

BSZO-B equals BSZO plus one forward when Sigma stays diagonal and the evaluations are exact (one batch, no
dropout): with k sequential axis updates Sigma stays diagonal, its principal eigenvector is an axis e_j, and
the fresh y along e_j reproduces the cached y_j bit for bit. It differs when Sigma has equal diagonal entries
(ties: the eigenvector then mixes coordinates) or when the loss is noisy (tests/test_optim.py).

Effective step: mu = G u to first order, u_i = z_i . grad, with G built alongside the filter
(G += K d'(I - G) per update); E[dtheta] = -lr tr(G) grad, so E||d||^2/D is reported as tr(G).
"""

from __future__ import annotations

import math

import torch

from l2o.optim.base import StepResult, ZOOptimizer, _check

PRIORS = ("auto", "empirical")
AUTO_MIN_RATIO = 0.1   # the default rule: "auto" when sigma_auto^2 >= 0.1 mean(y^2) at the first step
NOISE_FLOOR = 0.1      # sigma_e >= 0.1 x (its initial value under "auto" / sigma_p under "empirical")


def kalman_update(mu: torch.Tensor, sigma: torch.Tensor, d: torch.Tensor, y: float, noise_var: float):
    """One sequential Bayesian linear-regression update; returns (mu, Sigma), Sigma symmetric PSD."""
    mu, sigma, _ = kalman_gain_update(mu, sigma, d, y, noise_var)
    return mu, sigma


def kalman_gain_update(mu, sigma, d, y: float, noise_var: float):
    """`kalman_update`, also returning the gain K."""
    sd = sigma @ d
    denom = float(d @ sd) + noise_var * float(d @ d)
    k = sd / denom
    mu = mu + k * (y - float(d @ mu))
    sigma = sigma - torch.outer(k, sd)
    sigma = 0.5 * (sigma + sigma.T)
    return mu, sigma, k


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
                 sigma_prior: float | str | None = None, sigma_noise: float | str = "auto",
                 noise_ema: float = 0.1, adaptive_noise: bool = True, **kw):
        _check(isinstance(k, int) and k >= 1, f"{self.method}: k must be an integer >= 1, got {k!r}")
        m = k + 1 if m is None else m
        _check(isinstance(m, int) and m >= k, f"{self.method}: m must be an integer >= k ({k}), got {m!r}")
        _check(0 <= noise_ema <= 1, f"{self.method}: noise_ema must be in [0, 1], got {noise_ema!r}")
        _check(sigma_prior is None or sigma_prior in PRIORS or isinstance(sigma_prior, (int, float)),
               f"{self.method}: sigma_prior must be a number, 'auto', 'empirical' or None, got {sigma_prior!r}")
        super().__init__(model, lr, eps, weight_decay, k=k, m=m, noise_ema=float(noise_ema),
                         adaptive_noise=bool(adaptive_noise), **kw)
        auto = math.sqrt(self.engine.num_params / 1e6)
        sp = auto if sigma_prior in (None, *PRIORS) else float(sigma_prior)
        se = None if sigma_noise == "auto" else float(sigma_noise)
        _check(sp > 0 and (se is None or se > 0), f"{self.method}: sigma_prior and sigma_noise must be > 0")
        self.hp["sigma_prior"], self.hp["sigma_noise_init"], self.hp["noise_auto"] = sp, se or auto, se is None
        self.hp["prior"] = sigma_prior if isinstance(sigma_prior, str) or sigma_prior is None else "fixed"
        # prior_mode: None until the default rule has seen the first step; y2: running mean of y^2
        self.state["zo"].update(sigma_e=se or auto, prior_mode=None if sigma_prior is None else self.hp["prior"],
                                y2=None, gamma=None)

    @property
    def prior_mode(self) -> str | None:
        """"auto", "empirical" or "fixed" (None before the first step under the default rule)."""
        return self.state["zo"]["prior_mode"]

    def _resolve_prior(self, ys: list[float]) -> float:
        """Update the running mean of y^2 with this step's y and return sigma_p (the rule: see the module)."""
        zo, hp = self.state["zo"], self.hp
        first, y2 = zo["y2"] is None, sum(y * y for y in ys) / len(ys)
        zo["y2"] = y2 if first else (1 - hp["noise_ema"]) * zo["y2"] + hp["noise_ema"] * y2
        if zo["prior_mode"] is None:
            zo["prior_mode"] = "auto" if hp["sigma_prior"] ** 2 >= AUTO_MIN_RATIO * y2 else "empirical"
        if zo["prior_mode"] != "empirical":
            return hp["sigma_prior"]
        if first and hp["noise_auto"]:
            zo["sigma_e"] = math.sqrt(y2)
        return math.sqrt(max(zo["y2"], 1e-300))

    def _observe(self, mu, sigma, d, y, floor):
        zo, hp = self.state["zo"], self.hp
        if hp["adaptive_noise"]:
            r2 = (y - float(d @ mu)) ** 2
            if zo["prior_mode"] == "empirical":      # innovation variance minus its prior part (unbiased, may be < 0)
                r2 -= float(d @ sigma @ d)
            var = (1 - hp["noise_ema"]) * zo["sigma_e"] ** 2 + hp["noise_ema"] * r2 / float(d @ d)
            zo["sigma_e"] = math.sqrt(max(var, floor * floor))
        return kalman_gain_update(mu, sigma, d, y, zo["sigma_e"] ** 2)

    def evaluation_batches(self) -> list[int]:
        extra = self.hp["m"] - self.hp["k"] if self.reevaluate_extra else 0
        return [1 + self.hp["k"]] + [1] * extra

    def _step(self, closure) -> StepResult:
        hp, eps, scales = self.hp, self.hp["eps"], self.current_scales()
        k = hp["k"]
        seeds = self.seeds(k)
        # f0 = L(theta) and L(theta + eps z_i), i = 1..k: 1 + k independent forwards
        losses = self.evaluate_many(closure, [(None, 0.0)] + [(self.direction([s], scales=scales), eps)
                                                              for s in seeds])
        f0 = losses[0]
        ys = [(plus - f0) / eps for plus in losses[1:]]
        sp = self._resolve_prior(ys)
        floor = NOISE_FLOOR * (sp if self.prior_mode == "empirical" else hp["sigma_noise_init"])
        eye = torch.eye(k, dtype=torch.float64)
        mu, sigma, gain = torch.zeros(k, dtype=torch.float64), eye * sp ** 2, torch.zeros(k, k, dtype=torch.float64)
        observations = [(eye[i], ys[i]) for i in range(k)] + [None] * (hp["m"] - k)
        for obs in observations:
            if obs is None and self.reevaluate_extra:
                d = torch.linalg.eigh(sigma)[1][:, -1]
                plus = self.evaluate(closure, self.direction(seeds, d.tolist(), scales), eps)
                losses.append(plus)
                obs = (d, (plus - f0) / eps)
            elif obs is None:
                j = int(torch.argmax(torch.diagonal(sigma)))
                obs = (eye[j], ys[j])
            mu, sigma, kg = self._observe(mu, sigma, obs[0], obs[1], floor)
            gain = gain + torch.outer(kg, obs[0] - obs[0] @ gain)   # mu = G u to first order
        self.state["zo"]["gamma"] = float(torch.trace(gain)) / k
        self._apply_update(self.direction(seeds, mu.tolist(), scales), 1.0)
        return StepResult(loss=f0, projected_grads=mu.tolist(), losses=losses,
                          effective_step=float(torch.trace(gain)) * self.scales_second_moment(scales))


class BSZOB(BSZO):
    """BSZO-B: extra observations along the principal eigenvector of Sigma, with a fresh forward."""

    method = "bszo-b"
    reevaluate_extra = True
