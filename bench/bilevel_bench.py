"""Bilevel-ZOFO vs MeZO (full, LoRA) vs first-order LoRA at equal wall time and at equal passes.

    OMP_NUM_THREADS=1 python bench/bilevel_bench.py --all --wall 180 --passes 300 --out runs/bilevel-bench
    python bench/bilevel_bench.py --method mezo-full --wall 60 --passes 100 --out runs/x   # one method
    OMP_NUM_THREADS=1 python bench/bilevel_bench.py --timing --batch-size 4 --out runs/bilevel-bench  # s/step
    OMP_NUM_THREADS=1 python bench/bilevel_bench.py --meta --meta-steps 60 --out runs/bilevel-meta  # meta-init

Each method runs in its own process (peak RSS is per process; the peak is reset after loading with
/proc/self/clear_refs, so it is the training phase's). Training time excludes evaluation. A "pass" is
one forward or one backward pass over a batch (a backward costs about two forwards). The run stops once
both budgets are reached; the eval set's accuracy and mean candidate cross-entropy are recorded at the
first moment each budget is reached. `--all` writes `<out>/<method>.json` and `<out>/table.md`.

Methods: bilevel-paper (the official RTE/LoRA sweep: lam 1e4, lower lr 1e-4, upper lr 1e-7, T_low 30,
eps 1e-3; theta_lr 1e-7), bilevel-small (lam 10, upper lr 1e-4, theta_lr 1e-6, T_low 10), mezo-full (lr 1e-6,
eps 1e-3), mezo-lora (lr 1e-4, eps 1e-2), fo-lora (Adam lr 1e-4 on LoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "bilevel-paper": dict(kind="bilevel", peft="lora", lam=1e4, lower_lr=1e-4, upper_lr=1e-7, theta_lr=1e-7, eps=1e-3,
                          t_low=30),
    "bilevel-small": dict(kind="bilevel", peft="lora", lam=10.0, lower_lr=1e-4, upper_lr=1e-4, theta_lr=1e-6,
                          eps=1e-3, t_low=10),
    "mezo-full": dict(kind="mezo", peft="full", lr=1e-6, eps=1e-3),
    "mezo-lora": dict(kind="mezo", peft="lora", lr=1e-4, eps=1e-2),
    "fo-lora": dict(kind="fo", peft="lora", lr=1e-4),
}


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size in bytes from /proc/self/status."""
    cur = peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cur, peak


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def evaluate(model, tok, obj, examples, batch_size=16) -> dict:
    import torch

    losses = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            losses.append(float(obj.loss(model, tok, chunk)) * len(chunk))
    acc = obj.evaluate(model, tok, examples, batch_size)["accuracy"]
    return {"accuracy": acc, "eval_loss": sum(losses) / len(examples)}


def run_one(name: str, args) -> dict:
    import torch

    from l2o.models import load_base
    from l2o.peft_modes import apply_peft
    from l2o.tasks import sample_splits
    from l2o.tasks.objectives import objective_for

    spec = dict(METHODS[name])
    torch.manual_seed(0)
    from zoo.acquire import ensure_base, ensure_task

    ensure_base(args.base)
    ensure_task(args.task)
    splits = sample_splits(args.task, seed=args.data_seed, num_train=args.num_train, num_dev=0, num_eval=args.num_eval)
    obj = objective_for(args.task, max_length=args.max_length)
    model, tok, info = load_base(args.base)
    model = apply_peft(model, spec["peft"], seed=0)
    if spec["peft"] == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    zero = evaluate(model, tok, obj, splits.eval) if args.zero_shot else None
    kind = spec.pop("kind")
    spec.pop("peft")
    from l2o.optim import build_optimizer
    from l2o.streams import BilevelStreams, Stream, split_dg_df

    if kind == "bilevel":
        opt = build_optimizer("bilevel-zofo", model, seed=0, **spec)
        streams = BilevelStreams([split_dg_df(splits.train, args.data_seed)], args.batch_size, spec["t_low"], 1,
                                 args.data_seed)

        def do_step(t):
            opt.step(streams.losses(t, lambda k, batch: obj.loss(model, tok, batch)))
            return opt.last_lower, opt.forward_passes, opt.backward_passes
    elif kind == "mezo":
        opt = build_optimizer("mezo", model, seed=0, **spec)
        stream = Stream(splits.train, args.batch_size, args.data_seed)

        def do_step(t):
            batch = stream.batch(t)
            opt.step(lambda: obj.loss(model, tok, batch))
            return opt.last.loss, opt.forward_passes, 0
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        adam = torch.optim.Adam(params, lr=spec["lr"])
        stream = Stream(splits.train, args.batch_size, args.data_seed)
        count = {"f": 0, "b": 0}

        def do_step(t):
            loss = obj.loss(model, tok, stream.batch(t))
            loss.backward()
            adam.step()
            adam.zero_grad(set_to_none=True)
            count["f"] += 1
            count["b"] += 1
            return float(loss.detach()), count["f"], count["b"]

    base_rss, _ = _rss()
    _reset_peak()
    train_s, t, history, points = 0.0, 0, [], {}
    while True:
        t0 = time.perf_counter()
        loss, f, b = do_step(t)
        train_s += time.perf_counter() - t0
        t += 1
        history.append({"step": t, "loss": loss, "forwards": f, "backwards": b, "train_s": round(train_s, 3)})
        for budget, reached in (("wall", train_s >= args.wall), ("passes", f + b >= args.passes)):
            if reached and budget not in points:
                ev = evaluate(model, tok, obj, splits.eval)
                points[budget] = {"steps": t, "forwards": f, "backwards": b, "train_s": round(train_s, 2), **ev,
                                  "train_loss_last20": sum(h["loss"] for h in history[-20:]) / len(history[-20:])}
                print(f"{name}: {budget} budget reached at step {t}: {points[budget]}", flush=True)
        if len(points) == 2 or t >= args.max_steps:
            break
    _, peak = _rss()
    return {"method": name, "spec": METHODS[name], "task": args.task, "base": info.model_id,
            "num_train": len(splits.train), "num_eval": len(splits.eval), "batch_size": args.batch_size,
            "max_length": args.max_length, "zero_shot": zero, "points": points,
            "rss_after_load_bytes": base_rss, "peak_rss_training_bytes": peak,
            "threads": torch.get_num_threads(), "history": history}


def table(results: list[dict]) -> str:
    lines = ["| method | budget | steps | fwd | bwd | train s | s/pass | eval acc | eval CE | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for budget in ("wall", "passes"):
            p = r["points"].get(budget)
            if not p:
                continue
            passes = p["forwards"] + p["backwards"]
            lines.append(f"| {r['method']} | {budget} | {p['steps']} | {p['forwards']} | {p['backwards']} | "
                         f"{p['train_s']:.0f} | {p['train_s'] / max(1, passes):.3f} | {p['accuracy']:.3f} | "
                         f"{p['eval_loss']:.4f} | {r['peak_rss_training_bytes'] / 2**20:.0f} |")
    zs = next((r["zero_shot"] for r in results if r.get("zero_shot")), None)
    if zs:
        lines.append(f"\nzero-shot: accuracy {zs['accuracy']:.3f}, eval CE {zs['eval_loss']:.4f}")
    return "\n".join(lines)


def meta(args) -> dict:
    """Meta-train a backbone initialisation over a small task family, then compare held-out quick
    adaptation from it with the same adaptation from the base (and zero-shot)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from meta_train.bilevel import BilevelMetaInit, BilevelTaskData

    out = Path(args.out)
    dm = BilevelTaskData(tasks=args.meta_tasks.split(","), holdout=args.meta_holdout.split(","),
                         num_train=args.num_train, adapt_examples=args.adapt_examples, num_eval=args.num_eval,
                         max_length=args.max_length)
    module = BilevelMetaInit(base=args.base, lam=args.meta_lam, lower_lr=1e-4, upper_lr=1e-4,
                             theta_lr=args.meta_theta_lr, eps=1e-3, t_low=args.meta_t_low, tasks_per_step=2,
                             batch_size=args.batch_size, adapt_steps=args.adapt_steps, adapt_lr=args.adapt_lr,
                             out=str(out), registry=str(out / "registry"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.meta_steps,
                        logger=TensorBoardLogger(str(out), name="tb", version=""), enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        log_every_n_steps=1)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    res = dict(module.results)
    res["fit_s"] = time.perf_counter() - t0
    print(json.dumps({k: res[k] for k in ("heldout", "published", "forward_passes", "backward_passes", "fit_s")},
                     indent=1), flush=True)
    return res


def timing(args) -> dict:
    """Seconds per step of each kind, interleaved round by round in one process so that a shared,
    changing CPU load hits every method alike (the budgeted runs above run one after another)."""
    import copy

    import torch

    from l2o.models import load_base
    from l2o.optim import build_optimizer
    from l2o.streams import BilevelStreams, Stream, split_dg_df
    from l2o.peft_modes import apply_peft
    from l2o.tasks import sample_splits
    from l2o.tasks.objectives import objective_for

    from zoo.acquire import ensure_base, ensure_task

    ensure_base(args.base)
    ensure_task(args.task)
    splits = sample_splits(args.task, seed=args.data_seed, num_train=args.num_train, num_dev=0, num_eval=0)
    obj = objective_for(args.task, max_length=args.max_length)
    base, tok, _ = load_base(args.base)
    full = copy.deepcopy(base)
    for p in full.parameters():
        p.requires_grad_(True)
    lora_zo = apply_peft(copy.deepcopy(base), "lora")
    lora_fo = apply_peft(copy.deepcopy(base), "lora")
    lora_bi = apply_peft(base, "lora")
    stream = Stream(splits.train, args.batch_size, 0)
    bi = build_optimizer("bilevel-zofo", lora_bi, t_low=2, lam=10.0, upper_lr=1e-4, theta_lr=1e-6)
    streams = BilevelStreams([split_dg_df(splits.train, 0)], args.batch_size, 2)
    mezo_full = build_optimizer("mezo", full, lr=1e-6, eps=1e-3)
    mezo_lora = build_optimizer("mezo", lora_zo, lr=1e-4, eps=1e-2)
    adam = torch.optim.Adam([p for p in lora_fo.parameters() if p.requires_grad], lr=1e-4)

    def bi_loss(task, batch):
        return obj.loss(lora_bi, tok, batch)

    def fo_step(t):
        loss = obj.loss(lora_fo, tok, stream.batch(t))
        loss.backward()
        adam.step()
        adam.zero_grad(set_to_none=True)

    kinds = {
        "bilevel lower step (1 fwd + 1 bwd)": lambda t: bi.lower_step(streams.losses(2 * t, bi_loss), 0),
        "bilevel upper step (6 fwd + 2 bwd + 1 update sweep)":
            lambda t: bi.upper_step(streams.losses(2 * t + 1, bi_loss)),
        "mezo-full step (2 fwd + 3 noise sweeps)":
            lambda t: mezo_full.step(lambda: obj.loss(full, tok, stream.batch(t))),
        "mezo-lora step (2 fwd)": lambda t: mezo_lora.step(lambda: obj.loss(lora_zo, tok, stream.batch(t))),
        "fo-lora step (1 fwd + 1 bwd)": fo_step,
    }
    times = {k: [] for k in kinds}
    for r in range(args.timing_rounds):
        for k, fn in kinds.items():
            t0 = time.perf_counter()
            fn(r)
            times[k].append(time.perf_counter() - t0)
    rows = {k: {"median_s": sorted(v)[len(v) // 2], "all_s": [round(x, 3) for x in v]} for k, v in times.items()}
    lines = ["| step kind | median s | all rounds |", "|---|---|---|"]
    lines += [f"| {k} | {v['median_s']:.3f} | {v['all_s']} |" for k, v in rows.items()]
    text = "\n".join(lines)
    print(text, flush=True)
    Path(args.out, "timing.md").write_text(text + "\n")
    return rows


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.bilevel_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(METHODS))
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="sports_understanding")
    ap.add_argument("--num-train", type=int, default=200)
    ap.add_argument("--num-eval", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--wall", type=float, default=180.0, help="training seconds budget")
    ap.add_argument("--passes", type=int, default=300, help="forward+backward pass budget")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--zero-shot", action="store_true")
    ap.add_argument("--out", default="runs/bilevel-bench")
    ap.add_argument("--timing", action="store_true", help="interleaved per-step timing of every method")
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--meta", action="store_true", help="meta-train a backbone init and compare held-out adaptation")
    ap.add_argument("--meta-tasks", default="tweet_sentiment,imdb,multiemo_en")
    ap.add_argument("--meta-holdout", default="multiemo_en")
    ap.add_argument("--meta-steps", type=int, default=60)
    ap.add_argument("--meta-t-low", type=int, default=10)
    ap.add_argument("--meta-lam", type=float, default=10.0)
    ap.add_argument("--meta-theta-lr", type=float, default=1e-6)
    ap.add_argument("--adapt-examples", type=int, default=5)
    ap.add_argument("--adapt-steps", type=int, default=5)
    ap.add_argument("--adapt-lr", type=float, default=2e-4)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.meta:
        meta(args)
        return 0
    if args.timing:
        timing(args)
        return 0
    if args.method:
        res = run_one(args.method, args)
        (out / f"{args.method}.json").write_text(json.dumps(res, indent=1))
        return 0
    if not args.all:
        ap.error("give --method NAME or --all")
    results = []
    for i, name in enumerate(args.methods.split(",")):
        cmd = [sys.executable, __file__, "--method", name, "--base", args.base, "--task", args.task,
               "--num-train", str(args.num_train), "--num-eval", str(args.num_eval), "--batch-size",
               str(args.batch_size), "--max-length", str(args.max_length), "--data-seed", str(args.data_seed),
               "--wall", str(args.wall), "--passes", str(args.passes), "--max-steps", str(args.max_steps),
               "--out", str(out)] + (["--zero-shot"] if i == 0 else [])
        subprocess.run(cmd, check=True, env=os.environ.copy())
        results.append(json.loads((out / f"{name}.json").read_text()))
        (out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.bilevel_bench", main, resumable=False))
