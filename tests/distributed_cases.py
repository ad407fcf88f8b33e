"""The multi-process ZO runs of tests/test_distributed.py: one case table, run on 1 process (the
reference) or on each of N gloo processes (`worker`), on TwoBlock's 32-example regression problem.

Each step uses a global batch of 16 examples. A direction-parallel rank's closure evaluates the whole
batch; a data-parallel rank's closure evaluates rows[rank::N]. Both return (sum of squared errors,
examples), so the loss is the example-weighted mean.
"""

from __future__ import annotations

import os

import torch

from l2o.blocks import named_blocks
from l2o.distributed import LocalCollective, ReplicaDivergence
from l2o.optim import REGISTRY, build_optimizer
from tests.zo_fixtures import TwoBlock, snapshot

STEPS, BATCH, LR, EPS = 4, 16, 1e-2, 1e-3
UNIT_PRIOR = dict(sigma_prior=1.0, sigma_noise=1.0)  # BSZO's "auto" prior is sized for LLMs: tiny steps here

CASES = {
    "mezo-q2": ("mezo", dict(num_directions=2), "direction"),
    "mezo-one-sided-q3": ("mezo", dict(num_directions=3, one_sided=True), "direction"),
    "gv-m4": ("mezo-gv", dict(pool_size=4), "direction"),
    "greedy-m3": ("mezo-greedy", dict(pool_size=3), "direction"),
    "bszo-k2": ("bszo", dict(k=2, **UNIT_PRIOR), "direction"),
    "bszo-b-k2-m4": ("bszo-b", dict(k=2, m=4, **UNIT_PRIOR), "direction"),
    "policy+gv-m4": ("zo-finetuner+gv", dict(pool_size=4), "direction"),
    "mezo-data": ("mezo", dict(), "data"),
    "gv-m4-data": ("mezo-gv", dict(pool_size=4), "data"),
    "policy+bszo-data": ("zo-finetuner+bszo", dict(k=2, **UNIT_PRIOR), "data"),
}

# every registered method that splits over ranks gets a case at its defaults, the day it is registered
CASES.update({f"{name}-defaults": (name, {}, "direction") for name, cls in REGISTRY.items()
              if cls.distributed and not any(c[0] == name for c in CASES.values())})
GUARD_STEP = 3  # the "diverged" case nudges one weight of rank 1 after step 2; the guard runs every 3 steps


def rows_of_step(t: int) -> list[int]:
    return [(t * BATCH + i) % 32 for i in range(BATCH)]


def make(case: str, collective, check_every: int = 1):
    from l2o.policy import ZOPolicy

    name, kw, parallel = CASES[case]
    model = TwoBlock(seed=0)
    if name.startswith("zo-finetuner"):
        kw = dict(kw, policy=ZOPolicy([n for n, _ in named_blocks(model)], seed=3), policy_batch_size=BATCH)
    opt = build_optimizer(name, model, lr=LR, eps=EPS, seed=11, collective=collective, parallel=parallel,
                          check_every=check_every, **kw)
    return model, opt


def run_case(case: str, collective, nudge_at: int | None = None, check_every: int = 1) -> dict:
    """Run STEPS steps; returns final weights, each step's losses, projected grads and bytes sent."""
    model, opt = make(case, collective, check_every)
    parallel = CASES[case][2]
    out = {"losses": [], "grads": [], "bytes": [], "forwards": [], "error": None}
    for t in range(STEPS):
        rows = rows_of_step(t)
        if parallel == "data":
            rows = rows[collective.rank::collective.world_size]

        def closure(rows=rows):
            err = (model.net(model.x[rows]) - model.y[rows]) ** 2
            return err.sum(), len(rows)

        if nudge_at == t and collective.rank == 1:  # stands in for a nondeterministic kernel on one rank
            with torch.no_grad():
                w = model.net[0].weight
                w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(2.0))
        before = collective.bytes_sent
        try:
            opt.step(closure)
        except ReplicaDivergence as err:
            out["error"] = (opt.step_count, str(err))
            break
        out["bytes"].append(collective.bytes_sent - before)
        out["losses"].append(list(opt.last.losses))
        out["grads"].append(list(opt.last.projected_grads))
        out["forwards"].append(opt.last.forwards)
    out["weights"] = snapshot(model)
    out["batches"] = opt.evaluation_batches()
    return out


def reference(case: str) -> dict:
    return run_case(case, LocalCollective())


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: every case, then the divergence case; results to out_dir/rank<r>.pt."""
    import torch.distributed as dist

    from l2o.distributed import TorchCollective

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        coll = TorchCollective()
        results = {case: run_case(case, coll) for case in CASES}
        results["diverged"] = run_case("gv-m4", coll, nudge_at=GUARD_STEP - 1, check_every=GUARD_STEP)
        results["rank"], results["world"] = coll.rank, coll.world_size
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done with gloo before either tears it down (a teardown race aborted a rank once)
    finally:
        dist.destroy_process_group()
