"""Held-out comparison of a learned policy with MeZO at an equal forward-pass budget.

    python -m meta_train.compare --policy zoo/builtin/smollm2-135m/zo-finetuner/1 --task tweet_sentiment \\
        --seeds 0 1 2 --forwards 120 --out runs/compare

Each (method, seed) is one `fine_tune` run (same data, same lr/eps, steps = forwards / forwards-per-step);
`--matched-mezo` adds MeZO at lr x the policy run's effective step E||d||^2/D (the policy at a matched step);
`--aggregate` prints the table from the runs already in --out: final train loss (mean of the last 10% of
steps), eval accuracy, and the forward passes each method needed for its moving-average train loss to reach
MeZO's final loss (same seed; a value at the very start means the loss went up, not down).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

# the methods in table order
METHODS = ("mezo", "mezo-matched", "zo-finetuner", "mezo-gv", "zo-finetuner+gv", "mezo-greedy", "zo-finetuner+greedy", "bszo",
           "zo-finetuner+bszo", "bszo-b")


def _run_one(args, method: str, seed: int, lr: float | None = None) -> dict:
    """One fine_tune run; "mezo-matched" is MeZO at `lr` (the policy's effective step times --lr)."""
    from fine_tune.config import FineTuneConfig
    from fine_tune.run import run
    from l2o.optim import forwards_per_step

    optimizer = "mezo" if method == "mezo-matched" else method
    steps = args.forwards // forwards_per_step(optimizer)
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


def _reach(history: list[dict], target: float) -> int | None:
    """First forward count at which the trailing moving average (10% of the run) is <= target."""
    losses = [r["loss"] for r in history]
    w = max(1, len(losses) // 10)
    for i in range(len(losses)):
        window = losses[max(0, i - w + 1):i + 1]
        if i + 1 >= w and sum(window) / len(window) <= target:
            return history[i]["forwards"]
    return None


def aggregate(out: Path) -> str:
    runs = {}
    for d in sorted(out.glob("*-s*")):
        if (d / "results.json").exists():
            method, seed = d.name.rsplit("-s", 1)
            runs[(method, int(seed))] = (json.loads((d / "results.json").read_text()),
                                         json.loads((d / "history.json").read_text()))
    methods = [m for m in METHODS if any(k[0] == m for k in runs)]
    lines = ["| method | lr | forwards | effective step E‖d‖²/D | first-step train loss | mean train loss over the run | "
             "final train loss (mean ± sd) | eval accuracy (mean ± sd) | forwards to reach MeZO's final loss (per seed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        seeds = sorted(s for (mm, s) in runs if mm == m)
        loss = [runs[(m, s)][0]["final_train_loss"] for s in seeds]
        acc = [runs[(m, s)][0]["final"]["eval"] for s in seeds]
        first = [runs[(m, s)][1][0]["loss"] for s in seeds]
        whole = [statistics.mean(r["loss"] for r in runs[(m, s)][1]) for s in seeds]
        reach = []
        for s in seeds:
            if ("mezo", s) in runs:
                r = _reach(runs[(m, s)][1], runs[("mezo", s)][0]["final_train_loss"])
                reach.append("never" if r is None else str(r))
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        eff = [runs[(m, s)][0].get("effective_step") for s in seeds]
        eff_s = f"{statistics.mean(eff):.3g}" if None not in eff else "-"
        lines.append(f"| {m} | {runs[(m, seeds[0])][0]['config']['lr']:.3g} | {runs[(m, seeds[0])][0]['forward_passes']} | "
                     f"{eff_s} | {statistics.mean(first):.4f} | "
                     f"{statistics.mean(whole):.4f} | "
                     f"{statistics.mean(loss):.4f} ± "
                     f"{sd(loss):.4f} | {statistics.mean(acc):.3f} ± {sd(acc):.3f} | {', '.join(reach)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m meta_train.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", help="policy (zoo id or artefact folder) for the zo-finetuner methods")
    p.add_argument("--policy-size-rule", default="numel", choices=["numel", "authors"],
                   help="block sizes in the policy's normaliser (numel: E||d||^2/D = 1; authors: a bigger step)")
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
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--aggregate", action="store_true", help="only print the table of the runs in --out")
    p.add_argument("--matched-mezo", action="store_true", help="also run MeZO at lr x the zo-finetuner run's mean "
                   "effective step E||d||^2/D (same seed): the policy against MeZO at a matched step size")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.aggregate:
        for seed in args.seeds:
            for method in args.methods:
                if not (out / f"{method}-s{seed}" / "results.json").exists():
                    _run_one(args, method, seed)
            pol = out / f"zo-finetuner-s{seed}" / "results.json"
            if args.matched_mezo and pol.exists() and not (out / f"mezo-matched-s{seed}" / "results.json").exists():
                _run_one(args, "mezo-matched", seed, lr=args.lr * json.loads(pol.read_text())["effective_step"])
    print(aggregate(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
