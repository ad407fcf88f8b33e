"""The portable generator (l2o/noise.py): Philox4x64-10 against its published answers and a second
implementation, z's exact distribution, independence, and the same bits whatever the threads, chunks,
launch grid or path (the Triton kernel interpreted on CPU tensors; its GPU compilation checked for FMAs)."""

import hashlib
import math
import re
import statistics

import numpy as np
import pytest
import torch

from l2o import noise
from l2o.noise import CHUNK, LEVELS_SHA256, GaussianNoise, levels, philox_key, random_bits

_M = (1 << 64) - 1


def philox4x64_10(counter, key):
    """Random123's Philox4x64-10 in plain Python integers: an independent implementation to check against."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = divmod(0xD2E7470EE14C6C93 * c0, 1 << 64)
        hi1, lo1 = divmod(0xCA5A826395121157 * c2, 1 << 64)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B97F4A7C15) & _M, (k1 + 0xBB67AE8584CAA73B) & _M
    return c0, c1, c2, c3


def reference_u(key, n):
    """u_i = (W_{(i mod 16) div 4}(i div 16) >> 16 (i mod 4)) mod 2^16 (the module docstring's layout)."""
    out = []
    for i in range(n):
        words = philox4x64_10((i // 16, 0, 0, 0), key)
        out.append((words[(i % 16) // 4] >> (16 * (i % 4))) & 0xFFFF)
    return out


def cpu_u(key, n, chunk=CHUNK):
    u = np.zeros(n, dtype=np.int64)

    def work(a, b, bits):
        u[a:b] = bits

    noise._stream(key, n, work, chunk)
    return u.tolist()


def test_philox_matches_random123s_known_answer_and_a_second_implementation():
    assert philox4x64_10((0, 0, 0, 0), (0, 0)) == (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B,
                                                   0x7E68B68AEC7BA23B)  # Random123's kat_vectors
    assert philox4x64_10((_M,) * 4, (_M, _M)) == (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6,
                                                  0xA09CAEBF594F0BA0)
    u = cpu_u((0, 0), 16)
    assert u[:4] == [0x314C, 0xCA36, 0x4D9E, 0x1655]  # word 0 of counter 0, low 16 bits first
    for key in [philox_key(7, 3), philox_key(2**64 - 1, 2**32 - 1, 2**32 - 1), (0, 5)]:
        assert cpu_u(key, 200) == reference_u(key, 200)


def test_z_is_the_level_of_the_elements_16_bits():
    want = [float(levels()[u]) for u in reference_u(philox_key(42, 9), 333)]
    assert GaussianNoise().z(42, 9, (333,)).tolist() == want


def test_the_levels_are_the_normal_quantiles_with_unit_variance():
    q = levels().astype(np.float64)
    assert hashlib.sha256(levels().tobytes()).hexdigest() == LEVELS_SHA256
    assert q.size == 65536 and np.all(np.diff(q) > 0) and np.array_equal(q, -q[::-1])  # sorted, antisymmetric
    assert q.sum() == 0.0 and abs(np.mean(q ** 2) - 1.0) < 1e-8
    assert abs(np.mean(q ** 4) - 2.99925) < 1e-5 and abs(q.max() - 4.32496) < 1e-5
    nd = statistics.NormalDist()
    for t in (-4.0, -3.0, -1.5, -0.3, 0.0, 0.7, 2.0, 3.5):  # P(z <= t) is Phi(t) to within one level
        assert abs(np.mean(q <= t) - nd.cdf(t)) <= 1 / 65536 + 1e-5 * abs(t)


def test_moments_and_tails_of_a_large_sample():
    src, n = GaussianNoise(), 1 << 22
    z = torch.cat([src.z(s, 1, (n // 4,)) for s in range(4)]).double()
    se = 1 / math.sqrt(n)
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs((z ** 4).mean().item() - 3) < 5 * math.sqrt(96) * se
    nd = statistics.NormalDist()
    for t in (1.0, 2.0, 3.0, 4.0):
        p = 2 * nd.cdf(-t)
        assert abs((z.abs() > t).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n), t


def test_elements_seeds_blocks_and_word_halves_are_uncorrelated():
    src, n = GaussianNoise(), 1 << 20
    a = src.z(1, 0, (n,)).double()
    bound = 5 / math.sqrt(n)
    pairs = [(a[:-1], a[1:]), (a, src.z(2, 0, (n,)).double()), (a, src.z(1, 1, (n,)).double()),
             (a[0::4], a[1::4]), (a[0::16], a[4::16]),  # 16-bit quarters of one word; words of one counter
             (a, src.z(1 + (1 << 32), 0, (n,)).double())]
    for x, y in pairs:
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < bound * math.sqrt(len(a) / len(x))


def test_z_does_not_depend_on_threads_or_chunks(monkeypatch):
    want = GaussianNoise().z(5, 2, (100_003,))
    for threads, chunk in [("1", 16), ("3", 1008), ("2", CHUNK)]:
        monkeypatch.setenv("L2O_NOISE_THREADS", threads)
        assert torch.equal(GaussianNoise(chunk_size=chunk).z(5, 2, (100_003,)), want)
    with pytest.raises(ValueError, match="multiple of 16"):
        GaussianNoise(chunk_size=1000)


def test_the_kernel_does_not_depend_on_its_launch_grid(monkeypatch):
    pytest.importorskip("triton")
    from l2o import noise_kernels

    n = 2000
    want, base, want_axpy = GaussianNoise().z(5, 2, (n,)), torch.randn(n), torch.empty(n)
    GaussianNoise().axpy(want_axpy, base, 5, 2, 0.25)
    want_bits = random_bits(8, n, "cpu")
    for groups in (4, 64):  # 32 programs of 64 elements, or 2 of 1024
        monkeypatch.setattr(noise_kernels, "GROUPS_CPU", groups)
        assert torch.equal(GaussianNoise(path="block").z(5, 2, (n,)), want), groups
        out = torch.empty(n)
        GaussianNoise(path="block").axpy(out, base, 5, 2, 0.25)
        assert torch.equal(out, want_axpy) and torch.equal(random_bits(8, n, "cpu", path="block"), want_bits)


@pytest.mark.parametrize("flags", [dict(HAS_BASE=True, ROUND=False, BITS=False),
                                   dict(HAS_BASE=True, ROUND=True, BITS=False),
                                   dict(HAS_BASE=False, ROUND=False, BITS=True)], ids=["axpy", "bf16", "bits"])
def test_the_kernel_compiles_for_a_gpu_without_fused_multiply_adds(flags):
    """Compiled for an H100/H200 (sm_90) here, without a GPU: multiply and add stay two roundings, as on the
    CPU (with Triton's default fp fusion they become FMAs and the GPU's theta + c z would differ)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from l2o import noise_kernels

    out = "*bf16" if flags["ROUND"] else ("*i16" if flags["BITS"] else "*fp32")
    signature = {"out_ptr": out, "base_ptr": "*fp32", "levels_ptr": "*fp32", "n": "i64", "k0": "u64", "k1": "u64",
                 "r0": "u64", "r1": "u64", "coeff": "fp32"}
    src = ASTSource(triton.jit(noise_kernels._noise_kernel), signature,
                    constexprs=dict(flags, GROUPS=noise_kernels.GROUPS_GPU))
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=noise_kernels.COMPILE_OPTIONS).asm["ptx"]
    assert re.search(r"mul\.hi\.u64", ptx)
    assert not re.search(r"\bfma\.", ptx)
    if not flags["BITS"]:
        assert re.search(r"mul(\.rn)?\.f32", ptx)


def test_every_step_and_index_of_a_run_gets_its_own_seed():
    """derive_seed(run seed, step t, index j) keys every direction a run draws (direction j of step t, the step's
    rounding bits at index 2^20, LOZO's V at 2^21): two (t, j) with one seed would reuse a direction, e.g. an n-SPSA
    step's or GV pool's direction j at step t coming back as direction t at step j. All distinct, across run seeds
    too."""
    from l2o.noise import derive_seed

    indices = list(range(8)) + [1 << 20, 1 << 21]
    seeds = [derive_seed(run, t, j) for run in range(3) for t in range(64) for j in indices]
    assert len(set(seeds)) == len(seeds)
