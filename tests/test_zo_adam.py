"""ZO-Adam against torch.optim.Adam fed MeZO's estimate g z as the gradient (contract: tests/test_methods.py)."""

import torch

from l2o.optim import build_optimizer
from tests.zo_fixtures import Quadratic


def test_matches_torch_adam_on_the_same_estimates():
    """Five steps; torch's Adam (a second implementation, its own bias corrections) takes grad = g z from the
    same seeds. Adam's first step is lr * sign(g z) per coordinate, so a wrong sign or scale shows at once."""
    model = Quadratic(dim=30)
    opt = build_optimizer("zo-adam", model, lr=1e-2, eps=1e-3, beta1=0.8, beta2=0.99, adam_eps=1e-6, seed=3)
    ref = torch.nn.Parameter(model.theta.detach().clone())
    adam = torch.optim.Adam([ref], lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(5):
        theta = model.theta.detach().clone()
        z = opt.engine.noise.z(opt.seeds(1)[0], 0, theta.shape)
        g = (model.at(theta + 1e-3 * z) - model.at(theta - 1e-3 * z)) / 2e-3
        opt.step(model)
        assert opt.last.projected_grads[0] == g
        ref.grad = (z * g).clone()
        adam.step()
        assert torch.allclose(model.theta.detach(), ref.detach(), rtol=0, atol=1e-6)
    assert opt.last.effective_step is None
    assert opt.ledger.records[-1]["p"] == {"t": 5}


def test_the_moments_are_two_float32_copies_and_a_checkpoint_without_them_rebuilds_them():
    model = Quadratic(dim=30)
    opt = build_optimizer("zo-adam", model, lr=1e-2, seed=3)
    for _ in range(3):
        opt.step(model)
    state = opt.state_dict()
    assert set(state["zo_rule"]) == {"m", "v"} and state["zo_rule"]["m"][0].dtype == torch.float32
    lean = {k: v for k, v in state.items() if k != "zo_rule"}
    again = build_optimizer("zo-adam", Quadratic(dim=30), lr=1e-2, seed=3)
    again.load_state_dict(lean)
    for name in ("m", "v"):
        assert torch.equal(again.engine.rule.buffers[name][0], state["zo_rule"][name][0])
