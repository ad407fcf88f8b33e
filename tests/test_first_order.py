"""The first-order baselines (`fine_tune --optimizer fo-sgd|fo-adamw`) on a tiny OPT and the SST-2 fixture:
one step equals a hand-written backprop step, a killed AdamW run resumes to the same weights, errors are one line."""

import json
import subprocess
import sys

import pytest
import torch

from fine_tune.cli import main
from tests.helpers import same_threads_env
from tests.test_fine_tune import ROOT, SST2
from tests.test_fine_tune import _args as _ft_args


def _args(base, out, *extra):
    return _ft_args(base, out, "--batch-size", "4", "--peft", "full", *extra)  # later flags win


def test_one_sgd_step_is_theta_minus_lr_times_the_backprop_gradient(tiny_base, tmp_path):
    from safetensors.torch import load_file

    from l2o.models import load_base
    from l2o.streams import Stream
    from l2o.tasks import get_task, sample_splits
    from l2o.tasks.objectives import objective_for

    out, lr = tmp_path / "sgd", 0.5
    assert main(_args(tiny_base, out, "--optimizer", "fo-sgd", "--lr", str(lr), "--steps", "1",
                      "--save-model", "weights")) == 0
    after = load_file(str(out / "model" / "model.safetensors"))
    # the same step by hand: the run's train sample and step-0 batch, one backward, theta - lr * grad
    task = get_task("sst2")
    splits = sample_splits(task, seed=0, num_train=1000, num_dev=2, num_eval=1000, source=SST2)
    batch = Stream(splits.train, 4, 0, salt=0xDA7A).batch(0)
    model, tok, _ = load_base(tiny_base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective_for(task).loss(model, tok, batch).backward()
    moved = 0
    for n, p in model.named_parameters():
        want = before[n] - lr * p.grad
        assert torch.allclose(after[n], want, atol=1e-6), n
        moved += int(not torch.equal(after[n], before[n]))
    assert moved > 10  # the step changed the weights (a zero lr or a missing backward would not)
    results = json.loads((out / "results.json").read_text())
    assert results["forward_passes"] == 1 and results["backward_passes"] == 1 and results["effective_step"] is None


def test_killed_adamw_run_resumes_to_the_same_weights(tiny_base, tmp_path, one_thread):
    """Only the killed run is a process of its own, on the one thread `one_thread` gives the uninterrupted run and
    the resume here: backward's reductions round differently at other thread counts, and the runs are compared bit
    for bit."""
    common = ["--optimizer", "fo-adamw", "--lr", "1e-2", "--steps", "6", "--save-every", "2", "--save-model", "false"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_args(tiny_base, full, *common)) == 0
    code = ("from tests.helpers import run_fine_tune_killed_at; "
            f"run_fine_tune_killed_at(3, {_args(tiny_base, killed, *common)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=same_threads_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert main(_args(tiny_base, killed, *common, "--resume")) == 0
    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # Adam moments restored
    hist = json.loads((killed / "history.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 7)) and hist[-1]["forwards"] == 6


@pytest.mark.parametrize("extra,needle", [
    (["--optimizer", "fo-sgd", "--eps", "1e-3"], "--eps does not apply to optimizer 'fo-sgd'"),
    (["--optimizer", "fo-adamw", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--optimizer", "fo-adamw", "--checkpoint", "ledger"], "a seed ledger cannot record"),
    (["--optimizer", "fo-adamw", "--devices", "2"], "runs on one process"),
])
def test_first_order_errors_are_one_line(extra, needle, tmp_path, capsys):
    assert main(["--task", "sst2", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
