"""Which coordinates can ES estimate? The SNR of one ES meta-gradient per parametrisation, on a real base.

    python bench/es_snr.py --base smollm2-135m --task sports_understanding --pairs 8 --unroll 2 \\
        --params all,head,bias,type --steps 2

From the pretrained weights, each parametrisation's ES estimator (l2o.estimators.ES, the deployed MeZO as
the inner optimizer, final held-out loss) takes `--steps` meta-gradients (without updating the policy: the
same psi, the trajectory moving on); per step it prints the SNR the estimator logs, (||g||^2 - V/N) / (V/N)
with V the per-pair estimates' spread, next to N / (P + 1), its value for a locally linear meta-loss, and the
mean |L+ - L-|. One JSON line per (parametrisation, step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from bench.cli import Parser

    ap = Parser("bench.es_snr", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="sports_understanding")
    ap.add_argument("--params", default="all,head,bias,type")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--unroll", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--std", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=48)
    args = ap.parse_args(argv)

    from l2o.engine import Engine
    from l2o.estimators import ES, Unroller
    from l2o.models import load_base
    from l2o.policy import ZOPolicy
    from l2o.weights import PretrainedFiles, model_folder
    from meta_train.data import TaskFamilyData
    from zoo.acquire import ensure_base

    ensure_base(args.base)
    model, tok, info = load_base(args.base, dtype="fp32")
    for p in model.parameters():
        p.requires_grad_(True)
    dm = TaskFamilyData(tasks=[args.task], holdout=[], batch_size=args.batch_size, num_train=200, num_dev=32,
                        max_length=args.max_length)
    dm.setup()
    policy = ZOPolicy.for_model(model, base_model=args.base)
    files = PretrainedFiles(model_folder(info.path), Engine(model))
    for which in args.params.split(","):
        unroller = Unroller(model, lr=args.lr, batch_size=args.batch_size)
        est = ES(model, policy, files, unroller, unroll=args.unroll, pairs=args.pairs, std=args.std, params=which,
                 reset_every=0)
        est.episode = -1  # a fresh trajectory from the pretrained weights for each parametrisation
        for step in range(args.steps):
            out = est.estimate(policy, lambda key: dm.stream(key, tok), step)
            print(json.dumps({"params": which, "P": est.coords.dim, "step": step, "snr": out.metrics["snr"],
                              "linear_snr": args.pairs / (est.coords.dim + 1),
                              "delta_loss_abs": out.metrics["delta_loss_abs"], "meta_loss": out.meta_loss,
                              "forwards": out.forwards}), flush=True)
        est.close()
    return 0


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.es_snr", main, resumable=False))
