"""Peak memory of first-order fine-tuning (backprop) against MeZO and plain inference, on the same batch.

    python bench/fo_memory.py                                  # SmolLM2-135M, batch 16 x 64 tokens, full and prefix
    python bench/fo_memory.py --peft full --methods mezo,fo-adamw --steps 2 --out runs/fo-memory.json
    python bench/fo_memory.py --peft lora --methods mezo,bilevel-zofo,fo-adamw      # Bilevel-ZOFO's adapter memory

Each measurement is its own process, so its peak RSS (`resource.getrusage(RUSAGE_CHILDREN)` after it exits,
the kernel's high-water mark) is that method's alone: `fine_tune` with `--steps` steps, no dev split, 16 eval
examples, no zero-shot pass, on winowhy (median prompt 54 tokens: most batches of 16 hold one that reaches the
64-token cap, so the batch shape is 16 x 64). The inference process
loads the same base and evaluates the loss of one training batch without gradient. Prints one JSON line per
process and writes `--out`, by default `docs/data/fo_memory_<peft modes>.json` (committed: docs/evidence.md section 6
is rendered from `docs/data/fo_memory_full_prefix.json`), with the settings, the command line, the commit and the
date beside the rows; the ratio column divides by MeZO's peak of the same PEFT mode. `bilevel-zofo`
runs with `--t-low 1`, so that each of its steps takes both levels: the lower Adam step (a backward through the
backbone into the adapter) and the upper one (the p-gradient backward and the ZO step on the backbone); its
batch is `--batch-size` examples per split, as its stream draws them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "docs" / "data"

INFERENCE = """
import torch
from l2o.models import load_base
from l2o.tasks import get_task, sample_splits
from l2o.tasks.objectives import objective_for
model, tok, info = load_base({base!r})
task = get_task({task!r})
batch = sample_splits(task, seed=0, num_train={batch}, num_dev=0, num_eval=0).train
with torch.no_grad():
    print(float(objective_for(task, None, max_length={max_length}).loss(model, tok, batch)))
"""


def _peak_gb(cmd: list[str]) -> float:
    """Run `cmd` in its own process (one thread); its peak RSS in GiB (ru_maxrss is in KiB; the rows' key says
    "gb"). Children are measured one at a time, and RUSAGE_CHILDREN holds the largest peak among waited-for
    children, so the caller runs one per invocation."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2


def measure(what: str, args) -> dict:
    """One measurement, run as `python bench/fo_memory.py --one <what>` so that each has a fresh RUSAGE_CHILDREN."""
    if what == "inference":
        cmd = [sys.executable, "-c", INFERENCE.format(base=args.base, task=args.task, batch=args.batch_size,
                                                      max_length=args.max_length)]
        return {"what": "inference", "peft": None, "peak_rss_gb": round(_peak_gb(cmd), 3)}
    method, peft = what.split(":")
    cmd = [sys.executable, "-m", "fine_tune", "--base", args.base, "--task", args.task, "--optimizer", method,
           "--peft", peft, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
           str(args.max_length), "--num-train", "64", "--num-dev", "0", "--num-eval", "16", "--zero-shot", "false",
           "--save-model", "false"]
    if method == "mezo":
        cmd += ["--lr", "1e-6", "--eps", "1e-3"]
    if method == "bilevel-zofo":
        cmd += ["--t-low", "1"]  # every step both levels, so the peak includes the upper step's
    with tempfile.TemporaryDirectory(prefix="fo-memory-") as out:  # the run folder goes with the measurement
        return {"what": method, "peft": peft, "peak_rss_gb": round(_peak_gb([*cmd, "--out", out]), 3)}


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.fo_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="winowhy")
    ap.add_argument("--methods", default="mezo,fo-sgd,fo-adamw")
    ap.add_argument("--peft", default="full,prefix")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="the JSON file (default docs/data/fo_memory_<peft modes>.json)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    from l2o.tasks import get_task

    get_task(args.task)  # an unknown name is one line here, not a child's traceback
    rows = []
    for what in ["inference"] + [f"{m}:{p}" for p in args.peft.split(",") for m in args.methods.split(",")]:
        proc = subprocess.run([sys.executable, __file__, "--one", what, *(argv or sys.argv[1:])], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        ref = next((x for x in rows if x["what"] == "mezo" and x["peft"] == r["peft"]), None)
        r["vs_mezo"] = round(r["peak_rss_gb"] / ref["peak_rss_gb"], 3) if ref else None
    from bench.learnability import git_commit

    out = Path(args.out) if args.out else default_out(args.peft)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "out")}
    env = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ else []
    nice = ["nice", "-n", str(os.nice(0))] if os.nice(0) else []  # as run (the children always get one thread)
    command = " ".join([*env, *nice, "python bench/fo_memory.py", *(argv if argv is not None else sys.argv[1:])])
    out.write_text(json.dumps({"settings": settings, "command": command, "commit": git_commit(),
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1)
                   + "\n")
    print(f"fo_memory: wrote {out}", flush=True)
    return 0


def default_out(peft: str) -> Path:
    """Where a run without --out writes: one committed file per set of PEFT modes, so that the LoRA measurement does
    not overwrite the full/prefix one that docs/evidence.md renders."""
    return DATA / f"fo_memory_{peft.replace(',', '_')}.json"


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.fo_memory", main, resumable=False))
