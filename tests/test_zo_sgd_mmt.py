"""ZO-SGD-MMT against a hand computation of heavy-ball momentum on MeZO's estimate (contract: tests/test_methods.py)."""

import torch

from l2o.optim import build_optimizer
from tests.zo_fixtures import Quadratic


def test_three_steps_by_hand():
    """m_1 = g_1 z_1, m_t = beta m_(t-1) + g_t z_t, theta_t = theta_(t-1) - lr m_t (float32, as the engine adds)."""
    model = Quadratic(dim=30)
    opt = build_optimizer("zo-sgd-mmt", model, lr=1e-3, eps=1e-3, momentum=0.8, seed=1)
    theta, m = model.theta.detach().clone(), None
    for _ in range(3):
        z = opt.engine.noise.z(opt.seeds(1)[0], 0, theta.shape)
        g = (model.at(theta + 1e-3 * z) - model.at(theta - 1e-3 * z)) / 2e-3
        x = z * g
        m = x.clone() if m is None else m.mul_(0.8).add_(x)
        theta = theta + m * -1e-3   # float32: a multiply, then an add, as the engine
        opt.step(model)
        assert opt.last.projected_grads[0] == g
        assert torch.equal(model.theta.detach(), theta)
    assert opt.last.effective_step == 1 / (1 - 0.8)


def test_momentum_zero_is_mezo_up_to_float_rounding():
    """One step (g z materialised, then added at -lr, against MeZO's one add at -lr g: the same numbers rounded
    apart; later steps would amplify that rounding through the float32 losses by 1/eps)."""
    a, b = Quadratic(dim=30), Quadratic(dim=30)
    opt_a = build_optimizer("zo-sgd-mmt", a, lr=1e-3, momentum=0.0, seed=2)
    opt_b = build_optimizer("mezo", b, lr=1e-3, seed=2)
    opt_a.step(a)
    opt_b.step(b)
    assert torch.allclose(a.theta, b.theta, rtol=1e-6, atol=1e-6) and not torch.equal(a.theta, Quadratic(dim=30).theta)
