"""LOZO and LOZO-M against hand computations of U V^T, V's interval and the factored momentum (contract:
tests/test_methods.py)."""

import pytest
import torch
from torch import nn

from l2o.optim import build_optimizer
from l2o.perturbations import outer_sum


class Matrix(nn.Module):
    """L(W, b) = 0.5 ||W x - y||^2 + 0.5 ||b - 1||^2 with W 6 x 4 (a matrix block) and b (a vector block), in
    float64 so that the losses' rounding (amplified by 1/eps in g) does not hide a wrong update."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(6, dtype=torch.float64))
        self.x = torch.randn(4, 5, generator=g, dtype=torch.float64)
        self.y = torch.randn(6, 5, generator=g, dtype=torch.float64)

    def forward(self):
        return self.at(self.w, self.b)

    def at(self, w, b) -> float | torch.Tensor:
        return 0.5 * ((w @ self.x - self.y) ** 2).sum() + 0.5 * ((b - 1) ** 2).sum()


def factors(opt, t_seed, key):
    """U (6 x r) and V (4 x r) of the matrix block as the step draws them, and the vector block's z."""
    w, b = opt.blocks
    u, v = opt.engine.family.factors(opt.engine.noise, w, t_seed, key)
    return u, v, opt.engine.noise.z(t_seed, b.index, b.param.shape)


@pytest.mark.parametrize("name", ["lozo", "lozo-m"])
def test_steps_by_hand_across_a_redraw_of_v(name):
    """interval 2: V is shared by steps 0-1 and redrawn at step 2. LOZO: theta <- theta - lr g U V^T (vectors
    g z). LOZO-M: N = g U, then N <- beta N + (1 - beta) g U, and at the redraw N <- beta N V_old^T V / n +
    (1 - beta) g U; theta <- theta - lr N V^T (vectors: a dense EMA of g z)."""
    model = Matrix()
    eps, lr, beta = 1e-3, 1e-2, 0.8
    kw = dict(momentum=beta) if name == "lozo-m" else {}
    opt = build_optimizer(name, model, lr=lr, eps=eps, rank=2, interval=2, seed=6, **kw)
    w, b = model.w.detach().clone(), model.b.detach().clone()
    n_mat = m_vec = v_prev = None
    keys = []
    for t in range(3):
        seed, key = opt.seeds(1)[0], opt.v_key(t)
        keys.append(key)
        u, v, zb = factors(opt, seed, key)
        z = outer_sum(u, v, torch.empty(6, 4)).double()   # U V^T as the engine forms it (float32, portable)
        u, v, zb = u.double(), v.double(), zb.double()
        g = float(model.at(w + eps * z, b + eps * zb) - model.at(w - eps * z, b - eps * zb)) / (2 * eps)
        opt.step(model)
        assert opt.last.projected_grads[0] == pytest.approx(g, rel=1e-9)
        if name == "lozo":
            w, b = w - lr * g * z, b - lr * g * zb
        else:
            if n_mat is None:
                n_mat, m_vec = g * u, g * zb
            elif t == 2:
                n_mat = beta * n_mat @ (v_prev.t() @ v) / v.shape[0] + (1 - beta) * g * u
                m_vec = beta * m_vec + (1 - beta) * g * zb
            else:
                n_mat, m_vec = beta * n_mat + (1 - beta) * g * u, beta * m_vec + (1 - beta) * g * zb
            w, b = w - lr * n_mat @ v.t(), b - lr * m_vec
        v_prev = v
        assert torch.allclose(model.w.detach(), w, rtol=1e-6, atol=1e-6), t
        assert torch.allclose(model.b.detach(), b, rtol=1e-6, atol=1e-6), t
        w, b = model.w.detach().clone(), model.b.detach().clone()  # on from the stored weights (float32 updates)
    assert keys[0] == keys[1] != keys[2]
    assert opt.last.effective_step == pytest.approx((2 * 24 + 6) / 30)  # E z^2 = r on the matrix, 1 on the vector


def test_the_matrix_perturbation_has_rank_r():
    model = Matrix()
    opt = build_optimizer("lozo", model, rank=2)
    z = opt.engine.direction_tensor(opt.direction(opt.seeds(1), keys=[opt.v_key(0)]), opt.blocks[0])
    assert torch.linalg.matrix_rank(z).item() == 2
    line = None
    opt.step(model)
    line = opt.ledger.records[-1]
    assert line["k"] == [opt.v_key(0)]  # V's key travels in the ledger line


@pytest.mark.parametrize("interval", [1, 3])
def test_v_is_drawn_apart_from_every_u(interval):
    """U (fresh each step) and V (kept nu steps) are independent draws: V's key is never a seed some step draws U
    from. A V keyed like a step's U would share its noise stream with that U (the same Gaussian numbers in both
    factors: z = U V^T correlated with itself), at every step when nu = 1. Read from the ledger's lines (U's seed
    in "s", V's key in "k") over 6 steps, and the factors themselves."""
    model = Matrix()
    opt = build_optimizer("lozo", model, lr=1e-3, eps=1e-3, rank=2, interval=interval, seed=5)
    for _ in range(6):
        opt.step(model)
    lines = [r for r in opt.ledger.records if "seal" not in r]
    u_seeds, v_keys = {r["s"][0] for r in lines}, {r["k"][0] for r in lines}
    assert len(u_seeds) == 6 and len(v_keys) == -(-6 // interval)
    assert not u_seeds & v_keys
    for r in lines:
        u, v, _ = factors(opt, r["s"][0], r["k"][0])
        assert not torch.equal(u[:v.shape[0]], v)
