"""What a first-order step's peak memory consists of: RSS and live tensors at each phase of `--steps` steps.

    python bench/fo_step_memory.py                                # SmolLM2-135M full, AdamW, batch 16 x 64, 3 steps
    python bench/fo_step_memory.py --optimizer sgd --foreach true
    MALLOC_MMAP_THRESHOLD_=131072 python bench/fo_step_memory.py  # glibc maps each large block on its own

The step is fine_tune's (fine_tune/first_order.py): zero_grad(set_to_none=True), the objective's loss on a batch,
backward, optimizer.step(), on winowhy's first 16 training examples capped at 64 tokens (bench/fo_memory.py's
batch). Before each phase the kernel's high-water mark is reset (/proc/self/clear_refs, 5), so each line's
`hwm` is that phase's own peak RSS; `live` adds the bytes of the parameters, their gradients and the optimizer's
state at the phase's end. One thread. Prints one JSON line per phase, in MB (10^6 B), and the parameter bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.fo_step_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="winowhy")
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--foreach", choices=("default", "true", "false"), default="default",
                    help="torch's foreach switch (default: torch's choice, single-tensor on the CPU)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from l2o.models import load_base
    from l2o.tasks import get_task, sample_splits
    from l2o.tasks.objectives import objective_for

    model, tok, _ = load_base(args.base)
    model.eval()
    task = get_task(args.task)
    batch = sample_splits(task, seed=0, num_train=args.batch_size, num_dev=0, num_eval=0).train
    objective = objective_for(task, None, max_length=args.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    foreach = {"default": None, "true": True, "false": False}[args.foreach]
    opt = (torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=foreach) if args.optimizer == "adamw"
           else torch.optim.SGD(params, lr=1e-3, weight_decay=0.0, foreach=foreach))
    mb = lambda n: round(n / 1e6, 1)  # noqa: E731
    nparam = sum(p.numel() * p.element_size() for p in params)

    def live() -> int:
        grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
        return nparam + grads + state

    def phase(step: int, name: str, fn):
        _reset_hwm()
        out = fn()
        print(json.dumps({"step": step, "phase": name, "hwm": mb(_status("VmHWM")), "rss": mb(_status("VmRSS")),
                          "live": mb(live())}), flush=True)
        return out

    print(json.dumps({"params_mb": mb(nparam), "foreach": args.foreach, "optimizer": args.optimizer,
                      "rss_after_load": mb(_status("VmRSS"))}), flush=True)
    for step in range(1, args.steps + 1):
        phase(step, "zero_grad", lambda: opt.zero_grad(set_to_none=True))
        with torch.enable_grad():
            loss = phase(step, "forward", lambda: objective.loss(model, tok, batch))
            phase(step, "backward", loss.backward)
        del loss
        phase(step, "step", opt.step)
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.fo_step_memory", main, resumable=False))
