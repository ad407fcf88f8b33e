"""Engine benchmark: step cost of each ZO optimizer relative to its forward passes, and peak memory.

    python bench/engine_bench.py                       # OPT-125m shape, 16 x 64 tokens (minutes on a CPU)
    python bench/engine_bench.py --shape small --reps 5 # quick look
    python bench/engine_bench.py --device cuda --shape opt-1.3b

Each configuration runs in its own subprocess (so its peak memory is its own): a random-initialised OPT
built from a config (no download), a fixed random batch, one warm-up, then `--reps` timed repeats
(median). Printed per optimizer: step time, forwards per step, the ratio
step / (forwards x forward time) — 1.0 is the physical limit — and peak memory relative to inference
alone (CPU: peak RSS of the process; CUDA: torch.cuda.max_memory_allocated). A naive MeZO step
(fresh `torch.normal` per tensor, four passes, `param.data = param.data + ...`) is the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, ffn_dim=1024, num_attention_heads=4, vocab_size=8192),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12, vocab_size=50272),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272),
    "opt-13b": dict(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40, vocab_size=50272),
}
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


def run_one(config: str, shape: str, batch: int, seq: int, reps: int, device: str, dtype: str) -> dict:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from l2o.optim import build_optimizer

    torch.manual_seed(0)
    h = SHAPES[shape]
    cfg = OPTConfig(**h, word_embed_proj_dim=h["hidden_size"], max_position_embeddings=max(2048, seq),
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with torch.device(device):
        model = OPTForCausalLM(cfg).to(torch_dtype).eval()
    ids = torch.randint(4, h["vocab_size"], (batch, seq), device=device)
    n_params = sum(p.numel() for p in model.parameters())

    def closure():
        return model(input_ids=ids, labels=ids).loss

    if config == "inference":
        def step():
            with torch.no_grad():
                closure()
    elif config == "reference-mezo":
        params = [p for p in model.parameters() if p.requires_grad]
        eps, lr = 1e-3, 1e-7

        def perturb(seed, scale):
            torch.manual_seed(seed)
            for p in params:
                z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
                p.data = p.data + scale * z

        def step():
            with torch.no_grad():
                seed = int(torch.randint(0, 10**9, ()).item())
                perturb(seed, eps)
                lp = float(closure())
                perturb(seed, -2 * eps)
                lm = float(closure())
                perturb(seed, eps)
                g = (lp - lm) / (2 * eps)
                perturb(seed, -lr * g)
    else:
        name, _, noise = config.partition("+")
        opt = build_optimizer(name, model, lr=1e-7, eps=1e-3, noise=noise or "gaussian")

        def step():
            opt.step(closure)

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    def forward():
        with torch.no_grad():
            closure()

    step()  # warm-up
    # The machine is shared and noisy: time a plain forward right before every step, in this process,
    # and report the median of the per-repeat ratios rather than a ratio of medians from different runs.
    fwd_times, step_times = [], []
    for _ in range(reps):
        fwd_times.append(timed(forward))
        step_times.append(timed(step))
    ratios = [s / (FORWARDS[config] * f) for s, f in zip(step_times, fwd_times)]
    return {"config": config, "median_s": statistics.median(step_times), "times_s": step_times,
            "forward_s": statistics.median(fwd_times), "ratio": statistics.median(ratios),
            "peak_bytes": _peak_bytes(device), "params": n_params}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="opt-125m", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config in this process
    args = ap.parse_args(argv)

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
