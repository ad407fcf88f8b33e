"""The GPU side of the portable noise (`l2o/noise.py`): one Triton kernel that generates and applies z.

    out_i = base_i + fl32(c * z_i)          (HAS_BASE; else out_i = z_i)
    z_i   = LEVELS[u_i],   u_i = 16 bits of Philox4x64-10(counter (i div 16, 0, 0, 0), key)  (see noise.py)
    ROUND: out_i = bf16 of the float32 bit pattern out_i + (r_i XOR 2^15) with its low 16 bits cleared,
           r_i = the 16-bit word i of the rounding key's stream (stochastic rounding, unbiased; the XOR is
           noise.stochastic_round_'s "r_i as a signed 16-bit integer, plus 2^15")
    BITS:  out_i = u_i (the raw 16-bit words of the key's stream, stored as int16)

A program covers GROUPS Philox groups of 16 elements: it computes each group's four 64-bit words once,
for both keys at once when ROUND (a [GROUPS, 2] counter tile), then hands each element its 16 bits. The
multiply and the add are two roundings (fp fusion is off at launch), exactly as the CPU side computes them,
so the result is bit-identical to it whatever the grid, the GPU model or MIG slice.

Kernels are built per device: compiled (`triton.jit`) for GPU tensors, interpreted
(`triton.runtime.interpreter`) for CPU tensors, which is how the tests check them against the CPU side.
"""

from __future__ import annotations

import triton
import triton.language as tl

GROUPS_GPU = 128      # 2048 elements per program on a GPU
GROUPS_CPU = 1024     # the interpreter runs a program at a time: fewer, larger programs
COMPILE_OPTIONS = {"enable_fp_fusion": False}  # multiply and add rounded separately, as on the CPU


def _noise_kernel(out_ptr, base_ptr, levels_ptr, n, k0, k1, r0, r1, coeff,
                  HAS_BASE: tl.constexpr, ROUND: tl.constexpr, BITS: tl.constexpr, GROUPS: tl.constexpr):
    g = tl.program_id(0).to(tl.uint64) * GROUPS + tl.arange(0, GROUPS).to(tl.uint64)     # [G] Philox groups
    zero = g * 0
    if ROUND:  # both streams in one tile [G, 2]: (noise key, rounding key)
        c0 = tl.join(g, g)
        key0 = tl.join(zero + k0.to(tl.uint64), zero + r0.to(tl.uint64))
        key1 = tl.join(zero + k1.to(tl.uint64), zero + r1.to(tl.uint64))
    else:
        c0, key0, key1 = g, zero + k0.to(tl.uint64), zero + k1.to(tl.uint64)
    c1 = c0 * 0
    c2, c3 = c1, c1
    for _ in tl.static_range(10):  # Philox4x64-10 (Random123): two 64x64->128 products a round, then a key bump
        p0, p2 = c0, c2
        c0 = tl.math.umulhi(p2, 0xCA5A826395121157) ^ c1 ^ key0
        c2 = tl.math.umulhi(p0, 0xD2E7470EE14C6C93) ^ c3 ^ key1
        c1 = p2 * 0xCA5A826395121157
        c3 = p0 * 0xD2E7470EE14C6C93
        key0 = key0 + 0x9E3779B97F4A7C15
        key1 = key1 + 0xBB67AE8584CAA73B
    if ROUND:
        w0, q0 = tl.split(c0)
        w1, q1 = tl.split(c1)
        w2, q2 = tl.split(c2)
        w3, q3 = tl.split(c3)
    else:
        w0, w1, w2, w3 = c0, c1, c2, c3
    j = tl.arange(0, 16)[None, :]                                                          # element of the group
    shift, word = ((j % 4) * 16).to(tl.uint64), j // 4
    offs = g[:, None].to(tl.int64) * 16 + j                                               # [G, 16]
    mask = offs < n
    u = tl.where(word == 0, w0[:, None],
                 tl.where(word == 1, w1[:, None], tl.where(word == 2, w2[:, None], w3[:, None])))
    u = (u >> shift) & 0xFFFF
    if BITS:
        tl.store(out_ptr + offs, u.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    else:
        v = tl.load(levels_ptr + u.to(tl.int32))
        if HAS_BASE:
            v = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32) + v * coeff
        if ROUND:
            r = tl.where(word == 0, q0[:, None],
                         tl.where(word == 1, q1[:, None], tl.where(word == 2, q2[:, None], q3[:, None])))
            r = (r >> shift) & 0xFFFF
            bits = (v.to(tl.uint32, bitcast=True) + (r ^ 0x8000).to(tl.uint32)) & 0xFFFF0000  # r + 2^15 as int16
            tl.store(out_ptr + offs, bits.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=mask)
        else:
            tl.store(out_ptr + offs, v, mask=mask)


_KERNELS: dict = {}


def _kernel(device):
    """The kernel for tensors on `device`: compiled for a GPU, interpreted for the CPU (tests)."""
    kind = "interpreted" if device.type == "cpu" else "compiled"
    if kind not in _KERNELS:
        if kind == "interpreted":
            from triton.runtime.interpreter import InterpretedFunction

            _KERNELS[kind] = InterpretedFunction(_noise_kernel)
        else:
            _KERNELS[kind] = triton.jit(_noise_kernel)
    return _KERNELS[kind]


def launch(out, levels, key, base=None, coeff: float = 0.0, round_key=None, bits: bool = False) -> None:
    """One launch over a contiguous `out` (float32; bfloat16 with `round_key`; int16 with `bits`)."""
    n = out.numel()
    if n == 0:
        return
    groups = GROUPS_GPU if out.device.type != "cpu" else min(GROUPS_CPU, triton.next_power_of_2(triton.cdiv(n, 16)))
    r0, r1 = round_key if round_key is not None else (0, 0)
    grid = (triton.cdiv(n, 16 * groups),)
    _kernel(out.device)[grid](
        out, base if base is not None else out, levels, n, key[0], key[1], r0, r1, float(coeff),
        HAS_BASE=base is not None, ROUND=round_key is not None, BITS=bits, GROUPS=groups, **COMPILE_OPTIONS)
