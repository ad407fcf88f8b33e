"""The noise engine: determinism, exact restore in every dtype, unbiased low-precision updates, pass counts."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2o.engine import Direction, Engine, stochastic_round_
from l2o.noise import GaussianNoise, NoiseTable
from l2o.optim import build_optimizer
from tests.zo_fixtures import Quadratic, TiedLM, TwoBlock, same_bits, snapshot

SOURCES = [GaussianNoise(chunk_size=64), NoiseTable(size=1 << 16, chunk_size=256)]


@pytest.mark.parametrize("src", SOURCES, ids=lambda s: s.name)
def test_z_is_regenerated_identically_and_differs_across_seeds_and_blocks(src):
    a = src.z(123, 4, (50, 30))
    assert torch.equal(a, src.z(123, 4, (50, 30)))
    assert not torch.equal(a, src.z(124, 4, (50, 30)))
    assert not torch.equal(a, src.z(123, 5, (50, 30)))


def test_gaussian_z_does_not_depend_on_thread_count_or_global_rng(monkeypatch):
    src = GaussianNoise(chunk_size=1000)
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


def test_inplace_restore_is_not_exact_in_bf16_which_is_why_we_swap():
    """MeZO's +eps, -2eps, +eps in bf16 on weights of scale 0.02 does not come back (documented defect)."""
    g = torch.Generator().manual_seed(0)
    w = (0.02 * torch.randn(10_000, generator=g)).to(torch.bfloat16)
    z = torch.randn(10_000, generator=g).to(torch.bfloat16)
    v = w.clone()
    v.add_(z, alpha=1e-3).add_(z, alpha=-2e-3).add_(z, alpha=1e-3)
    err = (v.float() - w.float()).abs().max().item()
    assert err > 1e-5, "in-place restore unexpectedly exact"


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_update_is_unbiased(dtype):
    """An update much smaller than one ulp still moves the weights by delta in expectation."""
    n = 200_000
    p = torch.ones(n, dtype=dtype)
    delta = 1e-4  # bf16 ulp at 1.0 is 7.8e-3, fp16's 9.8e-4: round-to-nearest would never move
    src = torch.full((n,), 1.0 - delta)
    stochastic_round_(p, src, seed=1)
    assert abs((1.0 - p.float().mean().item()) - delta) < 0.1 * delta
    nearest = src.to(dtype)
    assert torch.equal(nearest.float(), torch.ones(n)), "sanity: nearest rounding loses the update"


def test_low_precision_engine_update_matches_fp32_in_expectation():
    torch.manual_seed(0)
    w32 = torch.nn.Linear(400, 400, bias=False)
    w16 = torch.nn.Linear(400, 400, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        w16.weight.copy_(w32.weight)
        w32.weight.copy_(w16.weight.float())
    d = Direction.single(3)
    e32, e16 = Engine(w32), Engine(w16)
    step = 1e-5  # far below the bf16 ulp of weights ~0.02 (1.2e-4)
    for t in range(20):
        e32.update(d, step, rounding_seed=t)
        e16.update(d, step, rounding_seed=t)
    moved32 = w32.weight.detach() - w16.weight.detach().float()
    # bf16 tracks fp32 without bias: the mean difference is tiny relative to the total move
    total = (20 * step * e32.direction_tensor(d, e32.blocks[0])).abs().mean()
    assert moved32.mean().abs() < 0.05 * total


def test_pass_counts_beat_the_reference():
    model = TwoBlock()
    cases = {"mezo": (2, 3, 3.0), "mezo-gv": (4, 5, 8.0), "mezo-greedy": (4, 5, 5.0), "bszo": (3, 3, 4.0),
             "bszo-b": (4, 4, 5.0)}
    # bszo-b's extra observation is along Sigma's principal eigenvector; after two axis updates Sigma is
    # diagonal, so that vector is an axis and its zero-weight term generates no noise (2 + 1 + 2 draws)
    for name, (forwards, sweeps, noise_sweeps) in cases.items():
        opt = build_optimizer(name, model, lr=1e-3)
        c0 = dict(opt.engine.counters.as_dict())
        opt.step(model)
        c1 = opt.engine.counters.as_dict()
        assert c1["forwards"] - c0["forwards"] == forwards, name
        assert c1["sweeps"] - c0["sweeps"] == sweeps, name
        assert c1["noise_sweeps"] - c0["noise_sweeps"] == pytest.approx(noise_sweeps), name
    # MeZO's reference implementation: 4 sweeps and 4 noise generations per step (+eps, -2eps, +eps, update)
    assert cases["mezo"][1] < 4 and cases["mezo"][2] < 4


class _Recorder(GaussianNoise):
    """Records every z(seed, block) generated, to prove updates use exactly the evaluated directions."""

    def __init__(self):
        super().__init__(chunk_size=64)
        self.generated = {}
        self.phase = "eval"
        self.used = {"eval": set(), "update": set()}

    def write(self, out, seed, block):
        super().write(out, seed, block)
        key = (seed, block)
        self.used[self.phase].add(key)
        prev = self.generated.setdefault(key, out.clone())
        assert torch.equal(prev, out), f"z{key} regenerated differently"


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["mezo", "mezo-gv", "mezo-greedy", "bszo", "bszo-b"]),
       seed=st.integers(0, 2**31 - 1), pool=st.integers(2, 5), k=st.integers(1, 4))
def test_regenerated_z_equals_evaluated_z(name, seed, pool, k):
    model = Quadratic(dim=37)
    rec = _Recorder()
    extra = {"mezo-gv": {"pool_size": pool}, "mezo-greedy": {"pool_size": pool}, "bszo": {"k": k},
             "bszo-b": {"k": k}}.get(name, {})
    opt = build_optimizer(name, model, lr=1e-3, seed=seed, noise=rec, **extra)
    original = opt.engine.update

    def recording_update(*a, **kw):
        rec.phase = "update"
        try:
            return original(*a, **kw)
        finally:
            rec.phase = "eval"

    opt.engine.update = recording_update
    for _ in range(2):
        opt.step(model)
    assert rec.used["update"], "no update happened"
    assert rec.used["update"] <= rec.used["eval"], "the update used a z that was never evaluated"


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
