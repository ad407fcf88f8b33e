"""Sparse-MeZO against a hand computation with the mask (contract: tests/test_methods.py)."""

import torch

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
    from l2o.ledger import Ledger

    return Ledger.parse(state["zo_ledger"], require_seal=False).header["family"]["thresholds"]
