"""Held-out comparison of a learned policy with MeZO at an equal forward-pass budget.

    python -m bench.compare_policy --policy zoo/builtin/smollm2-135m/zo-finetuner/1 --task tweet_sentiment \\
        --seeds 0 1 2 --forwards 120 --out runs/compare

Each (method, seed) is one `fine_tune` run (same data, same lr/eps, steps = forwards / forwards-per-step);
`--matched-mezo` adds, for every method whose effective step (the lr multiplier of its expected update: E||d||^2/D
for the policy, E[(v.u)^2] for GV and Greedy, tr of the Kalman gain for BSZO) is not 1, MeZO at lr x that run's
effective step ("mezo-matched" for zo-finetuner, "mezo-matched-<method>" for the others);
`--aggregate` prints the table from the runs already in one or more --out folders: final train loss (mean of
the last 10% of steps), eval accuracy, paired differences (same seed) against MeZO at equal lr and against the
MeZO run that takes the same step (MeZO itself at effective step 1, else the MeZO run whose lr is this run's lr x
its effective step, within 5%), and the
forward passes each method needed for its moving-average train loss to reach MeZO's final loss (same seed; a
value at the very start means the loss went up, not down). `--plot F` draws loss curves and accuracies.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from l2o.errors import UserError  # noqa: E402
from l2o.filelock import write_png_atomic  # noqa: E402

# the methods in table order
METHODS = ("mezo", "mezo-matched", "zo-finetuner", "mezo-gv", "zo-finetuner+gv", "mezo-greedy", "zo-finetuner+greedy",
           "bszo", "zo-finetuner+bszo", "bszo-b")


def _run_one(args, method: str, seed: int, lr: float | None = None) -> dict:
    """One fine_tune run; "mezo-matched*" is MeZO at `lr` (another run's effective step times --lr)."""
    from fine_tune.config import FineTuneConfig
    from fine_tune.run import run
    from l2o.optim import forwards_per_step

    optimizer = "mezo" if method.startswith("mezo-matched") else method
    per_step = forwards_per_step(optimizer)
    steps = args.forwards // per_step
    if steps < 1:  # was refused as "--steps must be a positive integer, got 0", a flag this command does not have
        raise UserError(f"--forwards {args.forwards} is less than one step of {optimizer} ({per_step:g} forward "
                        "passes)")
    cfg = FineTuneConfig(base=args.base, task=args.task, optimizer=optimizer,
                         policy=args.policy if "zo-finetuner" in method else None,
                         policy_size_rule=args.policy_size_rule, lr=lr or args.lr, eps=args.eps, steps=steps,
                         batch_size=args.batch_size, seed=seed,
                         data_seed=seed, num_train=args.num_train, num_dev=0, num_eval=args.num_eval,
                         max_length=args.max_length, eval_batch_size=16, out=str(Path(args.out) / f"{method}-s{seed}"),
                         save_model=False, zero_shot=False, save_every=steps)
    res = run(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    shutil.rmtree(Path(cfg.out) / "checkpoints", ignore_errors=True)  # full-parameter checkpoints: model-sized
    return res


def _sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Several runs' (forwards, loss) points -> the mean over runs, as a trailing moving mean over 10% of the
    run (over the shortest run's length)."""
    n = min(len(c) for c in curves)
    mean = [statistics.mean(c[j][1] for c in curves) for j in range(n)]
    w = max(1, n // 10)
    return [curves[0][j][0] for j in range(n)], [statistics.mean(mean[max(0, j - w + 1):j + 1]) for j in range(n)]


def _reach(history: list[dict], target: float) -> int | None:
    """First forward count at which the trailing moving average (10% of the run) is <= target."""
    losses = [r["loss"] for r in history]
    w = max(1, len(losses) // 10)
    for i in range(len(losses)):
        window = losses[max(0, i - w + 1):i + 1]
        if i + 1 >= w and sum(window) / len(window) <= target:
            return history[i]["forwards"]
    return None


def _is_mezo(label: str) -> bool:
    return label == "mezo" or label.startswith("mezo-matched")


def _label(method: str, results: dict) -> str:
    """zo-finetuner runs are labelled with their size rule: "zo-finetuner (authors)" takes a bigger step."""
    rule = results.get("policy_size_rule") or results["config"].get("policy_size_rule")
    return f"{method} ({rule})" if "zo-finetuner" in method and rule and not _is_mezo(method) else method


def collect(outs) -> dict:
    """(label, seed) -> (results, history) of every finished run in one folder or several (the first wins)."""
    runs = {}
    for out in ([outs] if isinstance(outs, (str, Path)) else outs):
        for d in sorted(Path(out).glob("*-s*")):
            if (d / "results.json").exists():
                method, seed = d.name.rsplit("-s", 1)
                res = json.loads((d / "results.json").read_text())
                runs.setdefault((_label(method, res), int(seed)), (res, json.loads((d / "history.json").read_text())))
    return runs


def _labels(runs: dict) -> list[str]:
    """The run labels in table order (METHODS, then by name)."""
    def order(label: str) -> tuple:
        base = "mezo-matched" if label.startswith("mezo-matched") else label.split(" (")[0]
        return (METHODS.index(base) if base in METHODS else len(METHODS), label)

    return sorted({k[0] for k in runs}, key=order)


def matched_name(method: str) -> str:
    """The folder label of the MeZO run at `method`'s step."""
    return "mezo-matched" if method == "zo-finetuner" else f"mezo-matched-{method}"


def _step_matched(runs: dict, label: str, seed: int) -> str | None:
    """The MeZO run of this seed that takes this run's step: the one whose lr / this run's lr is this run's effective
    step within 5% (MeZO itself at effective step 1)."""
    if _is_mezo(label):
        return None
    res = runs[(label, seed)][0]
    eff = res.get("effective_step") or 1.0
    for ref in sorted({m for (m, s) in runs if s == seed and _is_mezo(m)}):
        ratio = runs[(ref, seed)][0]["config"]["lr"] / res["config"]["lr"]
        if abs(ratio / eff - 1.0) < 0.05:
            return ref
    return None


def _paired(runs: dict, label: str, ref_of, field) -> str:
    diffs = []
    for (m, s) in runs:
        ref = ref_of(m, s)
        if m == label and ref and (ref, s) in runs:
            diffs.append(field(runs[(m, s)]) - field(runs[(ref, s)]))
    if not diffs:
        return "—"
    return f"{statistics.mean(diffs):+.3f} ± {_sd(diffs):.3f} (n={len(diffs)})"


def aggregate(outs) -> str:
    """The table of the runs in one or more --out folders (e.g. one per size rule)."""
    runs = collect(outs)
    loss = (lambda r: r[0]["final_train_loss"])
    acc = (lambda r: r[0]["final"]["eval"])
    equal_lr = (lambda m, s: None if _is_mezo(m) else "mezo")
    lines = ["| method | lr | forwards | effective step E‖d‖²/D | mean train loss over the run | "
             "final train loss (mean ± sd) | eval accuracy (mean ± sd) | Δ final loss vs MeZO, equal lr | "
             "Δ accuracy vs MeZO, equal lr | Δ final loss vs MeZO at the same step | Δ accuracy vs MeZO at the same "
             "step | forwards to reach MeZO's final loss (per seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in _labels(runs):
        seeds = sorted(s for (mm, s) in runs if mm == m)
        rs = [runs[(m, s)] for s in seeds]
        whole = [statistics.mean(h["loss"] for h in r[1]) for r in rs]
        reach = []
        for s in seeds:
            if ("mezo", s) in runs:
                r = _reach(runs[(m, s)][1], runs[("mezo", s)][0]["final_train_loss"])
                reach.append("never" if r is None else str(r))
        eff = [r[0].get("effective_step") for r in rs]
        eff_s = f"{statistics.mean(eff):.3g}" if None not in eff else "-"
        lr = ", ".join(dict.fromkeys(f"{r[0]['config']['lr']:.3g}" for r in rs))
        lines.append(f"| {m} | {lr} | {rs[0][0]['forward_passes']} | {eff_s} | {statistics.mean(whole):.4f} | "
                     f"{statistics.mean(map(loss, rs)):.4f} ± {_sd([loss(r) for r in rs]):.4f} | "
                     f"{statistics.mean(map(acc, rs)):.3f} ± {_sd([acc(r) for r in rs]):.3f} | "
                     f"{_paired(runs, m, equal_lr, loss)} | {_paired(runs, m, equal_lr, acc)} | "
                     f"{_paired(runs, m, lambda mm, s: _step_matched(runs, mm, s), loss)} | "
                     f"{_paired(runs, m, lambda mm, s: _step_matched(runs, mm, s), acc)} | {', '.join(reach)} |")
    return "\n".join(lines)


def plot(outs, path: Path, title: str = "") -> None:
    """Train loss against forward passes (moving mean over 10% of the run, mean over seeds) and eval
    accuracy per method (mean ± sd; grey dots: seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = collect(outs)
    labels = _labels(runs)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for i, m in enumerate(labels):
        hists = [runs[k][1] for k in sorted(runs) if k[0] == m]
        ax.plot(*mean_curve([[(h["forwards"], h["loss"]) for h in hist] for hist in hists]),
                label=f"{m} ({len(hists)} seeds)")
        accs = [runs[k][0]["final"]["eval"] for k in sorted(runs) if k[0] == m]
        bx.errorbar(i, statistics.mean(accs), yerr=_sd(accs), fmt="o", color=f"C{i}", capsize=5)
        bx.plot([i + 0.12] * len(accs), accs, ".", color="0.4", ms=5)
    ax.set_xlabel("forward passes")
    ax.set_ylabel("train loss (moving mean, mean over seeds)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    bx.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("eval accuracy (mean ± sd; grey: seeds)")
    bx.set_xlim(-0.5, len(labels) - 0.5)
    fig.tight_layout()
    write_png_atomic(path, fig)


def main(argv=None) -> int:
    from bench.cli import Parser

    p = Parser(prog="bench.compare_policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", help="policy (zoo id or artefact folder) for the zo-finetuner methods")
    p.add_argument("--policy-size-rule", default=None, choices=["numel", "authors"],
                   help="block sizes in the policy's normaliser (numel: E||d||^2/D = 1; authors: a bigger step); "
                   "default: the rule the policy was meta-trained under")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--task", default="tweet_sentiment")
    p.add_argument("--methods", nargs="+", default=["mezo", "zo-finetuner", "zo-finetuner+gv"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--forwards", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-eval", type=int, default=100)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", default="runs/compare", nargs="+", help="run folder; with --aggregate, one or more "
                   "(e.g. one per --policy-size-rule: their zo-finetuner rows are labelled by rule)")
    p.add_argument("--aggregate", action="store_true", help="only print the table of the runs in --out")
    p.add_argument("--plot", default=None, help="also draw train loss and eval accuracy per method here (PNG)")
    p.add_argument("--matched-mezo", action="store_true", help="also run MeZO at lr x each method's mean effective "
                   "step (same seed) where that is not 1: each method against MeZO at a matched step size")
    args = p.parse_args(argv)
    outs = [args.out] if isinstance(args.out, str) else args.out
    if len(outs) > 1 and not args.aggregate:
        p.error("several --out folders only with --aggregate")
    out = args.out = Path(outs[0])
    missing = [o for o in outs if not Path(o).is_dir()]
    if args.aggregate and missing:  # an empty table, exit 0
        raise UserError(f"--aggregate: no run folder {missing[0]} (give the --out of a comparison)")
    if not args.aggregate:
        for seed in args.seeds:
            for method in args.methods:
                if not (out / f"{method}-s{seed}" / "results.json").exists():
                    _run_one(args, method, seed)
            for method in args.methods if args.matched_mezo else ():
                eff = json.loads((out / f"{method}-s{seed}" / "results.json").read_text()).get("effective_step")
                name = matched_name(method)
                if eff and abs(eff - 1.0) >= 0.05 and not (out / f"{name}-s{seed}" / "results.json").exists():
                    _run_one(args, name, seed, lr=args.lr * eff)
    print(aggregate(outs))
    if args.plot:
        plot(outs, Path(args.plot), f"{args.task}, {args.base}")
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.compare_policy", main, resumable=False))
