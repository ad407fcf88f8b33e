"""The claims at a glance (docs/evidence.md, under the claims table): each comparison's paired difference in eval
accuracy against its reference, Δ = method − reference over (task, seed) pairs, with its 95% interval (97.5% for
a method whose pairs were looked at twice, as the claims table judges it: bench.claims.prefix_looks).

Reads the harness phases' summaries (`<out>/<phase>/summary.json`, bench/evidence_report.py), the same numbers the
claims table's "measured" column states; a comparison with no pair yet is left out. An interval wholly above 0 is
drawn green, wholly below red, one that spans 0 (or a mean with no interval: a task with one seed) grey.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.claims import corrected, load_summary, prefix_looks
from l2o.filelock import write_png_atomic

# (phase, "methods" or "versus", summary key, row label); the groups read top to bottom as the claims table does
ROWS = (
    ("prefix", "methods", "fo-adamw", "FO-AdamW (first-order ceiling)"),
    ("prefix", "methods", "fo-sgd", "FO-SGD (first-order ceiling)"),
    ("prefix", "methods", "mezo-gv", "MeZO-GV, own lr"),
    ("prefix", "methods", "gv-matched", "MeZO-GV, matched step"),
    ("prefix", "methods", "mezo-greedy", "MeZO-Greedy, own lr"),
    ("prefix", "methods", "greedy-matched", "MeZO-Greedy, matched step"),
    ("prefix", "methods", "bszo", "BSZO, own lr"),
    ("prefix", "methods", "bszo-matched", "BSZO, matched step"),
    ("bf16", "methods", "bszo", "BSZO in bf16 (vs MeZO in bf16)"),
    ("full", "methods", "zo-finetuner", "ZO Fine-tuner shipped, own lr (full)"),
    ("full", "methods", "zo-finetuner-matched", "ZO Fine-tuner shipped, matched step (full)"),
    ("full", "methods", "zo-finetuner-panel", "ZO Fine-tuner panel policy, own lr (full)"),
    ("full", "methods", "zo-finetuner-panel-matched", "ZO Fine-tuner panel policy, matched step (full)"),
    ("full", "versus", "zo-finetuner-panel:zo-finetuner", "ZO Fine-tuner panel policy − shipped policy (full)"),
    ("prefix", "methods", "bilevel-zofo", "Bilevel-ZOFO (upper copy p)"),
    ("metainit", "methods", "mezo-init", "MeZO from the meta-initialisation"),
)
COLOUR = {"above": "tab:green", "below": "tab:red", "spans": "0.45", "no interval": "0.45"}


def side(d: dict) -> str:
    """Where a difference's interval lies against 0: above, below, spans, or no interval."""
    lo, hi = d.get("lo"), d.get("hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "no interval"
    return "above" if lo > 0 else "below" if hi < 0 else "spans"


def rows(out: Path) -> list[dict]:
    """The comparisons with at least one pair: label, phase, Δ eval accuracy (the summary's d_eval), side, and the
    summary key whose runs they are where a row repeats another's (bench.evidence_report.same_runs)."""
    summaries = {phase: load_summary(out, phase) or {} for phase in dict.fromkeys(r[0] for r in ROWS)}
    got = []
    for phase, part, key, label in ROWS:
        d = summaries[phase].get(part, {}).get(key, {}).get("d_eval")
        looks = prefix_looks(key) if (phase, part) == ("prefix", "methods") else 1
        if d and d.get("n") and looks > 1:
            d, label = corrected(d, looks), f"{label} (97.5%: {looks} looks)"
        if d and d.get("n"):
            same = summaries[phase].get("same_runs", {}).get(key) if part == "methods" else None
            got.append({"label": label, "phase": phase, "d": d, "side": side(d), "same_as": same})
    return got


def plot(out: Path, path: Path) -> bool:
    """Draw the comparisons into `path`; False (nothing written) when none has a pair yet."""
    got = rows(out)
    if not got:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.4 * len(got) + 1.4))
    for y, r in enumerate(reversed(got)):
        d, colour = r["d"], COLOUR[r["side"]]
        if r["side"] != "no interval":
            ax.plot([d["lo"], d["hi"]], [y, y], color=colour, lw=2.2)
        ax.plot(d["mean"], y, "o", color=colour, ms=6)
        tasks = ", ".join(f"{t} {n}" for t, n in d.get("tasks", {}).items())
        ax.annotate(f"{d['n']} pair{'s' if d['n'] != 1 else ''}" + (f" ({tasks})" if tasks else "")
                    + ("; no interval" if r["side"] == "no interval" else "")
                    + (f"; the same runs as {r['same_as']}" if r["same_as"] else ""),
                    (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=7, color="0.3")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(got)), [r["label"] for r in reversed(got)], fontsize=8)
    ax.set_ylim(-0.7, len(got) - 0.3)
    ax.set_xlabel("Δ eval accuracy against MeZO on the same task and seed (one row: against the shipped policy)")
    ax.set_title("The claims' comparisons on paired (task, seed) runs: green above 0, red below, grey spans 0",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    write_png_atomic(path, fig, bbox_inches="tight")
    return True
