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
    "empirical" (default; empirical Bayes from the observations' moments, the same rule at every seed and scale).
        Every y_i of a step shares f0, so under per-forward evaluation noise (bf16/fp16 rounding, dropout) with
        variance s^2 the observations y_i = u_i + (e_i - e_0)/eps, u_i = z_i . grad, have
            E[y_i^2] = |grad|^2 + sigma_n^2,   E[y_i y_j] = sigma_n^2 / 2  (i != j),   sigma_n^2 = 2 s^2 / eps^2
        (u_i, u_j are uncorrelated: fresh z). Per step t:
            S  <- EMA_a of mean_i y_i^2               (started at step 1's value): the observations' scale
            x_t = 2 mean_{i<j} y_i y_j / S_{t-1}     (t >= 2): the step's evidence on the noise fraction f
            f  = clamp(mean(x) - 2 sd(x) / sqrt(n), 0, 0.99)   over the run's n evidence values so far
            sigma_e^2 = max(f S, (0.1 sigma_p)^2),   sigma_p^2 = (1 - f) S
        f is the lower confidence bound (2 standard errors) of the noise fraction sigma_n^2 / E[y^2]: one step
        holds one number about the noise (f0's error), with a signal-sized variance, so a plain average would
        credit each seed a different phantom noise on an exact loss and give it a different step. With the
        bound, an exact loss keeps sigma_e at its floor (gamma = 1/1.01 per axis, effective step ~ k), and real
        noise is credited as the evidence grows (f -> sigma_n^2/E[y^2] as 1/sqrt(n)). gamma depends only on
        ratios of observed quantities, so it is the same at every n and every scale of the loss. The shared
        curvature term eps/2 tr(H) of the y_i is counted as noise too (it is not gradient either). k = 1 has
        no pair, so no noise is credited. `adaptive_noise=False`: f = 0.
    "auto" (the paper's code): sigma_p = sigma_e(initial) = sqrt(n_trainable / 1e6); before each update
        r = (y - d'mu)/|d|,  sigma_e^2 <- (1-a) sigma_e^2 + a r^2,  sigma_e >= 0.1 sigma_e(initial).
        sigma_p does not depend on the observations, and at a fresh coordinate r = y, so sigma_e follows |y|:
        when sqrt(n/1e6) << |y| (PEFT, small models) the shrinkage gamma = sigma_p^2/(sigma_p^2+sigma_e^2) -> 0
        and BSZO does not move; its effective step depends on the scale of the gradient.
    a float: a fixed sigma_p (noise as "auto", starting at `sigma_noise`).
    The rule before this one chose "auto" or a running mean of y^2 from step 1's mean y^2 alone, a coin flip
    per seed (effective steps 0.23-0.38 or 1.82-1.89 on one linear loss); under its empirical branch sigma_p^2
    included the noise, so the residual-based noise estimate sat at its floor.

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

from l2o.hparams import HP
from l2o.optim.base import StepResult, ZOOptimizer, _check

PRIORS = ("auto", "empirical")
NOISE_FLOOR = 0.1      # sigma_e >= 0.1 x (its initial value under "auto" / sigma_p under "empirical")
NOISE_Z = 2.0          # "empirical": the noise fraction credited is its lower bound at 2 standard errors
MAX_NOISE_FRACTION = 0.99


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
    paper = "Feng & Huang 2026, arXiv 2601.01452"
    summary = "Σ μ_i z_i, Kalman posterior over k projected-gradient coordinates"
    reevaluate_extra = False
    hyperparameters = (
        HP("eps", float, 1e-4, "perturbation scale epsilon", "BSZO Table 9 (eps 1e-4)", low=0, open_low=True),
        HP("k", int, 2, "subspace dimension: directions per step", "BSZO (k = 2)", low=1),
        HP("m", int, None, "observations per step, >= k (unset: k + 1)", "BSZO (m = k + 1)", low=1),
        HP("sigma_prior", (float, str), None, "prior std: unset or 'empirical' (default: empirical Bayes from the "
           "observations' moments, the same rule at every scale), 'auto' (the paper's sqrt(n/1e6)) or a number",
           "ours (the paper's code: auto)", low=0, open_low=True, choices=PRIORS),
        HP("sigma_noise", (float, str), "auto", "initial observation-noise std under a fixed or 'auto' prior, or "
           "'auto' (= the auto prior)", "BSZO code", low=0, open_low=True, choices=("auto",)),
        HP("noise_ema", float, 0.1, "EMA rate a of the observations' scale and the residual noise", "BSZO code (0.1)",
           low=0, high=1),
        HP("adaptive_noise", bool, True, "estimate the observation noise (empirical: from the pairs; auto/fixed: "
           "the paper's residual rule)", "BSZO"),
    )

    @classmethod
    def validate(cls, hp):
        k = hp["k"]
        hp["m"] = k + 1 if hp["m"] is None else hp["m"]
        _check(hp["m"] >= k, f"{cls.method}: m must be an integer >= k ({k}), got {hp['m']!r}")
        mode = cls._mode(hp["sigma_prior"])
        _check(mode != "empirical" or hp["sigma_noise"] in (None, "auto"),
               f"{cls.method}: sigma_noise applies to a fixed or 'auto' prior; the empirical prior (the default) "
               f"estimates the noise from the observations")

    @staticmethod
    def _mode(sigma_prior) -> str:
        return "empirical" if sigma_prior is None else sigma_prior if isinstance(sigma_prior, str) else "fixed"

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        sigma_prior, sigma_noise = self.hp.pop("sigma_prior"), self.hp.pop("sigma_noise")
        mode = self._mode(sigma_prior)
        auto = math.sqrt(self.engine.num_params / 1e6)
        sp = float(sigma_prior) if mode == "fixed" else auto
        se = None if sigma_noise in (None, "auto") else float(sigma_noise)
        self.hp["sigma_prior"], self.hp["sigma_noise_init"], self.hp["prior"] = sp, se or auto, mode
        # y2: the EMA S of mean y^2; noise: (n, sum x, sum x^2) of the noise evidence x_t; f: the noise fraction
        self.state["zo"].update(sigma_e=se or auto, prior_mode=mode, y2=None, noise=[0, 0.0, 0.0], f=0.0,
                                gamma=None)

    @property
    def prior_mode(self) -> str:
        """"empirical" (the default), "auto" or "fixed"."""
        return self.state["zo"]["prior_mode"]

    def _empirical_prior(self, ys: list[float]) -> tuple[float, float]:
        """(sigma_p, sigma_e) of this step under the empirical rule (see the module docstring)."""
        zo, hp, k = self.state["zo"], self.hp, len(ys)
        s = sum(y * y for y in ys) / k
        pairs = [ys[i] * ys[j] for i in range(k) for j in range(i + 1, k)]
        if zo["y2"] is not None and pairs and zo["y2"] > 0 and hp["adaptive_noise"]:
            x = 2 * sum(pairs) / len(pairs) / zo["y2"]        # evidence on the noise fraction, S from before
            n, sx, sxx = zo["noise"]
            zo["noise"] = [n + 1, sx + x, sxx + x * x]
        zo["y2"] = s if zo["y2"] is None else (1 - hp["noise_ema"]) * zo["y2"] + hp["noise_ema"] * s
        n, sx, sxx = zo["noise"]
        if n >= 2:
            mean = sx / n
            sd = math.sqrt(max(sxx / n - mean * mean, 0.0) * n / (n - 1))
            zo["f"] = min(max(mean - NOISE_Z * sd / math.sqrt(n), 0.0), MAX_NOISE_FRACTION)
        scale = max(zo["y2"], 1e-300)
        var_p = (1 - zo["f"]) * scale
        zo["sigma_e"] = math.sqrt(max(zo["f"] * scale, NOISE_FLOOR ** 2 * var_p))
        return math.sqrt(var_p), zo["sigma_e"]

    def _observe(self, mu, sigma, d, y, floor):
        """One Kalman update; under "auto"/"fixed" the paper's residual noise adaptation comes first."""
        zo, hp = self.state["zo"], self.hp
        if hp["adaptive_noise"] and zo["prior_mode"] != "empirical":
            r2 = (y - float(d @ mu)) ** 2
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
        if self.prior_mode == "empirical":
            sp, _ = self._empirical_prior(ys)
        else:
            sp = hp["sigma_prior"]
        floor = NOISE_FLOOR * hp["sigma_noise_init"]   # the paper's floor ("auto"/"fixed" only)
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
                          effective_step=float(torch.trace(gain)) * self.scales_second_moment(scales),
                          pair=(losses[1], 2 * f0 - losses[1]))   # along z_1, the minus side mirrored


class BSZOB(BSZO):
    """BSZO-B: extra observations along the principal eigenvector of Sigma, with a fresh forward."""

    method = "bszo-b"
    summary = "as bszo, m − k extra observations along Σ's principal eigenvector (one forward each)"
    reevaluate_extra = True
