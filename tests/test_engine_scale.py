"""The engine at accelerator scale (issue 10): distinct keys, the block path and its host-call bound, no hook trace."""

import pytest
import torch

from l2o.engine import Direction, Engine
from l2o.noise import TAG_NOISE, TAG_ROUND, GaussianNoise, NoiseTable, derive_seed, philox_key
from l2o.optim import build_optimizer
from tests.zo_fixtures import TwoBlock, same_bits, snapshot

pytest.importorskip("triton")  # the block path is the Triton kernel (interpreted on CPU tensors)


def opt13b_block_sizes() -> list[int]:
    """OPT-13B's trainable tensors in named_parameters order, from its config (lm_head is tied)."""
    h, ffn, layers, vocab, positions = 5120, 20480, 40, 50272, 2048 + 2
    sizes = [vocab * h, positions * h]
    for _ in range(layers):
        sizes += [h * h, h] * 4                                   # k, v, q, out projections
        sizes += [h, h]                                           # self_attn_layer_norm
        sizes += [ffn * h, ffn, h * ffn, h, h, h]                 # fc1, fc2, final_layer_norm
    return sizes + [h, h]                                         # decoder.final_layer_norm


# ------------------------------------------------------------------ distinct streams
def test_keys_use_every_bit_of_the_seed_and_are_distinct_per_block_and_tag():
    """torch's CPU generator keeps only a seed's low 32 bits; the Philox key keeps all 64 (and block, tag)."""
    x = 123456789
    src = GaussianNoise()
    assert not torch.equal(src.z(x, 1, (64,)), src.z(x + (1 << 32), 1, (64,)))
    keys = {philox_key(s, b, t) for s in (x, x + (1 << 32), x + (1 << 63)) for b in (0, 1, (1 << 32) - 1)
            for t in (TAG_NOISE, TAG_ROUND)}
    assert len(keys) == 18
    with pytest.raises(ValueError):
        philox_key(1, 1 << 32)


def test_no_repeated_key_in_a_simulated_20k_step_opt13b_run():
    """Every direction of a 20,000-step run (8 seeds a step: GV/Greedy pools, BSZO's k) and every block of
    OPT-13B get their own Philox key: the run's seeds are distinct and the key is injective in (seed, block)."""
    sizes = opt13b_block_sizes()
    assert len(sizes) == 644 and abs(sum(sizes) - 12.85e9) < 0.01e9
    seeds = {derive_seed(0, t, j) for t in range(20_000) for j in [*range(8), 1 << 20]}
    assert len(seeds) == 20_000 * 9, "two directions of the run share a seed"
    sample = sorted(seeds)[:300]
    keys = {philox_key(s, b) for s in sample for b in range(len(sizes))}
    assert len(keys) == len(sample) * len(sizes)


# ------------------------------------------------------------------ the block path and its host calls
BLOCK_SOURCES = [GaussianNoise(path="block"), NoiseTable(size=1 << 16, chunk_size=256, path="block")]


@pytest.mark.parametrize("src", BLOCK_SOURCES, ids=lambda s: s.name)
def test_block_path_z_is_reproducible_gaussian_and_distinct(src):
    a = src.z(123, 4, (500, 300))
    assert torch.equal(a, src.z(123, 4, (500, 300)))
    assert not torch.equal(a, src.z(124, 4, (500, 300))) and not torch.equal(a, src.z(123, 5, (500, 300)))
    assert abs(a.mean().item()) < 0.01 and abs(a.var().item() - 1.0) < 0.02
    assert abs(((a - a.mean()) ** 4).mean().item() / a.var().item() ** 2 - 3.0) < 0.1


@pytest.mark.parametrize("make", [lambda p: GaussianNoise(chunk_size=64, path=p),
                                  lambda p: NoiseTable(size=1 << 16, chunk_size=256, path=p)],
                         ids=["gaussian", "table"])
def test_both_paths_give_the_same_bits(make):
    """z, theta + c z in float32 (also in place), the fused bf16 perturbation and float64 are the same on
    the CPU's chunked path and the accelerator's block path (the Triton kernel, interpreted here)."""
    shape = (37, 300)  # not a multiple of a chunk or a Philox group: exercises the partial last ones
    chunked, block = make("chunked"), make("block")
    assert torch.equal(chunked.z(9, 3, shape), block.z(9, 3, shape))
    base = torch.randn(shape)
    for dtype, kw in [(torch.float32, {}), (torch.float64, {}), (torch.bfloat16, dict(round_seed=11)),
                      (torch.float16, dict(round_seed=11))]:
        outs = []
        for src in (chunked, block):
            out = torch.empty(shape, dtype=dtype)
            src.axpy(out, base.to(dtype), 9, 3, 0.01, **kw)
            outs.append(out)
        assert torch.equal(*outs), dtype
    in_place = [base.clone(), base.clone()]
    chunked.add(in_place[0], 9, 3, -0.3)
    block.add(in_place[1], 9, 3, -0.3)
    assert torch.equal(*in_place)


class Wide(torch.nn.Module):
    """One large block and a small one, like a transformer's matrices and biases."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(128, 128)
        self.register_buffer("x", torch.randn(4, 128))

    def forward(self):
        return self.lin(self.x).square().mean()


@pytest.mark.parametrize("name", ["mezo", "mezo-gv", "bszo"])
@pytest.mark.parametrize("make", [lambda p: GaussianNoise(chunk_size=64, path=p),
                                  lambda p: NoiseTable(size=1 << 16, chunk_size=64, path=p)],
                         ids=["gaussian", "table"])
def test_block_path_bounds_host_calls_per_block_whatever_its_size(name, make):
    """On the accelerator code path (forced here on the CPU) a z(seed, b) costs <= 2 host calls; the
    CPU's chunked path costs one per chunk (256 for the 128x128 weight), so the bound can fail."""
    counts = {}
    for path in ("block", "chunked"):
        model = Wide()
        opt = build_optimizer(name, model, lr=1e-3, noise=make(path))
        for _ in range(2):
            opt.step(model)
        counts[path] = opt.engine.counters
    blocks = len(opt.blocks)
    block, chunked = counts["block"], counts["chunked"]
    assert block.max_calls_per_z <= 2
    assert block.noise_calls <= 2 * block.noise_generations
    # GV's guide has M seeds per forward (M = 4 by default)
    assert block.noise_calls_per_sweep <= 2 * blocks * max(2, opt.hp.get("pool_size", 2))
    assert chunked.max_calls_per_z >= 256 and chunked.noise_calls_per_sweep > 50 * blocks


def test_noise_path_can_be_chosen_by_environment(monkeypatch):
    monkeypatch.setenv("L2O_NOISE_PATH", "block")
    assert GaussianNoise().path_for(torch.device("cpu")) == "block"
    monkeypatch.setenv("L2O_NOISE_PATH", "sideways")
    with pytest.raises(ValueError, match="L2O_NOISE_PATH"):
        GaussianNoise()
    monkeypatch.delenv("L2O_NOISE_PATH")
    assert GaussianNoise().path_for(torch.device("cpu")) == "chunked"
    assert GaussianNoise().path_for(torch.device("meta")) == "block"


# ------------------------------------------------------------------ item 5: no hook trace
def _hook_dicts(model):
    return {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m._forward_hooks_always_called))
            for name, m in model.named_modules()}


def test_optimizers_leave_no_hooks_on_the_model_between_evaluations():
    model = TwoBlock()
    user = model.net[0].register_forward_hook(lambda m, a, o: None)  # the user's own hook stays
    baseline = _hook_dicts(model)
    seen_during = []

    def closure():
        seen_during.append(sum(len(m._forward_pre_hooks) for m in model.modules()))
        return model()

    opts = [build_optimizer(n, model, lr=1e-4, seed=i) for i, n in enumerate(["mezo", "mezo-gv", "bszo", "mezo"])]
    for opt in opts:
        for _ in range(2):
            opt.step(closure)
        assert _hook_dicts(model) == baseline

        def boom():
            model()
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            opt.step(boom)
        assert _hook_dicts(model) == baseline
    engine = Engine(model)
    engine.evaluate(closure, Direction.single(1), 1e-3)
    assert _hook_dicts(model) == baseline
    scales = torch.ones(len(engine.blocks), requires_grad=True)  # the meta-gradient's differentiable swap-in
    with engine.differentiable(Direction.single(2), 1e-3, scales):
        model().sum().backward()
    assert scales.grad is not None and _hook_dicts(model) == baseline
    # during an evaluation exactly one engine's hooks are installed (one per owning module)
    assert max(seen_during) == len(opts[0].engine._owners)
    user.remove()


@pytest.mark.parametrize("name,dtype", [("mezo", torch.float32), ("mezo", torch.bfloat16), ("mezo", torch.float16),
                                        ("mezo-gv", torch.bfloat16), ("bszo", torch.float32)])
def test_a_run_on_the_block_path_equals_the_chunked_run(name, dtype):
    """Evaluations, updates (one seed or several) and their stochastic rounding: the accelerator path
    reproduces the CPU run bit for bit (so a resumed or replayed run may switch paths)."""
    runs = []
    for path in ("chunked", "block"):
        model = TwoBlock(dtype=dtype)
        opt = build_optimizer(name, model, lr=1e-2, eps=1e-2, seed=3, noise=GaussianNoise(path=path),
                              **({"pool_size": 2} if name == "mezo-gv" else {}))
        losses = [float(opt.step(model)) for _ in range(3)]
        runs.append((losses, snapshot(model)))
    assert runs[0][0] == runs[1][0]
    assert same_bits(runs[0][1], runs[1][1])
