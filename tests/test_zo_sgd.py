"""ZO-SGD (ZO-Bench's name for MeZO's step) against a hand computation (the registry-wide contract:
tests/test_methods.py)."""

import torch

from l2o.optim import build_optimizer
from tests.zo_fixtures import TwoBlock, hand_two_point_step


def test_one_step_is_theta_minus_lr_g_z():
    """z regenerated here from the step's seed with the same source; L(theta +- eps z) computed directly."""
    model, theta, z, g, opt = hand_two_point_step("zo-sgd")
    assert opt.last.projected_grads[0] == g and g != 0
    assert opt.forward_passes == 2
    assert torch.equal(model.theta.detach(), theta + z * (-0.1 * g))  # float32: a multiply, then an add, as the engine


def test_it_is_mezo_step_for_step():
    """The same seed and hyperparameters give MeZO's weights bit for bit, also with weight decay and one-sided
    differences (ZO-Bench's `--perturbation_mode one_side`)."""
    for options in ({}, {"weight_decay": 0.1, "one_sided": True, "num_directions": 2}):
        runs = []
        for name in ("mezo", "zo-sgd"):
            model = TwoBlock()
            opt = build_optimizer(name, model, lr=1e-2, seed=3, **options)
            for _ in range(3):
                opt.step(model)
            runs.append([p.detach().clone() for p in model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*runs))
        assert not torch.equal(runs[0][0], TwoBlock().net[0].weight.detach())  # it moved
