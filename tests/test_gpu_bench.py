"""The GPU suite (bench/gpu_bench.py) stays runnable: its smoke mode runs every configuration on the CPU."""

import re

import pytest

from bench import gpu_bench
from bench.engine_bench import build


def test_suite_shapes_are_the_issue_s_models():
    """OPT-13B in bf16 and OPT-1.3B in fp32, built on the meta device (no memory, no download)."""
    sizes = {}
    for shape, dtype in gpu_bench.SUITE:
        model, _ = build(shape, 1, 8, "meta", dtype)
        sizes[shape] = sum(p.numel() for p in model.parameters())
        assert str(next(model.parameters()).dtype) == {"bf16": "torch.bfloat16", "fp32": "torch.float32"}[dtype]
    assert (sizes["opt-13b"] == pytest.approx(12.85e9, rel=0.005)
            and sizes["opt-1.3b"] == pytest.approx(1.316e9, rel=0.01))


def test_smoke_mode_runs_every_configuration_and_the_portability_check(capsys):
    pytest.importorskip("triton")
    assert gpu_bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for config in gpu_bench.CONFIGS:
        assert len(re.findall(rf"^\| {re.escape(config)} \| [0-9.]+ \|", out, re.M)) == 2, config
    assert out.count("goal our MeZO / reference MeZO <= 0.75") == 2
    assert "z: bit-identical;  theta + c z (fp32): bit-identical;  fused bf16" in out
    assert "ledger replayed on the CPU: bit-identical weights" in out and "DIFFERENT" not in out
    assert "## offload cpu: tiny shape" in out and "block copies per forward: 1.00 per block" in out
    model, _ = build("tiny", 1, 8, "meta", "bf16")  # the bytes of the transformer blocks, counted here
    blocks = sum(p.numel() * p.element_size() for p in model.model.decoder.layers.parameters())
    assert f"link traffic per MeZO step: 2.00 copies per block, {2 * blocks} bytes" in out  # +eps and -eps forwards
    assert re.search(r"one update alone \(the streamed blocks' part on the CPU, where they live\): [0-9.]+ ms "
                     r"for \d+ elements", out)


@pytest.mark.slow
def test_smoke_mode_runs_every_configuration_on_the_accelerator_path(monkeypatch, capsys):
    """The Triton kernel (interpreted: minutes) under every configuration, as a GPU runs them."""
    pytest.importorskip("triton")
    monkeypatch.setenv("L2O_NOISE_PATH", "block")  # the code path a GPU takes, on CPU tensors
    assert gpu_bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    ours = re.findall(r"^\| (mezo\S*|bszo) \|.*\| block \| [0-9.]+ \| (\d+) \|$", out, re.M)
    assert len(ours) == 10 and all(int(calls) <= 2 for _, calls in ours)


def test_the_offload_case_is_opt13b_bf16_under_a_24_gib_cap_that_its_plan_fits():
    from fine_tune.plan import make_plan

    shape, dtype, cap = gpu_bench.OFFLOAD
    assert (shape, dtype, cap) == ("opt-13b", "bf16", 24.0)
    plan = make_plan(shape, dtype=dtype, batch=16, length=128, offload="cpu", gpu_gb=cap, long_answers=True)
    assert plan.fits and plan.devices[0].total < 8 * 1024 ** 3  # resident weights, 2 blocks, temporaries, ...


def test_without_cuda_the_full_suite_says_so(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_bench.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
