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
