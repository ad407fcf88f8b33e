"""ZO-SGD-Sign against a hand computation of its update (the registry-wide contract: tests/test_methods.py)."""

import torch

from l2o.optim import build_optimizer
from tests.zo_fixtures import Quadratic, hand_two_point_step


def test_one_step_is_theta_minus_lr_sign_g_z():
    """z regenerated here from the step's seed with the same source; L(theta +- eps z) computed directly."""
    model, theta, z, g, opt = hand_two_point_step("zo-sgd-sign")
    assert opt.last.projected_grads[0] == g
    assert g != 0
    expected = theta + z * (-0.1 * (1.0 if g > 0 else -1.0))  # float32: a multiply, then an add, as the engine
    assert torch.equal(model.theta.detach(), expected)
    assert opt.last.effective_step is None  # not proportional to the gradient


def test_the_step_length_does_not_depend_on_the_loss_scale():
    """sign(g): scaling the loss by 1000 leaves the update unchanged (MeZO's grows 1000x)."""
    moved = []
    for scale in (1.0, 1000.0):
        model = Quadratic(dim=30)
        with torch.no_grad():
            model.lam.mul_(scale)
        theta = model.theta.detach().clone()
        build_optimizer("zo-sgd-sign", model, lr=1e-3, eps=1e-4, seed=2).step(model)
        moved.append(model.theta.detach() - theta)
    assert torch.equal(moved[0], moved[1])
