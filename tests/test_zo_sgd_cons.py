"""ZO-SGD-Cons against a hand computation: the candidate steps' losses and the choice among theta, theta -+ lr g z
(the registry-wide contract: tests/test_methods.py)."""

import pytest
import torch

from l2o.noise import GaussianNoise
from l2o.optim import build_optimizer
from l2o.optim.zo_sgd_cons import choose
from tests.zo_fixtures import Quadratic, same_bits, snapshot


@pytest.mark.parametrize("f0,f_minus,f_plus,expected", [
    (1.0, 0.5, 0.7, -1), (1.0, 0.7, 0.5, 1),    # both better: the lower one
    (1.0, 1.5, 0.5, 1), (1.0, 1.5, 2.0, 0),     # theta - lr g z worse: theta + lr g z only if it beats f0
    (1.0, 0.5, 2.0, -1), (1.0, 1.0, 1.0, 1),    # ties go as ZO-Bench's code: f- <= f0 and f- >= f+ -> +
    (1.0, 1.0, 2.0, -1),                        # f- level with f0 is taken: theta stays only if f- > f0 < f+
])
def test_the_choice_is_the_lowest_loss_with_zo_bench_ties(f0, f_minus, f_plus, expected):
    assert choose(f0, f_minus, f_plus) == expected


@pytest.mark.parametrize("lr,taken", [(1e-3, True), (10.0, False)])
def test_one_step_by_hand(lr, taken):
    """lr 1e-3: theta - lr g z lowers the loss and is taken; lr 10: both candidates overshoot, theta is kept."""
    model = Quadratic(dim=30)
    theta = model.theta.detach().clone()
    opt = build_optimizer("zo-sgd-cons", model, lr=lr, eps=1e-3, seed=4)
    z = GaussianNoise().z(opt.seeds(1)[0], 0, theta.shape)
    f0 = model.at(theta)
    g = (model.at(theta + 1e-3 * z) - model.at(theta - 1e-3 * z)) / 2e-3
    f_minus, f_plus = model.at(theta - lr * g * z), model.at(theta + lr * g * z)
    sign = choose(f0, f_minus, f_plus)
    assert (sign != 0) == taken
    before = snapshot(model)
    opt.step(model)
    assert opt.last.projected_grads[0] == pytest.approx(g, rel=1e-12)
    assert opt.last.losses[3:] == pytest.approx([f_minus, f_plus], rel=1e-6)
    assert opt.last.forwards == 5 and opt.last.loss == f0
    if not taken:
        assert same_bits(before, snapshot(model)) and opt.last.effective_step == 0.0
        return
    expected = theta + z * (sign * lr * opt.last.projected_grads[0])  # multiply, then add
    assert torch.equal(model.theta.detach(), expected)
    assert model.at(model.theta.detach()) < f0
