"""Compare ZO optimizers fairly: lr chosen per method on dev, then seeds at equal forward budgets.

    python bench/compare_optimizers.py --budget 400 --out runs/compare            # the CPU-sized default
    python bench/compare_optimizers.py --budget 4000 --peft full --tasks boolq,sst2 --num-eval 1000 \\
        --lr mezo=1e-6,mezo-gv=1e-6,mezo-greedy=1e-6,bszo=1e-6 --eps mezo=1e-3,... --out runs/compare-big

Protocol, per task and method:
1. **lr selection.** One run (seed `--select-seed`, `--select-budget` forward passes) for each lr of the grid
   `--lr-grid` (multipliers of the method's `--lr`, by default its centre for `--peft` in bench/lr_centres.py:
   MeZO's setting scaled to the model, times the method's ratio to MeZO from its paper); the lr with the best
   final dev metric wins (ties: the lower final train loss). When the winner is at an edge of the grid, one
   more lr a grid step past that edge is tried (`--extend` times at most), so a chosen lr is interior or says
   where the grid ran out.
2. **Final runs.** `--seeds` runs at the chosen lr, each with `--budget` forward passes (steps = budget //
   forwards per step: MeZO 2, GV and Greedy M + 2, BSZO 1 + k), the same data sample (`--data-seed`) and,
   for a given seed, the same batches for every method. When `--select-seed` is one of `--seeds` and the
   budgets are equal, that seed's final run on a selection task is its selection run at the chosen lr (the
   same configuration; a run is deterministic given its seeds), not a rerun.
3. **Report.** Eval metric and final train loss (mean of the last 10% of steps) as mean ± sd over seeds, and
   the paired differences against MeZO (method - MeZO on the same seed) as mean ± sd; the mean effective
   step (the lr multiplier of the expected update: 1 for MeZO, E[(v.u)^2] for GV and Greedy, 2.10 and 1.55 at
   M = 4, tr of the Kalman gain for BSZO), the BSZO prior, and lr x effective step, the lr at which MeZO would
   take the method's first-order step: methods whose chosen lrs differ by that factor take the same step.

Writes `<out>/runs.jsonl` (one fine_tune results dict per run, phase and lr added; rerunning continues an
interrupted comparison), `<out>/table.md` and `<out>/loss_vs_forwards.png` (per task: train loss of the final
runs, mean over seeds, against forward passes; below it the eval metric per method and seed, and zero-shot).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import Parser, check_counts, lr_grid, numbers  # noqa: E402
from bench.records import append_record, located, read_records  # noqa: E402
from l2o.errors import UserError  # noqa: E402
from l2o.filelock import write_png_atomic  # noqa: E402


def _parse_map(text: str | None, flag: str) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"{flag} must be name=number,... (e.g. mezo=1e-2), got {item!r}") from None
    return out


def _sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _ms(values, fmt="{:.3f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(_sd(values))}"


def parse_args(argv=None):
    ap = Parser(prog="bench.compare_optimizers", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tasks", default="sports_understanding,strategyqa,implicatures")
    ap.add_argument("--optimizers", default="mezo,mezo-gv,mezo-greedy,bszo")
    ap.add_argument("--policy", default=None, help="zoo id or folder of the policy for zo-finetuner* methods")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=400, help="forward passes per final run")
    ap.add_argument("--select-budget", type=int, default=None, help="forward passes per lr-selection run "
                    "(default: --budget)")
    ap.add_argument("--select-seed", type=int, default=0)
    ap.add_argument("--select-tasks", default=None, help="tasks whose dev split picks each method's lr (default: "
                    "every task picks its own; one task: that lr serves every task)")
    ap.add_argument("--lr-grid", default="0.3,1,3", help="multipliers of each method's --lr tried on dev "
                    "(ascending, geometric)")
    ap.add_argument("--extend", type=int, default=1, help="while the best lr is at an edge of the grid, try one more "
                    "grid step past that edge, at most this many times")
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--lr", default="", help="per method, the centre of its lr grid: name=value,... (default: "
                    "bench/lr_centres.py's for the method and --peft)")
    ap.add_argument("--eps", default="mezo=1e-1,mezo-gv=1e-1,mezo-greedy=1e-1,bszo=1e-1")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-train", type=int, default=500)
    ap.add_argument("--num-dev", type=int, default=50)
    ap.add_argument("--num-eval", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--docs", default=None, help="also copy the plot here (e.g. docs/compare_loss.png)")
    args = ap.parse_args(argv)
    check_counts(args, "budget", "select_budget")  # a budget of -4 ran one step per run
    args.select_budget = args.select_budget or args.budget
    args.lrs, args.epss = _parse_map(args.lr, "--lr"), _parse_map(args.eps, "--eps")
    args.grid = lr_grid(args.lr_grid)
    args.seed_list = numbers(args.seeds, "--seeds", int)
    args.task_list, args.method_list = args.tasks.split(","), args.optimizers.split(",")
    args.select_list = args.select_tasks.split(",") if args.select_tasks else None
    return args


class Runner:
    """Runs (phase, task, method, lr, seed) once; a record in runs.jsonl is never rerun."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.done, self.t0 = self.out / "runs.jsonl", {}, time.perf_counter()
        for r in read_records(self.log_path):
            self.done[self.key(r["phase"], r["task"], r["config"]["optimizer"], r["lr"], r["config"]["seed"])] = \
                located(r, self.log_path)

    @staticmethod
    def key(phase, task, method, lr, seed):
        return (phase, task, method, f"{lr:.3g}", seed)

    def __call__(self, phase: str, task: str, method: str, lr: float, seed: int, budget: int) -> dict:
        from fine_tune.config import FineTuneConfig
        from fine_tune.run import run
        from l2o.optim import forwards_per_step

        k = self.key(phase, task, method, lr, seed)
        if k in self.done:
            return self.done[k]
        same = self.key("select", task, method, lr, seed)
        if phase == "final" and budget == self.args.select_budget and same in self.done:
            return self.done[same]  # the same configuration, run already: runs are deterministic given the seed
        a = self.args
        steps = max(1, budget // forwards_per_step(method))
        cfg = FineTuneConfig(base=a.base, task=task, optimizer=method, lr=lr, eps=a.epss.get(method.split("+")[-1],
                             a.epss.get("mezo")), policy=a.policy if method.startswith("zo-finetuner") else None,
                             peft=a.peft, steps=steps, batch_size=a.batch_size, eval_every=0, seed=seed,
                             data_seed=a.data_seed, num_train=a.num_train, num_dev=a.num_dev, num_eval=a.num_eval,
                             max_length=a.max_length, out=str(self.out / f"{phase}-{task}-{method}-lr{lr:.3g}-s{seed}"),
                             save_model=False, zero_shot=not any(r["task"] == task for r in self.done.values()))
        shutil.rmtree(cfg.out, ignore_errors=True)  # an unfinished run of an interrupted invocation
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {phase} {task} {method} lr {lr:.3g} seed {seed}: "
              f"{steps} steps", flush=True)
        res = run(cfg, log=lambda m: None)
        res.update(phase=phase, lr=lr)
        append_record(self.log_path, res)
        self.done[k] = res
        return res


def choose_lr(runs: list[dict]) -> float:
    """The lr whose selection run has the best dev metric; ties go to the lower final train loss."""
    best = max(runs, key=lambda r: (r["final"].get("dev", float("-inf")), -(r["final_train_loss"] or float("inf"))))
    return best["lr"]


def select_runs(run, grid: list[float], extend: int) -> list[dict]:
    """`run(lr)` for each lr of the ascending geometric `grid`; then, while the best (`choose_lr`) is at an edge
    of what was tried, one more lr a grid step past that edge, at most `extend` times (a grid of one lr: no step,
    that lr)."""
    runs = [run(lr) for lr in grid]
    if len(grid) < 2:
        return runs
    step = grid[1] / grid[0]
    for _ in range(extend):
        lrs, best = sorted(r["lr"] for r in runs), choose_lr(runs)
        if best not in (lrs[0], lrs[-1]):
            break
        runs.append(run(best / step if best == lrs[0] else best * step))
    return runs


def _pool_by_lr(runs: list[dict]) -> list[dict]:
    """One pseudo-run per lr: mean dev metric and mean final train loss over the selection tasks."""
    out = []
    for lr in dict.fromkeys(r["lr"] for r in runs):
        rs = [r for r in runs if r["lr"] == lr]
        out.append({"lr": lr, "final": {"dev": statistics.mean(r["final"].get("dev", float("nan")) for r in rs)},
                    "final_train_loss": statistics.mean(r["final_train_loss"] for r in rs)})
    return out


def main(argv=None) -> int:
    from bench.lr_centres import centre as lr_centre

    args = parse_args(argv)
    from bench.lr_centres import unrunnable

    for name in args.method_list:  # a misspelt name was a KeyError in bench/lr_centres.py
        problem = unrunnable(name, args.peft, lr_given=name in args.lrs)
        if problem:
            raise UserError(f"--optimizers {name}: {problem.replace('give lr=', f'give --lr {name}=')}")
    runner = Runner(args)
    chosen = {}
    for task in args.select_list or args.task_list:
        for method in args.method_list:
            centre = args.lrs[method] if method in args.lrs else lr_centre(method, args.peft)
            sel = [] if len(args.grid) == 1 else select_runs(
                lambda lr: runner("select", task, method, lr, args.select_seed, args.select_budget),
                [centre * g for g in args.grid], args.extend)
            chosen[(task, method)] = (choose_lr(sel) if sel else centre * args.grid[0], sel)
    if args.select_list:  # pick on the selection tasks' summed dev metric; the lr then serves every task
        for method in args.method_list:
            runs = [r for t in args.select_list for r in chosen[(t, method)][1]]
            lr = choose_lr(_pool_by_lr(runs)) if runs else chosen[(args.select_list[0], method)][0]
            for task in args.task_list:
                chosen[(task, method)] = (lr, [r for r in runs if r["task"] == task] or runs)
    # seeds outermost: an interrupted comparison still covers every task and method at its first seeds
    final = {}
    for seed in args.seed_list:
        for task in args.task_list:
            for method in args.method_list:
                final[(task, method, seed)] = runner("final", task, method, chosen[(task, method)][0], seed,
                                                     args.budget)
    zero = {r["task"]: r["zero_shot"] for r in runner.done.values() if r["zero_shot"]}
    table = render_table(final, chosen, zero, args)
    (runner.out / "table.md").write_text(table)
    print(table)
    plot(final, runner.out / "loss_vs_forwards.png", args, zero)
    if args.docs:
        Path(args.docs).write_bytes((runner.out / "loss_vs_forwards.png").read_bytes())
    return 0


def _paired(final, task, method, seeds, field) -> str:
    if method == "mezo":
        return "—"
    diffs = [field(final[(task, method, s)]) - field(final[(task, "mezo", s)]) for s in seeds
             if (task, "mezo", s) in final and (task, method, s) in final]
    return "-" if not diffs else f"{statistics.mean(diffs):+.3f} ± {_sd(diffs):.3f}"


def render_table(final: dict, chosen: dict, zero: dict, args) -> str:
    a = args
    where = f" of {', '.join(a.select_list)}" if a.select_list else " of each task"
    chosen_how = (f"lr grid {a.lr_grid} x the method's lr (extended past an edge at most {a.extend} time(s)), "
                  "chosen on "
                  f"{a.num_dev} dev examples{where} by one run of "
                  f"{a.select_budget} forward passes (seed {a.select_seed})" if len(a.grid) > 1
                  else f"lr not tuned ({a.lr_grid} x the method's lr)")
    if len(a.grid) > 1 and a.select_seed in a.seed_list and a.select_budget == a.budget:
        chosen_how += f"; on a selection task, the seed-{a.select_seed} final run is that selection run"
    lines = [f"base {a.base}, peft {a.peft}; {chosen_how}; final runs: {a.budget} forward "
             f"passes, seeds {a.seeds}; batch {a.batch_size}, max length {a.max_length}, {a.num_train} train / "
             f"{a.num_eval} eval examples (data seed {a.data_seed}). Δ = method − MeZO on the same seed (mean ± sd).",
             "", "| task | method | dev metric per lr | chosen lr | steps | eval metric | Δ eval vs MeZO | "
             "final train loss | Δ loss vs MeZO | effective step | lr × effective step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    eval_of = (lambda r: r["final"]["eval"])
    loss_of = (lambda r: r["final_train_loss"])
    for task in a.task_list:
        z = zero.get(task, {}).get("eval")
        lines.append(f"| {task} | zero-shot | | | | {'-' if z is None else f'{z:.3f}'} | | | | | |")
        for m in a.method_list:
            rs = [final[(task, m, s)] for s in a.seed_list if (task, m, s) in final]
            if not rs:
                continue
            lr, sel = chosen[(task, m)]
            per_lr = ", ".join(f"{r['lr']:.3g}: {r['final'].get('dev', float('nan')):.2f}"
                               for r in sorted(sel, key=lambda r: r["lr"])) or "not tuned"
            if a.select_list and task not in a.select_list:
                per_lr = f"chosen on {', '.join(a.select_list)}"
            eff = [r["effective_step"] for r in rs if r.get("effective_step") is not None]
            priors = [r.get("bszo_prior") for r in rs]
            prior = f" (prior per seed: {', '.join(map(str, priors))})" if any(priors) else ""
            lines.append(f"| {task} | {m} | {per_lr} | {lr:.3g} | {rs[0]['steps']} | {_ms([eval_of(r) for r in rs])} | "
                         f"{_paired(final, task, m, a.seed_list, eval_of)} | {_ms([loss_of(r) for r in rs])} | "
                         f"{_paired(final, task, m, a.seed_list, loss_of)} | "
                         f"{statistics.mean(eff) if eff else float('nan'):.3g}{prior} | "
                         f"{lr * statistics.mean(eff) if eff else float('nan'):.3g} |")
    return "\n".join(lines) + "\n"


def plot(final: dict, path: Path, args, zero: dict | None = None) -> None:
    """Per task: train loss against forward passes (mean over seeds, moving mean) above, and the eval metric
    per method below (mean ± sd over seeds, grey dots: seeds, dashed: zero-shot). A partial report leaves out the
    tasks with no final run yet (empty axes say nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.compare_policy import mean_curve

    tasks = [t for t in args.task_list if any(key[0] == t for key in final)] or args.task_list[:1]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, task in enumerate(tasks):
        ax, bx = axes[0][col], axes[1][col]
        names = []
        for i, m in enumerate(args.method_list):
            runs = [final[(task, m, s)] for s in args.seed_list if (task, m, s) in final]
            if not runs:
                continue
            curves = []
            for r in runs:
                hist = json.loads(Path(r["paths"]["history"]).read_text())
                curves.append([(h["forwards"], h["loss"]) for h in hist if h["loss"] == h["loss"]])
            fo = str(runs[0].get("config", {}).get("optimizer", "")).startswith("fo-")  # x: its forward+backward steps
            ax.plot(*mean_curve(curves), color=f"C{i}", label=f"{m} (lr {runs[0]['lr']:.3g}" +
                    ("; x = forward+backward steps)" if fo else ")"))
            evals = [r["final"]["eval"] for r in runs]
            bx.errorbar(len(names), statistics.mean(evals), yerr=_sd(evals), fmt="o", color=f"C{i}", capsize=5)
            bx.plot([len(names) + 0.12] * len(evals), evals, ".", color="0.4", ms=5)
            names.append(m)
        ax.set_title(f"{task} ({args.base}, {args.peft})", fontsize=9)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("train loss (mean over seeds, moving mean)")
        if names:  # a partial report may have no run of this task yet
            ax.legend(fontsize=8)
        z = (zero or {}).get(task, {}).get("eval")
        if z is not None:
            bx.axhline(z, color="k", ls="--", lw=1, label=f"zero-shot {z:.3f}")
            bx.legend(fontsize=8)
        bx.set_xticks(range(len(names)), names, fontsize=8, rotation=20, ha="right")
        bx.set_ylabel("eval metric (mean ± sd; grey: seeds)")
        bx.set_xlim(-0.5, max(1, len(names)) - 0.5)
    fig.tight_layout()
    write_png_atomic(path, fig)


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.compare_optimizers", main))
