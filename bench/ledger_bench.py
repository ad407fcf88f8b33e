"""Seed-ledger benchmark: ledger bytes per step for every optimizer, replay time per update against a
forward pass on the same model, and a 20,000-step ledger against a weights checkpoint.

    python bench/ledger_bench.py                      # SmolLM2-135M (embedded), fp32, CPU; a few minutes
    python bench/ledger_bench.py --steps 2 --batch 4  # quicker

For each registered optimizer: a freshly loaded base, `--steps` real steps on a fixed random batch of
`--batch` x `--seq` tokens (the zo-finetuner* optimizers use the shipped SmolLM2 policy), then the mean
size of its ledger lines (which does not depend on the batch). Replay: for `--replay` optimizers the base
is loaded again, the ledger replayed (timed per update; an update's cost does not depend on the batch
either) and the weights compared bit for bit with the trained ones. The forward it is compared with is
timed on the same model with a batch of `--fwd-batch` x `--fwd-seq` tokens (median of 3). Sizes at 20,000 steps
are arithmetic from the measured line sizes (one seal per 500-step checkpoint); OPT-13B's header and block
count come from its config on the meta device (no download). `--json` writes everything measured.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

OPT_13B = dict(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40, vocab_size=50272,
               word_embed_proj_dim=5120, max_position_embeddings=2048)


def _batch(model, batch: int, seq: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    return lambda: model(input_ids=ids, labels=ids).loss


def _forward_s(model, closure) -> float:
    import torch

    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            closure()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def line_bytes(ledger) -> tuple[int, float]:
    """(header bytes, mean bytes per update line), newlines included."""
    lines = ledger.lines()
    updates = [len(line) + 1 for line, rec in zip(lines[1:], ledger.records) if "seal" not in rec]
    return len(lines[0]) + 1, sum(updates) / len(updates)


def run_optimizer(name: str, args, snapshot: bool) -> dict:
    from l2o.models import load_base
    from l2o.optim import build_optimizer
    from zoo.learned import load_policy

    model, _, info = load_base(args.base, dtype=args.dtype)
    closure = _batch(model, args.batch, args.seq)
    kw = {"lr": 1e-6}
    if name.startswith("zo-finetuner"):
        kw["policy"] = load_policy(args.policy, expected_fingerprint=info.fingerprint, model_name=args.base)
    opt = build_optimizer(name, model, **kw)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        opt.step(closure)
    header, per_step = line_bytes(opt.ledger)
    out = {"optimizer": name, "steps": args.steps, "step_s": (time.perf_counter() - t0) / args.steps,
           "header_bytes": header, "bytes_per_step": per_step, "blocks": len(opt.ledger.header["blocks"]),
           "forwards_per_step": opt.forward_passes / args.steps}
    if snapshot:
        out["trained"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out["ledger"] = opt.ledger
    return out


def time_replay(args, run: dict) -> dict:
    import torch

    from l2o.ledger import replay
    from l2o.models import load_base

    model, _, _ = load_base(args.base, dtype=args.dtype)
    forward = _forward_s(model, _batch(model, args.fwd_batch, args.fwd_seq))
    t0 = time.perf_counter()
    n = replay(model, run.pop("ledger"))
    per_update = (time.perf_counter() - t0) / n
    trained = run.pop("trained")
    same = all(torch.equal(v.view(torch.uint8), trained[k].view(torch.uint8)) for k, v in model.state_dict().items())
    return {"replay_s_per_update": per_update, "forward_s": forward, "forward_tokens": [args.fwd_batch, args.fwd_seq],
            "replay_over_forward": per_update / forward, "bit_identical": same}


def opt13b_blocks() -> tuple[int, int, int]:
    """(parameters, blocks, header bytes of a full-parameter OPT-13B ledger) from its config, on the meta device."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from l2o.ledger import FORMAT, VERSION, canonical
    from l2o.models import fingerprint
    from l2o.noise import GaussianNoise

    with torch.device("meta"):
        model = OPTForCausalLM(OPTConfig(**OPT_13B))
    named = [(n, p) for n, p in model.named_parameters()]
    header = {"format": FORMAT, "version": VERSION, "method": "mezo", "base_model": "opt-13b",
              "base_fingerprint": fingerprint(model), "base_digest": "sha256:" + "0" * 64, "dtype": "bf16",
              "peft": "full", "noise": GaussianNoise().config(), "blocks": [n for n, _ in named],
              "h": "0" * 16}
    return sum(p.numel() for _, p in named), len(named), len(canonical(header)) + 1


def at_20k(header: int, per_step: float, steps: int = 20000, checkpoint_every: int = 500) -> int:
    seal = len('{"h":"0123456789abcdef","seal":20000}') + 1
    return int(header + steps * per_step + (steps // checkpoint_every) * seal)


def main(argv=None) -> int:
    from bench.cli import Parser

    p = Parser("bench.ledger_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--policy", default="smollm2-135m/zo-finetuner")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--fwd-batch", type=int, default=16)
    p.add_argument("--fwd-seq", type=int, default=64)
    p.add_argument("--replay", nargs="*", default=["mezo", "zo-finetuner+gv"])
    p.add_argument("--optimizers", nargs="*", default=None, help="only these (default: every one with a ledger)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    from l2o.ledger import encode_scales
    from l2o.optim import REGISTRY, optimizer_names

    rows = []
    for name in optimizer_names():
        if not REGISTRY[name].replayable or (args.optimizers and name not in args.optimizers):
            continue  # a method whose ledger cannot rebuild its weights (Bilevel-ZOFO's first-order adapter)
        row = run_optimizer(name, args, snapshot=name in args.replay)
        if name in args.replay:
            row.update(time_replay(args, row))
        rows.append(row)
        print(json.dumps(row), flush=True)
    params13, blocks13, header13 = opt13b_blocks()
    scales13 = len(encode_scales([0.5] * blocks13))
    summary = {"opt13b": {"params": params13, "blocks": blocks13, "header_bytes": header13,
                          "weights_bf16_bytes": 2 * params13}, "ledger_20k": {}}
    for r in rows:
        scaled = r["optimizer"].startswith("zo-finetuner")  # its lines carry one scale per block
        big = r["bytes_per_step"] + (scales13 - len(encode_scales([0.5] * r["blocks"])) if scaled else 0)
        summary["ledger_20k"][r["optimizer"]] = {"smollm2": at_20k(r["header_bytes"], r["bytes_per_step"]),
                                                 "opt13b": at_20k(header13, big)}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.ledger_bench", main, resumable=False))
