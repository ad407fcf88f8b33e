"""The noise engine: determinism, exact restore in every dtype, unbiased low-precision updates, pass counts."""


import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2o.engine import Direction, Engine, stochastic_round_
from l2o.noise import GaussianNoise, NoiseTable, derive_seed
from l2o.optim import build_optimizer
from l2o.optim.bszo import batch_posterior
from tests.zo_fixtures import Quadratic, TiedLM, TwoBlock, same_bits, snapshot

SOURCES = [GaussianNoise(chunk_size=64), NoiseTable(size=1 << 16, chunk_size=256)]


@pytest.mark.parametrize("src", SOURCES, ids=lambda s: s.name)
def test_z_is_regenerated_identically_and_differs_across_seeds_and_blocks(src):
    a = src.z(123, 4, (50, 30))
    assert torch.equal(a, src.z(123, 4, (50, 30)))
    assert not torch.equal(a, src.z(124, 4, (50, 30)))
    assert not torch.equal(a, src.z(123, 5, (50, 30)))


def test_gaussian_z_does_not_depend_on_thread_count_or_global_rng(monkeypatch):
    src = GaussianNoise(chunk_size=1008)
    torch.manual_seed(0)
    a = src.z(7, 1, (10_000,))
    monkeypatch.setenv("L2O_NOISE_THREADS", "1")
    torch.manual_seed(99)
    before = torch.get_rng_state()
    b = src.z(7, 1, (10_000,))
    assert torch.equal(a, b)
    assert torch.equal(before, torch.get_rng_state()), "noise generation must not touch the global RNG"


@pytest.mark.parametrize("src", SOURCES, ids=lambda s: s.name)
def test_moments_and_near_orthogonality(src):
    n = 200_000
    z = [src.z(s, 0, (n,)) for s in range(6)]
    for v in z:
        assert abs(v.mean().item()) < 0.02
        assert abs(v.var().item() - 1.0) < 0.03
        assert abs(((v - v.mean()) ** 4).mean().item() / v.var().item() ** 2 - 3.0) < 0.15  # Gaussian kurtosis
    cos = [torch.nn.functional.cosine_similarity(z[i], z[j], dim=0).item() for i in range(6) for j in range(i)]
    assert max(abs(c) for c in cos) < 0.02


def test_table_is_device_independent_by_construction_and_reproducible():
    t1, t2 = NoiseTable(size=4096, seed=3), NoiseTable(size=4096, seed=3)
    assert torch.equal(t1.z(5, 2, (100,)), t2.z(5, 2, (100,)))
    assert not torch.equal(NoiseTable(size=4096, seed=4).z(5, 2, (100,)), t1.z(5, 2, (100,)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("noise", ["gaussian", "table"])
def test_evaluate_leaves_weights_bit_identical(dtype, noise):
    model = TwoBlock(dtype=dtype)
    engine = Engine(model, noise)
    before = snapshot(model)
    base = float(model())
    for seed in range(5):
        d = Direction((seed, seed + 100), (0.7, -0.3))
        perturbed = engine.evaluate(model, d, 1e-2)
        assert perturbed != base  # the forward really saw perturbed weights
        assert same_bits(before, snapshot(model))
    assert float(model()) == base


class _Vector(torch.nn.Module):
    """One weight vector; the forward records the tensor it saw and returns a linear + quadratic loss."""

    def __init__(self, w: torch.Tensor, a: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.register_buffer("a", a)
        self.seen: list[torch.Tensor] = []

    def forward(self):
        self.seen.append(self.w.detach().clone())
        w = self.w.double()
        return (self.a.double() * w).sum() + 0.5 * (w * w).sum()


def test_bf16_evaluation_is_exact_where_mezo_inplace_restore_is_not():
    """On bf16 weights of scale 0.02, MeZO's +eps, -2eps, +eps along the engine's own z does not come
    back; the engine's evaluation along that z perturbs what the forward sees and leaves the bits."""
    g = torch.Generator().manual_seed(0)
    model = _Vector((0.02 * torch.randn(10_000, generator=g)).to(torch.bfloat16), torch.zeros(10_000))
    engine = Engine(model)
    before = snapshot(model)
    d = Direction.single(3)
    engine.evaluate(model, d, 1e-3)
    assert same_bits(before, snapshot(model))
    assert (model.seen[-1].float() != model.w.detach().float()).float().mean() > 0.1, "forward saw no perturbation"
    z = engine.direction_tensor(d, engine.blocks[0]).to(torch.bfloat16)
    v = model.w.detach().clone()
    v.add_(z, alpha=1e-3).add_(z, alpha=-2e-3).add_(z, alpha=1e-3)
    assert (v.float() - model.w.detach().float()).abs().max().item() > 1e-5, "in-place restore unexpectedly exact"


def _projected_grads(model, engine, seeds, eps, perturbed=None):
    """g(s) = [L(theta + eps z_s) - L(theta - eps z_s)] / (2 eps) for each seed, through the engine, or
    through `perturbed(w, z, eps) -> weights` (a hand-made rounding) when given."""
    out = []
    for s in seeds:
        d = Direction.single(s)
        if perturbed is None:
            lp, lm = engine.evaluate(model, d, eps), engine.evaluate(model, d, -eps)
        else:
            z, w = engine.direction_tensor(d, engine.blocks[0]), model.w.detach().float()
            with torch.no_grad():
                lp, lm = (float(_Vector(perturbed(w, z, e), model.a)()) for e in (eps, -eps))
        out.append((lp - lm) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def test_bf16_projected_gradient_agrees_with_fp32_within_sampling_noise():
    """With weights near 1 and eps = 1e-3, |eps z| is below half a bf16 ulp (3.9e-3) for ~97 % of
    entries. Stochastic rounding keeps E[theta~] = theta + eps z, so the bf16 projected gradients
    regress on the fp32 ones with slope 1 (within the rounding's sampling noise); rounding to
    nearest, which leaves those entries unperturbed, gives a slope near 0 and fails the same check."""
    n, eps, seeds = 4096, 1e-3, range(300)
    g = torch.Generator().manual_seed(0)
    w16 = (1.0 + 0.01 * torch.randn(n, generator=g)).to(torch.bfloat16)
    a = torch.randn(n, generator=g)
    m32, m16 = _Vector(w16.float(), a), _Vector(w16, a)
    g32 = _projected_grads(m32, Engine(m32), seeds, eps)
    e16 = Engine(m16)
    g16 = _projected_grads(m16, e16, seeds, eps)
    rtn = _projected_grads(m16, e16, seeds, eps, perturbed=lambda w, z, e: (w + e * z).to(torch.bfloat16))

    def slope_and_se(y):
        b = float((y * g32).sum() / (g32 * g32).sum())
        return b, float((y - b * g32).std() / (g32 * g32).sum().sqrt())

    b, se = slope_and_se(g16)
    assert abs(b - 1.0) < 4 * se, (b, se)
    b_rtn, se_rtn = slope_and_se(rtn)
    assert abs(b_rtn - 1.0) > 4 * se_rtn, (b_rtn, se_rtn)  # round-to-nearest fails the same check


def test_bf16_evaluation_along_a_several_seed_direction_is_unbiased():
    """A direction of several terms (GV's guide v, BSZO-B's eigenvector, any HiZOO perturbation through P) is
    accumulated in float32 and rounded to bf16 stochastically, like a single seed: with weights near 1, eps d is
    below half a bf16 ulp almost everywhere, so rounding to nearest would leave the forward unperturbed. The
    perturbation the forward sees regresses on eps d with slope 1 (round to nearest: about 0)."""
    n, eps = 1 << 16, 5e-4
    g = torch.Generator().manual_seed(0)
    w16 = (1.0 + 0.01 * torch.randn(n, generator=g)).to(torch.bfloat16)
    model = _Vector(w16, torch.zeros(n))
    engine = Engine(model)
    d = Direction((1, 2), (0.6, 0.8))
    engine.evaluate(model, d, eps)
    x = eps * engine.direction_tensor(d, engine.blocks[0]).double()
    y = model.seen[-1].double() - w16.double()
    slope = float((x * y).sum() / (x * x).sum())
    se = float((y - slope * x).std() / (x * x).sum().sqrt())
    assert se < 0.05 and abs(slope - 1.0) < 4 * se, (slope, se)


def test_the_differentiable_swap_in_gives_the_directional_derivative_of_a_weighted_direction():
    """Inside `differentiable(d, alpha, scales)` the forward sees theta + alpha s d with d = sum_j w_j z_j, and
    the backward gives dL/ds = alpha <grad L(theta'), d> (the meta-gradient of a block scale). For
    L = a . w + |w|^2 / 2, grad L(theta') = a + theta' in closed form, so the weights w_j must enter the
    backward's regenerated d as they enter the forward's."""
    n, alpha = 500, 1e-2
    g = torch.Generator().manual_seed(4)
    model = _Vector(torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64))
    engine = Engine(model)
    d = Direction((3, 8), (0.5, -2.0))
    direction = engine.direction_tensor(d, engine.blocks[0]).double()
    scales = torch.ones(1, dtype=torch.float64, requires_grad=True)
    with engine.differentiable(d, alpha, scales):
        model().backward()
    shifted = model.w.detach() + alpha * direction
    assert torch.allclose(model.seen[-1], shifted, rtol=0, atol=1e-8)  # d made in float32 here
    want = alpha * float((model.a + shifted) @ direction)
    assert float(scales.grad) == pytest.approx(want, rel=1e-6)


def test_evaluate_sees_theta_plus_eps_direction():
    model = TwoBlock()
    engine = Engine(model)
    d = Direction((11, 12), (1.0, -0.5), block_scales=[1.0, 0.5, 2.0, 0.0, 1.0, 3.0])
    got = engine.evaluate(model, d, 1e-2)
    ref = TwoBlock()
    with torch.no_grad():
        for b, (_, p) in zip(engine.blocks, ref.named_parameters()):
            p.add_(1e-2 * engine.direction_tensor(d, b))
    assert got == pytest.approx(float(ref()), rel=1e-6, abs=1e-7)


def test_tied_weights_are_one_block_perturbed_consistently():
    model = TiedLM()
    engine = Engine(model)
    names = engine.block_names()
    assert "head.weight" not in names and "embed.weight" in names
    d = Direction.single(5)
    got = engine.evaluate(model, d, 1e-2)
    ref = TiedLM()
    with torch.no_grad():
        for b, p in zip(engine.blocks, ref.parameters()):  # parameters() also lists the tied tensor once
            p.add_(1e-2 * engine.direction_tensor(d, b))
    assert got == pytest.approx(float(ref()), rel=1e-6)
    engine.update(d, 0.1)
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_tied_block_is_perturbed_once_per_evaluation(dtype):
    """The embedding and lm_head modules hold one block: one noise generation serves both, and the loss is
    the one a separately perturbed copy of the model gives."""
    model = TiedLM().to(dtype)
    engine, d = Engine(model), Direction.single(5)
    got = engine.evaluate(model, d, 1e-2)
    assert engine.counters.noise_elems == engine.counters.total_elems
    again = Engine(TiedLM().to(dtype))
    again._shared = set()  # no reuse: the tied block generated for each of its modules
    assert again.evaluate(again.model, d, 1e-2) == got
    assert again.counters.noise_elems > again.counters.total_elems


def test_evaluate_restores_even_when_the_closure_raises():
    model = TwoBlock()
    engine = Engine(model)
    before = snapshot(model)

    def boom():
        model()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        engine.evaluate(boom, Direction.single(1), 0.1)
    assert same_bits(before, snapshot(model))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_update_is_unbiased(dtype, sign):
    """An update much smaller than one ulp still moves the weights by delta in expectation."""
    n = 200_000
    p = torch.full((n,), sign, dtype=dtype)
    delta = 1e-4  # bf16 ulp at 1.0 is 7.8e-3, fp16's 9.8e-4: round-to-nearest would never move
    src = torch.full((n,), sign * (1.0 - delta))
    stochastic_round_(p, src, seed=1)
    assert abs((1.0 - sign * p.float().mean().item()) - delta) < 0.1 * delta
    nearest = src.to(dtype)
    assert torch.equal(nearest.float(), torch.full((n,), sign)), "sanity: nearest rounding loses the update"
    assert torch.equal(src, torch.full((n,), sign * (1.0 - delta))), "src must be left alone by default"


def test_bf16_stochastic_rounding_is_unbiased_across_magnitudes_and_exact_on_representable_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * torch.logspace(-6, 6, 4096)  # many exponents, both signs
    draws = torch.stack([torch.empty(4096, dtype=torch.bfloat16) for _ in range(400)])
    for i in range(400):
        stochastic_round_(draws[i], x, seed=i)
    near = x.to(torch.bfloat16).float()
    ulp = (torch.nextafter(near.to(torch.bfloat16), torch.full_like(near, math.inf).to(torch.bfloat16)).float()
           - near).abs()
    mean_err = (draws.float().mean(0) - x) / ulp  # in ulps; each draw's error is within one ulp
    assert mean_err.abs().max() < 0.15 and abs(mean_err.mean()) < 0.01
    exact = x.to(torch.bfloat16)
    out = torch.empty_like(exact)
    stochastic_round_(out, exact.float(), seed=3)
    assert torch.equal(out, exact)


def test_low_precision_engine_update_matches_fp32_in_expectation():
    torch.manual_seed(0)
    w32 = torch.nn.Linear(400, 400, bias=False)
    w16 = torch.nn.Linear(400, 400, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        w16.weight.copy_(w32.weight)
        w32.weight.copy_(w16.weight.float())
    d = Direction.single(3)
    e32, e16 = Engine(w32), Engine(w16)
    start = w32.weight.detach().clone()
    step = 1e-5  # far below the bf16 ulp of weights ~0.02 (1.2e-4)
    for t in range(20):
        e32.update(d, step, rounding_seed=t)
        e16.update(d, step, rounding_seed=t)
    # bf16 moves along z as far as fp32 does: the projections of the two moves on z agree. (A signed
    # mean over a zero-mean z would pass even if bf16 never moved, as it does under round-to-nearest.)
    z = e32.direction_tensor(d, e32.blocks[0])
    along32 = float(((w32.weight.detach() - start) * z).sum())
    along16 = float(((w16.weight.detach().float() - start) * z).sum())
    assert along32 == pytest.approx(-20 * step * float((z * z).sum()), rel=1e-3)
    assert along16 == pytest.approx(along32, rel=0.02)


def test_pass_counts_beat_the_reference():
    model = TwoBlock()
    cases = {"mezo": (2, 3, 3.0), "mezo-gv": (4, 5, 8.0), "mezo-greedy": (4, 5, 5.0), "bszo": (3, 3, 4.0),
             "bszo-b": (4, 4, 5.0)}
    # bszo-b's extra observation is along Sigma's principal eigenvector; after two axis updates Sigma is
    # diagonal, so that vector is an axis and its zero-weight term generates no noise (2 + 1 + 2 draws)
    pool = {"mezo-gv": dict(pool_size=2), "mezo-greedy": dict(pool_size=2)}  # counts below are for M = 2
    for name, (forwards, sweeps, noise_sweeps) in cases.items():
        opt = build_optimizer(name, model, lr=1e-3, **pool.get(name, {}))
        c0 = dict(opt.engine.counters.as_dict())
        opt.step(model)
        c1 = opt.engine.counters.as_dict()
        assert c1["forwards"] - c0["forwards"] == forwards, name
        assert c1["sweeps"] - c0["sweeps"] == sweeps, name
        assert c1["noise_sweeps"] - c0["noise_sweeps"] == pytest.approx(noise_sweeps), name
    # MeZO's reference implementation: 4 sweeps and 4 noise generations per step (+eps, -2eps, +eps, update)
    assert cases["mezo"][1] < 4 and cases["mezo"][2] < 4


class _Seen(Quadratic):
    """A quadratic whose forward records the (perturbed) theta it saw and the loss it returned."""

    def __init__(self):
        super().__init__(dim=37)
        self.seen, self.losses = [], []

    def forward(self):
        loss = super().forward()
        self.seen.append(self.theta.detach().clone())
        self.losses.append(float(loss))
        return loss


def _expected_update(name, hp, theta, seen, losses):
    """-lr * (the method's combination of the evaluated directions), rebuilt from what the forwards saw.

    The evaluated directions are (theta_seen - theta) / eps; the weights come from the papers'
    formulas applied to the recorded losses, independently of the optimizer's code."""
    eps, lr = hp["eps"], hp["lr"]
    dirs = [(s - theta).double() / eps for s in seen]
    if name == "mezo":
        return -lr * (losses[0] - losses[1]) / (2 * eps) * dirs[0]
    if name in ("mezo-gv", "mezo-greedy"):
        m = hp["pool_size"]
        order = sorted(range(m), key=lambda i: losses[i])
        top = 1 if name == "mezo-greedy" else math.floor(hp["alpha"] * m)
        w = [1.0 / top if i in order[:top] else (0.0 if name == "mezo-greedy" else -1.0 / (m - top)) for i in range(m)]
        v = sum(wi * dirs[i] for i, wi in enumerate(w))
        assert torch.allclose(dirs[m], v, rtol=1e-3, atol=1e-3), "the forward at +eps v did not see the guide v"
        return -lr * (losses[m] - losses[m + 1]) / (2 * eps) * v
    k, f0 = hp["k"], losses[0]  # BSZO: f0 unperturbed, then one forward per z_i (+ bszo-b's extra)
    basis = torch.stack(dirs[1:k + 1], dim=1)
    rows = torch.linalg.lstsq(basis, torch.stack(dirs[1:], dim=1)).solution.T  # observation directions d
    y = torch.tensor([(l - f0) / eps for l in losses[1:]], dtype=torch.float64)
    mu, _ = batch_posterior(rows, y, hp["sigma_prior"] ** 2, hp["sigma_noise_init"] ** 2)
    return -lr * basis @ mu


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["mezo", "mezo-gv", "mezo-greedy", "bszo", "bszo-b"]),
       seed=st.integers(0, 2**31 - 1), pool=st.integers(2, 5), k=st.integers(1, 4),
       source=st.sampled_from([GaussianNoise, NoiseTable]), path=st.sampled_from(["chunked", "block"]))
def test_regenerated_z_equals_evaluated_z(name, seed, pool, k, source, path):
    """Each update is -lr times the method's combination of the directions its forwards evaluated:
    fails for an update that regenerates another z, for wrong or sign-flipped weights, and for a
    BSZO posterior mean applied to the wrong seed. Both sources, on both noise paths (CPU, accelerator)."""
    model = _Seen()
    extra = {"mezo-gv": dict(pool_size=pool, alpha=0.5), "mezo-greedy": dict(pool_size=pool),
             "bszo": dict(k=k, m=k, sigma_prior=30.0, sigma_noise=1.0, adaptive_noise=False),
             "bszo-b": dict(k=k, m=k + 1, sigma_prior=30.0, sigma_noise=1.0, adaptive_noise=False)}.get(name, {})
    noise = source(chunk_size=16, path=path) if source is GaussianNoise else source(size=4096, chunk_size=16, path=path)
    opt = build_optimizer(name, model, lr=1e-3, eps=1e-3, seed=seed, noise=noise, **extra)
    for _ in range(2):
        theta = model.theta.detach().clone()
        model.seen, model.losses = [], []
        opt.step(model)
        want = _expected_update(name, opt.hp, theta, model.seen, model.losses)
        got = (model.theta.detach() - theta).double()
        assert torch.linalg.norm(got - want) <= 2e-3 * torch.linalg.norm(want), name


def test_one_mezo_step_matches_a_hand_computation_exactly():
    """theta' = theta - lr * g * z with g = [L(theta + eps z) - L(theta - eps z)] / (2 eps), bit for bit."""
    model = Quadratic(dim=10)
    theta, lam, target = model.theta.detach().clone(), model.lam, model.target
    lr, eps, seed = 1e-2, 1e-3, 5
    opt = build_optimizer("mezo", model, lr=lr, eps=eps, seed=seed)
    opt.step(model)
    z = opt.engine.noise.z(derive_seed(seed, 0, 0), 0, (10,))  # direction 0 of step 0 of this run

    def loss(t):
        diff = t - target
        return float(0.5 * (lam * diff * diff).sum())

    def f32(x: float) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32)

    # the engine's documented arithmetic (l2o/noise.py axpy, Engine._apply): each product rounded to float32, then
    # added, never a fused multiply-add (which `add_(z, alpha=...)` may be on a CPU)
    lp, lm = loss(theta + z * f32(eps)), loss(theta + z * f32(-eps))
    g = (lp - lm) / (2 * eps)
    assert opt.last.losses == [lp, lm] and opt.last.projected_grads == [g]
    assert torch.equal(model.theta.detach(), theta + (z * f32(g)) * f32(-lr))
    assert not torch.equal(model.theta.detach(), theta + (z * f32(g)) * f32(lr))


def test_engine_can_drive_an_explicit_frozen_parameter_set():
    """Bilevel-ZOFO moves the frozen backbone by ZO while an adapter trains by backprop."""
    model = TwoBlock()
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [(n, p) for n, p in model.named_parameters() if n.startswith("net.0")]
    engine = Engine(model, named_params=chosen)
    assert engine.block_names() == ["net.0.weight", "net.0.bias"]
    before = snapshot(model)
    engine.evaluate(model, Direction.single(3), 1e-2)
    assert same_bits(before, snapshot(model))
    engine.update(Direction.single(3), 0.1)
    after = snapshot(model)
    assert not torch.equal(before["net.0.weight"], after["net.0.weight"])
    assert torch.equal(before["net.3.weight"], after["net.3.weight"])


@pytest.mark.parametrize("noise", ["gaussian", "table"])
def test_float64_weights_are_updated_in_float64(noise):
    """theta <- theta + fl64(-step * z) in float64 (defect 7: the update went through float32, so every entry
    ended up equal to its float32 rounding); evaluation perturbs in float64 too."""
    model = Quadratic(dim=1000, dtype=torch.float64)
    engine = Engine(model, noise)
    theta = model.theta.detach().clone()
    d, step = Direction.single(4), 1e-3
    z = engine.direction_tensor(d, engine.blocks[0]).double()
    engine.update(d, step)
    assert torch.equal(model.theta.detach(), theta + z * -step)
    assert (model.theta.detach().float().double() != model.theta.detach()).float().mean() > 0.99
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(m.theta.detach().clone()))  # runs inside the swap
    engine.evaluate(model, d, 1e-3)
    assert seen[0].dtype == torch.float64 and torch.equal(seen[0], model.theta.detach() + z * 1e-3)
