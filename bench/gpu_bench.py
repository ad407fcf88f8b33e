"""GPU suite: ZO step cost and peak memory at LLM scale on one accelerator (random weights, no download).

    python bench/gpu_bench.py            # OPT-13B shape in bf16, then OPT-1.3B in fp32; batch 16 x 128; cuda
    python bench/gpu_bench.py --smoke    # a tiny shape on the CPU, in seconds (what the tests run)
    make bench-gpu

For each model it prints the forward time, then per configuration: the step time, forwards per step,
step / (forwards x forward) (1.0 is the physical limit), peak memory / inference peak
(`torch.cuda.max_memory_allocated`, reset before each configuration), and the engine's host-side noise
calls (per sweep, and the most one z(seed, block) took). `reference-mezo` is MeZO's own code path:
`torch.manual_seed`, then `torch.normal` per tensor and `param.data = param.data + ...`, four passes.
The goals (issue 10) are checked in the last lines: step / (forwards x forward) <= 1.10, peak <= 1.05x
inference, our MeZO step / the reference's <= 0.75. Sized to finish in under 8 minutes on one
H100/H200; `--budget-s` skips what would not fit and says so.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_bench import FORWARDS, build, make_step, timed  # noqa: E402

SUITE = [("opt-13b", "bf16"), ("opt-1.3b", "fp32")]
SMOKE = [("tiny", "bf16"), ("tiny", "fp32")]
CONFIGS = ["inference", "reference-mezo", "mezo", "mezo+table", "mezo-gv", "mezo-greedy", "bszo"]
GOALS = {"ratio": 1.10, "memory": 1.05, "vs_reference": 0.75}


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


def run_model(shape: str, dtype: str, args, deadline: float) -> dict:
    model, closure = build(shape, args.batch, args.seq, args.device, dtype)
    n = sum(p.numel() for p in model.parameters())
    print(f"\n## {shape} shape, {n / 1e9:.2f} B parameters, {dtype}, batch {args.batch} x {args.seq}, "
          f"{args.device}, median of {args.reps}", flush=True)
    results = {}
    for config in CONFIGS:
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, 1 repeat (seconds)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="default 16 (2 with --smoke)")
    ap.add_argument("--seq", type=int, default=None, help="default 128 (16 with --smoke)")
    ap.add_argument("--reps", type=int, default=None, help="default 5 (1 with --smoke)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip configurations after this many seconds")
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
    deadline = time.monotonic() + args.budget_s
    for shape, dtype in (SMOKE if smoke else SUITE):
        print("\n".join(report(run_model(shape, dtype, args, deadline))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
