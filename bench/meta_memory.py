"""Peak memory and time of ZO Fine-tuner meta-training against an inference process on the same batch.

    python bench/meta_memory.py --repo . --out runs/meta-memory            # one meta-training run + one inference
    python bench/meta_memory.py --repo /path/to/old/checkout --label before # the same for another checkout
    python bench/meta_memory.py --estimator es                             # forward-only ES (pairs 2, unroll 2)
    python bench/meta_memory.py --estimator es --tasks boolq,imdb,tweet_sentiment   # tasks here without BIG-bench

Each measurement is its own process (peak RSS from the kernel: `resource.getrusage(RUSAGE_CHILDREN)`), so
the numbers are the process peaks. The meta-training run is SmolLM2-135M fp32 at batch 4 x 48 tokens,
`--steps` meta-steps and one meta-validation at the end (1 held-out task, 2 ZO steps per method); the
inference process loads the same base and evaluates the loss of one batch of the same shape without
gradient (importing only l2o, no Lightning). Seconds per meta-step come from the run's own per-step
timer (results.json history, or the checkpoint's for older checkouts).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

INFERENCE = """{libraries}
import torch
from l2o.models import load_base
from l2o.tasks import TaskFamily, sample_splits
from l2o.tasks.objectives import objective_for
model, tok, info = load_base({base!r})
task = TaskFamily(names=[{task!r}], seed=0, holdout=0.0).train_tasks[0]
batch = sample_splits(task, seed=0, num_train=16, num_dev=0, num_eval=4).train[:4]
with torch.no_grad():
    print(float(objective_for(task, None, max_length=48).loss(model, tok, batch)))
"""


def _child(cmd: list[str], repo: str) -> tuple[float, float]:
    """Run cmd from `repo`; return (peak RSS of the child in GB, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1", "L2O_NOISE_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2, wall


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.meta_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=".", help="checkout whose code is measured")
    ap.add_argument("--label", default="after")
    ap.add_argument("--what", choices=["meta", "inference", "inference-libraries"], default="meta",
                    help="inference-libraries: the inference process after importing what meta_train imports "
                         "(Lightning, which imports torch._dynamo), the floor any meta_train process pays")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--estimator", choices=["lookahead", "es", "pes"], default="lookahead")
    ap.add_argument("--tasks", default="sports_understanding,strategyqa,winowhy",
                    help="the meta-training tasks, then the held-out one (comma-separated); the inference process "
                         "evaluates a batch of the first. Choose tasks whose answers are one token each, as these "
                         "are: a task with long answers (piqa) adds its answers' logits to the meta-training peak "
                         "only")
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    if len(tasks) < 2:
        ap.error(f"--tasks {args.tasks}: name at least one meta-training task and then the held-out one")
    repo = os.path.abspath(args.repo)
    if args.what != "meta":
        libraries = "import lightning, meta_train.module" if args.what == "inference-libraries" else ""
        code = INFERENCE.format(base=args.base, libraries=libraries, task=tasks[0])
        rss, wall = _child([sys.executable, "-c", code], repo)
        print(json.dumps({"label": args.label, "what": args.what, "peak_rss_gb": round(rss, 3)}))
        return 0
    with tempfile.TemporaryDirectory(prefix="meta-memory-") as out:  # the run folder goes with the measurement
        cmd = [sys.executable, "-m", "meta_train", "--base", args.base, "--tasks", *tasks, "--holdout", tasks[-1],
               "--max_steps", str(args.steps), "--out", out,
               "--model.reset_every", "0", "--model.val_steps", "2", "--model.val_tasks", "1", "--model.log_every", "0",
               "--model.lr_llm", "1e-4", "--data.batch_size", "4", "--data.num_train", "16", "--data.num_eval", "4",
               "--data.max_length", "48"]
        if args.estimator != "lookahead":  # --estimator is a flag of checkouts that have the estimators
            cmd += ["--estimator", args.estimator, "--model.pairs", "2", "--model.unroll", "2", "--data.num_dev", "8"]
            cmd[cmd.index("--model.reset_every") + 1] = "2"  # ES/PES: episodes of 2 unrolls (PES needs >= 1)
        rss, wall = _child(cmd, repo)
        hist = json.load(open(os.path.join(out, "results.json"))).get("history") or []
        times = [r["step_time_s"] for r in hist if "step_time_s" in r]
        if not times:  # older checkouts keep the history in the checkpoint only
            import torch

            ckpt = torch.load(os.path.join(out, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
            times = [r["step_time_s"] for r in ckpt["l2o"]["history"]]
    print(json.dumps({"label": args.label, "what": "meta", "estimator": args.estimator, "peak_rss_gb": round(rss, 3),
                      "wall_s": round(wall, 1), "step_s": [round(t, 2) for t in times]}))
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.meta_memory", main, resumable=False))
