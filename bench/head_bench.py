"""The output head on the read positions only: a MeZO loss evaluation's CPU time with and without it.

    python bench/head_bench.py                                  # SmolLM2-135M, valid_parentheses, prefix, fp32, bf16
    python bench/head_bench.py --task tweet_sentiment --peft full --reps 5

One process, one thread, repeats interleaved: CandidateCE's loss on one training batch (16 examples, max length
64) in a PEFT mode (prefix: the evidence suite's), the forward a ZO step makes twice, in each dtype along two paths:
- plain: `logits_to_keep` from the earliest read position, then a strided slice of the hidden states through the
  head (the code before l2o.tasks.objectives._logits_at; forced here through its `_HEAD_GATHER` switch);
- gathered: the head gets the read positions only, as one contiguous [M, d] matrix (the default).
Printed: median CPU-seconds per loss, the ratio plain / gathered, and the largest difference between the two
losses (they are the same sums over rows, computed in another order).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.head_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="valid_parentheses")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args(argv)

    import torch

    from l2o.models import load_base
    from l2o.peft_modes import apply_peft
    from l2o.tasks import objectives
    from l2o.tasks.sampling import sample_splits
    from l2o.wrappers import unwrap_peft
    from zoo.acquire import ensure_base, ensure_task

    torch.set_num_threads(1)
    ensure_base(args.base)
    ensure_task(args.task)
    batch = sample_splits(args.task, seed=0, num_train=args.batch_size, num_dev=0, num_eval=0).train
    objective = objectives.CandidateCE(max_length=args.max_length)
    print(f"{args.base}, {args.task}, {args.peft}, {len(batch)} examples, max length {args.max_length}, one thread, "
          f"{args.reps} interleaved repeats (median CPU-s per loss)", flush=True)
    print("| dtype | plain slice | gathered rows | plain / gathered | max loss difference |\n|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        model, tok, _ = load_base(args.base, dtype=dtype)
        model = apply_peft(model, args.peft, seed=0).eval()
        kind = type(unwrap_peft(model))
        times, losses = {"plain": [], "gathered": []}, {}
        with torch.no_grad():
            for rep in range(args.reps + 1):  # the first is a warm-up
                for path in ("plain", "gathered"):
                    objectives._HEAD_GATHER[kind] = path == "gathered"
                    c0 = time.process_time()
                    loss = objective.loss(model, tok, batch).item()
                    if rep:
                        times[path].append(time.process_time() - c0)
                    losses[path] = loss
        objectives._HEAD_GATHER.pop(kind, None)
        plain, gathered = (statistics.median(times[p]) for p in ("plain", "gathered"))
        print(f"| {dtype} | {plain:.2f} s | {gathered:.2f} s | {plain / gathered:.2f}x | "
              f"{abs(losses['plain'] - losses['gathered']):.1e} |", flush=True)
        del model
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.head_bench", main, resumable=False))
