"""The statistics the evidence harness reports (numpy only): Wilson intervals for win-rates, a stratified t
interval for paired differences, and forwards-to-target on loss curves.

- `wilson(k, n)`: the Wilson score interval of a proportion k/n (k may be fractional: ties count half).
- `paired_interval(diffs_by_stratum)`: the mean paired difference over all (task, seed) pairs and its 95%
  interval, stratified by task (tasks are fixed: the inference is about these tasks, the seeds are the random
  part). With N pairs, n_t in task t and s_t their sd:

      mean = sum_t n_t mean_t / N,   se^2 = sum_t a_t,  a_t = n_t s_t^2 / N^2
      df   = (sum_t a_t)^2 / sum_t a_t^2 / (n_t - 1)           (Welch-Satterthwaite)
      mean +- t_{0.975}(df) se

  At 3 seeds a percentile bootstrap of the same pairs (what this used to be) covered the true difference 74% of
  the time, not 95% (400 simulated draws of 3 normal pairs; 80% for two tasks of 3): resampling 3 values cannot
  see the spread's uncertainty, the t quantile (4.30 at df 2) does. tests/test_harness.py holds the t interval's
  coverage at 95%. A task with one seed says nothing about the spread, so then
  there is no interval (nan), not a zero-width one; `ci_text` writes either.
- `t_quantile(p, df)`: Student's t quantile, for real df (the regularised incomplete beta by its continued
  fraction, inverted by bisection).
- `win_rate(pairs)`: the fraction of pairs where the method beats the reference, ties counting half.
- `pairs_to_separate(diffs_by_stratum, fixed)`: how many pairs that interval would need to exclude 0, each task
  gaining seeds alike but the `fixed` ones (their data cannot be had here: they keep the pairs they have);
  `pairs_to_separate_moments` the same from each task's (n, mean, sd).
- `at_level(d, level)`: an interval at another level (a claim looked at twice: Bonferroni, 97.5%).
- `z_score(delta)`: a (difference, standard error) pair in standard errors (the learnability scan's rules).
- `forwards_to_reach(curve, target)`: the first forward count at which a moving mean of the loss is <= target.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal 97.5% quantile


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion k / n ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)  # the roots are exactly 0 and 1 at k = 0 and k = n
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def win_rate(pairs: list[tuple[float, float]], higher_is_better: bool) -> dict:
    """pairs: (method, reference) values. Wins, ties, losses, the rate (ties half) and its Wilson interval."""
    sign = 1 if higher_is_better else -1
    wins = sum(1 for m, r in pairs if sign * (m - r) > 0)
    ties = sum(1 for m, r in pairs if m == r)
    n = len(pairs)
    k = wins + 0.5 * ties
    lo, hi = wilson(k, n)
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "rate": k / n if n else float("nan"),
            "lo": lo, "hi": hi}


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta I_x(a, b) (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for 0.5 <= p < 1 and real df > 0: the t with P(T <= t) = p, by bisection on
    P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    tail = 2 * (1 - p)
    lo, hi = 0.0, 1.0
    while _betainc(df / 2, 0.5, df / (df + hi * hi)) > tail:
        hi *= 2
    for _ in range(64):  # to about 1e-15 of hi
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _betainc(df / 2, 0.5, df / (df + mid * mid)) > tail else (lo, mid)
    return (lo + hi) / 2


def paired_interval(diffs_by_stratum: dict, level: float = 0.95) -> dict:
    """Mean of all differences and its stratified t interval (module doc); lo = hi = nan (no interval) while a
    stratum has a single difference; lo = hi = mean when no stratum has any spread."""
    strata = [np.asarray(v, dtype=float) for v in diffs_by_stratum.values() if len(v)]
    if not strata:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": float("nan")}
    allv = np.concatenate(strata)
    n, mean = len(allv), float(allv.mean())
    sd = float(allv.std(ddof=1)) if n > 1 else float("nan")
    if min(len(v) for v in strata) < 2:
        return {"n": n, "mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": sd}
    se, df = _se_df([(len(v), float(v.var(ddof=1))) for v in strata])
    if se == 0:
        return {"n": n, "mean": mean, "lo": mean, "hi": mean, "sd": sd}
    half = t_quantile(1 - (1 - level) / 2, df) * se
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "df": df}


def _se_df(strata: list[tuple[int, float]]) -> tuple[float, float]:
    """The stratified standard error and its Welch-Satterthwaite df (module doc) from each task's (n_t, s_t^2),
    every n_t >= 2; df is nan when se is 0."""
    total = sum(n for n, _ in strata)
    a = [n * var / total ** 2 for n, var in strata]  # a_t = n_t s_t^2 / N^2
    se = math.sqrt(sum(a))
    if se == 0 or not math.isfinite(se):
        return se, math.nan
    return se, sum(a) ** 2 / sum(x * x / (n - 1) for x, (n, _) in zip(a, strata) if x > 0)


def at_level(d: dict, level: float) -> dict:
    """A `paired_interval` result (95%) at another `level`, from its mean, half-width and df: the same standard
    error, the t quantile of `level` (a Bonferroni correction over k looks at one claim: 1 - 0.05 / k). Without an
    interval, or without spread, as it is."""
    df = d.get("df", math.nan)
    if not math.isfinite(d.get("lo", math.nan)) or d["lo"] == d["hi"]:
        return {**d, "level": level}
    if not math.isfinite(df):
        raise ValueError("at_level needs the interval's df (a paired_interval result)")
    half = (d["hi"] - d["lo"]) / 2 * t_quantile(1 - (1 - level) / 2, df) / t_quantile(0.975, df)
    return {**d, "lo": d["mean"] - half, "hi": d["mean"] + half, "level": level}


def ci_text(d: dict | None, fmt: str = "{:+.3f}") -> str:
    """'mean [lo, hi]' of a paired_interval result; '—' before any pair; the mean alone without an interval."""
    if not d or not d.get("n"):
        return "—"
    if not (math.isfinite(d["lo"]) and math.isfinite(d["hi"])):
        return f"{fmt.format(d['mean'])} (no interval: a task with 1 seed)"
    return f"{fmt.format(d['mean'])} [{fmt.format(d['lo'])}, {fmt.format(d['hi'])}]"


def z_score(delta: tuple[float, float]) -> float:
    """delta / se (+-inf for a nonzero delta with se 0, 0 for no change)."""
    d, se = delta
    return d / se if se > 0 else math.copysign(math.inf, d) if d else 0.0


def pairs_to_separate(diffs_by_stratum: dict, fixed=(), level: float = 0.95, most: int = 10_000) -> float:
    """About how many pairs `paired_interval` needs to exclude 0 at the observed differences: every task gains
    seeds alike (the suite adds seeds per task), each keeping its mean and sd (a task with one seed: the sd of all
    the pairs); the least total N whose stratified interval, at its own Welch-Satterthwaite df, excludes 0 (the
    present N when it does already; inf when the mean stays 0, or past `most` pairs). One pooled sd with df N - 1
    would ignore the strata: it said ~6 pairs for BSZO's 7, 3 on one task and 4 on another, whose interval (df 2.8)
    still held 0. A task in `fixed` keeps the pairs it has (its data cannot be had here, so no seed can join it):
    only the others grow; with none left to grow, the answer is the present N where that separates, else inf."""
    kept = {t: np.asarray(v, dtype=float) for t, v in diffs_by_stratum.items() if len(v)}
    return pairs_to_separate_moments({t: (len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan)
                                      for t, v in kept.items()}, fixed, level, most)


def pairs_to_separate_moments(strata: dict, fixed=(), level: float = 0.95, most: int = 10_000) -> float:
    """`pairs_to_separate` from each task's (n, mean, sd) (a paired_interval per task: what a summary keeps), sd
    nan for one pair; the pooled variance of all the pairs is computed from them (the within-task and the
    between-task sums of squares)."""
    kept = {t: (n, m, sd) for t, (n, m, sd) in strata.items() if n}
    if not kept:
        return math.inf
    total = sum(n for n, _, _ in kept.values())
    grand = sum(n * m for n, m, _ in kept.values()) / total
    squares = sum((n - 1) * sd * sd for n, _, sd in kept.values() if n > 1) + \
        sum(n * (m - grand) ** 2 for n, m, _ in kept.values())
    pooled = squares / (total - 1) if total > 1 else math.inf
    tasks = [(n, m, sd * sd if n > 1 else pooled, t not in fixed) for t, (n, m, sd) in kept.items()]
    for k in range(most if any(grows for *_, grows in tasks) else 1):
        ns = [n + k * grows for n, _, _, grows in tasks]
        total = sum(ns)
        if total > most:
            break
        mean = sum(n * m for n, (_, m, _, _) in zip(ns, tasks)) / total
        if mean == 0 or min(ns) < 2:  # a task with one seed: no interval yet
            continue
        se, df = _se_df([(n, var) for n, (_, _, var, _) in zip(ns, tasks)])
        if se == 0:
            return total
        if math.isfinite(se) and t_quantile(1 - (1 - level) / 2, df) * se < abs(mean):
            return total
    return math.inf


def moving_mean(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def forwards_to_reach(curve: list[tuple[int, float]], target: float, window: int) -> int | None:
    """The first forward count at which the mean loss of the last `window` steps is <= target (None: never; the
    first window - 1 steps, whose mean would be over fewer steps, do not count)."""
    means = moving_mean([loss for _, loss in curve], window)
    for i, ((f, _), m) in enumerate(zip(curve, means)):
        if i + 1 >= window and m <= target:
            return f
    return None
