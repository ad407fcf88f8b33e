"""Multi-device meta-training through Lightning's DDP, on 2 CPU processes (gloo), launched by torchrun:
each rank meta-trains on its own task with its own LLM trajectory; DDP all-reduces the policy's gradients."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2o.noise import derive_seed
from l2o.policy import ZOPolicy
from tests.helpers import check_a_lost_rank, check_every_rank_stopped, launched_ranks, tiny_model
from tests.test_meta_resume import _main
from zoo.learned import load_policy

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR_POLICY, LR_LLM = 3, 0.05, 0.05


def _args(base, out, steps=STEPS):
    return ["--base", base, "--tasks", "imdb", "siqa", "piqa", "--holdout", "piqa",
            "--out", str(out), "--max_steps", str(steps), "--model.eta_meta", "1e-2", "--model.lr_llm", str(LR_LLM),
            "--model.lr_policy", str(LR_POLICY), "--model.reset_every", "0", "--model.val_steps", "1",
            "--model.val_tasks", "1", "--model.log_every", "0", "--data.batch_size", "2", "--data.num_train", "8",
            "--data.num_eval", "2", "--data.max_length", "32", "--trainer.accelerator", "cpu"]


def _one_process_average(base, world=2):
    """The same 2 ranks' tasks, seeds and trajectories in one process; the policy steps on the mean gradient."""
    from l2o.models import load_base
    from meta_train.data import TaskFamilyData
    from l2o.estimators.lookahead import Lookahead, TaskState
    from l2o.weights import Trajectory

    dm = TaskFamilyData(tasks=["imdb", "siqa", "piqa"], holdout=["piqa"], batch_size=2,
                        num_train=8, num_eval=2, max_length=32)
    dm.setup()
    ranks = []
    for _ in range(world):
        model, tok, info = load_base(base)
        for p in model.parameters():
            p.requires_grad_(True)
        ranks.append((model, tok))
    policy = ZOPolicy.for_model(ranks[0][0], base_model=base, seed=0)
    adam = torch.optim.Adam(policy.parameters(), lr=LR_POLICY)
    las = [Lookahead(m, policy, batch_size=2, eta_meta=1e-2) for m, _ in ranks]
    trajs = [Trajectory(la.engine, LR_LLM, 0.8) for la in las]
    states = [{} for _ in range(world)]
    for step in range(STEPS):
        adam.zero_grad()
        for r, ((model, tok), la, traj) in enumerate(zip(ranks, las, trajs)):
            task = dm.task_for_step(step * world + r)
            batch = dm.batch(task, step * world + r)
            fn = (lambda obj, tok: lambda m, b: obj.loss(m, tok, b))(dm.objectives[task], tok)
            res = la.step(fn, batch, seed=derive_seed(0, step, r), state=states[r].get(task, TaskState()))
            states[r][task] = res.state
            traj.lr = LR_LLM * (1.0 - step / STEPS)
            traj.step(fn, model, batch)
        for p in policy.parameters():
            p.grad /= world
        adam.step()
    return policy


def test_ddp_two_ranks_equal_one_process_averaging_their_meta_gradients(tiny_base, tmp_path):
    base = tiny_base
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "meta_train",
           *_args(base, out), "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("meta-trained a zo-finetuner policy") == 1  # rank 0 writes the outputs
    ddp = load_policy(str(out / "policy"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the same float reductions
    try:
        ref = _one_process_average(base)
    finally:
        torch.set_num_threads(threads)
    start = ZOPolicy.for_model(tiny_model("opt"), seed=0).tensors()
    assert max(float((ddp.tensors()[k] - start[k]).abs().max()) for k in start) > 1e-3  # it trained
    for k, v in ddp.tensors().items():
        torch.testing.assert_close(v, ref.tensors()[k], rtol=1e-5, atol=1e-7)


def test_es_pairs_split_over_two_ranks_give_one_process_meta_gradient(tiny_base, tmp_path):
    """--estimator es on 2 gloo ranks deals the 3 antithetic pairs round-robin (2 + 1) and exchanges only
    their meta-losses; the trajectory's ZO steps split their two evaluations over the ranks. The published
    policy is bit-identical to the same run in one process, and so is every step's meta-loss."""
    import json

    base = tiny_base
    es = ["--estimator", "es", "--model.pairs", "3", "--model.unroll", "2", "--model.inner_lr", "1e-2",
          "--model.reset_every", "2", "--data.num_dev", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "meta_train",
           *_args(base, tmp_path / "ddp"), *es, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _main([*_args(base, tmp_path / "one"), *es]) == 0  # on 1 thread, as the ranks: the same float sums
    two, one = load_policy(str(tmp_path / "ddp" / "policy")), load_policy(str(tmp_path / "one" / "policy"))
    start = ZOPolicy.for_model(tiny_model("opt"), seed=0).tensors()
    assert max(float((one.tensors()[k] - start[k]).abs().max()) for k in start) > 1e-4  # it trained
    assert all(torch.equal(two.tensors()[k], one.tensors()[k]) for k in start)
    rows = [json.loads((tmp_path / d / "results.json").read_text())["history"] for d in ("ddp", "one")]
    assert ([(r["meta_loss"], r["meta_forwards"]) for r in rows[0]]
            == [(r["meta_loss"], r["meta_forwards"]) for r in rows[1]])


@pytest.mark.parametrize("estimator,killed", [("es", 1), ("es", 0), ("lookahead", 1), ("lookahead", 0)])
def test_a_lost_rank_leaves_one_line_exit_1_and_a_resumable_or_clean_out(tiny_base, tmp_path, estimator, killed):
    """Killing either process of a 2-process run: ES (its pairs split over the ranks, losses exchanged) or the
    default look-ahead (DDP all-reduces the policy's gradients). The survivor says which rank was lost, after
    which step, and what --resume continues from, in one line, exit 1, no hang. Rank 1 lost after step 3: the
    step-2 checkpoint is resumable (on one process). Rank 0 (the folder's holder) lost after step 1, before any
    checkpoint: the survivor removes what the run created."""
    out = tmp_path / "new" / "run"
    step = 3 if killed == 1 else 1
    es = (["--estimator", "es", "--model.pairs", "2", "--model.unroll", "1", "--model.inner_lr", "1e-2",
           "--data.num_dev", "2"] if estimator == "es" else []) + ["--save_every", "2"]
    two = [*_args(tiny_base, out, steps=4), *es, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    ranks = launched_ranks("from tests.helpers import run_meta_train_killed_at as f; "
                           f"f({step}, {two!r}, rank={killed})")
    check_a_lost_rank(ranks, killed, "meta_train", step, out, tmp_path / "new", checkpoint=2 if killed == 1 else None)
    if killed == 0:
        return
    assert _main([*_args(tiny_base, out, steps=4), *es, "--resume"]) == 0
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert load_policy(str(out / "policy")) is not None


def test_sigterm_to_one_rank_mid_step_stops_both_after_it_and_resumes_to_the_uninterrupted_policy(tiny_base,  # noqa: F811
                                                                                                  tmp_path):
    """A `kill` (SIGTERM) of rank 1 of a 2-process ES run in the middle of meta-step 1 (after its meta-gradient):
    both processes finish that step, its checkpoint is saved once, both say so in the same line and exit 143.
    The run then resumes on one process to the policy, bit for bit, of the same run on one process, uninterrupted
    (2 ranks and 1 process are bit-identical for ES: the test above). Before, Lightning's SIGTERM handler
    broadcast from inside the handler, a collective rank 0 did not join, and both processes hung."""
    es = ["--estimator", "es", "--model.pairs", "3", "--model.unroll", "2", "--model.inner_lr", "1e-2",
          "--model.reset_every", "2", "--data.num_dev", "4"]
    out = tmp_path / "run"
    two = [*_args(tiny_base, out), *es, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    ranks = launched_ranks("from tests.helpers import run_meta_train_interrupted_at as f; "
                           f"f(1, {two!r}, during=True, sig='SIGTERM', rank=1)", timeout=300)
    last = out / "checkpoints" / "last.ckpt"
    check_every_rank_stopped(ranks, "meta_train", last)
    assert torch.load(last, weights_only=True)["global_step"] == 2  # meta-step 1 finished, no step after it
    assert _main([*_args(tiny_base, out), *es, "--resume"]) == 0  # on 1 thread, as the ranks: the same float sums
    assert _main([*_args(tiny_base, tmp_path / "one"), *es]) == 0
    resumed, one = load_policy(str(out / "policy")), load_policy(str(tmp_path / "one" / "policy"))
    assert all(torch.equal(resumed.tensors()[k], one.tensors()[k]) for k in one.tensors())
