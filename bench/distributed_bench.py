"""Steps per second of a ZO fine-tuning step on 1 vs 2 processes (1 thread each), interleaved in one session.

    python bench/distributed_bench.py                    # SmolLM2-135M, prefix and full, 3 timed steps each
    python bench/distributed_bench.py --steps 5 --modes prefix

Two gloo processes load the embedded SmolLM2-135M and a batch of 16 tweets (64 tokens) once. For each
case (PEFT mode x {MeZO-GV M=4 direction-parallel, MeZO data-parallel}) they time `--steps` steps
together (after one warm-up step), then rank 0 times the same steps alone while rank 1 waits: so the
1- and 2-process numbers of a case are taken minutes apart on the same machine load. On a shared
machine the CPU seconds per step (this process's; rank 0's for 2 processes) show how the work was
split even when the processes did not get a core each: `cpu_work_ratio` = 1-process CPU s / rank 0's.
The optimizer step is timed as `fine_tune` runs it (l2o.distributed through a TorchCollective);
Lightning's per-step bookkeeping is left out. Prints one JSON line per case.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

CASES = [("mezo-gv", dict(pool_size=4), "direction"), ("mezo", dict(), "data")]
LR = {"prefix": 1e-3, "full": 1e-6}


def _time_steps(opt, closure_of, steps: int) -> tuple[list[float], list[float]]:
    """Wall-clock and this process's CPU seconds of each step after a warm-up step."""
    wall, cpu = [], []
    for _ in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.step(closure_of())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall[1:], cpu[1:]


def _case(model, objective, tok, batch, coll, name, kw, parallel, steps, lr):
    from l2o.optim import build_optimizer

    opt = build_optimizer(name, model, lr=lr, eps=1e-3, seed=0, collective=coll, parallel=parallel, **kw)
    shard = batch[coll.rank::coll.world_size] if parallel == "data" and coll.world_size > 1 else batch

    def closure_of():
        if shard is batch:
            return lambda: objective.loss(model, tok, batch)
        return lambda: objective.weighted_loss(model, tok, shard)

    before = coll.bytes_sent
    wall, cpu = _time_steps(opt, closure_of, steps)
    return wall, cpu, (coll.bytes_sent - before) / (steps + 1)


def worker(rank: int, world: int, init_file: str, args) -> None:
    import torch
    import torch.distributed as dist

    from l2o.distributed import LocalCollective, TorchCollective
    from l2o.models import load_base
    from l2o.peft_modes import apply_peft
    from l2o.tasks import get_task, sample_splits
    from l2o.tasks.objectives import objective_for

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    coll, local = TorchCollective(), LocalCollective()
    task = get_task("tweet_sentiment")
    batch = sample_splits(task, seed=0, num_train=args.batch_size, num_dev=0, num_eval=1).train[:args.batch_size]
    objective = objective_for(task, max_length=64)
    base, tok, _ = load_base("smollm2-135m")
    for mode in args.modes:
        model = apply_peft(base, mode, seed=0)  # "full" makes every base weight trainable again
        for name, kw, parallel in CASES:
            two, two_cpu, wire = _case(model, objective, tok, batch, coll, name, kw, parallel, args.steps, LR[mode])
            dist.barrier()
            if rank == 0:
                one, one_cpu, _ = _case(model, objective, tok, batch, local, name, kw, parallel, args.steps, LR[mode])
            dist.barrier()
            if rank == 0:
                row = {"peft": mode, "optimizer": name, **kw, "parallel": parallel, "batch": args.batch_size,
                       "steps_timed": args.steps, "s_per_step_1proc": statistics.median(one),
                       "s_per_step_2proc": statistics.median(two), "bytes_sent_per_step_per_rank": wire,
                       "cpu_s_per_step_1proc": statistics.median(one_cpu),
                       "cpu_s_per_step_2proc_rank0": statistics.median(two_cpu)}
                row["speedup"] = row["s_per_step_1proc"] / row["s_per_step_2proc"]
                row["cpu_work_ratio"] = row["cpu_s_per_step_1proc"] / row["cpu_s_per_step_2proc_rank0"]
                print(json.dumps(row), flush=True)
    dist.destroy_process_group()


def main(argv=None) -> int:
    from bench.cli import Parser

    p = Parser("bench.distributed_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per case and process count")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=["prefix", "full"], choices=["prefix", "full", "lora"])
    args = p.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", L2O_NOISE_THREADS="1")
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=worker, args=(r, 2, os.path.join(tmp, "pg"), args)) for r in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    return max(proc.exitcode for proc in procs)


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.distributed_bench", main, resumable=False))
