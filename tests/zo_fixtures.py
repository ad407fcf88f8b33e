"""Small analytic objectives used through nn.Modules, shared by the engine/optimizer tests."""

import torch
from torch import nn


class Quadratic(nn.Module):
    """L(theta) = 0.5 * sum_i lam_i (theta_i - target_i)^2, ill-conditioned (lam from 1 to `cond`)."""

    def __init__(self, dim: int = 200, cond: float = 100.0, seed: int = 0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(torch.randn(dim, generator=g).to(dtype))
        self.register_buffer("lam", torch.logspace(0, torch.log10(torch.tensor(cond)).item(), dim))
        self.register_buffer("target", torch.randn(dim, generator=g))

    def forward(self):
        diff = self.theta.float() - self.target
        return 0.5 * (self.lam * diff * diff).sum()

    def grad(self) -> torch.Tensor:
        return self.lam * (self.theta.detach().float() - self.target)

    def at(self, theta: torch.Tensor) -> float:
        """The loss at another theta, computed as forward does (float32): for hand computations."""
        diff = theta.float() - self.target
        return float(0.5 * (self.lam * diff * diff).sum())


def hand_two_point_step(name: str, lr: float = 0.1, eps: float = 1e-3, seed: int = 5):
    """One step of the registered method `name` on a 30-dim Quadratic, beside its hand computation: z regenerated
    from the step's seed with the same source, g = [L(theta + eps z) - L(theta - eps z)] / (2 eps) computed
    directly. Returns (model, theta before the step, z, g, the optimizer)."""
    from l2o.noise import GaussianNoise
    from l2o.optim import build_optimizer

    model = Quadratic(dim=30)
    theta = model.theta.detach().clone()
    opt = build_optimizer(name, model, lr=lr, eps=eps, seed=seed)
    z = GaussianNoise().z(opt.seeds(1)[0], 0, theta.shape)
    g = (model.at(theta + eps * z) - model.at(theta - eps * z)) / (2 * eps)
    opt.step(model)
    return model, theta, z, g, opt


class TwoBlock(nn.Module):
    """A tiny regression net with several blocks (weights, biases, a norm) for engine tests."""

    def __init__(self, dtype=torch.float32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
        g = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("x", torch.randn(32, 8, generator=g).to(dtype))
        self.register_buffer("y", torch.randn(32, 1, generator=g).to(dtype))

    def forward(self):
        return ((self.net(self.x).float() - self.y.float()) ** 2).mean()


class TiedLM(nn.Module):
    """Embedding tied to the output projection, like OPT/Llama's lm_head."""

    def __init__(self, vocab: int = 11, dim: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("ids", torch.randint(0, vocab, (4, 5)))

    def forward(self):
        h = torch.tanh(self.mid(self.embed(self.ids[:, :-1])))
        logits = self.head(h)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.ids[:, 1:].reshape(-1))


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.uint8) if a[k].dtype.is_floating_point
                                                    else a[k], b[k].view(torch.uint8) if b[k].dtype.is_floating_point
                                                    else b[k]) for k in a)


def run_split_and_resume(make, steps: int = 6):
    """Run `steps` steps straight, and again as steps/2, save, rebuild, load, steps/2 more.

    `make()` returns a fresh (model, optimizer). Returns the two (model, optimizer) pairs."""
    full, opt_full = make()
    for _ in range(steps):
        opt_full.step(full)
    first, opt_first = make()
    for _ in range(steps // 2):
        opt_first.step(first)
    saved_model, saved_opt = snapshot(first), opt_first.state_dict()
    resumed, opt_resumed = make()
    resumed.load_state_dict(saved_model)
    opt_resumed.load_state_dict(saved_opt)
    for _ in range(steps - steps // 2):
        opt_resumed.step(resumed)
    return (full, opt_full), (resumed, opt_resumed)
