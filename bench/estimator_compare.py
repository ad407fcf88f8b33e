"""Policies meta-trained by the look-ahead, ES and PES at equal meta-training forward passes, against MeZO.

    python bench/estimator_compare.py --out runs/estimators              # every stage; rerun to continue
    python bench/estimator_compare.py --out runs/estimators --stage table

Stages (each resumable; a finished piece is never redone):
1. **lr.** MeZO's lr, chosen on the held-out tasks' dev rows (bench/compare_optimizers.py's protocol: a grid
   around --lr, extended past an edge; the summed dev metric of the eval tasks picks one lr).
2. **meta.** One `meta_train` run per estimator on the training tasks, each stopped at --meta-budget forward
   passes (max_steps = budget // the estimator's forwards per meta-step); ES and PES unroll the deployed
   MeZO at the lr of stage 1; all use the true-size rule, so every policy takes MeZO's step (E||d||^2/D = 1)
   and only the allocation across blocks is learned.
3. **final.** MeZO and each policy (zo-finetuner at MeZO's lr: the same lr and the same step) on every
   held-out task, --seeds runs of --budget forward passes; for a seed, every method sees the same batches.
4. **table.** Each estimator's SNR per meta-step (from its results.json), final train loss, eval accuracy,
   and per-seed differences against MeZO (paired), mean +- sd;
   writes <out>/table.md and <out>/curves.png.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.records import located, read_records  # noqa: E402
from l2o.filelock import write_png_atomic  # noqa: E402

ESTIMATORS = ("lookahead", "es", "pes")


def parse_args(argv=None):
    from bench.cli import Parser

    ap = Parser("bench.estimator_compare", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/estimators")
    ap.add_argument("--stage", choices=["all", "lr", "meta", "final", "table"], default="all")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--train-tasks", default="sports_understanding,strategyqa,imdb,navigate")
    ap.add_argument("--tasks", default="tweet_sentiment,implicatures", help="held-out tasks (evaluation)")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--meta-budget", type=int, default=1200, help="meta-training forward passes per estimator")
    ap.add_argument("--budget", type=int, default=200, help="forward passes per held-out fine-tuning run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lr", type=float, default=1e-5, help="centre of MeZO's lr grid")
    ap.add_argument("--lr-grid", default="0.3,1,3")
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--num-train", type=int, default=200)
    ap.add_argument("--num-dev", type=int, default=50)
    ap.add_argument("--num-eval", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=2)
    ap.add_argument("--es-params", default="type")
    ap.add_argument("--episode", type=int, default=10, help="ES/PES: unrolls per inner run (reset_every)")
    return ap.parse_args(argv)


def compare_args(a, out: Path, optimizers: str, policy=None, grid=None):
    """The arguments bench/compare_optimizers.py's Runner reads, for full-parameter runs."""
    from bench.compare_optimizers import parse_args as cmp_args

    argv = ["--base", a.base, "--tasks", a.tasks, "--optimizers", optimizers, "--seeds", a.seeds, "--budget",
            str(a.budget), "--select-tasks", a.tasks, "--lr-grid", grid or a.lr_grid, "--peft", "full",
            "--lr", f"mezo={a.lr}", "--eps", f"mezo={a.eps}", "--batch-size", str(a.batch_size),
            "--num-train", str(a.num_train), "--num-dev", str(a.num_dev), "--num-eval", str(a.num_eval),
            "--max-length", str(a.max_length), "--out", str(out)]
    if policy:
        argv += ["--policy", str(policy)]
    return cmp_args(argv)


def mezo_lr(a) -> float:
    """Stage 1: MeZO's dev-chosen lr (pooled over the held-out tasks' dev rows)."""
    from bench.compare_optimizers import Runner, _pool_by_lr, choose_lr, select_runs

    args = compare_args(a, Path(a.out) / "lr", "mezo")
    if len(args.grid) == 1:
        return a.lr * args.grid[0]
    runner = Runner(args)
    runs = []
    for task in args.task_list:
        runs += select_runs(lambda lr, task=task: runner("select", task, "mezo", lr, 0, a.budget),
                            [a.lr * g for g in args.grid], args.extend)
    return choose_lr(_pool_by_lr(runs))


def forwards_per_meta_step(a, estimator: str) -> int:
    """Forward passes of one meta-step (ES: 2N unrolls + the trajectory's; PES: 2N; look-ahead: L+, L-, the
    meta-loss and the trajectory's step, which also take two backward passes)."""
    unroll = 2 * a.unroll + 1  # MeZO's two forwards per step, the held-out loss after the unroll
    return {"lookahead": 4, "es": (2 * a.pairs + 1) * unroll, "pes": 2 * a.pairs * unroll}[estimator]


def meta_train(a, estimator: str, lr: float) -> Path:
    """Stage 2: one meta_train run (resumed if interrupted); returns its policy folder."""
    out = Path(a.out) / f"meta-{estimator}"
    if (out / "results.json").exists():
        return out / "policy"
    steps = a.meta_budget // forwards_per_meta_step(a, estimator)
    cmd = [sys.executable, "-m", "meta_train", "--base", a.base, "--tasks", *a.train_tasks.split(","),
           *a.tasks.split(","), "--holdout", *a.tasks.split(","), "--estimator", estimator, "--max_steps",
           str(steps), "--out", str(out), "--save_every", "5", "--model.eps", str(a.eps), "--model.val_lr", str(lr),
           "--model.val_steps", "10", "--model.val_tasks", "1", "--model.log_every", "10",
           "--data.batch_size", str(a.batch_size), "--data.max_length", str(a.max_length),
           "--data.num_train", str(a.num_train), "--data.num_dev", "32", "--data.num_eval", "32"]
    if estimator == "lookahead":  # the shipped policy's settings (docs/meta_train.md), true sizes
        cmd += ["--model.lr_policy", "0.01", "--model.lr_llm", "1e-4", "--model.reset_every", "40"]
    else:
        cmd += ["--model.lr_policy", "0.05", "--model.pairs", str(a.pairs), "--model.unroll", str(a.unroll),
                "--model.es_params", a.es_params, "--model.es_std", "0.1", "--model.inner_lr", str(lr),
                "--model.reset_every", str(a.episode)]
    if (out / "checkpoints" / "last.ckpt").exists():
        cmd.append("--resume")
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out / "policy"


def finals(a, lr: float, policies: dict) -> None:
    """Stage 3: MeZO and every policy at MeZO's lr, every held-out task and seed."""
    from bench.compare_optimizers import Runner

    for name, policy in [("mezo", None)] + list(policies.items()):
        args = compare_args(a, Path(a.out) / f"final-{name}", "zo-finetuner" if policy else "mezo", policy)
        runner = Runner(args)
        for seed in args.seed_list:
            for task in args.task_list:
                runner("final", task, args.method_list[0], lr, seed, a.budget)


def _load(folder: Path) -> dict:
    runs = {}
    for r in read_records(folder / "runs.jsonl"):
        if r["phase"] == "final":
            runs[(r["task"], r["config"]["seed"])] = located(r, folder / "runs.jsonl")
    return runs


def _ms(values, signed: bool = False) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.3f} ± {sd:.3f} (n={len(values)})"


def table(a, lr: float, names: list[str]) -> str:
    """Stage 4: the markdown table (and curves.png)."""
    out = Path(a.out)
    runs = {n: _load(out / f"final-{n}") for n in ["mezo"] + names}
    meta = {n: json.loads((out / f"meta-{n}" / "results.json").read_text()) for n in names
            if (out / f"meta-{n}" / "results.json").exists()}
    lines = [f"MeZO's dev-chosen lr: {lr:.3g} (every run below uses it). Per held-out task, {a.budget} forward passes, "
             f"seeds {a.seeds}; Δ = method − MeZO on the same seed; reach ½ = (task, seed) pairs whose train loss "
             "(moving mean over 10% of the run) reaches MeZO's final train loss within half the forward passes; SNR = "
             "the ES/PES meta-gradient's signal-to-noise ratio per meta-step (meta/snr), mean ± sd over the run.", "",
             "| task | method | meta-training forwards | meta-step SNR | final train loss | eval accuracy | "
             "Δ final loss | Δ accuracy | reach ½ |", "|---|---|---|---|---|---|---|---|---|"]
    for task in a.tasks.split(","):
        base = runs["mezo"]
        for n in ["mezo"] + names:
            rs = {s: r for (t, s), r in runs[n].items() if t == task}
            loss = [r["final_train_loss"] for r in rs.values()]
            acc = [r["final"]["eval"] for r in rs.values()]
            dl = [rs[s]["final_train_loss"] - base[(task, s)]["final_train_loss"] for s in rs if (task, s) in base]
            da = [rs[s]["final"]["eval"] - base[(task, s)]["final"]["eval"] for s in rs if (task, s) in base]
            mf = meta[n]["meta_forwards"] if n in meta else "—"
            snr = [r["snr"] for r in meta.get(n, {}).get("history", []) if math.isfinite(r.get("snr", math.nan))]
            hits = [half_reach(rs[s], base[(task, s)], a.budget) for s in rs if (task, s) in base]
            lines.append(f"| {task} | {n} | {mf} | {_ms(snr) if snr else '—'} | {_ms(loss)} | {_ms(acc)} | "
                         f"{_ms(dl, True) if n != 'mezo' else '—'} | {_ms(da, True) if n != 'mezo' else '—'} | "
                         f"{sum(hits)}/{len(hits)} |")
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    _plot(a, runs, out / "curves.png")
    return text


def half_reach(run: dict, mezo: dict, budget: int) -> bool:
    """Whether `run` reaches MeZO's final train loss (same task and seed) within budget / 2 forward passes."""
    from bench.compare_policy import _reach

    hist = Path(run["paths"]["history"])
    if not hist.exists():
        return False
    at = _reach(json.loads(hist.read_text()), mezo["final_train_loss"])
    return at is not None and at <= budget / 2


def _plot(a, runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.compare_policy import mean_curve

    tasks = a.tasks.split(",")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for n, rs in runs.items():
            curves = []
            for (t, s), r in rs.items():
                hist = Path(r["paths"]["history"])
                if t == task and hist.exists():
                    curves.append([(h["forwards"], h["loss"]) for h in json.loads(hist.read_text())])
            if curves:
                x, y = mean_curve(curves)
                ax.plot(x, y, label=n)
        ax.set_title(f"{task}: train loss, mean over seeds (moving mean)")
        ax.set_xlabel("forward passes")
        ax.legend()
    fig.tight_layout()
    write_png_atomic(path, fig, dpi=100)


def main(argv=None) -> int:
    a = parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    lr = mezo_lr(a)
    print(f"MeZO's dev-chosen lr: {lr:.3g}", flush=True)
    if a.stage == "lr":
        return 0
    names = a.estimators.split(",")
    policies = {}
    if a.stage in ("all", "meta"):
        policies = {n: meta_train(a, n, lr) for n in names}
    if a.stage in ("all", "final"):
        policies = policies or {n: Path(a.out) / f"meta-{n}" / "policy" for n in names}
        finals(a, lr, policies)
    if a.stage in ("all", "table"):
        print(table(a, lr, names))
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.estimator_compare", main))
