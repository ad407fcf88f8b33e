"""Compare ZO optimizers at an equal forward-pass budget: tasks x optimizers x seeds -> table + plot.

    python bench/compare_optimizers.py                                   # the CPU-sized default
    python bench/compare_optimizers.py --budget 4000 --num-train 1000 --num-eval 1000 --peft full \\
        --tasks boolq,sst2 --out runs/compare-big                        # a bigger machine / a GPU

Each optimizer gets `--budget` forward passes (steps = budget // forwards per step: MeZO 2, GV and
Greedy M + 2, BSZO 1 + k), the same data sample (`--data-seed`) and the same seeds. Zero-shot is
evaluated once per task. Writes `<out>/runs.jsonl` (one fine_tune results dict per run),
`<out>/table.md` and `<out>/loss_vs_forwards.png` (mean train loss over seeds vs forward passes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def forwards_per_step(name: str, kwargs: dict) -> int:
    if name == "mezo":
        q = kwargs.get("num_directions", 1)
        return 1 + q if kwargs.get("one_sided") else 2 * q
    if name in ("mezo-gv", "mezo-greedy"):
        return kwargs.get("pool_size", 2) + 2
    if name == "bszo":
        return 1 + kwargs.get("k", 2)
    if name == "bszo-b":
        return 1 + (kwargs.get("m") or kwargs.get("k", 2) + 1)
    raise ValueError(f"no forward count known for {name!r}")


def _parse_map(text: str | None) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        out[name] = float(value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tasks", default="tweet_sentiment,implicatures")
    ap.add_argument("--optimizers", default="mezo,mezo-gv,mezo-greedy,bszo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=160, help="forward passes per run")
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--lr", default="mezo=1e-2,mezo-gv=1e-2,mezo-greedy=1e-2,bszo=1e-2",
                    help="per optimizer, name=value,...")
    ap.add_argument("--eps", default="mezo=1e-1,mezo-gv=1e-1,mezo-greedy=1e-1,bszo=1e-1")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-train", type=int, default=1000)
    ap.add_argument("--num-dev", type=int, default=0)
    ap.add_argument("--num-eval", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--docs", default=None, help="also copy the plot here (e.g. docs/compare_loss.png)")
    args = ap.parse_args(argv)

    from fine_tune.config import FineTuneConfig
    from fine_tune.run import run
    from l2o.optim import optimizer_defaults

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lrs, epss = _parse_map(args.lr), _parse_map(args.eps)
    seeds = [int(s) for s in args.seeds.split(",")]
    log_path = out / "runs.jsonl"
    done = {}
    if log_path.exists():  # rerunning continues where a previous invocation stopped
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["task"], r["config"]["optimizer"], r["config"]["seed"])] = r
    zero = {}
    t0 = time.perf_counter()
    # seeds outermost: an interrupted run still covers every task and optimizer (rerun to complete it)
    for seed in seeds:
        for task in args.tasks.split(","):
            for name in args.optimizers.split(","):
                kwargs = optimizer_defaults(name)
                steps = max(1, args.budget // forwards_per_step(name, kwargs))
                if (task, name, seed) in done:
                    continue
                cfg = FineTuneConfig(base=args.base, task=task, optimizer=name, lr=lrs.get(name), eps=epss.get(name),
                                     peft=args.peft, steps=steps, batch_size=args.batch_size, eval_every=0,
                                     seed=seed, data_seed=args.data_seed, num_train=args.num_train,
                                     num_dev=args.num_dev, num_eval=args.num_eval, max_length=args.max_length,
                                     out=str(out / f"{task}-{name}-s{seed}"), save_model=False,
                                     zero_shot=task not in zero and not any(k[0] == task for k in done))
                shutil.rmtree(cfg.out, ignore_errors=True)  # an unfinished run from an interrupted invocation
                print(f"[{time.perf_counter() - t0:6.0f} s] {task} {name} seed {seed}: {steps} steps", flush=True)
                res = run(cfg, log=lambda m: None)
                if res["zero_shot"]:
                    zero[task] = res["zero_shot"]
                with log_path.open("a") as f:
                    f.write(json.dumps(res) + "\n")
                done[(task, name, seed)] = res
    for r in done.values():
        if r["zero_shot"]:
            zero.setdefault(r["task"], r["zero_shot"])
    table = render_table(done, zero, args)
    (out / "table.md").write_text(table)
    print(table)
    plot(done, out / "loss_vs_forwards.png", args)
    if args.docs:
        Path(args.docs).write_bytes((out / "loss_vs_forwards.png").read_bytes())
    return 0


def _ms(values, fmt="{:.3f}"):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def render_table(done: dict, zero: dict, args) -> str:
    lines = [f"base {args.base}, peft {args.peft}, budget {args.budget} forward passes per run, batch {args.batch_size}, "
             f"{args.num_train} train / {args.num_eval} eval examples (data seed {args.data_seed}), max length "
             f"{args.max_length}, seeds {args.seeds}", "",
             "| task | optimizer | steps | zero-shot | final (mean ± std) | final train loss | forward passes | "
             "wall time s | peak memory GiB |", "|---|---|---|---|---|---|---|---|---|"]
    tasks = list(dict.fromkeys(k[0] for k in done))
    opts = list(dict.fromkeys(k[1] for k in done))
    for task in tasks:
        for name in opts:
            rs = [r for k, r in done.items() if k[0] == task and k[1] == name]
            if not rs:
                continue
            metric = rs[0]["metric"]
            z = zero.get(task, {}).get("eval")
            lines.append(
                f"| {task} | {name} | {rs[0]['steps']} | {z if z is None else f'{z:.3f}'} | "
                f"{_ms([r['final']['eval'] for r in rs])} ({metric}) | "
                f"{_ms([r['final_train_loss'] for r in rs if r['final_train_loss'] is not None])} | "
                f"{rs[0]['forward_passes']} | {_ms([r['wall_time_s'] for r in rs], '{:.0f}')} | "
                f"{_ms([r['peak_memory_bytes'] / 2**30 for r in rs], '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def plot(done: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(k[0] for k in done))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in dict.fromkeys(k[1] for k in done):
            curves = []
            for k, r in done.items():
                if k[0] == task and k[1] == name:
                    hist = json.loads(Path(r["paths"]["history"]).read_text())
                    curves.append([(h["forwards"], h["loss"]) for h in hist if h["loss"] == h["loss"]])
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [curves[0][i][0] for i in range(n)]
            mean = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
            w = max(1, n // 10)
            smooth = [statistics.mean(mean[max(0, i - w + 1):i + 1]) for i in range(n)]
            ax.plot(xs, smooth, label=name)
        ax.set_title(f"{task} ({args.base}, {args.peft})", fontsize=9)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("train loss (mean over seeds, moving mean)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
