"""ZO-SGD-Sign against a hand computation of its update (the registry-wide contract: tests/test_methods.py)."""

import pytest
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


def test_q_directions_average_their_signs():
    """num_directions q = 3: theta <- theta - lr (1/q) sum_j sign(g_j) z_j, the n-SPSA average of MeZO's step with
    each projected gradient replaced by its sign; a sum would take q times the step lr sets."""
    model = Quadratic(dim=30)
    theta, eps, lr, q = model.theta.detach().clone(), 1e-3, 1e-2, 3
    opt = build_optimizer("zo-sgd-sign", model, lr=lr, eps=eps, seed=3, num_directions=q)
    zs = [opt.engine.noise.z(s, 0, theta.shape).double() for s in opt.seeds(q)]
    gs = [(model.at(theta + eps * z) - model.at(theta - eps * z)) / (2 * eps) for z in zs]
    opt.step(model)
    assert opt.last.projected_grads == pytest.approx(gs, rel=1e-6) and all(g != 0 for g in gs)
    want = theta.double() - lr * sum((1.0 if g > 0 else -1.0) * z for g, z in zip(gs, zs)) / q
    assert torch.allclose(model.theta.detach().double(), want, rtol=0, atol=1e-6)


def test_a_zero_projected_gradient_does_not_move_the_weights():
    """sign(0) = 0: where L(theta + eps z) = L(theta - eps z) (a flat loss here; equal losses in low precision) the
    step says nothing about the direction, and theta stays; stepping lr z along +z would be a random walk."""
    model = Quadratic(dim=30)
    with torch.no_grad():
        model.lam.zero_()
    theta = model.theta.detach().clone()
    opt = build_optimizer("zo-sgd-sign", model, lr=1e-2, eps=1e-3, seed=2)
    opt.step(model)
    assert opt.last.projected_grads == [0.0]
    assert torch.equal(model.theta.detach(), theta)
