"""Sparse-MeZO against a hand computation with the mask (contract: tests/test_methods.py)."""

import json
import subprocess
import sys

import pytest
import torch

from l2o.ledger import Ledger
from l2o.optim import build_optimizer
from l2o.perturbations import threshold
from tests.zo_fixtures import Quadratic


def test_one_step_moves_only_the_small_weights_by_the_masked_mezo_step():
    model = Quadratic(dim=40)
    theta = model.theta.detach().clone()
    opt = build_optimizer("sparse-mezo", model, lr=1e-3, eps=1e-3, sparsity=0.75, seed=7)
    h = threshold(theta, 0.75)
    mask = theta.abs() <= h
    assert int(mask.sum()) == 10 and opt.engine.family.thresholds == [h]
    z = opt.engine.noise.z(opt.seeds(1)[0], 0, theta.shape) * mask
    g = (model.at(theta + 1e-3 * z) - model.at(theta - 1e-3 * z)) / 2e-3
    opt.step(model)
    assert opt.last.projected_grads[0] == g
    assert torch.equal(model.theta.detach(), theta + z * (-1e-3 * g))
    assert torch.equal(model.theta.detach()[~mask], theta[~mask])     # the large weights never move
    assert opt.last.effective_step == 0.25


def test_the_effective_step_is_the_share_the_step_s_mask_moved_not_the_share_at_binding():
    """The mask is read from the weights as z is made: once they have moved, the step's E||m z||^2 / D is the
    share under the thresholds now (what a resumed run, bound on the moved weights, also reports)."""
    model = Quadratic(dim=40)
    opt = build_optimizer("sparse-mezo", model, lr=1e-3, eps=1e-3, sparsity=0.75, seed=7)
    h = opt.engine.family.thresholds[0]
    with torch.no_grad():
        model.theta.mul_(2.0)  # now fewer weights are at most h in magnitude
    share = int((model.theta.detach().abs() <= h).sum()) / 40
    assert share < 0.25 and opt.engine.family.support(opt.blocks[0]) == 0.25  # before a z is made: at binding
    opt.step(model)
    assert opt.last.effective_step == share


def test_the_thresholds_are_in_the_ledger_header_so_replay_uses_them():
    model = Quadratic(dim=40)
    opt = build_optimizer("sparse-mezo", model, lr=1e-3, sparsity=0.5)
    assert opt.ledger.header["family"] == {"name": "masked", "sparsity": 0.5,
                                           "thresholds": opt.engine.family.thresholds}
    assert opt.ledger.header["version"] == 2


def test_a_run_resumed_on_an_optimizer_made_from_the_saved_weights_keeps_the_run_s_thresholds():
    """A resumed run builds its optimizer on the checkpoint's weights (Lightning restores the model before
    configure_optimizers); the thresholds are the run's, from its start (the saved ledger's header), not ones
    recomputed from the moved weights, so the resumed run is the uninterrupted one bit for bit."""
    full = Quadratic(dim=40)
    opt = build_optimizer("sparse-mezo", full, lr=1e-1, eps=1e-2, seed=3)
    for _ in range(6):
        opt.step(full)
    part = Quadratic(dim=40)
    opt = build_optimizer("sparse-mezo", part, lr=1e-1, eps=1e-2, seed=3)
    for _ in range(3):
        opt.step(part)
    saved, state = {k: v.clone() for k, v in part.state_dict().items()}, opt.state_dict()
    resumed = Quadratic(dim=40)
    resumed.load_state_dict(saved)
    opt = build_optimizer("sparse-mezo", resumed, lr=1e-1, eps=1e-2, seed=3)
    assert opt.engine.family.thresholds != state_thresholds(state)  # the moved weights give other thresholds
    opt.load_state_dict(state)
    assert opt.engine.family.thresholds == state_thresholds(state)
    for _ in range(3):
        opt.step(resumed)
    assert torch.equal(resumed.theta, full.theta)


def state_thresholds(state: dict) -> list[float]:
    return Ledger.parse(state["zo_ledger"], require_seal=False).header["family"]["thresholds"]


@pytest.mark.parametrize("checkpoint", ["weights", "ledger"])
def test_fine_tune_killed_and_resumed_ends_as_the_uninterrupted_run_bit_for_bit(tiny_base, tmp_path, checkpoint):
    """Through `fine_tune --resume`: the resumed run's optimizer is made on the checkpoint's weights (moved:
    other thresholds) or, with ledger checkpoints, on the base, and must continue the run's mask. Killed after
    step 3 (resumes from step 2's checkpoint); lr 1e-2 moves the weights enough to change the thresholds."""
    from fine_tune.cli import main
    from tests.test_fine_tune import ROOT, _args, _trainable

    common = ["--steps", "6", "--save-every", "2", "--optimizer", "sparse-mezo", "--lr", "1e-2", "--eps", "1e-2",
              "--save-model", "false", "--zero-shot", "false", "--checkpoint", checkpoint]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_args(tiny_base, full, *common)) == 0
    argv = _args(tiny_base, killed, *common)
    code = f"from tests.helpers import run_fine_tune_killed_at; run_fine_tune_killed_at(3, {argv!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert main(_args(tiny_base, killed, *common, "--resume")) == 0

    assert (killed / "ledger.jsonl").read_bytes() == (full / "ledger.jsonl").read_bytes()
    if checkpoint == "weights":
        a, b = _trainable(full / "checkpoints" / "last.ckpt"), _trainable(killed / "checkpoints" / "last.ckpt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the logged rows too: loss, projected gradient, and the effective step E||m z||^2 / D (the mask's share)
    rows = [[{k: v for k, v in r.items() if k != "step_time_s"} for r in json.loads((d / "history.json").read_text())]
            for d in (full, killed)]
    assert rows[0] == rows[1] and len(rows[0]) == 6
    header = Ledger.read(full / "ledger.jsonl").header["family"]
    assert header["name"] == "masked" and len(header["thresholds"]) > 1
