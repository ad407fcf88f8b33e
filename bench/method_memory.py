"""Each registered method's extra memory, in parameter copies, measured: what it keeps between steps and its peak.

    python -m bench.method_memory                       # every ZO method, 8 x (1024 x 1024) fp32 weights
    python -m bench.method_memory --methods mezo zo-adam --blocks 4 --dim 2048 --out runs/method-memory

One process per method (so the kernel's high-water mark is that method's alone). Each builds a model of
`--blocks` square fp32 linear layers (no biases), runs one forward as inference does, reads its peak RSS
(VmHWM), takes `--steps` steps of the method on a fixed batch, and reads VmHWM again:

    state   bytes of the tensors the optimizer keeps between steps (its update rule's buffers: momentum,
            Adam's moments, HiZOO's preconditioner, LOZO-M's factors) / bytes of the weights
    peak    (VmHWM after the steps - VmHWM after the inference forward) / bytes of the weights: the state plus
            the step's temporaries (a block-sized z, one block at a time)

With B equal blocks one block is 1/B of a copy, so the temporaries' share is about 1/B to 3/B. glibc's malloc
is told to map every allocation over 128 KiB on its own (MALLOC_MMAP_THRESHOLD_), so a freed temporary leaves
the process at once and the high-water mark counts what was alive together, not the heap's fragmentation. Writes
`<out>/method_memory.json` and prints a markdown table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

CHILD = """
import json, torch
from torch import nn
from l2o.optim import REGISTRY, build_optimizer
torch.manual_seed(0)
torch.set_num_threads(1)

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

model = nn.Sequential(*[nn.Linear({dim}, {dim}, bias=False) for _ in range({blocks})])
x = torch.randn(8, {dim})
closure = lambda: model(x).pow(2).mean()
opt = build_optimizer({name!r}, model, lr=1e-6)   # (its ledger header imports l2o.models: before the baseline)
with torch.no_grad():
    closure()
base = hwm()
for _ in range({steps}):
    opt.step(closure)
rule = opt.engine.rule
state = sum(t.numel() * t.element_size() for store in (rule.buffers.values() if rule else []) for t in store.values())
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({{"method": {name!r}, "state_copies": state / weights, "peak_copies": (hwm() - base) / weights,
                   "weights_mb": weights / 2**20}}))
"""


def measure(name: str, blocks: int, dim: int, steps: int) -> dict:
    code = CHILD.format(name=name, blocks=blocks, dim=dim, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "L2O_NOISE_THREADS": "1", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from l2o.optim import REGISTRY

    from bench.cli import Parser

    p = Parser("bench.method_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="*", help="default: every registered method that needs no adapter or policy")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="runs/method-memory")
    a = p.parse_args(argv)
    names = a.methods or [n for n, c in REGISTRY.items() if not c.needs_adapter and not n.startswith("zo-finetuner")]
    rows = []
    for name in names:
        rows.append(measure(name, a.blocks, a.dim, a.steps))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "method_memory.json").write_text(json.dumps({"blocks": a.blocks, "dim": a.dim, "rows": rows}, indent=1))
    print(f"\n{a.blocks} blocks of {a.dim} x {a.dim} fp32 ({rows[0]['weights_mb']:.0f} MB of weights), "
          f"{a.steps} steps\n")
    print("| method | state kept between steps (copies) | peak over inference (copies) |\n|---|---|---|")
    for r in rows:
        print(f"| `{r['method']}` | {r['state_copies']:.3f} | {r['peak_copies']:.2f} |")
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.method_memory", main, resumable=False))
