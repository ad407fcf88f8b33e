"""Where does zeroth-order fine-tuning learn on this CPU? A two-stage MeZO scan of the offline classification tasks.

    python -m bench.learnability                       # stage 1, then stage 2 on the tasks that moved
    python -m bench.learnability --stage 1             # stage 1 only; start it twice to use two processes
    python -m bench.learnability --report              # the table, plot and panel from what has run
    python -m bench.learnability --plan                # the tasks, their estimated costs, and what remains
    python -m bench.learnability --smoke --base <tiny> # the whole path in seconds (the fast tests)

Which tasks (`scan_plan`, in code): every registered task tagged offline of kind cls whose candidates are single
tokens (one forward per example; multi-token verbalizers cost one forward per candidate), whose median prompt
fits in `--max-length` tokens (longer prompts are cut from the left, losing their context) and in `--max-median`
(a CPU cut, when given: a forward's cost grows with its length), and whose
validation pool holds at least `--min-eval` (50) examples: a sanity floor, not a power cut, since the panel rule's
standard error already carries the eval size (at 98 examples a passing delta is about 0.15 or more; eval uses up
to `--num-eval` 500 of the pool). The plan prints each excluded task with its reason.

Stage 1, every scanned task: zero-shot eval accuracy, the majority rate of the eval labels, and one MeZO prefix
run at MeZO's prefix settings (`--lr` 1e-2, `--eps` 1e-1) of `--forwards1` forward passes at batch `--batch-size`.
Stage 2, the tasks whose stage-1 delta is at least `--moved-se` standard errors: MeZO prefix at `--forwards2`
forward passes for each lr of `--lr-grid` x `--lr` (extended past an edge as bench/compare_optimizers.py does),
the lr chosen on `--num-dev` dev examples; `--lora` adds the same for LoRA.

Delta = final - zero-shot eval accuracy on the same examples; its standard error is the paired one,
sd(d_i) / sqrt(n) over the per-example differences d_i in {-1, 0, 1}. The report also gives each run's per-class
accuracies and their mean, the balanced accuracy (`per_class`), and its paired delta (`balanced_delta`), which
tell a task learned from a label prior learned. The evidence panel is every task whose delta at its dev-chosen
stage-2 lr is at least `--panel-se` (3) standard errors (`panel`), cheapest first, and last the tasks learned only
as a label prior (`label_prior`: balanced accuracy did not move by --panel-se se); it is established with
`--panel-min` (4) tasks. Until then the report (and `--plan`) says what remains to run, its
estimated CPU-hours and the command that continues the scan (`scan_status`).

Costs are sized from a measured forward: a one-thread forward of batch x max-length tokens, scaled per task by
its prompt lengths (`estimate_cpu_s`). Writes `<out>/runs.jsonl` (one fine_tune results dict per run; rerunning
skips what is there, so an interrupted scan resumes). Several processes may work on one --out at once: each
claims a task (a `l2o.filelock.RunLock` under `<out>/claims/`, freed when its process ends, even by kill) and
skips tasks another live process holds (in stage 2 each lr of a task's grid is claimed apart, then the task for its
extension); runs.jsonl is appended under a lock. The report (`report`) writes `<out>/table.md` and
`<out>/learnability.png`, rendered by bench/learnability_doc.py, and `<out>/panel.json` (tasks, chosen lrs, the
settings) that the comparison harness reads. Progress lines go to stdout (one per run) and stderr (fine_tune's, per
run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget import BudgetSpent, CpuBudget  # noqa: E402
from bench.cli import Parser, check_counts, lr_grid  # noqa: E402
from bench.learnability_doc import plot, print_plan, render_table, status  # noqa: E402
from bench.lr_centres import MEZO_LR  # noqa: E402
from bench.records import append_record, read_records, records_lock  # noqa: E402
from bench.resume import recorded, run_to_end  # noqa: E402
from bench.stats import z_score  # noqa: E402


# The evidence suite's scan under its --smoke: the one short task outside BIG-bench, every task moved and on the panel
SUITE_SMOKE = ["--smoke", "--tasks", "tweet_sentiment", "--moved-se", "-100", "--panel-se", "-100", "--lr-grid", "1,3",
               "--extend", "0"]


def parse_args(argv=None):
    ap = Parser(prog="bench.learnability", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task the rules admit)")
    ap.add_argument("--stage", default="all", choices=("1", "2", "all"))
    ap.add_argument("--report", action="store_true", help="only write the table, plot and panel from runs.jsonl")
    ap.add_argument("--plan", action="store_true", help="only print the tasks, their lengths and estimated costs")
    ap.add_argument("--no-report", action="store_true", help="run and record, but write no table, plot or panel "
                    "(bench.evidence --workers 2: its last pass reports what both processes ran, once)")
    ap.add_argument("--skip-missing", action="store_true", help="leave out the tasks whose data cannot be had here "
                    "(BIG-bench with no source of its files), saying so, and then write no report: it profiles every "
                    "scanned task, and without them it would rewrite the panel")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-median", type=int, default=None, help="also leave out tasks whose median prompt is longer "
                    "(a cost cut: a forward costs about its length; default: only --max-length)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--forwards1", type=int, default=300, help="forward passes of the stage-1 run")
    ap.add_argument("--forwards2", type=int, default=500, help="forward passes of each stage-2 run")
    ap.add_argument("--lr", type=float, default=MEZO_LR["prefix"], help="MeZO's prefix lr (stage 1; centre of stage "
                    "2's grid)")
    ap.add_argument("--eps", type=float, default=1e-1)
    ap.add_argument("--lr-grid", default="0.3,1,3", help="stage-2 multipliers of --lr (ascending, geometric)")
    ap.add_argument("--extend", type=int, default=1, help="stage 2: grid steps past an edge the best lr sits at")
    ap.add_argument("--lora", action="store_true", help="stage 2 also runs LoRA (lr grid x --lora-lr, --lora-eps)")
    ap.add_argument("--lora-lr", type=float, default=MEZO_LR["lora"])
    ap.add_argument("--lora-eps", type=float, default=1e-2)
    ap.add_argument("--num-train", type=int, default=1000)
    ap.add_argument("--num-dev", type=int, default=200, help="dev examples of the stage-2 runs (stage 1 has none)")
    ap.add_argument("--num-eval", type=int, default=500)
    ap.add_argument("--min-eval", type=int, default=50, help="tasks whose validation pool is smaller are not scanned "
                    "(a floor: the panel rule's standard error carries the eval size)")
    ap.add_argument("--moved-se", type=float, default=2.0, help="stage-1 delta/se that sends a task to stage 2")
    ap.add_argument("--panel-se", type=float, default=3.0, help="stage-2 delta/se that puts a task on the panel")
    ap.add_argument("--panel-min", type=int, default=4, help="tasks the panel needs to be established")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/learnability")
    ap.add_argument("--docs", default=None, help="also copy table.md and the plot into this folder")
    CpuBudget.add_arguments(ap)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (use with a tiny --base): seconds")
    args = ap.parse_args(argv)
    if args.smoke:  # tiny sizes; a --max-length given on the command line is kept
        # tweets (p50 35 tokens): the one short classification task outside BIG-bench, which some machines lack
        args.max_length = 48 if args.max_length == ap.get_default("max_length") else args.max_length
        args.batch_size, args.forwards1, args.forwards2 = 2, 4, 4
        args.num_train, args.num_dev, args.num_eval, args.min_eval = 16, 8, 12, 10
        args.tasks = args.tasks or "tweet_sentiment"
    check_counts(args, "batch_size", "forwards1", "forwards2")  # a batch of 0 was a traceback in the forward's timing
    args.grid = lr_grid(args.lr_grid)
    return args


# ------------------------------------------------------------------------------------ which tasks
def task_profile(name: str, tokenizer, max_length: int, n: int = 300) -> dict:
    """What the rules and the cost model need: pool sizes, whether every candidate is one token, prompt lengths
    (tokens, BOS and one candidate token included) over `n` training examples."""
    from l2o.tasks import get_task
    from l2o.tasks.sampling import sample_splits

    task = get_task(name)
    ex = sample_splits(task, seed=0, num_train=n, num_dev=0, num_eval=0).train
    single = all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) == 1 for e in ex for c in e.candidates)
    lengths = sorted(len(tokenizer(e.prompt)["input_ids"]) + 1 for e in ex)
    return {"task": name, "train_pool": len(task.rows("train")), "valid_pool": len(task.rows("validation")),
            "classes": len(ex[0].candidates), "single_token": single, "len_p50": lengths[len(lengths) // 2],
            "len_p90": lengths[int(0.9 * (len(lengths) - 1))], "lengths": lengths}


def exclusion(profile: dict, args) -> str | None:
    """Why a task is not scanned (None: it is)."""
    if not profile["single_token"]:
        return "multi-token candidates (one forward per candidate)"
    if profile["len_p50"] > args.max_length:
        return f"median prompt {profile['len_p50']} tokens > max length {args.max_length}"
    if args.max_median is not None and profile["len_p50"] > args.max_median:
        return f"median prompt {profile['len_p50']} tokens > {args.max_median} (CPU cut, --max-median)"
    if profile["valid_pool"] < args.min_eval:
        return f"validation pool {profile['valid_pool']} < {args.min_eval} examples"
    return None


def cut_length(cut: int) -> int:
    """The scan's max length at a median-prompt cut: 64 (the default) up to 64 tokens, else the power of two that
    holds the cut (96 -> 128). A wider scan keeps the tasks it ran at a shorter length (this module)."""
    return max(64, 1 << (cut - 1).bit_length())


def candidate_tasks(args) -> list[str]:
    from l2o.tasks import REGISTRY

    names = args.tasks.split(",") if args.tasks else sorted(n for n, t in REGISTRY.items()
                                                            if "offline" in t.tags and t.kind == "cls")
    return [n for n in names if n not in getattr(args, "left_out", {})]  # --skip-missing's (have_data)


# ------------------------------------------------------------------------------------ cost model
def measure_forward(args, model) -> float:
    """CPU seconds of one forward of batch x max-length tokens on one thread (median of 3, after a warm-up)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = torch.randint(0, min(1000, model.config.vocab_size), (args.batch_size, args.max_length))
        times = []
        with torch.no_grad():
            for i in range(4):
                t0 = time.process_time()
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
                times.append(time.process_time() - t0)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)


def batch_length(profile: dict, max_length: int, batch: int) -> float:
    """Expected padded length of a batch: the longest of `batch` prompts, capped (its 1 - 1/(batch+1) quantile)."""
    lengths = profile["lengths"]
    q = lengths[min(len(lengths) - 1, int(len(lengths) * batch / (batch + 1)))]
    return min(q, max_length)


def estimate_cpu_s(profile: dict, t_forward: float, args, forwards: int, evals: int) -> float:
    """CPU seconds of `forwards` training forwards plus `evals` evaluated examples, scaled linearly in length
    from the measured batch x max-length forward."""
    per = t_forward * batch_length(profile, args.max_length, args.batch_size) / args.max_length
    return per * (forwards + math.ceil(evals / args.batch_size))


def scan_plan(args, tokenizer, t_forward: float) -> tuple[list[dict], list[dict]]:
    """(scanned profiles with their stage-1 cost estimate, excluded profiles with their reason)."""
    scanned, excluded = [], []
    for name in candidate_tasks(args):
        p = task_profile(name, tokenizer, args.max_length)
        p["eval_n"] = min(args.num_eval, p["valid_pool"])
        p["excluded"] = exclusion(p, args)
        p["stage1_cpu_s"] = estimate_cpu_s(p, t_forward, args, args.forwards1, 2 * p["eval_n"])
        (excluded if p["excluded"] else scanned).append(p)
    scanned.sort(key=lambda p: p["stage1_cpu_s"])
    return scanned, excluded


# ------------------------------------------------------------------------------------ runs
class Runner:
    """Runs a named fine-tune once; its results dict is appended to runs.jsonl under a lock (shards share it)."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.t0, self.commit = self.out / "runs.jsonl", time.perf_counter(), git_commit()
        self.budget = CpuBudget.of(args)

    @contextlib.contextmanager
    def claim(self, key: str):
        """Yields True while this process holds `key` (no other live process does), False otherwise."""
        from l2o.filelock import FolderLockedError, RunLock

        folder = self.out / "claims" / key
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = RunLock(folder, what="task").acquire()
        except FolderLockedError as err:
            print(f"[{time.perf_counter() - self.t0:6.0f} s] skipping {key}: {err}", flush=True)
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def done(self) -> dict:
        """The recorded runs by name, read under the lock the appends hold (another process of the scan may be
        appending: unlocked, its half-written line read as a torn one, with a warning)."""
        with records_lock(self.log_path):
            return {r["name"]: r for r in read_records(self.log_path) if r}

    def __call__(self, name: str, *, task: str, peft: str, lr: float, eps: float, forwards: int, num_dev: int,
                 zero_shot: bool, note: str = "") -> dict:
        if name in (have := self.done()):
            if (ran := have[name]["config"]["max_length"]) != self.args.max_length:
                print(f"{name}: kept, run at max length {ran} (a task is run once per --out)", flush=True)
            return have[name]
        self.budget.check(name)
        cfg = scan_config(self.args, task=task, peft=peft, lr=lr, eps=eps, forwards=forwards, num_dev=num_dev,
                          zero_shot=zero_shot, out=self.out / name)
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {name}: {cfg.steps} steps{note}", flush=True)
        res = run_to_end(cfg, say=lambda m: print(m, flush=True))  # its cpu_s: every attempt's
        res.update(name=name, lr=lr, commit=self.commit)
        self.budget.charge(res["cpu_s"])
        append_record(self.log_path, res)  # under the lock done() reads under
        recorded(cfg.out)
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {name}: eval {res['final'].get('eval', float('nan')):.3f}"
              f" (fit {res['fit_time_s']:.0f} s)", flush=True)
        return res


def scan_config(a, *, task: str, peft: str, lr: float, eps: float, forwards: int, num_dev: int, zero_shot: bool,
                out: Path):
    """The fine_tune configuration of a scan run (MeZO, `forwards` // 2 steps); the harness's MeZO runs of the same
    settings have the same configuration, so it reuses these runs (tests/test_learnability.py)."""
    from fine_tune.config import FineTuneConfig

    return FineTuneConfig(base=a.base, task=task, optimizer="mezo", lr=lr, eps=eps, peft=peft,
                          steps=max(1, forwards // 2), batch_size=a.batch_size, eval_every=0, seed=a.seed,
                          data_seed=a.data_seed, num_train=a.num_train, num_dev=num_dev, num_eval=a.num_eval,
                          max_length=a.max_length, out=str(out), save_model=False, zero_shot=zero_shot)


def paired_delta(final: list[float], zero: list[float]) -> tuple[float, float]:
    """(mean of final_i - zero_i, its standard error sd/sqrt(n)) over examples scored both ways."""
    if len(final) != len(zero) or not final:
        raise ValueError(f"paired delta needs two score lists of one length, got {len(final)} and {len(zero)}")
    d = [f - z for f, z in zip(final, zero)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return statistics.mean(d), sd / math.sqrt(len(d))


def git_commit() -> str:
    """The commit the scan's code ran at ("unknown" outside a git checkout); "+dirty" when files differ."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------ the two stages
def s1_name(task: str, args) -> str:
    return f"s1-{task}-prefix-lr{args.lr:.3g}"


def s2_name(task: str, peft: str, lr: float) -> str:
    return f"s2-{task}-{peft}-lr{lr:.3g}"


def stage1(args, runner: Runner, profiles: list[dict]) -> None:
    total = sum(p["stage1_cpu_s"] for p in profiles)
    print(f"stage 1: {len(profiles)} task(s), estimated {total / 3600:.2f} CPU-hours", flush=True)
    for p in profiles:
        with runner.claim(s1_name(p["task"], args)) as mine:
            if mine:
                runner(s1_name(p["task"], args), task=p["task"], peft="prefix", lr=args.lr, eps=args.eps,
                       forwards=args.forwards1, num_dev=0, zero_shot=True,
                       note=f" (estimated {p['stage1_cpu_s'] / 60:.0f} CPU-min)")


def stage1_delta(rec: dict) -> tuple[float, float]:
    pe = rec["per_example"]
    return paired_delta(pe["final"]["eval"], pe["zero_shot"]["eval"])


def moved(done: dict, profiles: list[dict], args) -> list[dict]:
    """The profiles whose stage-1 delta is at least --moved-se standard errors."""
    out = []
    for p in profiles:
        rec = done.get(s1_name(p["task"], args))
        if rec is not None and z_score(stage1_delta(rec)) >= args.moved_se:
            out.append(p)
    return out


def stage2_grid(args, peft: str) -> list[float]:
    """The stage-2 lrs of a PEFT mode before any extension: --lr-grid x its centre (--lr, or --lora-lr)."""
    return [(args.lr if peft == "prefix" else args.lora_lr) * g for g in args.grid]


def stage2_run(args, runner: Runner, task: str, peft: str, lr: float, zero: bool = False) -> dict:
    """One stage-2 run: MeZO on `task` in `peft` at `lr`."""
    eps = args.eps if peft == "prefix" else args.lora_eps
    return runner(s2_name(task, peft, lr), task=task, peft=peft, lr=lr, eps=eps, forwards=args.forwards2,
                  num_dev=args.num_dev, zero_shot=zero)


def stage2_runs(args, runner: Runner, task: str, peft: str, zero: bool = False) -> list[dict]:
    """The dev-selection runs of one task and PEFT mode (bench/compare_optimizers.py's grid and extension)."""
    from bench.compare_optimizers import select_runs

    return select_runs(lambda lr: stage2_run(args, runner, task, peft, lr, zero), stage2_grid(args, peft),
                       args.extend)


def stage2(args, runner: Runner, profiles: list[dict]) -> None:
    """Each moved task's grid, one run per claim (two processes share a task's lrs), then its extension past an
    edge once the grid is whole; a task whose grid another process is still running is left to the last pass."""
    todo = moved(runner.done(), profiles, args)
    print(f"stage 2: {len(todo)} task(s) moved in stage 1: {', '.join(p['task'] for p in todo) or 'none'}",
          flush=True)
    for p in todo:
        for peft in ("prefix", "lora") if args.lora else ("prefix",):
            grid = stage2_grid(args, peft)
            for lr in grid:
                with runner.claim(s2_name(p["task"], peft, lr)) as mine:
                    if mine:
                        stage2_run(args, runner, p["task"], peft, lr)
            with runner.claim(f"s2-{p['task']}-{peft}") as mine:
                if mine and {s2_name(p["task"], peft, lr) for lr in grid} <= runner.done().keys():
                    stage2_runs(args, runner, p["task"], peft)


# ------------------------------------------------------------------------------------ the report
def summarize(done: dict, profiles: list[dict], args) -> list[dict]:
    """One row per scanned task: zero-shot, majority, stage 1 and (where run) stage 2 at the dev-chosen lr."""
    rows = []
    for p in profiles:
        s1 = done.get(s1_name(p["task"], args))
        if s1 is None:
            continue
        zero = s1["per_example"]["zero_shot"]["eval"]
        row = {"task": p["task"], "profile": p, "zero_shot": s1["zero_shot"]["eval"], "majority": p["majority"],
               "n": len(zero), "s1_eval": s1["final"]["eval"], "s1_delta": stage1_delta(s1),
               "s1_loss": s1["final_train_loss"], "commit": s1.get("commit"),
               "max_length": s1["config"]["max_length"]}
        if "golds" in p:
            row["per_class"] = {"zero-shot": per_class(zero, p["golds"]),
                                "stage 1": per_class(s1["per_example"]["final"]["eval"], p["golds"])}
        for peft in ("prefix", "lora"):
            s2 = stage2_row(done, p["task"], peft, args)
            if s2:
                row[peft], final = s2, s2.pop("final")
                if "golds" in p:
                    row["per_class"][f"stage 2 {peft}"] = per_class(final, p["golds"])
                    row[peft]["balanced"] = balanced_delta(final, zero, p["golds"])
        rows.append(row)
    return rows


def stage2_row(done: dict, task: str, peft: str, args) -> dict | None:
    """`task`'s stage 2 in `peft` from the records alone (None before its first run): its runs, the dev-chosen lr,
    that run's eval accuracy and per-example scores ("final"), and its delta over zero-shot on the same examples
    (the stage-1 run's zero-shot scores)."""
    from bench.compare_optimizers import choose_lr

    runs = [r for r in done.values() if r["name"].startswith(f"s2-{task}-{peft}-lr")]
    s1 = done.get(s1_name(task, args))
    if not runs or s1 is None:
        return None
    lr = choose_lr(runs)
    best = next(r for r in runs if r["lr"] == lr)
    final = best["per_example"]["final"]["eval"]
    return {"lr": lr, "runs": sorted(runs, key=lambda r: r["lr"]), "eval": best["final"]["eval"], "final": final,
            "delta": paired_delta(final, s1["per_example"]["zero_shot"]["eval"]),
            "complete": all(s2_name(task, peft, x) in done for x in stage2_grid(args, peft)),
            "next": stage2_next(done, task, peft, args)}


class _NotRecorded(Exception):
    pass


def stage2_next(done: dict, task: str, peft: str, args) -> float | None:
    """The lr that `task`'s stage 2 in `peft` runs next (None: its choice is final): `stage2_runs`'s selection
    replayed over the records, so a grid lr or a run past an edge the best sits at, within --extend."""
    from bench.compare_optimizers import select_runs

    def recorded(lr):
        if (r := done.get(s2_name(task, peft, lr))) is None:
            raise _NotRecorded(lr)
        return r

    try:
        select_runs(recorded, stage2_grid(args, peft), args.extend)
    except _NotRecorded as missing:
        return missing.args[0]
    return None


def passes(row: dict, args) -> bool:
    return "prefix" in row and z_score(row["prefix"]["delta"]) >= args.panel_se


def panel(rows: list[dict], args) -> list[dict]:
    """The evidence panel: tasks whose prefix delta at the dev-chosen stage-2 lr is >= --panel-se standard
    errors, their lr grid run whole (until then the dev choice may change: `provisional`), cheapest first, the
    `label_prior` ones last (the suite's CPU cut runs a phase on the panel's first tasks: there, on tasks where
    what is learnt is the task)."""
    keep = [r for r in rows if passes(r, args) and r["prefix"].get("complete", True)]
    prior = set(label_prior(keep, args))
    return sorted(keep, key=lambda r: (r["task"] in prior, r["profile"]["stage1_cpu_s"]))


def label_prior(rows: list[dict], args) -> list[str]:
    """Tasks whose stage-2 accuracy passes the panel rule while their balanced accuracy does not move by
    --panel-se standard errors: the gain is (mostly) a label prior, answering one label more often. They stay on
    the panel (the rule is on accuracy); the report names them."""
    return [r["task"] for r in rows if passes(r, args) and "balanced" in r["prefix"]
            and z_score(r["prefix"]["balanced"]) < args.panel_se]


def provisional(rows: list[dict], args) -> list[str]:
    """Tasks that pass the panel rule at the best lr run so far, with lrs of their grid still to run."""
    return [r["task"] for r in rows if passes(r, args) and not r["prefix"].get("complete", True)]


# ------------------------------------------------------------------------------------ what remains
def stage2_cpu_s(profile: dict, t_forward: float, args, factor: float = 1.0) -> float:
    """Estimated CPU seconds of one stage-2 run: its forwards, then the dev and eval examples scored once each;
    `factor`: the PEFT mode's cost over prefix's (`lora_factor`)."""
    return factor * estimate_cpu_s(profile, t_forward, args, args.forwards2, profile["eval_n"] + args.num_dev)


def lora_factor(done: dict) -> float:
    """A LoRA stage-2 run's CPU time over a prefix one's, measured on the tasks with timed stage-2 runs in both (the
    mean over those tasks of the ratio of their mean CPU seconds); 1 before any. The forward time the cost model
    scales is a prefix forward's; LoRA's adapter matmuls add to it (on tweets about 1.1x: 1532 CPU-s against 1400)."""
    def cpu(task, peft):
        got = [r["cpu_s"] for name, r in done.items() if name.startswith(f"s2-{task}-{peft}-lr") and r.get("cpu_s")]
        return sum(got) / len(got) if got else None

    ratios = [lo / pre for t in {r.get("task") for r in done.values()}
              if (lo := cpu(t, "lora")) and (pre := cpu(t, "prefix"))]
    return sum(ratios) / len(ratios) if ratios else 1.0


def calibration(done: dict, profiles: list[dict], t_forward: float, args) -> dict:
    """How the cost model compares with the recorded runs timed in CPU seconds: measured / estimated CPU time
    (`ratio`, 1 without such runs), wall / CPU time (`wall`, None without), and how many runs (`n`)."""
    by_task, est, cpu, wall, n = {p["task"]: p for p in profiles}, 0.0, 0.0, 0.0, 0
    lora = lora_factor(done)
    for r in done.values():
        p = by_task.get(r.get("task"))
        if p is None or not r.get("cpu_s"):
            continue
        factor = lora if r["name"].startswith(f"s2-{p['task']}-lora-") else 1.0
        est += (p["stage1_cpu_s"] if r["name"] == s1_name(p["task"], args) else
                stage2_cpu_s(p, t_forward, args, factor))
        cpu, wall, n = cpu + r["cpu_s"], wall + r["fit_time_s"], n + 1
    return {"ratio": cpu / est if n else 1.0, "wall": wall / cpu if n else None, "n": n}


def remaining(done: dict, profiles: list[dict], excluded: list[dict], t_forward: float, args) -> dict:
    """What the scan has still to run at this cut, as (task, runs, estimated CPU seconds): stage 1 on the tasks
    without a stage-1 record, stage 2 (the grid's lrs not run yet) on the tasks that moved, in prefix and, with
    --lora, in LoRA (at the prefix run's cost times `lora_factor`); and `widen`: stage 1 on the tasks that only the
    --max-median cut leaves out."""
    wide = argparse.Namespace(**{**vars(args), "max_median": None})
    s2, factor = {"prefix": [], "lora": []}, {"prefix": 1.0, "lora": lora_factor(done)}
    for p in moved(done, profiles, args):
        for peft in ("prefix", "lora") if args.lora else ("prefix",):
            todo = [lr for lr in stage2_grid(args, peft) if s2_name(p["task"], peft, lr) not in done]
            if todo:
                s2[peft].append((p["task"], len(todo), len(todo) * stage2_cpu_s(p, t_forward, args, factor[peft])))
    return {"stage1": [(p["task"], 1, p["stage1_cpu_s"]) for p in profiles if s1_name(p["task"], args) not in done],
            "stage2": s2["prefix"], "lora": s2["lora"],
            "widen": [(p["task"], 1, p["stage1_cpu_s"]) for p in excluded if exclusion(p, wide) is None]}


def resume_command(args) -> str:
    """The command that continues this scan: the options that differ from their defaults."""
    default, skip = vars(parse_args([])), {"report", "plan", "docs", "stage", "grid", "cpu_budget_h", "cpu_spent_h",
                                            "cpu_suite_out"}
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
             if k in default and k not in skip and v != default[k]]
    return " ".join(["python -m bench.learnability", *flags])


def scan_status(done: dict, profiles: list[dict], excluded: list[dict], chosen: list[dict], t_forward: float,
                args) -> list[str]:
    return status(remaining(done, profiles, excluded, t_forward, args), chosen,
                  calibration(done, profiles, t_forward, args), args, resume_command(args))


def report(args, runner: Runner, profiles: list[dict], excluded: list[dict], t_forward: float) -> list[dict]:
    from l2o.filelock import copy_atomic, write_bytes_atomic  # other processes (the harness, the suite) read these

    done = runner.done()
    rows = summarize(done, profiles, args)
    chosen, pending, prior = panel(rows, args), provisional(rows, args), label_prior(rows, args)
    table = render_table(rows, excluded, chosen, pending, prior, args, t_forward) + "\n" + "\n\n".join(
        scan_status(done, profiles, excluded, chosen, t_forward, args)) + "\n"
    out = runner.out
    write_bytes_atomic(out / "table.md", table.encode())
    plot(rows, chosen, out / "learnability.png", args)
    settings = {k: getattr(args, k) for k in ("base", "batch_size", "max_length", "num_train", "num_dev", "num_eval",
                                              "data_seed", "eps", "forwards2", "max_median", "panel_se", "panel_min")}
    info = {"tasks": [r["task"] for r in chosen], "lr": {r["task"]: r["prefix"]["lr"] for r in chosen},
            "scanned": [p["task"] for p in profiles],  # the task family of bench/artefacts.py: these minus the panel
            "delta": {r["task"]: r["prefix"]["delta"] for r in chosen},
            "label_prior": [t for t in prior if t in {r["task"] for r in chosen}],
            "max_length": {r["task"]: r["max_length"] for r in chosen},  # a task's, where a scan kept another
            "settings": settings,
            "commits": sorted({r["commit"] or "unknown" for r in rows}), "runs": str(runner.log_path),
            "established": len(chosen) >= args.panel_min}
    write_bytes_atomic(out / "panel.json", json.dumps(info, indent=1).encode())
    if args.docs:
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(Path(args.docs) / "learnability.md", table.encode())
        copy_atomic(out / "learnability.png", Path(args.docs) / "learnability.png")
    print(table, flush=True)
    return chosen


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from l2o.integrations.lightning.progress import quiet_libraries
    from l2o.models import load_base
    from zoo.acquire import ensure_base, ensure_task

    quiet_libraries()
    runner = Runner(args)
    runner.done()  # a damaged runs.jsonl is refused now, not after the base and the tasks have loaded
    ensure_base(args.base)
    missing = have_data(args, ensure_task)
    model, tokenizer, _ = load_base(args.base)
    t_path = runner.out / "forward_time.json"
    if t_path.exists():  # measured once per --out, maybe at another max length: scaled linearly in length
        measured = json.loads(t_path.read_text())
        t_forward = measured["cpu_s"] * args.max_length / measured["tokens"]
    else:
        t_forward = measure_forward(args, model)
        t_path.write_text(json.dumps({"cpu_s": t_forward, "batch": args.batch_size, "tokens": args.max_length}))
    del model
    scanned, excluded = scan_plan(args, tokenizer, t_forward)
    for p in scanned:
        p["golds"] = eval_golds(p["task"], args)
        p["majority"] = majority_rate(p["golds"])
    print(f"forward of {args.batch_size} x {args.max_length} tokens: {t_forward:.2f} CPU-s (one thread); "
          f"scanning {', '.join(p['task'] for p in scanned)}; not scanned: "
          + ("; ".join(f"{p['task']} ({p['excluded']})" for p in excluded) or "none"), flush=True)
    if args.plan:
        print_plan(scanned, excluded, args)
        done = runner.done()
        # with tasks left out, the panel is the one last reported (panel.json), not one of the tasks here alone
        chosen = ([{"task": t} for t in json.loads((runner.out / "panel.json").read_text())["tasks"]]
                  if missing and (runner.out / "panel.json").exists() else panel(summarize(done, scanned, args), args))
        print("\n".join(scan_status(done, scanned, excluded, chosen, t_forward, args)))
        return 0
    try:
        if not args.report and args.stage in ("1", "all"):
            stage1(args, runner, scanned)
        if not args.report and args.stage in ("2", "all"):
            stage2(args, runner, scanned)
    except BudgetSpent as stop:
        print(f"stopped: {stop}", flush=True)
    if not args.no_report and not missing:
        report(args, runner, scanned, excluded, t_forward)
    return 0


def have_data(args, ensure_task) -> dict:
    """Each candidate task's data, fetched where missing; with --skip-missing, the tasks that cannot have it are
    left out of this invocation (args.left_out) and returned (task -> why), said in one line: then it writes no
    report; else the first such task's TaskError."""
    from l2o.tasks.errors import TaskError

    missing = {}
    for name in candidate_tasks(args):
        try:
            ensure_task(name)
        except TaskError as why:
            if not args.skip_missing:
                raise
            missing[name] = why
    if not missing:
        return missing
    if not [n for n in candidate_tasks(args) if n not in missing]:
        raise next(iter(missing.values()))
    args.left_out = missing
    print(f"learnability: left out here, their data cannot be had: {', '.join(missing)} "
          f"({next(iter(missing.values()))}); the report, which profiles every scanned task, is not rewritten",
          flush=True)
    return missing


def eval_golds(task: str, args) -> list[int]:
    """The gold labels of the task's eval examples, in the order the runs score them."""
    from l2o.tasks.sampling import sample_splits

    return [e.gold for e in sample_splits(task, seed=args.data_seed, num_train=0, num_dev=0,
                                          num_eval=args.num_eval).eval]


def majority_rate(golds: list[int]) -> float:
    """The accuracy of always answering the most frequent gold label."""
    return max(golds.count(g) for g in set(golds)) / len(golds)


def per_class(correct: list[float], golds: list[int]) -> dict[int, float]:
    """Accuracy on each gold label's examples, by label. Their mean is the balanced accuracy, which answering
    one label always holds at 1/classes: it tells learning the task from learning (or unlearning) a label prior,
    where plain accuracy cannot (a prompt that moves from the minority to the majority label gains accuracy)."""
    if len(correct) != len(golds):
        raise ValueError(f"{len(correct)} per-example scores for {len(golds)} eval labels")
    by = {}
    for c, g in zip(correct, golds):
        by.setdefault(g, []).append(c)
    return {g: sum(v) / len(v) for g, v in sorted(by.items())}


def balanced_delta(final: list[float], zero: list[float], golds: list[int]) -> tuple[float, float]:
    """(balanced accuracy after - zero-shot, its standard error) on the same eval examples: the mean over the K
    classes of each class's paired delta d_c, se = sqrt(sum_c se(d_c)^2) / K (classes are disjoint examples)."""
    by: dict[int, list[float]] = {}
    for f, z, g in zip(final, zero, golds, strict=True):
        by.setdefault(g, []).append(f - z)
    k = len(by)
    means = [statistics.mean(d) for d in by.values()]
    var = sum((statistics.stdev(d) ** 2 / len(d)) if len(d) > 1 else 0.0 for d in by.values())
    return sum(means) / k, math.sqrt(var) / k


if __name__ == "__main__":
    from bench.cli import cli_exit

    raise SystemExit(cli_exit("bench.learnability", main))
