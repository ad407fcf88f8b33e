"""`fine_tune`: forward-only fine-tuning of a base LLM on a task with any ZO optimizer.

    fine_tune --base smollm2-135m --task boolq --optimizer mezo-gv --lr 1e-6 --eps 1e-3 --steps 2000

Every option can also come from a YAML file (`--config run.yaml`, keys as the long flags with
underscores); flags given on the command line win. `--print-config` shows the resolved configuration.
Heavy libraries are imported only when a run starts, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from fine_tune.config import (ACCELERATORS, DEVICE_MAPS, DTYPES, HYPERPARAMETERS, OFFLOADS, PARALLEL, PEFT_MODES,
                              STRATEGIES, FineTuneConfig)
from fine_tune.config import dump_yaml, load_yaml
from l2o import catalog
from l2o.errors import OneLineParser, UserError
from l2o.stop import exit_code, stopped, terminate_as_interrupt


_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _bool(s: str) -> bool:
    if s.lower() not in _BOOL:
        raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
    return _BOOL[s.lower()]


def _save_model(s: str):
    return s.lower() if s.lower() in ("weights", "ledger") else _bool(s)


_SAVE_MODEL_HELP = ("save the final model: true (as --checkpoint), false, weights (save_pretrained) or ledger "
                    "(a zoo ledger artefact: zoo publish <out>/model)")
_CHECKPOINT_HELP = ("what checkpoints hold: the seed ledger (no tensors; --resume replays it) or the trainable "
                    "weights; default ledger for full-parameter runs of >= 50M trainable parameters")


def _add_process_args(p: argparse.ArgumentParser, S) -> None:
    d = p.add_argument_group("processes (Lightning DDP; only losses cross the wire)")
    d.add_argument("--devices", type=int, default=S, help="processes per node, one device each (default 1)")
    d.add_argument("--num-nodes", type=int, default=S, help="nodes (torchrun/SLURM launch them; default 1)")
    d.add_argument("--strategy", choices=STRATEGIES, default=S, help="ddp (auto: ddp when more than one process)")
    d.add_argument("--accelerator", metavar="{" + ",".join(ACCELERATORS) + "}", default=S,  # the config checks it
                   help="cpu (gloo) or gpu (nccl); auto: gpu if any")
    d.add_argument("--parallel", choices=PARALLEL, default=S,
                   help="data: each process evaluates a shard of the batch; direction: each evaluates a share of "
                        "the step's directions (bit-identical to 1 process); auto (default): direction when the "
                        "method's evaluations per step fill every process, else data")
    d.add_argument("--check-every", type=int, default=S, help="steps between the processes' weight-fingerprint "
                   "comparisons (default 100; 0: never)")


def _flag_type(hp):
    """argparse's type for a declared hyperparameter: int, float, true/false, or a number-or-word."""
    if hp.types == (bool,):
        return _bool
    if hp.types == (int,) or hp.types == (float,):
        return hp.types[0]
    if hp.types == (str,):
        return str

    def number_or_word(s: str):
        return s if s in hp.choices else float(s)

    number_or_word.__name__ = f"number or {'/'.join(hp.choices)}"  # argparse's "invalid <name> value: ..."
    return number_or_word


def _add_hyperparameter_args(g, S) -> None:
    """One flag per hyperparameter any registered method declares (l2o/optim/catalog.json)."""
    for name, hp in HYPERPARAMETERS.items():
        takes = catalog.methods_taking(name)
        where = "" if len(takes) * 2 > len(catalog.method_names()) else f"{', '.join(takes)}: "
        choices = list(hp.choices) if hp.types == (str,) and hp.choices else None
        g.add_argument(f"--{name.replace('_', '-')}", type=_flag_type(hp), choices=choices, default=S,
                       help=(where + hp.help).replace("%", "%%"))


def _add_placement_args(p: argparse.ArgumentParser, S) -> None:
    g = p.add_argument_group("a model larger than one device (inside each process; docs/distributed.md)")
    g.add_argument("--device-map", choices=DEVICE_MAPS, default=S,
                   help="layers across the visible GPUs with accelerate (auto = balanced; sequential fills them in "
                        "order); what does not fit spills to CPU memory")
    g.add_argument("--offload", choices=OFFLOADS, default=S,
                   help="cpu: weights live in CPU memory, each transformer block is streamed to the GPU for its "
                        "forward (the next one prefetched) and updated where it lives")
    g.add_argument("--gpus", type=int, default=S, help="GPUs a device map uses (default: all visible; --dry-run: "
                   "the fewest that hold the model)")
    g.add_argument("--gpu-memory", type=float, default=S,
                   help="GiB per GPU for a device map's step (weights, temporaries, activations; default: what the "
                        "GPU has) or for --dry-run's plan of any placement (default 80)")
    g.add_argument("--dry-run", action="store_true", default=S,
                   help="print the memory plan per device for --base/--dtype/--peft/--batch-size/--max-length and "
                        "the placement, offline, and exit (0: fits, 1: does not)")


def _add_data_args(p: argparse.ArgumentParser, S) -> None:
    """The data protocol (MeZO's by default: docs/reproduce.md)."""
    r = p.add_argument_group("data (MeZO's protocol by default)")
    r.add_argument("--data-seed", type=int, default=S, help="seed of the train/dev/eval sample")
    r.add_argument("--num-train", type=int, default=S)
    r.add_argument("--num-dev", type=int, default=S)
    r.add_argument("--num-eval", type=int, default=S)
    r.add_argument("--eval-seed", type=int, default=S, help="seed of the eval sample (default: --data-seed, as MeZO)")
    r.add_argument("--small-pool", choices=["mezo", "shrink"], default=S,
                   help="train pool < train+dev: mezo keeps dev (WSC 54/500), shrink shrinks dev first")
    r.add_argument("--objective", default=S, help="ce (candidates), lm (answer tokens), nondiff-f1")
    r.add_argument("--max-length", type=int, default=S,
                   help="tokens kept per sequence (prompt left-truncated; default 2048 as MeZO)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="fine_tune", description=__doc__.split("\n\n")[0])
    S = argparse.SUPPRESS
    g = p.add_argument_group("what to fine-tune")
    g.add_argument("--base", default=S, help="alias (smollm2-135m, opt-13b, llama-3.2-1b, ...), hub id or local folder")
    g.add_argument("--task", default=S, help="task name (see --list-tasks)")
    g.add_argument("--source", default=S, help="local data file/folder for the task instead of its default source")
    g.add_argument("--peft", choices=PEFT_MODES, default=S, help="which parameters the optimizer moves")
    g.add_argument("--dtype", choices=DTYPES, default=S)
    g.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:1 ... (one process)")
    _add_process_args(p, S)
    _add_placement_args(p, S)
    o = p.add_argument_group("optimizer (unset values take the paper's default for the chosen optimizer)")
    o.add_argument("--optimizer", default=S, help=f"{', '.join(catalog.method_names())}, zoo:<policy id> "
                   "(= zo-finetuner), or the first-order baselines fo-sgd, fo-adamw (backpropagation; --lr, "
                   "--weight-decay); --list-optimizers shows each one's paper and defaults")
    o.add_argument("--policy", default=S, help="zo-finetuner*: learned policy (zoo id, artefact folder, file:// URL)")
    o.add_argument("--policy-size-rule", choices=["numel", "authors"], default=S,
                   help="zo-finetuner*: block sizes in the normaliser nf: numel (E||d||^2/D = 1, MeZO's step size) or "
                   "authors (embedding = hidden x 15 x batch, a bigger step); default: the rule the policy was "
                   "meta-trained under (recorded in its artefact)")
    o.add_argument("--noise", choices=catalog.noise_sources(), default=S, help="noise source for z")
    _add_hyperparameter_args(o, S)
    r = p.add_argument_group("the run")
    r.add_argument("--init", default=S, help="zoo id/folder applied to the base first: a Bilevel-ZOFO meta-init or a "
                   "full-parameter zo-ledger (a published fine-tune)")
    r.add_argument("--steps", type=int, default=S)
    r.add_argument("--batch-size", type=int, default=S)
    r.add_argument("--eval-every", type=int, default=S, help="steps between dev/eval evaluations (0: only at the end)")
    r.add_argument("--save-every", type=int, default=S, help="steps between checkpoints")
    r.add_argument("--seed", type=int, default=S, help="optimizer seed")
    r.add_argument("--eval-batch-size", type=int, default=S)
    _add_data_args(p, S)
    r.add_argument("--out", default=S, help="run folder (default runs/<task>-<optimizer>-<peft>-s<seed>)")
    r.add_argument("--save-model", type=_save_model, default=S, help=_SAVE_MODEL_HELP)
    r.add_argument("--checkpoint", choices=["ledger", "weights"], default=S, help=_CHECKPOINT_HELP)
    r.add_argument("--zero-shot", type=_bool, default=S, help="evaluate the base model before training")
    r.add_argument("--resume", action="store_true", default=S,
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--config", help="YAML file with options")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--list-tasks", action="store_true",
                   help="list the known tasks (and whether each has its data on this machine) and exit")
    p.add_argument("--list-optimizers", action="store_true", help="list the optimizers and their defaults and exit")
    return p


def resolve_config(args: argparse.Namespace) -> FineTuneConfig:
    values = load_yaml(args.config) if args.config else {}
    known = {f.name for f in fields(FineTuneConfig)}
    values.update({k: v for k, v in vars(args).items() if k in known})
    return FineTuneConfig(**values)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    terminate_as_interrupt()  # a scheduler's SIGTERM: finish the step, save, stop, as Ctrl-C does
    try:
        if args.list_tasks:
            from l2o.tasks import REGISTRY
            from l2o.tasks.registry import data_here

            rows = [(name, REGISTRY[name].kind, ",".join(sorted(REGISTRY[name].tags)), data_here(name))
                    for name in sorted(REGISTRY)]
            widths = [max(len(row[i]) for row in rows + [("TASK", "KIND", "TAGS")]) for i in range(3)]
            for row in [("TASK", "KIND", "TAGS", "DATA")] + rows:
                print("  ".join(f"{cell:{w}s}" for cell, w in zip(row[:3], widths)), row[3])
            ready = sum(row[3] == "here" for row in rows)
            print(f"{ready} of {len(rows)} tasks have their data here; `python -m zoo.acquire --tasks NAME` fetches "
                  "one where its source can be reached (README: Two commands)")
            return 0
        if args.list_optimizers:
            from fine_tune.first_order import FIRST_ORDER

            print(catalog.listing())
            for name, (cls, defaults) in sorted(FIRST_ORDER.items()):
                print(f"{name}  (first-order baseline: torch.optim.{cls.__name__}, backpropagation)")
                print("    " + "  ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in defaults.items()))
            return 0
        cfg = resolve_config(args)
        if getattr(args, "dry_run", False):  # the memory plan per device, offline (fine_tune/plan.py)
            from fine_tune.plan import main as dry_run

            return dry_run(cfg)
        if args.print_config:
            cfg.validate()
            print(dump_yaml(cfg), end="")
            return 0
        from fine_tune.run import run

        results = run(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        if results is None:  # a process other than rank 0 of a multi-process run: rank 0 reports
            return 0
    except KeyboardInterrupt as err:  # RunInterrupted (l2o.integrations.lightning) says if --resume can continue
        print(f"fine_tune: {str(err) or stopped(err) + '; continue with --resume'}", file=sys.stderr)
        return exit_code(err)
    except UserError as err:  # what a user can cause (the zoo's errors too): one sentence; the rest keeps its traceback
        print(f"fine_tune: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # 1: a run stopped from outside (l2o.errors.RunFailed)
    m = results["metric"]
    zs, fin = results["zero_shot"], results["final"]
    print(f"\n{results['task']} ({m}), {results['config']['optimizer']} on {results['base']['model_id']}, "
          f"{results['steps']} steps, {results['forward_passes']} forward passes, {results['fit_time_s']:.0f} s")
    for split in ("dev", "eval"):
        if split in fin:
            before = f"zero-shot {zs[split]:.4f}  ->  " if split in zs else ""
            print(f"  {split:4s}  {before}fine-tuned {fin[split]:.4f}")
    print(f"  results:     {results['paths']['plot'].rsplit('/', 1)[0]}/results.json")
    print(f"  loss plot:   {results['paths']['plot']}")
    print(f"  TensorBoard: tensorboard --logdir {results['paths']['tensorboard']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
