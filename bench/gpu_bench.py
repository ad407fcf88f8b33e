"""GPU suite: ZO step cost and peak memory at LLM scale on one accelerator (random weights, no download).

    python bench/gpu_bench.py            # OPT-13B shape in bf16, then OPT-1.3B in fp32; batch 16 x 128; cuda
    python bench/gpu_bench.py --smoke    # a tiny shape on the CPU, in seconds (what the tests run)
    make bench-gpu

Then the offload case (issue 25): OPT-13B shape in bf16 held in CPU memory and streamed block by block
to the GPU (`l2o.placement.place(offload="cpu")`) with the allocator capped at 24 GiB
(`torch.cuda.set_per_process_memory_fraction`): its MeZO step time against the in-memory MeZO step
measured just before, its peak GPU memory against the cap and against `fine_tune --dry-run`'s plan for
the same shape, the block copies per forward (1 per block is the goal), the link traffic of one MeZO step
(copies counted by the streaming hooks, times the blocks' bytes, and the rate that is at the measured
step), and the time of one update alone, which runs on the CPU where the weights live (on all the host's
cores unless L2O_NOISE_THREADS says otherwise). At most 2 repeats: an offloaded step takes seconds.

For each model it prints the forward time, then per configuration: the step time, forwards per step,
step / (forwards x forward) (1.0 is the physical limit), peak memory / inference peak
(`torch.cuda.max_memory_allocated`, reset before each configuration), and the engine's host-side noise
calls (per sweep, and the most one z(seed, block) took). `reference-mezo` is MeZO's own code path:
`torch.manual_seed`, then `torch.normal` per tensor and `param.data = param.data + ...`, four passes.
The goals (issue 10) are checked in the last lines: step / (forwards x forward) <= 1.10, peak <= 1.05x
inference, our MeZO step / the reference's <= 0.75. Sized to finish in under 8 minutes on one
H100/H200; `--budget-s` skips what would not fit and says so.

First, the portability check (issue 21): z, theta + c z (float32) and the fused bf16 perturbation made by
the Triton kernel on the device are compared bit for bit with the CPU path on a 105M-element block (OPT-13B's
fc1; far past the size where torch's CUDA generator depends on the GPU model), with the kernel's time and
effective bandwidth; then a small random OPT is trained 3 MeZO steps in bf16 on the device and its seed
ledger replayed on the CPU, which must give the same weights bit for bit. With --smoke the same runs on
tiny tensors with the block path (the kernel, interpreted) on the CPU.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`
from bench.engine_bench import FORWARDS, SHAPES, build, make_step, timed  # noqa: E402

SUITE = [("opt-13b", "bf16"), ("opt-1.3b", "fp32")]
SMOKE = [("tiny", "bf16"), ("tiny", "fp32")]
OFFLOAD = ("opt-13b", "bf16", 24.0)  # shape, dtype, GiB the allocator may use
SMOKE_OFFLOAD = ("tiny", "bf16", None)
CONFIGS = ["inference", "reference-mezo", "mezo", "mezo+table", "mezo-gv", "mezo-greedy", "bszo"]
GOALS = {"ratio": 1.10, "memory": 1.05, "vs_reference": 0.75}


def _same(a, b) -> str:
    import torch
    return "bit-identical" if torch.equal(a.cpu(), b.cpu()) else "DIFFERENT"


def portability(device: str, smoke: bool) -> list[str]:
    """The device's noise against the CPU's, bit for bit, and a ledger written here replayed on the CPU."""
    import torch

    from l2o.ledger import Ledger, replay
    from l2o.noise import GaussianNoise
    from l2o.optim import build_optimizer

    n = 4096 + 7 if smoke else 20480 * 5120
    here, cpu = GaussianNoise(path="block"), GaussianNoise(path="chunked")
    base = torch.randn(n, generator=torch.Generator().manual_seed(0))
    z_dev = here.z(11, 3, (n,), device=device)
    out_dev, out_cpu = torch.empty(n, device=device), torch.empty(n)
    base_dev = base.to(device)
    times = []
    for _ in range(1 if smoke else 5):
        times.append(timed(lambda: here.axpy(out_dev, base_dev, 11, 3, 1e-3), device))
    cpu.axpy(out_cpu, base, 11, 3, 1e-3)
    r_dev, r_cpu = torch.empty(n, dtype=torch.bfloat16, device=device), torch.empty(n, dtype=torch.bfloat16)
    here.axpy(r_dev, base_dev.bfloat16(), 11, 3, 1e-3, round_seed=5)
    cpu.axpy(r_cpu, base.bfloat16(), 11, 3, 1e-3, round_seed=5)
    t = statistics.median(times)
    lines = [f"## portability: {device} block path (Triton) against the CPU path, {n:,} elements",
             f"z: {_same(z_dev, cpu.z(11, 3, (n,)))};  theta + c z (fp32): {_same(out_dev, out_cpu)};  "
             f"fused bf16 theta + c z with stochastic rounding: {_same(r_dev, r_cpu)}",
             f"kernel theta + c z: {t * 1e3:.2f} ms, {8 * n / t / 1e9:.0f} GB/s (read theta, write out)"]
    if smoke:  # two small layers: the interpreted kernel costs ~0.1 s a launch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 1)).to(device, torch.bfloat16)
        x = torch.randn(8, 32, device=device, dtype=torch.bfloat16)
        closure = lambda: model(x).float().square().mean()  # noqa: E731
    else:
        model, closure = build("small", 2, 16, device, "bf16")
    replayed = copy.deepcopy(model).cpu()
    opt = build_optimizer("mezo", model, lr=1e-3, eps=1e-3, seed=0, noise=here)
    for _ in range(3):
        opt.step(closure)
    replay(replayed, Ledger.parse(opt.ledger.text(), require_seal=False))
    same = all(torch.equal(v.detach().cpu(), replayed.state_dict()[k]) for k, v in model.state_dict().items())
    lines.append(f"3 MeZO steps (bf16) on {device}, ledger replayed on the CPU: "
                 f"{'bit-identical' if same else 'DIFFERENT'} weights")
    return lines


def _peak_reset(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    import torch
    return float(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def _free(device: str) -> None:
    import torch
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(config: str, model, closure, device: str, reps: int, warmup: bool = True) -> dict:
    """Warm up, then `reps` times: a plain forward, then one step; peak memory over the steps."""
    import torch

    step = make_step(config, model, closure)
    opt = getattr(step, "optimizer", None)

    def forward():
        with torch.no_grad():
            closure()

    if warmup:
        step()  # warm-up (and the noise table's copy to the device)
    before = (opt.engine.counters.noise_calls, opt.engine.counters.sweeps) if opt is not None else None
    fwd, steps = [], []
    _peak_reset(device)
    for _ in range(reps):
        fwd.append(timed(forward, device))
        steps.append(timed(step, device))
    out = {"step_s": statistics.median(steps), "forward_s": statistics.median(fwd), "peak": _peak(device),
           "ratio": statistics.median(s / (FORWARDS[config] * f) for s, f in zip(steps, fwd))}
    if opt is not None:
        c = opt.engine.counters
        out.update(calls_per_sweep=(c.noise_calls - before[0]) / max(1, c.sweeps - before[1]),
                   max_calls_per_z=c.max_calls_per_z,
                   path=opt.engine.noise.path_for(opt.blocks[0].param.device))
    del step, opt
    _free(device)
    return out


def run_model(shape: str, dtype: str, args, deadline: float, configs=CONFIGS) -> dict:
    model, closure = build(shape, args.batch, args.seq, args.device, dtype)
    n = sum(p.numel() for p in model.parameters())
    print(f"\n## {shape} shape, {n / 1e9:.2f} B parameters, {dtype}, batch {args.batch} x {args.seq}, "
          f"{args.device}, median of {args.reps}", flush=True)
    results = {}
    for config in configs:
        if time.monotonic() > deadline:
            print(f"  skipped {config}: --budget-s reached", flush=True)
            continue
        results[config] = measure(config, model, closure, args.device, args.reps, warmup=not args.smoke)
        print(f"  measured {config}: {results[config]['step_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    del model, closure
    _free(args.device)
    return results


def report(results: dict) -> list[str]:
    """The table and the goal lines for one model."""
    inf = results.get("inference", {})
    fwd_ms, base = inf.get("forward_s", float("nan")) * 1e3, inf.get("peak")
    lines = [f"forward: {fwd_ms:.1f} ms", "",
             "| config | step ms | forwards | step / (forwards x forward) | peak / inference | noise path "
             "| host noise calls per sweep | max calls per z |", "|---|---|---|---|---|---|---|---|"]
    for c, r in results.items():
        mem = f"{r['peak'] / base:.3f}" if (r["peak"] and base) else "n/a (no CUDA)"
        calls = (f"{r['path']} | {r['calls_per_sweep']:.0f} | {r['max_calls_per_z']}" if "path" in r
                 else "- | - | -")
        lines.append(f"| {c} | {r['step_s'] * 1e3:.1f} | {FORWARDS[c]} | {r['ratio']:.3f} | {mem} | {calls} |")
    ours = [c for c in results if c not in ("inference", "reference-mezo")]
    if ours:
        worst = max(ours, key=lambda c: results[c]["ratio"])
        lines.append(f"goal step / (forwards x forward) <= {GOALS['ratio']}: worst {worst} "
                     f"{results[worst]['ratio']:.3f}")
        if base:
            peak = max(ours, key=lambda c: results[c]["peak"])
            lines.append(f"goal peak <= {GOALS['memory']}x inference: worst {peak} "
                         f"{results[peak]['peak'] / base:.3f}")
    if "mezo" in results and "reference-mezo" in results:
        lines.append(f"goal our MeZO / reference MeZO <= {GOALS['vs_reference']}: "
                     f"{results['mezo']['step_s'] / results['reference-mezo']['step_s']:.3f} (gaussian), "
                     f"{results.get('mezo+table', results['mezo'])['step_s'] / results['reference-mezo']['step_s']:.3f}"
                     " (table)")
    return lines


def link_traffic(group, closure, step, device: str) -> dict:
    """Host-to-device copies of the streamed blocks in one plain forward and in one MeZO step (counted by the
    streaming hooks), their bytes, and the time of one update alone (it runs where the weights live)."""
    import torch

    from l2o.engine import Direction

    def crossings(fn) -> float:
        before = group.uploads
        fn()
        return (group.uploads - before) / len(group.hooks)

    def forward():
        with torch.no_grad():
            closure()

    block_bytes = sum(t.numel() * t.element_size() for h in group.hooks for t in h.weights_map.values())
    per_forward, per_step = crossings(forward), crossings(step)
    engine = step.optimizer.engine
    cpu0 = time.process_time()
    update_s = timed(lambda: engine.update(Direction.single(12345), 1e-7), device)
    return {"per_forward": per_forward, "per_step": per_step, "block_bytes": block_bytes,
            "bytes": round(per_step * block_bytes), "update_s": update_s, "update_cpu_s": time.process_time() - cpu0}


def run_offload(shape: str, dtype: str, cap_gib: float | None, args, in_memory: dict) -> list[str]:
    """The offload case: weights in CPU memory, blocks streamed to the device under a memory cap."""
    import torch

    from l2o.blocks import named_blocks
    from l2o.noise import _threads
    from l2o.placement import place

    model, _ = build(shape, args.batch, args.seq, "cpu", dtype)  # the weights live in CPU memory
    ids = torch.randint(4, model.config.vocab_size, (args.batch, args.seq), device=args.device)

    def closure():
        return model(input_ids=ids, labels=ids).loss  # noqa: F821 (the `del model` below runs after its last call)

    cuda = args.device.startswith("cuda")
    if cuda and cap_gib:
        _free(args.device)
        total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 1024 ** 3 / total), torch.device(args.device))
    ours = cuda and "L2O_NOISE_THREADS" not in os.environ
    if ours:  # the update runs on the CPU, where the blocks live: give it the host's cores (z is the same)
        os.environ["L2O_NOISE_THREADS"] = str(len(os.sched_getaffinity(0)))
    reps = min(args.reps, 2)  # an offloaded step takes seconds
    try:
        place(model, offload="cpu", execution_device=args.device)
        group, threads = model._l2o_stream, _threads()
        result = measure("mezo", model, closure, args.device, reps, warmup=not args.smoke)
        traffic = link_traffic(group, closure, make_step("mezo", model, closure), args.device)
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, torch.device(args.device))
        if ours:
            os.environ.pop("L2O_NOISE_THREADS", None)
    ref = in_memory.get("mezo", {}).get("step_s")
    peak = result["peak"]
    n = sum(p.numel() for _, p in named_blocks(model))
    lines = [f"\n## offload cpu: {shape} shape, {n / 1e9:.2f} B parameters, {dtype}, batch {args.batch} x {args.seq}, "
             f"{args.device}" + (f", allocator capped at {cap_gib:g} GiB" if cuda and cap_gib else ""),
             f"MeZO step {result['step_s'] * 1e3:.1f} ms (median of {reps})" + (f" vs in memory {ref * 1e3:.1f} ms "
                                                            f"({result['step_s'] / ref:.2f}x)" if ref else ""),
             f"block copies per forward: {traffic['per_forward']:.2f} per block (goal 1)",
             f"link traffic per MeZO step: {traffic['per_step']:.2f} copies per block, {traffic['bytes']} bytes "
             f"({traffic['bytes'] / 1024 ** 3:.2f} GiB; the streamed blocks hold {traffic['block_bytes']} bytes), "
             f"{traffic['bytes'] / 1024 ** 3 / result['step_s']:.2f} GiB/s at the measured step",
             f"one update alone (the streamed blocks' part on the CPU, where they live): "
             f"{traffic['update_s'] * 1e3:.1f} ms for {n} elements "
             f"({traffic['update_s'] * 1e9 / n:.2f} ns per element; CPU time "
             f"{traffic['update_cpu_s'] * 1e9 / n:.2f} ns per element; L2O_NOISE_THREADS={threads}), "
             f"{traffic['update_s'] / result['step_s']:.0%} of the step",
             f"peak GPU memory: {peak / 1024 ** 3:.2f} GiB" if peak else "peak GPU memory: n/a (no CUDA)"]
    if cuda:  # an unpinned home is copied synchronously: a slower step, the same numbers
        lines.append(f"block tensors in pinned CPU memory: all but {group.unpinned} (pinning failed for those)"
                     if group.unpinned else "block tensors in pinned CPU memory: all")
    if shape in ("opt-13b",):
        from fine_tune.plan import make_plan

        plan = make_plan(shape, dtype=dtype, batch=args.batch, length=args.seq, offload="cpu", gpu_gb=cap_gib or 80,
                         long_answers=True, advise=False)
        lines.append("plan (fine_tune --dry-run, the lm loss over every token): "
                     f"{plan.devices[0].total / 1024 ** 3:.2f} GiB on the GPU")
    del model
    _free(args.device)
    return lines


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.gpu_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, 1 repeat (seconds)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="default 16 (2 with --smoke)")
    ap.add_argument("--seq", type=int, default=None, help="default 128 (16 with --smoke)")
    ap.add_argument("--reps", type=int, default=None, help="default 5 (1 with --smoke)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip configurations after this many seconds")
    ap.add_argument("--offload-only", action="store_true",
                    help="only the offload case, after the in-memory inference and MeZO step it is compared with")
    ap.add_argument("--offload-shape", default=None, choices=sorted(SHAPES),
                    help="the offload case's model shape (default opt-13b; tiny with --smoke)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.device = args.device or ("cpu" if smoke else "cuda")
    args.batch, args.seq = args.batch or (2 if smoke else 16), args.seq or (16 if smoke else 128)
    args.reps = args.reps or (1 if smoke else 5)
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device here; run it on a GPU machine, or use --smoke on the CPU",
                  file=sys.stderr)
            return 2
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    start = time.monotonic()
    deadline = start + args.budget_s

    def elapsed() -> str:  # a lent GPU's commands are time-limited: each section says when it ended
        return f"[{time.monotonic() - start:.0f} s since the start]"

    if not args.offload_only:
        print("\n".join(portability(args.device, smoke)), elapsed(), sep="\n", flush=True)
    measured = {}
    shape, dtype, cap = SMOKE_OFFLOAD if smoke else OFFLOAD
    shape = args.offload_shape or shape
    for model_shape, model_dtype in [(shape, dtype)] if args.offload_only else (SMOKE if smoke else SUITE):
        configs = ["inference", "mezo"] if args.offload_only else CONFIGS
        measured[(model_shape, model_dtype)] = run_model(model_shape, model_dtype, args, deadline, configs)
        print("\n".join(report(measured[(model_shape, model_dtype)])), elapsed(), sep="\n", flush=True)
    if time.monotonic() > deadline:
        print("\nskipped the offload case: --budget-s reached (run it alone with --offload-only)", flush=True)
    else:
        lines = run_offload(shape, dtype, cap, args, measured.get((shape, dtype), {}))
        print("\n".join(lines), elapsed(), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.gpu_bench", main, resumable=False))
