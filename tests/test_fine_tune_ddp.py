"""`fine_tune --devices 2` on the CPU (gloo, Lightning's own launcher, 1 thread per process) against one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fine_tune.cli import main
from tests.helpers import check_a_lost_rank, check_every_rank_stopped, launched_ranks
from tests.test_fine_tune import ROOT, _args, _trainable

COMMON = ["--steps", "4", "--save-every", "2", "--lr", "1e-3", "--eval-every", "2", "--save-model", "false",
          "--check-every", "2"]


def _one_process(base, out, *extra):
    """The same run in this process, with the 1 thread each rank has (kernels may sum in another order
    with more threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(base, out, *COMMON, *extra)) == 0
    finally:
        torch.set_num_threads(threads)


def _two_processes(base, out, *extra, script=None, returncode=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [str(script)] if script else ["-m", "fine_tune"]
    proc = subprocess.run([sys.executable, *command, *_args(base, out, *COMMON, "--devices", "2",
                                                            "--accelerator", "cpu", *extra)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return proc


def test_direction_parallel_fine_tuning_is_bit_identical_and_rank_0_writes(tiny_base, tmp_path):  # noqa: F811
    gv = ["--optimizer", "mezo-gv", "--pool-size", "4"]
    proc = _two_processes(tiny_base, tmp_path / "two", *gv)
    assert proc.stdout.count("results:") == 1  # one report, from rank 0
    _one_process(tiny_base, tmp_path / "one", *gv)

    two, one = (_trainable(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("two", "one"))
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)
    hist = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("two", "one")]
    assert [r["loss"] for r in hist[0]] == [r["loss"] for r in hist[1]]
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["forward_passes"] == 4 * 6 and res["processes"]["parallel"] == "direction"
    # per step: GV's pool of 4 and its +-eps pair, 2 + 1 values of 8 bytes; plus the fingerprints
    # (3 values) at the start and every 2 steps
    assert res["processes"]["bytes_sent_per_step"] == (4 * 24 + 3 * 24) / 4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_data_parallel_fine_tuning_matches_one_process(tiny_base, tmp_path):  # noqa: F811
    mezo = ["--optimizer", "mezo", "--batch-size", "6"]
    _two_processes(tiny_base, tmp_path / "two", *mezo, "--parallel", "data")
    _one_process(tiny_base, tmp_path / "one", *mezo)
    two, one = (_trainable(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("two", "one"))
    moved = max((one[k] - _trainable_start(tiny_base)[k]).abs().max().item() for k in one)
    diff = max((two[k] - one[k]).abs().max().item() for k in one)
    assert diff < 1e-3 * moved, (diff, moved)  # float32 rounding of the loss sums only (tests/test_distributed.py)


def _trainable_start(base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    return {"model." + k: v for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process_to_the_same_weights(tiny_base, tmp_path):  # noqa: F811
    gv = ["--optimizer", "mezo-gv", "--pool-size", "4"]
    killed = tmp_path / "killed"
    # a script, not `python -c`: Lightning's launcher starts rank 1 by re-running sys.argv
    script = tmp_path / "killed_at_3.py"
    script.write_text("import sys\nfrom tests.helpers import run_fine_tune_killed_at\n"
                      "run_fine_tune_killed_at(3, sys.argv[1:])\n")
    _two_processes(tiny_base, killed, *gv, script=script, returncode=137)
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    _one_process(tiny_base, killed, *gv, "--resume")        # 2 processes -> 1: allowed, and exact
    _one_process(tiny_base, tmp_path / "one", *gv)
    a, b = (_trainable(d / "checkpoints" / "last.ckpt") for d in (killed, tmp_path / "one"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra,needle", [
    (["--optimizer", "bilevel-zofo", "--peft", "lora"], "bilevel-zofo runs on one process"),
    (["--parallel", "data", "--batch-size", "1"], "--parallel data needs --batch-size >= the 2 processes"),
    (["--devices", "0"], "--devices must be a positive integer"),
])
def test_layouts_that_cannot_work_are_refused_in_one_line(tiny_base, tmp_path, capsys, extra, needle):  # noqa: F811
    assert main(_args(tiny_base, tmp_path / "x", "--devices", "2", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def _launched_ranks(base, out, kill_rank: int, kill_step: int, *extra):
    """A 2-process run (`launched_ranks`) whose process of rank `kill_rank` dies like `kill -9` after `kill_step`."""
    return launched_ranks(f"from tests.helpers import run_fine_tune_killing_rank as f; f({kill_rank}, {kill_step}, "
                          f"{_args(base, out, *COMMON, '--devices', '2', '--accelerator', 'cpu', *extra)!r})")


@pytest.mark.parametrize("killed", [1, 0])
def test_a_lost_rank_leaves_one_line_exit_1_and_a_resumable_or_clean_out(tiny_base, tmp_path, killed):  # noqa: F811
    """Killing either process of a 2-process run: the survivor says which rank was lost, after which step,
    and what --resume continues from, in one line, exit 1, no hang. Rank 1 lost after step 3: the step-2
    checkpoint is resumable (on one process). Rank 0 (the folder's holder) lost after step 1, before any
    checkpoint: the survivor removes what the run created."""
    out = tmp_path / "new" / "run"
    step = 3 if killed == 1 else 1
    ranks = _launched_ranks(tiny_base, out, killed, step, "--optimizer", "mezo-gv", "--pool-size", "4")
    check_a_lost_rank(ranks, killed, "fine_tune", step, out, tmp_path / "new", checkpoint=2 if killed == 1 else None)
    if killed == 0:
        return
    _one_process(tiny_base, out, "--optimizer", "mezo-gv", "--pool-size", "4", "--resume")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.fixture(scope="module")
def gv_reference(tiny_base, tmp_path_factory):  # noqa: F811
    """The uninterrupted 4-step MeZO-GV run on one process: its trainable weights."""
    out = tmp_path_factory.mktemp("gv") / "one"
    _one_process(tiny_base, out, "--optimizer", "mezo-gv", "--pool-size", "4")
    return _trainable(out / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("signalled, step, hook", [(None, 3, "on_train_batch_end"), (1, 3, "on_train_batch_end"),
                                                   pytest.param(0, 3, "on_train_batch_end", marks=pytest.mark.slow),
                                                   (1, 2, "on_validation_start"), (1, 4, "on_validation_start")],
                         ids=["every-rank", "rank-1", "rank-0", "rank-1-in-a-validation",
                              "rank-1-in-the-final-validation"])
def test_sigterm_to_any_rank_stops_every_rank_after_the_same_step_and_resumes_exactly(tiny_base, gv_reference,  # noqa: F811
                                                                                      tmp_path, signalled, step, hook):
    """A scheduler's SIGTERM to every process of a 2-process run, or a `kill` of one of them, after step 3:
    every process finishes the step, step 3 is saved once, each says so in the same line, exit 143, and the
    run resumes (on one process) to the uninterrupted run's weights. Lightning's own SIGTERM handler
    broadcast from inside the handler, a collective the other process did not join: a SIGTERM to one
    process hung both (l2o/integrations/lightning/interrupt.py). In the validation due after step 2 (saved
    before it), every rank stops after its first batch, at step 2: before, both finished it and ran step 3. After
    the last step (in the validation due after step 4), every rank stops too: before, rank 0 finished the run while
    rank 1 said it stopped."""
    out = tmp_path / "run"
    gv = ["--optimizer", "mezo-gv", "--pool-size", "4"]
    argv = _args(tiny_base, out, *COMMON, "--devices", "2", "--accelerator", "cpu", *gv)
    ranks = launched_ranks("from tests.helpers import run_fine_tune_interrupted_at as f; "
                           f"f({step}, {argv!r}, 'SIGTERM', {signalled}, {hook!r})", timeout=150)
    last = out / "checkpoints" / "last.ckpt"
    check_every_rank_stopped(ranks, "fine_tune", last)
    assert torch.load(last, weights_only=True)["global_step"] == step and not (out / "results.json").exists()
    _one_process(tiny_base, out, *gv, "--resume")
    resumed = _trainable(last)
    assert resumed.keys() == gv_reference.keys() and all(torch.equal(resumed[k], gv_reference[k]) for k in resumed)
    assert (out / "results.json").exists()


@pytest.mark.slow
def test_sigterm_to_one_rank_in_the_validation_of_an_unsaved_step_stops_every_rank_at_that_step(tiny_base,  # noqa: F811
                                                                                                gv_reference, tmp_path):
    """--save-every 4, --eval-every 2 on 2 processes: a SIGTERM to rank 1 as the validation after step 2 (which has
    no checkpoint) starts. Every rank finishes that validation (the stop is agreed in its on_validation_end, one
    all-reduce that every rank joins), saves step 2 once and exits 143 with the same line; none runs step 3. The
    run resumes on one process to the uninterrupted run's weights. The one-process case is in test_run_failures."""
    out = tmp_path / "run"
    gv = ["--optimizer", "mezo-gv", "--pool-size", "4", "--save-every", "4"]  # the later flag wins
    argv = _args(tiny_base, out, *COMMON, "--devices", "2", "--accelerator", "cpu", *gv)
    ranks = launched_ranks("from tests.helpers import run_fine_tune_interrupted_at as f; "
                           f"f(2, {argv!r}, 'SIGTERM', 1, 'on_validation_start')", timeout=150)
    last = out / "checkpoints" / "last.ckpt"
    check_every_rank_stopped(ranks, "fine_tune", last)
    assert torch.load(last, weights_only=True)["global_step"] == 2 and not (out / "results.json").exists()
    assert json.loads((out / "checkpoints" / "validated.json").read_text())["step"] == 2
    _one_process(tiny_base, out, *gv, "--resume")
    resumed = _trainable(last)
    assert resumed.keys() == gv_reference.keys() and all(torch.equal(resumed[k], gv_reference[k]) for k in resumed)
    assert json.loads((out / "results.json").read_text())["steps"] == 4
