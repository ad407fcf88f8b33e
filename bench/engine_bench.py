"""Engine benchmark: step cost of each ZO optimizer relative to its forward passes, and peak memory.

    python bench/engine_bench.py                       # OPT-125m shape, 16 x 64 tokens (minutes on a CPU)
    python bench/engine_bench.py --shape small --reps 5 # quick look
    python bench/engine_bench.py --device cuda --shape opt-1.3b
    OMP_NUM_THREADS=2 python bench/engine_bench.py --shape smollm2-135m --interleaved \
        --configs inference,mezo,mezo+table --reps 5    # issue 21's goals: the real SmolLM2, one process

Each configuration runs in its own subprocess (so its peak memory is its own): a random-initialised OPT
built from a config (no download; `smollm2-135m`: the real embedded base), a fixed random batch, one
warm-up, then `--reps` timed repeats (median). Printed per optimizer: step time, forwards per step, the ratio
step / (forwards x forward time) — 1.0 is the physical limit — and peak memory relative to inference
alone (CPU: peak RSS of the process; CUDA: torch.cuda.max_memory_allocated). A naive MeZO step
(fresh `torch.normal` per tensor, four passes, `param.data = param.data + ...`) is the reference.

`--interleaved` runs every configuration in one process, repeats interleaved, each step right after a
plain forward, and says where a step's time goes: inside the engine's perturbation (`Engine._perturbed`)
and update (`Engine.update`), their cost per noise element, the rest of the step against its forwards,
and the process's CPU time per wall second (how much of the machine it got).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4, vocab_size=1000),
    "small": dict(hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4, vocab_size=8192),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12, vocab_size=50272),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272),
    "opt-13b": dict(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40, vocab_size=50272),
}
REAL = "smollm2-135m"  # the real embedded base (weights from the local cache), not a random shape
CONFIGS = ["inference", "reference-mezo", "mezo", "mezo+table", "mezo-gv", "mezo-greedy", "bszo"]
FORWARDS = {"inference": 1, "reference-mezo": 2, "mezo": 2, "mezo+table": 2, "mezo-gv": 4, "mezo-greedy": 4,
            "bszo": 3}


def _sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_bytes(device) -> int:
    import resource

    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(shape: str, batch: int, seq: int, device: str, dtype: str):
    """A random-initialised OPT of `shape` (no download) in `dtype` on `device`, and a loss closure;
    shape "smollm2-135m" is the real embedded SmolLM2-135M (its weights, from the local cache)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if shape == REAL:
        from l2o.models import load_base

        model, _, _ = load_base(REAL, dtype=dtype, device=device)
        ids = torch.randint(4, model.config.vocab_size, (batch, seq), device=device)
        return model, lambda: model(input_ids=ids, labels=ids).loss
    h = SHAPES[shape]
    cfg = OPTConfig(**h, word_embed_proj_dim=h["hidden_size"], max_position_embeddings=max(2048, seq),
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # build in the target dtype: a 13B model never exists in fp32
    try:
        with torch.device(device):
            model = OPTForCausalLM(cfg).to(torch_dtype).eval()
    finally:
        torch.set_default_dtype(default)
    ids = torch.randint(4, h["vocab_size"], (batch, seq), device=device)

    def closure():
        return model(input_ids=ids, labels=ids).loss

    return model, closure


def reference_mezo_step(model, closure, eps: float = 1e-3, lr: float = 1e-7, wd: float = 0.0):
    """One MeZO step as the authors' code does it (trainer.py): `torch.manual_seed(seed)` before each of
    the four passes, a fresh `torch.normal` per tensor, and `param.data = param.data + ...`."""
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    seed = int(torch.randint(0, 10**9, ()).item())

    def perturb(scale):
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    with torch.no_grad():
        perturb(1)
        lp = float(closure())
        perturb(-2)
        lm = float(closure())
        perturb(1)
        g = (lp - lm) / (2 * eps)
        torch.manual_seed(seed)
        for n, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            decay = wd if ("bias" not in n and "layer_norm" not in n and "layernorm" not in n) else 0.0
            p.data = p.data - lr * (g * z + decay * p.data)


def make_step(config: str, model, closure):
    """The step function of one configuration ("inference", "reference-mezo", or "<optimizer>[+<noise>]")."""
    import torch

    if config == "inference":
        def step():
            with torch.no_grad():
                closure()
        return step
    if config == "reference-mezo":
        return lambda: reference_mezo_step(model, closure)
    from l2o.optim import build_optimizer

    name, _, noise = config.partition("+")
    opt = build_optimizer(name, model, lr=1e-7, eps=1e-3, noise=noise or "gaussian")

    def step():
        opt.step(closure)

    step.optimizer = opt
    return step


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_one(config: str, shape: str, batch: int, seq: int, reps: int, device: str, dtype: str) -> dict:
    import torch

    model, closure = build(shape, batch, seq, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    step = make_step(config, model, closure)

    def forward():
        with torch.no_grad():
            closure()

    step()  # warm-up
    # The machine is shared and noisy: time a plain forward right before every step, in this process,
    # and report the median of the per-repeat ratios rather than a ratio of medians from different runs.
    fwd_times, step_times = [], []
    for _ in range(reps):
        fwd_times.append(timed(forward, device))
        step_times.append(timed(step, device))
    ratios = [s / (FORWARDS[config] * f) for s, f in zip(step_times, fwd_times)]
    return {"config": config, "median_s": statistics.median(step_times), "times_s": step_times,
            "forward_s": statistics.median(fwd_times), "ratio": statistics.median(ratios),
            "peak_bytes": _peak_bytes(device), "params": n_params}


class EngineClock:
    """Wall time a step spends inside the engine's noise work: `Engine._perturbed` (the perturbed
    temporaries of the evaluations) and `Engine.update`; the rest of the step is its forwards."""

    def __init__(self):
        from l2o.engine import Engine

        self.spent = {"perturb": 0.0, "update": 0.0}
        for name, key in (("_perturbed", "perturb"), ("update", "update")):
            setattr(Engine, name, self._timed(getattr(Engine, name), key))

    def _timed(self, fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[key] += time.perf_counter() - t0
        return wrapper

    def take(self) -> dict:
        out, self.spent = self.spent, {k: 0.0 for k in self.spent}
        return out


def run_interleaved(configs: list[str], shape: str, batch: int, seq: int, reps: int, device: str,
                    dtype: str) -> dict:
    """All configurations on one model in one process, repeats interleaved (config 1, 2, ..., 1, 2, ...),
    each step timed right after a plain forward: load on a shared machine hits every config alike.
    Per step it also records the time inside the engine's perturbation and update (`EngineClock`), the
    noise elements generated, and the process's CPU time against wall time (2 threads on an idle
    2-core machine give about 2; less means other processes took the cores)."""
    import torch

    clock = EngineClock()
    model, closure = build(shape, batch, seq, device, dtype)
    steps = {c: make_step(c, model, closure) for c in configs}

    def forward():
        with torch.no_grad():
            closure()

    for c in configs:
        steps[c]()  # warm-up
    runs = {c: {"fwd": [], "step": [], "perturb": [], "update": [], "cpu": [], "elems": []} for c in configs}
    cpu0, wall0, load0 = time.process_time(), time.perf_counter(), os.getloadavg()[0]
    for r in range(reps):
        for c in configs:
            runs[c]["fwd"].append(timed(forward, device))
            opt = getattr(steps[c], "optimizer", None)
            elems = opt.engine.counters.noise_elems if opt is not None else 0
            clock.take()
            c0 = time.process_time()
            runs[c]["step"].append(timed(steps[c], device))
            runs[c]["cpu"].append(time.process_time() - c0)
            spent = clock.take()
            runs[c]["perturb"].append(spent["perturb"])
            runs[c]["update"].append(spent["update"])
            runs[c]["elems"].append((opt.engine.counters.noise_elems - elems) if opt is not None else 0)
        print(f"  repeat {r + 1}/{reps} done", file=sys.stderr, flush=True)
    load = {"cpu_per_wall": (time.process_time() - cpu0) / (time.perf_counter() - wall0),
            "loadavg": [load0, os.getloadavg()[0]]}
    out = {}
    for c, t in runs.items():
        med = statistics.median
        ratios = [s / (FORWARDS[c] * f) for s, f in zip(t["step"], t["fwd"])]
        noise = [p + u for p, u in zip(t["perturb"], t["update"])]
        out[c] = {"config": c, "median_s": med(t["step"]), "times_s": t["step"], "forward_s": med(t["fwd"]),
                  "ratio": med(ratios), "ratios": ratios, "perturb_s": med(t["perturb"]),
                  "update_s": med(t["update"]), "noise_elems": med(t["elems"]),
                  "noise_ns_per_elem": med(n / e * 1e9 for n, e in zip(noise, t["elems"])) if t["elems"][0] else None,
                  "forwards_ratio": med((s - n) / (FORWARDS[c] * f) for s, n, f in zip(t["step"], noise, t["fwd"])),
                  "cpu_per_wall": med(cp / s for cp, s in zip(t["cpu"], t["step"]))}
    return {"configs": out, "load": load}


def _print_interleaved(args, results: dict) -> None:
    import torch
    load = results["load"]
    print(f"\nshape {args.shape}, batch {args.batch} x {args.seq} tokens, {args.dtype}, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.reps} interleaved repeats in one process (median); "
          f"process cpu/wall {load['cpu_per_wall']:.2f}, load average {load['loadavg'][0]:.1f} -> "
          f"{load['loadavg'][1]:.1f}")
    print("| config | step s | forward s | forwards/step | step / (forwards x forward) | per-repeat ratios "
          "| perturb s | update s | noise ns/element | (step - perturb - update) / (forwards x forward) "
          "| step cpu/wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c, r in results["configs"].items():
        ns = f"{r['noise_ns_per_elem']:.2f}" if r["noise_ns_per_elem"] else "-"
        print(f"| {c} | {r['median_s']:.3f} | {r['forward_s']:.3f} | {FORWARDS[c]} | {r['ratio']:.3f} | "
              f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['perturb_s']:.3f} | {r['update_s']:.3f} | {ns} | "
              f"{r['forwards_ratio']:.3f} | {r['cpu_per_wall']:.2f} |")


def _write_json(args, results: dict) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.engine_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="opt-125m", choices=sorted(SHAPES) + [REAL])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--interleaved", action="store_true",
                    help="one process, repeats interleaved across configs (ratios only; no memory column)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config in this process
    args = ap.parse_args(argv)

    if args.interleaved:
        results = run_interleaved(args.configs.split(","), args.shape, args.batch, args.seq, args.reps,
                                  args.device, args.dtype)
        _print_interleaved(args, results)
        _write_json(args, results)
        return 0

    if args.one:
        print(json.dumps(run_one(args.one, args.shape, args.batch, args.seq, args.reps, args.device, args.dtype)))
        return 0

    results = {}
    for config in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", config, "--shape", args.shape, "--batch", str(args.batch),
               "--seq", str(args.seq), "--reps", str(args.reps), "--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results[config] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  measured {config}: {results[config]['median_s']:.3f} s", file=sys.stderr, flush=True)

    fwd = results["inference"]["forward_s"]
    base_mem = results["inference"]["peak_bytes"]
    print(f"\nshape {args.shape} ({results['inference']['params']:,} params), batch {args.batch} x {args.seq} "
          f"tokens, {args.dtype}, {args.device}, {args.reps} reps (median)")
    print(f"forward (with loss): {fwd:.3f} s;  inference peak memory {base_mem / 2**30:.2f} GiB\n")
    print("| config | step s | forward s (same process) | forwards/step | step / (forwards x forward) "
          "| peak memory vs inference |")
    print("|---|---|---|---|---|---|")
    for config, r in results.items():
        print(f"| {config} | {r['median_s']:.3f} | {r['forward_s']:.3f} | {FORWARDS[config]} | {r['ratio']:.3f} | "
              f"{r['peak_bytes'] / base_mem:.3f} |")
    _write_json(args, results)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.engine_bench", main, resumable=False))
