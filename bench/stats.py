"""The statistics the evidence harness reports (numpy only): Wilson intervals for win-rates, a stratified
bootstrap for paired differences, and forwards-to-target on loss curves.

- `wilson(k, n)`: the Wilson score interval of a proportion k/n (k may be fractional: ties count half).
- `paired_bootstrap(diffs_by_stratum)`: the mean paired difference over all (task, seed) pairs and its 95%
  percentile interval from a bootstrap that resamples seeds within each task (tasks are fixed: the inference
  is about these tasks, the seeds are the random part). A task with one seed says nothing about the spread, so
  then there is no interval (nan), not a zero-width one; `ci_text` writes either.
- `win_rate(pairs)`: the fraction of pairs where the method beats the reference, ties counting half.
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


def paired_bootstrap(diffs_by_stratum: dict, reps: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of all differences and its percentile interval, resampling within each stratum (task); lo = hi = nan
    (no interval) while a stratum has a single difference: resampling it would always draw that one value."""
    strata = [np.asarray(v, dtype=float) for v in diffs_by_stratum.values() if len(v)]
    if not strata:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": float("nan")}
    allv = np.concatenate(strata)
    if min(len(v) for v in strata) < 2:
        return {"n": int(len(allv)), "mean": float(allv.mean()), "lo": float("nan"), "hi": float("nan"),
                "sd": float(allv.std(ddof=1)) if len(allv) > 1 else float("nan")}
    rng = np.random.default_rng(seed)
    total = np.zeros(reps)
    for v in strata:
        idx = rng.integers(0, len(v), size=(reps, len(v)))
        total += v[idx].sum(axis=1)
    means = total / len(allv)
    a = (1 - level) / 2
    return {"n": int(len(allv)), "mean": float(allv.mean()), "lo": float(np.quantile(means, a)),
            "hi": float(np.quantile(means, 1 - a)), "sd": float(allv.std(ddof=1)) if len(allv) > 1 else 0.0}


def ci_text(d: dict | None, fmt: str = "{:+.3f}") -> str:
    """'mean [lo, hi]' of a paired_bootstrap result; '—' before any pair; the mean alone without an interval."""
    if not d or not d.get("n"):
        return "—"
    if not (math.isfinite(d["lo"]) and math.isfinite(d["hi"])):
        return f"{fmt.format(d['mean'])} (no interval: a task with 1 seed)"
    return f"{fmt.format(d['mean'])} [{fmt.format(d['lo'])}, {fmt.format(d['hi'])}]"


def z_score(delta: tuple[float, float]) -> float:
    """delta / se (+-inf for a nonzero delta with se 0, 0 for no change)."""
    d, se = delta
    return d / se if se > 0 else math.copysign(math.inf, d) if d else 0.0


def pairs_to_separate(mean: float, sd: float, z: float = Z95) -> float:
    """About how many paired observations a 95% interval needs to exclude 0 if the true mean difference is `mean`
    with per-pair sd `sd`: (z sd / mean)^2 (inf when mean is 0)."""
    if mean == 0 or not math.isfinite(mean) or not math.isfinite(sd):
        return math.inf
    return (z * sd / mean) ** 2


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
