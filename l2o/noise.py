"""Noise sources: z(seed, block) regenerated on demand, never stored, never from the global RNG.

Every random number here is a pure function of (key, element index): the same on the CPU, on every GPU
model and MIG slice, whatever the thread count, chunking or launch grid. The generator ("philox4x64-10"):

    key(seed, block, tag) = (splitmix64(seed), tag * 2^32 + block)       128 bits, injective in the key
    W(g)  = Philox4x64-10(counter (g, 0, 0, 0), key)                     four 64-bit words W_0..W_3
    u_i   = (W_{(i mod 16) div 4}(i div 16) >> 16 (i mod 4)) mod 2^16     16 bits for element i
    z_i   = LEVELS[u_i]

Philox4x64-10 is Random123's (Salmon et al., SC 2011) and numpy's `Philox` bit generator, which the CPU
path calls; the GPU path is the Triton kernel in `l2o/noise_kernels.py`. LEVELS is the 16-bit quantile
table of N(0, 1): LEVELS[k] = fl32(s * Phi^-1((k + 1/2) / 2^16)), s = 1 / sqrt(mean of the squares) (a
float64 computation whose float32 result is checked against a pinned digest). So z takes 65,536 equally
likely values, antisymmetric (mean exactly 0), variance 1 - 6e-10, kurtosis 2.9992 (N(0, 1): 3), sixth
moment 14.97 (15), |z| <= 4.325. Only integer operations and one table read make z: nothing in it depends
on a device's floating-point functions.

Applying z is also exact everywhere: `axpy` computes out_i = base_i + fl32(fl32(alpha) * z_i), a multiply
and an add each rounded once (never fused into an FMA), in float32; float64 tensors in float64.
Stochastic rounding to bf16/fp16 takes its 16 bits per element from the same generator (tag TAG_ROUND).

Two sources behind one interface (`NoiseSource`):
- `GaussianNoise` (default): z as above, keyed by (seed, block).
- `NoiseTable`: one table of LEVELS values made once from a fixed key (Salimans et al. 2017); z(s, b)
  reads table slices at offsets (and signs) derived from (s, b, chunk): generation becomes a memory read.

Two code paths compute the same numbers (`path_for`): "chunked" (CPU: fixed chunks on up to
L2O_NOISE_THREADS threads, host calls grow with a block's size) and "block" (GPUs: one kernel launch or
gather per block, O(1) host calls). `path="block"` on CPU tensors runs the Triton kernel in Triton's
interpreter, which is how the tests show both paths agree bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
GENERATOR = "philox4x64-10"
LEVELS_SHA256 = "8babbcaf96568f10165a1eab530c0e5c92d04de96761b6dbb3dadfa94baba37f"
TAG_NOISE, TAG_ROUND, TAG_EVAL_ROUND, TAG_TABLE = 1, 3, 4, 5
CHUNK = 1 << 15  # CPU chunk: fits the L2 cache, and torch runs an op this size on the calling thread


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit integer hash (Steele et al.); a bijection of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*parts: int) -> int:
    """Hash a tuple of non-negative ints into a 63-bit key."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def _u64(x) -> np.ndarray:
    """Integers (Python ints of any sign, or arrays) as a uint64 array, modulo 2^64 like `mix`."""
    if isinstance(x, int):
        x = x & _MASK64
    arr = np.asarray(x)
    return np.atleast_1d(arr if arr.dtype == np.uint64 else arr.astype(np.int64).astype(np.uint64))


def splitmix64_array(x) -> np.ndarray:
    """`splitmix64` on a uint64 array (wrapping arithmetic)."""
    x = _u64(x) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mix_array(*parts) -> np.ndarray:
    """`mix` element-wise over broadcast integer arrays (for many chunk keys at once)."""
    h = np.uint64(0x243F6A8885A308D3)
    for p in parts:
        h = splitmix64_array(h ^ _u64(p))
    return h >> np.uint64(1)


def derive_seed(base_seed: int, step: int, index: int) -> int:
    """The seed of direction `index` at optimizer step `step` of a run seeded with `base_seed`."""
    return mix(0x5EED, base_seed, step, index)


def philox_key(seed: int, block: int = 0, tag: int = TAG_NOISE) -> tuple[int, int]:
    """The 128-bit Philox key of (seed, block, tag): distinct keys for distinct triples (block, tag < 2^32)."""
    if not (0 <= block < (1 << 32) and 0 <= tag < (1 << 32)):
        raise ValueError(f"block and tag must be in [0, 2^32), got {block}, {tag}")
    return splitmix64(int(seed) & _MASK64), (tag << 32) | block


# ---------------------------------------------------------------------------------- the quantile table
_LEVELS: np.ndarray | None = None


def levels() -> np.ndarray:
    """The 65,536 float32 values z takes (index = the element's 16 random bits), checked against its digest."""
    global _LEVELS
    if _LEVELS is None:
        nd = statistics.NormalDist()
        half = np.array([nd.inv_cdf((k + 0.5) / 65536) for k in range(32768)])
        q = np.concatenate([half, -half[::-1]])
        table = (q / np.sqrt(np.mean(q * q))).astype(np.float32)
        if hashlib.sha256(table.tobytes()).hexdigest() != LEVELS_SHA256:  # pragma: no cover - another libm
            raise RuntimeError("this platform computes the Gaussian quantile table differently from the pinned "
                               "one, so its noise would not match other machines'; please report it")
        if sys.byteorder != "little":  # pragma: no cover - the element -> 16-bit layout assumes it
            raise RuntimeError("l2o's portable noise needs a little-endian host")
        table.setflags(write=False)
        _LEVELS = table
    return _LEVELS


_LEVELS_ON: dict[torch.device, torch.Tensor] = {}


def _levels_on(device: torch.device) -> torch.Tensor:
    if device not in _LEVELS_ON:
        _LEVELS_ON[device] = torch.from_numpy(levels().copy()).to(device)
    return _LEVELS_ON[device]


# ---------------------------------------------------------------------------------- the CPU path
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_SCRATCH = threading.local()


def _threads() -> int:
    return max(1, int(os.environ.get("L2O_NOISE_THREADS", "2")))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < _threads() - 1:
            _POOL = ThreadPoolExecutor(max_workers=max(1, _threads() - 1), thread_name_prefix="l2o-noise")
    return _POOL


def _scratch(n: int) -> np.ndarray:
    """A float32 work buffer of n elements, one per thread, reused."""
    buf = getattr(_SCRATCH, "z", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.z = np.empty(max(n, CHUNK), dtype=np.float32)
    return buf[:n]


def _parallel(n: int, chunk: int, worker) -> int:
    """Run [0, n) in chunks [a, b) of `chunk` elements on up to L2O_NOISE_THREADS threads, each thread one
    contiguous run of chunks: `worker(start)` makes the thread's work(a, b) for its run starting at `start`.
    Returns the number of chunks."""
    nchunks = -(-n // chunk)
    if nchunks == 0:
        return 0
    workers = min(_threads(), nchunks)
    cuts = [min(n, (w * nchunks // workers) * chunk) for w in range(workers + 1)]

    def run(start: int, stop: int) -> None:
        with torch.no_grad():  # grad mode is thread-local
            work = worker(start)
            for a in range(start, stop, chunk):
                work(a, min(stop, a + chunk))

    futures = [_pool().submit(run, a, b) for a, b in zip(cuts[1:-1], cuts[2:])]
    run(cuts[0], cuts[1])
    for f in futures:
        f.result()
    return nchunks


def _stream(key: tuple[int, int], n: int, work, chunk: int = CHUNK) -> int:
    """Call work(a, b, u) for consecutive chunks [a, b) of [0, n), u = the 16-bit words a..b-1 of key's
    stream (`_parallel`'s threads; each thread's Philox starts at its run and draws it in order)."""
    def worker(start):
        bits = np.random.Philox(counter=(start // 16 - 1) % (1 << 256), key=key[0] | (key[1] << 64))
        return lambda a, b: work(a, b, bits.random_raw(-(-(b - a) // 16) * 4).view(np.uint16)[:b - a])

    return _parallel(n, chunk, worker)


def _axpy_chunk(out: np.ndarray, src, z: np.ndarray, c: np.float32, a: int, b: int) -> None:
    """out[a:b] <- src[a:b] + fl32(c * z) (z is overwritten); src: a float32 array or a torch tensor."""
    np.multiply(z, c, out=z)
    np.add(src[a:b] if isinstance(src, np.ndarray) else src[a:b].to(torch.float32).numpy(), z, out=out[a:b])


def _cpu_axpy(out: torch.Tensor, base: torch.Tensor | None, key, alpha: float, chunk: int = CHUNK) -> int:
    """out <- base + fl32(alpha * z) (or z) over contiguous float32 CPU tensors; base may be any float dtype."""
    flat, table, c = out.view(-1).numpy(), levels(), np.float32(alpha)
    src = None if base is None else _as_source(base)

    def work(a, b, u):
        if src is None:
            np.take(table, u, out=flat[a:b], mode="clip")
            return
        z = _scratch(b - a)
        np.take(table, u, out=z, mode="clip")
        _axpy_chunk(flat, src, z, c, a, b)

    return _stream(key, flat.size, work, chunk)


def _as_source(base: torch.Tensor):
    """A flat view of `base` for `_axpy_chunk`: numpy for float32, else the tensor (converted per chunk)."""
    flat = base.reshape(-1)
    return flat.numpy() if flat.dtype == torch.float32 else flat


def _cpu_bits(out: torch.Tensor, key) -> int:
    """out (int16, contiguous, CPU) <- the 16-bit words of key's stream."""
    flat = out.view(-1).numpy().view(np.uint16)

    def work(a, b, u):
        flat[a:b] = u

    return _stream(key, flat.size, work)


# ---------------------------------------------------------------------------------- the block path
def _triton():
    try:
        from l2o import noise_kernels
    except ImportError:
        raise RuntimeError("the block noise path needs Triton (`pip install triton==3.9.0`; CUDA builds of torch "
                           "bring it)") from None
    return noise_kernels


def _kernel_device(device: torch.device) -> bool:
    """Whether the Triton kernel runs on tensors of this device (GPUs compiled, the CPU interpreted)."""
    return device.type in ("cuda", "cpu")


# ---------------------------------------------------------------------------------- random bits, rounding
def random_bits(seed: int, n: int, device, block: int = 0, tag: int = TAG_ROUND,
                path: str | None = None) -> torch.Tensor:
    """The 16-bit words 0..n-1 of the stream key(seed, block, tag), as an int16 tensor on `device`."""
    device = torch.device(device)
    out = torch.empty(n, dtype=torch.int16, device=device)
    key = philox_key(seed, block, tag)
    path = path or _default_path() or ("chunked" if device.type == "cpu" else "block")
    if path == "block" and _kernel_device(device):
        _triton().launch(out, _levels_on(device), key, bits=True)
    elif device.type == "cpu":
        _cpu_bits(out, key)
    else:
        host = torch.empty(n, dtype=torch.int16)
        _cpu_bits(host, key)
        out.copy_(host)
    return out


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, seed: int, overwrite_src: bool = False,
                      path: str | None = None) -> None:
    """dst <- src (float32) rounded to dst.dtype (bf16/fp16), up or down with probabilities that make it unbiased.

    E[dst] = src (for finite values inside the dtype's range). With r_i = random_bits(seed)[i] read as a
    signed 16-bit integer, v_i = r_i + 2^15 is uniform on [0, 2^16):
    - bf16 (float32's top 16 bits): add v_i to the float32's bit pattern and clear the low 16 bits; the carry
      rounds |x| up with probability (low 16 bits) / 2^16, for either sign.
    - fp16: with lo <= src <= hi the neighbouring fp16 values, take the farther one when
      (v_i + 1/2) / 2^16 < |src - nearest| / (hi - lo); exact IEEE operations only.
    `overwrite_src=True` lets bf16 rounding work in place on `src` (a 2-byte-per-element temporary only).
    """
    r = random_bits(seed, src.numel(), src.device, path=path).view(src.shape)
    if dst.dtype == torch.bfloat16 and src.dtype == torch.float32 and src.is_contiguous():
        work = src if overwrite_src else src.clone()
        work.view(torch.int32).add_(r).add_(1 << 15).bitwise_and_(-(1 << 16))
        dst.copy_(work)  # exact: the low 16 bits are zero
        return
    near = src.to(dst.dtype)
    near32 = near.to(torch.float32)
    other = torch.where(near32 > src, torch.nextafter(near, torch.full_like(near, -float("inf"))),
                        torch.nextafter(near, torch.full_like(near, float("inf"))))
    other32 = other.to(torch.float32)
    gap = (other32 - near32).abs_()
    p_other = torch.where(gap > 0, (src - near32).abs_() / gap, torch.zeros_like(gap))
    u = (r.to(torch.float32) + 32768.5) * (1.0 / 65536)
    dst.copy_(torch.where((u < p_other) & torch.isfinite(other32), other, near))


# ---------------------------------------------------------------------------------- the interface
PATHS = ("chunked", "block")


def _default_path() -> str | None:
    path = os.environ.get("L2O_NOISE_PATH") or None
    if path is not None and path not in PATHS:
        raise ValueError(f"L2O_NOISE_PATH must be one of {PATHS}, got {path!r}")
    return path


class NoiseSource:
    """Interface: write or apply z(seed, block) to float32 (or float64) tensors of the block's shape.

    Every operation gives the same bits on every path and device (`path_for`: "chunked" on the CPU,
    "block" elsewhere; `path=` or L2O_NOISE_PATH forces one). `calls` counts host-side noise calls.
    """

    name = "abstract"
    calls = 0

    def __init__(self, path: str | None = None):
        if path is not None and path not in PATHS:
            raise ValueError(f"noise path must be one of {PATHS} or None, got {path!r}")
        self.path = path if path is not None else _default_path()

    def path_for(self, device: torch.device) -> str:
        if getattr(self, "path", None):
            return self.path
        return "chunked" if device.type == "cpu" else "block"

    def _axpy32(self, out: torch.Tensor, base: torch.Tensor | None, seed: int, block: int, alpha: float) -> None:
        """out (contiguous float32) <- base + fl32(alpha * z) (z alone when base is None)."""
        raise NotImplementedError

    def write(self, out: torch.Tensor, seed: int, block: int) -> None:
        """out <- z(seed, block). `out` is contiguous float32 on the parameter's device."""
        self._axpy32(out, None, seed, block, 0.0)

    def axpy(self, out: torch.Tensor, base: torch.Tensor, seed: int, block: int, alpha: float,
             round_seed: int | None = None) -> None:
        """out <- base + alpha * z(seed, block) in one pass where the source allows (`out` may be `base`).

        float32 `out`: fl32(base + fl32(fl32(alpha) z)). bf16/fp16 `out`: that float32 value rounded
        stochastically with the bits of `round_seed`. float64 `out`: base + fl64(alpha z) in float64."""
        if out.dtype == torch.float32:
            self._axpy32(out, base, seed, block, alpha)
        elif out.dtype == torch.float64:
            z = torch.empty(out.shape, dtype=torch.float32, device=out.device)
            self.write(z, seed, block)
            torch.add(base.to(torch.float64), z.to(torch.float64).mul_(alpha), out=out)
        else:
            if round_seed is None:
                raise ValueError("a bf16/fp16 axpy needs a round_seed for its stochastic rounding")
            acc = torch.empty(out.shape, dtype=torch.float32, device=out.device)
            self._axpy32(acc, base, seed, block, alpha)
            stochastic_round_(out, acc, round_seed, overwrite_src=True, path=self.path)

    def add(self, out: torch.Tensor, seed: int, block: int, alpha: float, buf: torch.Tensor | None = None) -> None:
        """out += alpha * z(seed, block) for a float32 or float64 `out` (`buf`: unused, kept for callers)."""
        self.axpy(out, out, seed, block, alpha)

    def z(self, seed: int, block: int, shape, device="cpu") -> torch.Tensor:
        """A fresh float32 tensor holding z(seed, block) (convenience for tests and small blocks)."""
        out = torch.empty(shape, dtype=torch.float32, device=device)
        self.write(out, seed, block)
        return out

    def config(self) -> dict:
        return {"name": self.name}


class GaussianNoise(NoiseSource):
    """z(seed, block)_i = LEVELS[16 bits of Philox4x64-10 at counter i div 16] (module docstring):
    the quantile-table Gaussian, identical on every device and path. `chunk_size` (a multiple of 16) is
    the CPU path's unit of work; it changes no value of z, so it is not part of `config()`."""

    name = "gaussian"

    def __init__(self, chunk_size: int = CHUNK, path: str | None = None):
        if chunk_size < 16 or chunk_size % 16:
            raise ValueError(f"chunk_size must be a positive multiple of 16, got {chunk_size}")
        super().__init__(path)
        self.chunk_size = int(chunk_size)

    def _axpy32(self, out, base, seed, block, alpha):
        key = philox_key(seed, block, TAG_NOISE)
        if self.path_for(out.device) == "block" and _kernel_device(out.device):
            self.calls += 1
            src = None if base is None else base.reshape(-1)
            _triton().launch(out.view(-1), _levels_on(out.device), key, base=src, coeff=alpha)
        elif out.device.type == "cpu":
            self.calls += _cpu_axpy(out, base, key, alpha, self.chunk_size)
        else:  # another accelerator: z made on the host, applied with IEEE torch ops
            z = torch.empty(out.shape, dtype=torch.float32)
            self.calls += _cpu_axpy(z, None, key, 0.0, self.chunk_size)
            z = z.to(out.device)
            if base is None:
                out.copy_(z)
            else:
                torch.add(base.to(torch.float32), z.mul_(float(np.float32(alpha))), out=out)

    def axpy(self, out, base, seed, block, alpha, round_seed=None):
        if (out.dtype == torch.bfloat16 and round_seed is not None and self.path_for(out.device) == "block"
                and _kernel_device(out.device) and out.is_contiguous()):
            self.calls += 1  # generate, add and round in one pass: bit-identical to the two-step version
            _triton().launch(out.view(-1), _levels_on(out.device), philox_key(seed, block, TAG_NOISE),
                             base=base.reshape(-1), coeff=alpha, round_key=philox_key(round_seed, 0, TAG_ROUND))
            return
        super().axpy(out, base, seed, block, alpha, round_seed)

    def config(self) -> dict:
        return {"name": self.name, "generator": GENERATOR, "levels": "normal-q16:" + LEVELS_SHA256[:16]}


class NoiseTable(NoiseSource):
    """A shared table of LEVELS values; z(seed, block) tiles seed-derived slices of it.

    Chunk c of block b reads `table[o : o + len]` with offset o and sign +-1 derived from (seed, b, c).
    Blocks larger than a chunk are tiled from several offsets, so different seeds give nearly orthogonal
    directions as long as the table is much larger than a chunk. The table is the Gaussian stream of a
    fixed key (table seed), so it is the same on every machine; the chunked path slices it chunk by chunk,
    the block path uploads all the block's (offset, sign) pairs at once and gathers every chunk in one
    `index_select` from the windows of [table, -table], then multiplies and adds (IEEE torch ops).
    """

    name = "table"

    def __init__(self, size: int = 1 << 22, seed: int = 0, chunk_size: int = 1 << 16, path: str | None = None):
        if size < 2 or chunk_size < 1:
            raise ValueError(f"noise table needs size >= 2 and chunk_size >= 1, got {size}, {chunk_size}")
        super().__init__(path)
        self.size = int(size)
        self.table_seed = int(seed)
        self.chunk_size = int(min(chunk_size, size))
        self._cpu = torch.empty(self.size, dtype=torch.float32)
        _cpu_axpy(self._cpu, None, philox_key(self.table_seed, 0, TAG_TABLE), 0.0)
        self._on_device: dict[torch.device, torch.Tensor] = {}
        self._windows: dict[torch.device, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return self._cpu.numel() * self._cpu.element_size()

    def _table(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self._cpu
        if device not in self._on_device:
            self._on_device[device] = self._cpu.to(device)
        return self._on_device[device]

    def _rows(self, n: int, seed: int, block: int) -> np.ndarray:
        """Chunk c's window of [table, -table]: offset o = (h >> 1) mod span, + size when h is even (sign -)."""
        nchunks = -(-n // self.chunk_size)
        h = mix_array(seed, block, np.arange(nchunks, dtype=np.uint64))
        rows = (h >> np.uint64(1)) % np.uint64(self.size - self.chunk_size + 1)
        return np.where(h & np.uint64(1), rows, rows + np.uint64(self.size)).astype(np.int64)

    def _gather(self, n: int, rows: np.ndarray, device: torch.device, out: torch.Tensor) -> torch.Tensor:
        """z(seed, block) flattened into `out`, from one index upload and one gather (the block path)."""
        if device not in self._windows:  # rows r of [table, -table] as overlapping windows of chunk_size
            signed = torch.cat([self._table(device), -self._table(device)])
            self._windows[device] = signed.as_strided((2 * self.size - self.chunk_size + 1, self.chunk_size), (1, 1))
        self.calls += 2
        index = torch.from_numpy(rows).to(device, non_blocking=True)
        if n == len(rows) * self.chunk_size:
            torch.index_select(self._windows[device], 0, index, out=out.view(len(rows), self.chunk_size))
        else:
            out.copy_(self._windows[device].index_select(0, index).view(-1)[:n])
        return out

    def _axpy32(self, out, base, seed, block, alpha):
        flat = out.view(-1)
        n, rows = flat.numel(), self._rows(flat.numel(), seed, block)
        if self.path_for(out.device) == "block":
            if base is None:
                self._gather(n, rows, out.device, flat)
                return
            z = self._gather(n, rows, out.device, torch.empty_like(flat))
            torch.add(base.reshape(-1).to(torch.float32), z.mul_(float(np.float32(alpha))), out=flat)
            return
        if out.device.type != "cpu":
            raise ValueError("the table's chunked path runs on CPU tensors; other devices take the block path")
        table, flat_np, c = self._cpu.numpy(), flat.numpy(), np.float32(alpha)
        src = None if base is None else _as_source(base)

        def work(a, b):  # chunk a // chunk_size: one pass, read base + table, write out
            r = int(rows[a // self.chunk_size])
            o, sign = r % self.size, np.float32(-1.0 if r >= self.size else 1.0)
            if src is None:
                np.multiply(table[o:o + (b - a)], sign, out=flat_np[a:b])
            else:
                z = _scratch(b - a)
                np.multiply(table[o:o + (b - a)], sign, out=z)
                _axpy_chunk(flat_np, src, z, c, a, b)

        self.calls += _parallel(n, self.chunk_size, lambda start: work)

    def config(self) -> dict:
        return {"name": self.name, "size": self.size, "seed": self.table_seed, "chunk_size": self.chunk_size,
                "generator": GENERATOR, "levels": "normal-q16:" + LEVELS_SHA256[:16]}


# name -> source: the flag's choices, the ledger's names
SOURCES = {cls.name: cls for cls in (GaussianNoise, NoiseTable)}


def make_noise(spec: str | NoiseSource | None = None, **kwargs) -> NoiseSource:
    """A name in `SOURCES` (default "gaussian"), or an existing `NoiseSource`."""
    if isinstance(spec, NoiseSource):
        return spec
    if (spec or "gaussian") not in SOURCES:
        raise ValueError(f"unknown noise source {spec!r}: choose {' or '.join(map(repr, SOURCES))}")
    return SOURCES[spec or "gaussian"](**kwargs)
