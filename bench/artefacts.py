"""Learned artefacts trained for the evidence panel (issue 27, item 5): a ZO Fine-tuner policy and a Bilevel-ZOFO
meta-initialisation, meta-trained on the task family and used by the suite only on the panel.

    python -m bench.artefacts --out runs/evidence --base smollm2-135m     # bench.evidence's `artefacts` phase

    family   = panel.json "scanned" - panel.json "tasks"       the panel never enters meta-training or -validation
    held out = the family's first HELDOUT tasks, sorted by name  meta-validation; the rest meta-train
    for kind in KINDS (zo-finetuner, bilevel-zofo):
        round r = 1, 2, ..., --max-rounds: one complete `meta_train` run of --meta-steps more steps in
                  <out>/artefacts/<kind>/round-<r>, continuing from round r-1
        metric_r = its held-out gain (higher is better):
                  zo-finetuner: meta-validation's baseline loss - policy loss (eval loss after --model.val_steps
                                ZO steps: MeZO without the policy minus with it, equal forwards)
                  bilevel-zofo: mean over held-out tasks of the eval loss after quick adaptation from the base
                                minus from the meta-init (the loss, not accuracy: on this family a 5-step
                                adaptation flipped no answer from either start, so accuracy gains read 0.000)
        stop     when metric_r <= metric_(r-1) + TOLERANCE[kind]   (more meta-steps no longer help)
    the artefact the suite uses = the round with the highest metric (`best`)

How a round continues the previous one:
- zo-finetuner: `--model.init_policy round-(r-1)/policy` (the policy carries on; its Adam state and the look-ahead's
  LLM trajectory start afresh, as at any restart of `--model.reset_every`).
- bilevel-zofo: meta_train has no init from a meta-initialisation (the artefact is only the backbone's change; the
  run's state is also the per-task PEFT copies and their Adam). Round r is a copy of round r-1's last checkpoint
  `--resume`d for --meta-steps more steps: the rounds are one run's learning curve, cut at each round, with no
  second loading path to get wrong. (Its step counts are cumulative, as the policy's are in rounds.jsonl.)

Each round is recorded in `<out>/artefacts/<kind>/rounds.jsonl` (round, meta_steps, metric, improved, cpu_s,
artefact); a rerun skips recorded rounds and `--resume`s an unfinished one. Once a round is recorded, the
checkpoints no round needs any more are removed (`prune`): only the last Bilevel round's stay. After a wipe the
records bring back each round's record and card but no base-sized weights or checkpoints (bench/snapshot.py): the
best round (and, while rounds continue, the last Bilevel round) is then meta-trained again from its records, each
round checked against its recorded held-out gain (`rebuild`; its CPU in rebuilds.jsonl). No round starts
once the suite's CPU budget is spent (bench/budget.py; rounds.jsonl counts there). The rounds are not published
into a zoo registry ($L2O_ZOO_REGISTRY is ignored here); shipping the best policy in the built-in zoo is a
separate, reviewed step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget import BudgetSpent, CpuBudget  # noqa: E402
from bench.cli import Parser, cli_exit  # noqa: E402
from bench.records import append_record, read_records  # noqa: E402
from bench.resume import CpuMeter, recorded  # noqa: E402
from l2o import catalog  # noqa: E402
from l2o.errors import UserError  # noqa: E402
from l2o.filelock import copy_atomic  # noqa: E402
from zoo.artefact import WEIGHTS_NAME  # noqa: E402
from zoo.ids import sha256_file  # noqa: E402
from zoo.manifest import builtin_manifest  # noqa: E402

KINDS = ("zo-finetuner", "bilevel-zofo")
ARTEFACT_DIR = {"zo-finetuner": "policy", "bilevel-zofo": "meta-init"}
TOLERANCE = {"zo-finetuner": 1e-3, "bilevel-zofo": 1e-3}  # eval-loss units
HELDOUT = 2  # held-out tasks for meta-validation (1 when the family has fewer than 4)
# SmolLM2-135M on a 2-core CPU. The policy: the shipped smollm2-135m/zo-finetuner@1's recipe (its card: lr_policy
# 0.01, lr_llm 1e-4, reset_every 40; the defaults' lr_llm 1e-2 took the look-ahead's meta-loss from 0.73 to 9.9 in 3
# steps here), meta-validated on 100 eval examples. Bilevel-ZOFO at the small-scale lam and theta_lr it declares for
# prefix tuning, as the harness runs it (the official lam 1e4 / theta_lr 1e-7 barely move a 135M backbone in a few
# hundred steps).
BILEVEL_SMALL = catalog.defaults("bilevel-zofo", "prefix")
SETTINGS = {"zo-finetuner": ["--model.lr_policy", "0.01", "--model.lr_llm", "1e-4", "--model.reset_every", "40",
                             "--data.num_eval", "100"],
            "bilevel-zofo": ["--model.lam", f"{BILEVEL_SMALL['lam']:g}", "--model.theta_lr",
                             f"{BILEVEL_SMALL['theta_lr']:g}", "--model.tasks_per_step", "2", "--model.batch_size", "4",
                             "--data.num_train", "200", "--data.num_eval", "100"]}
SMOKE = {"zo-finetuner": ["--model.val_steps", "2", "--data.batch_size", "2", "--data.num_train", "8",
                          "--data.num_eval", "4"],
         "bilevel-zofo": ["--model.lam", "10", "--model.lower_lr", "1e-2", "--model.upper_lr", "1e-3",
                          "--model.theta_lr", "1e-3", "--model.t_low", "2", "--model.tasks_per_step", "2",
                          "--model.batch_size", "2", "--model.adapt_steps", "2", "--data.num_train", "6",
                          "--data.adapt_examples", "2", "--data.num_eval", "2"]}


# Steps per round, about 15 CPU-minutes each on SmolLM2-135M (2 loaded cores): a look-ahead step ~12 CPU-s; a
# Bilevel-ZOFO step ~1.1 CPU-s (a first-order PEFT step), its upper step (~13 CPU-s) every t_low = 10 steps
DEFAULT_STEPS = {"zo-finetuner": 40, "bilevel-zofo": 400}


def steps_per_kind(spec) -> dict[str, int]:
    """"N" (every kind), "kind=N,..." (a kind not named keeps DEFAULT_STEPS's) or such a dict -> {kind: N}."""
    if isinstance(spec, dict):
        return dict(spec)

    def count(n: str) -> int:
        if not n.strip().isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"--meta-steps takes integers >= 1 (N or kind=N,...), got {n!r}")
        return int(n)

    if "=" not in str(spec):
        return {k: count(str(spec)) for k in KINDS}
    pairs = [part.partition("=") for part in str(spec).split(",") if part]
    unknown = [k for k, _, _ in pairs if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(unknown)} in --meta-steps; kinds: "
                                         f"{', '.join(KINDS)}")
    return {**DEFAULT_STEPS, **{k: count(n) for k, _, n in pairs}}


class ArtefactsError(UserError):
    """The artefacts cannot be trained yet (no panel, or too small a task family)."""


def parse_args(argv=None):
    ap = Parser(prog="bench.artefacts", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/evidence", help="the evidence suite's --out (its learnability/panel.json)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--meta-steps", default=DEFAULT_STEPS, type=steps_per_kind,
                    help="meta-training steps per round: N for every kind, or kind=N,... (default "
                    + ",".join(f"{k}={n}" for k, n in DEFAULT_STEPS.items()) + ")")
    ap.add_argument("--max-rounds", type=int, default=4)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--smoke", action="store_true", help="tiny data sizes (use with a tiny --base)")
    CpuBudget.add_arguments(ap)
    return ap.parse_args(argv)


def split_family(out: Path) -> tuple[list[str], list[str], dict]:
    """(training tasks, held-out tasks, panel.json): the scanned tasks minus the panel's."""
    path = Path(out) / "learnability" / "panel.json"
    if not path.exists():
        raise ArtefactsError(f"no panel yet ({path} is written by the scan phase)")
    panel = json.loads(path.read_text())
    if "scanned" not in panel:
        raise ArtefactsError(f"{path} does not list the scanned tasks; rewrite it with the scan's --report")
    family = sorted(set(panel["scanned"]) - set(panel["tasks"]))
    if len(family) < 2:
        raise ArtefactsError(f"the task family (scanned tasks not on the panel: {', '.join(family) or 'none'}) needs "
                             "at least 2 tasks, one to meta-train and one to meta-validate on")
    n = HELDOUT if len(family) >= 4 else 1
    return family[n:], family[:n], panel


def decide(rows: list[dict], tol: float, max_rounds: int) -> tuple[bool, dict | None]:
    """(stop, best round) after the recorded `rows`: stop once a round does not beat the one before it by more
    than `tol`, or after `max_rounds`; the best round is the one with the highest metric (the first on ties)."""
    best = max(rows, key=lambda r: r["metric"], default=None)  # max keeps the first of equals
    stalled = len(rows) > 1 and rows[-1]["metric"] <= rows[-2]["metric"] + tol
    return stalled or len(rows) >= max_rounds, best


def held_out_metric(kind: str, results: dict) -> float:
    """A round's held-out gain from its results.json (higher is better; see the module doc)."""
    if kind == "zo-finetuner":
        return results["meta_validation"]["improvement"]
    rows = results["heldout"].values()
    if not all(v.get("base_adapted_loss") is not None for v in rows):
        raise ArtefactsError("this bilevel-zofo round's results.json has no held-out eval losses (a meta_train from "
                             "before they were recorded): remove its rounds to meta-train them again")
    return sum(v["base_adapted_loss"] - v["meta_adapted_loss"] for v in rows) / len(rows)


def round_argv(kind: str, args, r: int, before: int, run: Path, train: list[str], held: list[str],
               panel: dict) -> list[str]:
    """`meta_train` flags of round r, after `before` meta-steps (its previous round, where it continues from, is
    in the sibling folder; a bilevel round's run counts them, a policy's starts at 0)."""
    before = before if kind == "bilevel-zofo" else 0
    argv = ["--method", kind, "--base", args.base, "--tasks", *train, *held, "--holdout", *held,
            "--max_steps", str(before + args.meta_steps[kind]), "--out", str(run),
            "--save_every", str(save_every(before, args.meta_steps[kind])), "--trainer.accelerator", "cpu",
            "--data.max_length", str(panel["settings"]["max_length"]), *(SMOKE if args.smoke else SETTINGS)[kind]]
    if kind == "zo-finetuner":
        argv += ["--model.val_tasks", str(len(held))]
        if r > 1:
            argv += ["--model.init_policy", str(run.parent / f"round-{r - 1}" / "policy")]
    return argv


def save_every(before: int, steps: int) -> int:
    """Checkpoints about 4 times a round of `steps` after `before`, always at its last step (the next bilevel round
    resumes from it): a divisor of both."""
    return next(d for d in range(max(1, steps // 4), 0, -1) if steps % d == 0 and before % d == 0)


@contextlib.contextmanager
def _no_registry():
    """meta_train publishes into $L2O_ZOO_REGISTRY when set: a round is not for publishing."""
    saved = os.environ.pop("L2O_ZOO_REGISTRY", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["L2O_ZOO_REGISTRY"] = saved


def run_round(kind: str, args, r: int, before: int, folder: Path, family: tuple) -> dict:
    """Meta-train round r, after `before` meta-steps, in folder/round-<r> (or finish it), and its record."""
    from meta_train.cli import main as meta_train

    run = folder / f"round-{r}"
    with CpuMeter(run) as meter:  # every attempt's CPU: a round killed at a session's end resumes (bench.resume)
        if not (run / "results.json").exists():
            last = last_checkpoint(folder, r)
            if kind == "bilevel-zofo" and r > 1 and not last.exists():  # continue round r-1's run (module doc)
                last.parent.mkdir(parents=True, exist_ok=True)
                # killed mid-copy: no half checkpoint to resume from
                copy_atomic(last_checkpoint(folder, r - 1), last)
            argv = round_argv(kind, args, r, before, run, *family) + (["--resume"] if last.exists() else [])
            print(f"artefacts: {kind} round {r}: meta_train {' '.join(argv)}", flush=True)
            with _no_registry():
                code = meta_train(argv)
            if code == 130:  # Ctrl-C (meta_train said how to continue): the suite stops too, a rerun resumes the round
                raise KeyboardInterrupt
            if code != 0:
                raise ArtefactsError(f"meta_train of {kind} round {r} failed (exit {code}); its run is {run}")
    results = json.loads((run / "results.json").read_text())
    steps = results["steps"] if kind == "zo-finetuner" else results["training"]["steps"]
    return {"round": r, "meta_steps": before + steps if kind == "zo-finetuner" else steps,
            "metric": held_out_metric(kind, results), "cpu_s": meter.total,
            "artefact": str(artefact(args.out, kind, r))}


def last_checkpoint(folder: Path, r: int) -> Path:
    """Round r's meta_train checkpoint, where its run resumes and a Bilevel round r+1 continues from."""
    return folder / f"round-{r}" / "checkpoints" / "last.ckpt"


def rounds(out: Path, kind: str) -> list[dict]:
    path = Path(out) / "artefacts" / kind / "rounds.jsonl"
    return read_records(path)


def artefact(out, kind: str, r: int) -> Path:
    """Round r's artefact folder under `out` as given. A record's "artefact" says where its process wrote it, a path
    relative to that process's working folder; read from another folder (`--status` from anywhere), only this
    finds it."""
    return Path(out) / "artefacts" / kind / f"round-{r}" / ARTEFACT_DIR[kind]


def best(out: Path, kind: str) -> str | None:
    """The artefact folder of `kind`'s best round so far (None before its first round)."""
    got = decide(rounds(out, kind), TOLERANCE[kind], 1)[1]
    return str(artefact(out, kind, got["round"])) if got else None


def shipped_as(folder) -> list[str]:
    """The built-in zoo ids whose weights are `folder`'s, byte for byte (same sha256); [] when none, or when the
    folder keeps no weights (a meta-initialisation's are not committed with the records)."""
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.exists():
        return []
    digest = sha256_file(weights)[0]
    return sorted(eid for eid, entry in builtin_manifest().entries.items()
                  if entry["files"].get(WEIGHTS_NAME, {}).get("sha256") == digest)


def shown(path: str, out) -> str:
    """An artefact path as the docs show it: under `out` as given (runs/evidence/...), not the absolute path a round
    recorded (a machine's own folders); other paths and zoo ids as they are."""
    try:
        return str(Path(out) / Path(path).resolve().relative_to(Path(out).resolve()))
    except (ValueError, OSError):
        return path


def meta_init(given: str | None, out) -> str | None:
    """The meta-initialisation the suite uses: `given` (--meta-init), else the best round's (None before one)."""
    return given or best(Path(out), "bilevel-zofo")


def prune(folder: Path, kind: str, r: int) -> None:
    """Once round r is recorded, remove the meta-training state no round needs any more (its checkpoints hold the
    look-ahead's LLM trajectory or Bilevel's backbone, PEFT copies and Adam state: about a gigabyte each on
    SmolLM2-135M, a base's size times a few at 13B): a policy round's own (round r+1 starts from round r's policy
    folder), a Bilevel round's predecessor's (round r copied its last.ckpt when it started; round r's own is what
    round r+1 resumes from). Artefacts and results.json stay."""
    done = r if kind == "zo-finetuner" else r - 1
    if done >= 1:
        shutil.rmtree(folder / f"round-{done}" / "checkpoints", ignore_errors=True)


def train(kind: str, args, family: tuple, budget: CpuBudget) -> dict | None:
    """Rounds of `kind` until more meta-steps no longer help (or --max-rounds, or the budget); the best round."""
    folder = Path(args.out) / "artefacts" / kind
    rows = rounds(args.out, kind)
    stop, top = decide(rows, TOLERANCE[kind], args.max_rounds)
    # after a wipe: the best round's weights, and the state the next Bilevel round continues, are gone
    weights_gone = top and not (artefact(args.out, kind, top["round"]) / WEIGHTS_NAME).exists()
    state_gone = (not stop and kind == "bilevel-zofo" and rows
                  and not last_checkpoint(folder, rows[-1]["round"]).exists())
    upto = max(top["round"] if weights_gone else 0, rows[-1]["round"] if state_gone else 0)
    if upto:
        try:
            budget.check(f"rebuilding {kind} rounds 1-{upto}")
            rebuild(kind, args, rows[:upto], folder, family, budget)
        except BudgetSpent as spent:
            print(f"artefacts: {spent}", flush=True)
            return None
    while not stop:
        try:
            budget.check(f"{kind} round {len(rows) + 1}")
        except BudgetSpent as spent:
            print(f"artefacts: {spent}", flush=True)
            break
        row = run_round(kind, args, len(rows) + 1, rows[-1]["meta_steps"] if rows else 0, folder, family)
        row["improved"] = not rows or row["metric"] > rows[-1]["metric"] + TOLERANCE[kind]
        budget.charge(row["cpu_s"])
        append_record(folder / "rounds.jsonl", row)
        recorded(folder / f"round-{row['round']}")
        prune(folder, kind, row["round"])
        rows.append(row)
        print(f"artefacts: {kind} round {row['round']}: {row['meta_steps']} meta-steps, held-out gain "
              f"{row['metric']:+.4f} ({'improved' if row['improved'] else 'no improvement'}), "
              f"{row['cpu_s']:.0f} CPU-s", flush=True)
        stop, top = decide(rows, TOLERANCE[kind], args.max_rounds)
    if top:
        print(f"artefacts: {kind}: using round {top['round']} ({top['artefact']})"
              + ("" if stop else "; more rounds may still help"), flush=True)
    return top


def rebuild(kind: str, args, rows: list[dict], folder: Path, family: tuple, budget: CpuBudget) -> None:
    """Rounds `rows` (1..r, recorded) meta-trained again, each from its record's meta-steps, when round r's
    artefact has no weights here: the records keep its card and config, not a base's worth of weights
    (bench/snapshot.py), so a wiped machine has them no more. Meta-training is seeded, so the same flags on the
    same code give the same round; each rebuilt round's held-out gain must equal its record's (to 1e-9), else
    ArtefactsError, and the runs that used the artefact stand on the recorded one. Each rebuilt round's CPU is
    recorded in <kind>/rebuilds.jsonl (a suite record: the budget counts it)."""
    print(f"artefacts: {kind} round {rows[-1]['round']} has no weights or state here (the records keep only its "
          f"card): meta-training rounds 1-{rows[-1]['round']} again from their records", flush=True)
    before = 0
    for row in rows:
        steps = row["meta_steps"] - before  # both kinds record cumulative meta-steps
        again = argparse.Namespace(**{**vars(args), "meta_steps": {**args.meta_steps, kind: steps}})
        # a results.json beside missing weights is no finished round here (a checkpoint left resumes it)
        (folder / f"round-{row['round']}" / "results.json").unlink(missing_ok=True)
        got = run_round(kind, again, row["round"], before, folder, family)
        if abs(got["metric"] - row["metric"]) > 1e-9 * max(1.0, abs(row["metric"])):
            raise ArtefactsError(f"{kind} round {row['round']} meta-trained again gives held-out gain "
                                 f"{got['metric']:.12g}, its record {row['metric']:.12g}: not the same artefact (other "
                                 "code or data), and the runs made from the recorded one stand on it; remove its "
                                 f"rounds from {folder} and from the records to train new ones")
        budget.charge(got["cpu_s"])
        append_record(folder / "rebuilds.jsonl", {"round": row["round"], "metric": got["metric"],
                                                  "cpu_s": got["cpu_s"]})
        recorded(folder / f"round-{row['round']}")
        prune(folder, kind, row["round"])
        print(f"artefacts: {kind} round {row['round']} rebuilt: held-out gain {got['metric']:+.4f} as recorded, "
              f"{got['cpu_s']:.0f} CPU-s", flush=True)
        before = row["meta_steps"]


def run(args) -> dict:
    """Every kind's rounds (ArtefactsError when there is no family to train on); kind -> its best round."""
    train_tasks, held, panel = split_family(Path(args.out))
    print(f"artefacts: task family {', '.join(train_tasks)} (meta-training), {', '.join(held)} (meta-validation); "
          f"panel {', '.join(panel['tasks'])} left out", flush=True)
    budget = CpuBudget.of(args)
    return {kind: train(kind, args, (train_tasks, held, panel), budget) for kind in args.kinds.split(",") if kind}


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return cli_exit("bench.artefacts", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
