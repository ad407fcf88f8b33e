"""HiZOO against the official update written out with H itself (not P = H^(-1/2)); contract: tests/test_methods.py."""

import pytest
import torch

from l2o.optim import build_optimizer
from tests.zo_fixtures import Quadratic, TwoBlock


@pytest.mark.parametrize("s", [None, 0.5])
def test_three_steps_against_the_official_formula(s):
    """The official code keeps H: perturb by eps z / sqrt(H), then H <- (1 - a) H + a |L+ + L- - 2 L0| / (2 eps^2)
    H z^2 and theta <- theta - lr g z / sqrt(H_new). Here a is large enough (0.3) for H to move visibly. With a
    block scale s (a learned policy's, zo-finetuner+hizoo) the perturbation and the step are s z / sqrt(H) and H's
    EMA still reads z (fed s z, as before the composition, H would move by s^2 times the estimate)."""
    a, eps, lr = 0.3, 1e-2, 1e-3
    model = Quadratic(dim=30, dtype=torch.float64)
    opt = build_optimizer("hizoo", model, lr=lr, eps=eps, hessian_smooth=a, seed=4,
                          block_scales=None if s is None else [s])
    theta, h, s = model.theta.detach().clone(), torch.ones(30, dtype=torch.float64), 1.0 if s is None else s
    for _ in range(3):
        z = opt.engine.noise.z(opt.seeds(1)[0], 0, theta.shape).double()
        f0 = model.at(theta)
        plus, minus = model.at(theta + eps * s * z / h.sqrt()), model.at(theta - eps * s * z / h.sqrt())
        opt.step(model)
        assert opt.last.losses == pytest.approx([f0, plus, minus], rel=1e-6)
        g, c = (plus - minus) / (2 * eps), abs(plus + minus - 2 * f0) / (2 * eps * eps)
        h = (1 - a) * h + a * c * h * z * z
        theta = theta - lr * g * s * z / h.sqrt()
        assert torch.allclose(model.theta.detach(), theta, rtol=1e-5, atol=1e-8)
    p = opt.engine.rule.precondition(opt.blocks[0])
    assert torch.allclose(p.double(), 1 / h.sqrt(), rtol=1e-5)
    assert opt.last.effective_step == pytest.approx(s * s * float((1 / h).mean()), rel=1e-5)
    assert not torch.allclose(h, torch.ones_like(h))  # the test saw a moving preconditioner


def test_zero_smoothing_is_mezo_with_an_extra_forward():
    a, b = Quadratic(dim=30), Quadratic(dim=30)
    opt_a = build_optimizer("hizoo", a, lr=1e-3, hessian_smooth=0.0, seed=5)
    opt_b = build_optimizer("mezo", b, lr=1e-3, seed=5)
    for _ in range(3):
        opt_a.step(a)
        opt_b.step(b)
    assert torch.equal(a.theta, b.theta) and opt_a.forward_passes == 9 and opt_b.forward_passes == 6


def test_a_block_at_zero_scale_keeps_its_preconditioner():
    """HiZOO estimates the Hessian of the weights it perturbs: a block whose scale s_b is 0 (a learned policy's
    output, a frozen scale) is not perturbed (s_b P z = 0) and not moved, so the curvature c, measured along the
    other blocks, says nothing about it and its P stays 1; the other blocks' P move, as with no zero scale."""
    model, ref = TwoBlock(), TwoBlock()
    scales = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    opt = build_optimizer("hizoo", model, lr=1e-2, eps=1e-2, hessian_smooth=0.3, seed=4, block_scales=scales)
    plain = build_optimizer("hizoo", ref, lr=1e-2, eps=1e-2, hessian_smooth=0.3, seed=4)
    frozen = opt.blocks[1].param.detach().clone()
    for _ in range(3):
        opt.step(model)
        plain.step(ref)
    rule = opt.engine.rule
    p = rule.precondition(opt.blocks[1])
    assert p is None or torch.equal(p, torch.ones_like(p))
    assert torch.equal(opt.blocks[1].param.detach(), frozen)
    assert not torch.equal(plain.engine.rule.precondition(plain.blocks[1]), torch.ones_like(frozen))
    for b in (opt.blocks[0], opt.blocks[2]):
        assert not torch.equal(rule.precondition(b), torch.ones_like(b.param))


class Concave(torch.nn.Module):
    """L(theta) = -0.5 sum_i lam_i theta_i^2 (float64): negative curvature along every direction, as a loss has
    near a saddle or a maximum."""

    def __init__(self, dim=30):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.theta = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.lam = torch.linspace(1.0, 10.0, dim, dtype=torch.float64)

    def forward(self):
        return -0.5 * (self.lam * self.theta ** 2).sum()

    def at(self, theta) -> float:
        return float(-0.5 * (self.lam * theta ** 2).sum())


def test_negative_curvature_enters_the_hessian_estimate_by_its_magnitude():
    """HiZOO's curvature estimate is |L+ + L- - 2 L0| / (2 eps^2): the absolute value keeps H positive where the
    loss curves down (a signed estimate drives 1 - a + a c z^2 below 0 and P = H^(-1/2) to NaN, or inflates P).
    One step on a concave loss against the official formula: P = 1 / sqrt(1 - a + a |c| z^2), finite."""
    a, eps, lr = 0.3, 1e-2, 1e-3
    model = Concave()
    opt = build_optimizer("hizoo", model, lr=lr, eps=eps, hessian_smooth=a, seed=2)
    theta = model.theta.detach().clone()
    z = opt.engine.noise.z(opt.seeds(1)[0], 0, theta.shape).double()
    f0, plus, minus = model.at(theta), model.at(theta + eps * z), model.at(theta - eps * z)
    c = abs(plus + minus - 2 * f0) / (2 * eps * eps)
    assert plus + minus - 2 * f0 < 0  # the loss curves down along z
    h = (1 - a) + a * c * z * z
    opt.step(model)
    p = opt.engine.rule.precondition(opt.blocks[0])
    assert torch.isfinite(p).all() and torch.allclose(p.double(), 1 / h.sqrt(), rtol=1e-5)
    g = (plus - minus) / (2 * eps)
    assert torch.allclose(model.theta.detach(), theta - lr * g * z / h.sqrt(), rtol=1e-5, atol=1e-8)
