"""How far a two-point pair's mean sits from L(theta): the O(eps^2) term in the logged train loss.

    OMP_NUM_THREADS=1 python bench/loss_bias.py --tasks sports_understanding,strategyqa,implicatures \\
        --peft prefix --eps 0.1 --batches 4 --directions 4

Every method logs an estimate of L(theta) (`l2o.optim.base.StepResult.loss`): BSZO its f0 = L(theta) itself,
the two-point methods the mean of their pair(s), [L(theta + eps d) + L(theta - eps d)] / 2
= L(theta) + eps^2/2 d'Hd + O(eps^4). The pair mean is therefore above f0 by about eps^2/2 E[d'Hd], the
same for MeZO, GV (M = 4) and Greedy (E||d||^2 = D for all three), and absent from BSZO's f0. This script
measures that gap on real batches at the base weights (and the first-order half-difference
|L+ - L-| / 2 for scale), so a comparison of train losses across BSZO and the rest can be read against it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(task_name: str, args) -> dict:
    import torch

    from fine_tune.config import FineTuneConfig
    from fine_tune.run import prepare
    from l2o.optim import build_optimizer
    from l2o.streams import Stream
    from l2o.tasks import get_task

    cfg = FineTuneConfig(base=args.base, task=task_name, peft=args.peft, batch_size=args.batch_size,
                         num_train=args.num_train, num_dev=0, num_eval=1, max_length=args.max_length,
                         zero_shot=False, out="/nonexistent", save_model=False)
    _, objective, splits, model, tokenizer, _, _ = prepare(cfg, get_task(task_name), Path("/nonexistent"),
                                                          log=lambda m: None, device="cpu")
    stream = Stream(splits.train, args.batch_size, 0, salt=0xDA7A)
    gaps, halves = [], []
    for b in range(args.batches):
        batch = stream.batch(b)
        closure = (lambda: objective.loss(model, tokenizer, batch))
        with torch.no_grad():
            f0 = float(closure())
        opt = build_optimizer("mezo", model, lr=0.0, eps=args.eps, num_directions=args.directions, seed=b)
        opt.step(closure)
        pairs = list(zip(opt.last.losses[0::2], opt.last.losses[1::2]))
        gaps += [(p + m) / 2 - f0 for p, m in pairs]
        halves += [abs(p - m) / 2 for p, m in pairs]
        print(f"{task_name} batch {b + 1}/{args.batches}: f0 {f0:.4f}, pair means "
              f"{', '.join(f'{(p + m) / 2:.4f}' for p, m in pairs)}", file=sys.stderr, flush=True)
    return {"task": task_name, "gap": gaps, "half": halves}


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.loss_bias", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tasks", default="sports_understanding,strategyqa,implicatures")
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--directions", type=int, default=4, help="pairs per batch")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-train", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=48)
    args = ap.parse_args(argv)
    print(f"base {args.base}, peft {args.peft}, eps {args.eps}; {args.batches} batches of {args.batch_size} x "
          f"{args.directions} Gaussian pairs each, at the base weights\n")
    print("| task | pair mean - f0 (mean ± sd) | |L+ - L-| / 2 (mean) | pairs |")
    print("|---|---|---|---|")
    for task in args.tasks.split(","):
        r = measure(task, args)
        print(f"| {task} | {statistics.mean(r['gap']):+.4f} ± {statistics.stdev(r['gap']):.4f} | "
              f"{statistics.mean(r['half']):.4f} | {len(r['gap'])} |", flush=True)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.loss_bias", main, resumable=False))
