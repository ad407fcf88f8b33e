"""`make evidence`: the whole evidence suite, resumable, and the claims table `docs/evidence.md` written from it.

    python -m bench.evidence --workers 2              # everything (CPU-hours; rerun to continue where it stopped)
    python -m bench.evidence --phases scan,memory     # some phases only; --report rewrites the doc from what ran
    python -m bench.evidence --smoke --base <tiny>    # the whole path in a few CPU-minutes (the fast tests)
    python -m bench.evidence --status                 # where it stands (bench/evidence_status.py; safe beside a run)

Phases (each keeps its runs under `--out`, so a rerun skips what is done), in the order they run:
- scan: `bench.learnability`, stages 1 and 2 at the first `--max-median` cut -> the evidence panel
  (`<out>/learnability/panel.json`);
- memory: `bench/fo_memory.py`: peak RSS of FO-SGD, FO-AdamW, MeZO and inference on one batch, written beside
  the doc, `<docs>/data/fo_memory_full_prefix.json` (committed; skipped when it exists);
- prefix: `bench.harness` on the panel's first `--max-tasks` tasks (cheapest first, label-prior ones last),
  prefix tuning, one task at a time and on it one method at a time, in the order of what a claim needs per
  CPU-hour: MeZO; FO-AdamW (`budget / 10` steps); MeZO-GV and MeZO-Greedy at MeZO's effective step
  (lr x E[(v.u)^2] matched: no lr search); BSZO (its dev-chosen lr); Bilevel-ZOFO (its first-order Adam rates
  dev-chosen around the paper's prefix value 1e-2, at bench.harness's small-scale `METHOD_DEFAULTS`); BSZO at
  MeZO's effective step; MeZO-GV and MeZO-Greedy at their own dev-chosen lrs; FO-SGD (MeZO's claim has a verdict
  from FO-AdamW already; FO-SGD is its second first-order reference). With `--seeds auto`, FO-AdamW and
  Bilevel-ZOFO, whose claims count a share of pairs, run 4 seeds on each task
  (`claims.share_pairs_to_decide`: a share of 3 pairs can never be decided), and MeZO with them; so every other
  method runs 4 as well (`prefix_seeds`): each of MeZO's runs is then a pair, a fourth pair costing one run of the
  method only; BSZO at its own lr runs 6 (`MORE_PREFIX_SEEDS`: the count its interval at 4 said would separate it);
- widen: while the panel has fewer than `--panel-min` tasks, the scan at the next `--max-median` cut (48, 64,
  96, 128 tokens by default; past 64 at a max length of 128, `learnability.cut_length`: longer prompts, each
  costing more per forward): stage 1 on the newly admitted tasks, stage 2 on those that moved; then
  the prefix phase again on the new panel (its runs so far are reused);
- artefacts: `bench.artefacts`: a ZO Fine-tuner policy and a Bilevel-ZOFO meta-initialisation meta-trained on the
  task family (the scanned tasks not on the panel), in rounds of `--meta-steps` until a round no longer improves
  the held-out meta-validation (or `--max-rounds`); the best round's artefacts are used below;
- full: full-parameter MeZO and the ZO Fine-tuner policy (`--policy`, made for full-parameter runs) on the panel's
  first `--full-tasks` tasks, at the policy's dev-chosen lr and at MeZO's effective step, with `--seeds auto` as
  many seeds as give the claim's pairs a chance to hold (4 pairs: `claims.share_pairs_to_decide`); and the same for the
  artefacts phase's policy (`zo-finetuner-panel`), also compared with the shipped one (these last rows run after
  the metainit phase, `ordered`);
- bf16: MeZO and BSZO in bf16, prefix, on the panel's first task, each at its fp32 dev-chosen lr of the prefix
  phase (no search in bf16: the claim is robustness at the fp32 lr). It needs only those two lrs, so it runs as
  soon as the first task's methods up to BSZO are done, before that task's others and the other tasks (`ordered`):
  every claim gets a verdict before any claim gains power;
- lora: the scan's stage 2 in LoRA on the tasks whose prefix run moved (`bench.learnability --lora`), those whose
  data can be had here (`--skip-missing`: the scan's report is then left as it is, and the page shows LoRA's rows
  from the records);
- metainit: MeZO from the base and from a Bilevel-ZOFO meta-initialisation (`--meta-init`, else the artefacts
  phase's) on the panel; the runs from the base are the prefix phase's MeZO runs where it has them (`--reuse`).

No run starts once the suite's runs have spent `--cpu-hours` CPU-hours (8 the first time; then the budget it last ran
under, kept in `<out>/suite.json`, so that `--report` states the budget the runs were made under); every phase then
reports what exists, and a rerun with a larger budget continues. `--report` runs nothing and rewrites the scan's
report (with what it has still to run while the panel is short), the harness reports (partial ones say so) and the
doc. A harness phase that cannot run yet (no panel, an empty panel, no meta-initialisation; the artefacts phase:
too small a task family) says why in one line and the suite goes on.

Two cores (`--workers 2`, what `make evidence` runs; one thread per process, as the issue asks): the scan runs in
two processes, which claim its tasks so that no run is made twice; then, the panel established, the artefacts, full,
metainit and lora phases run in a second process beside memory, prefix and bf16 here (`lanes`). The two share the
CPU budget: each runner reads the suite's records before each run (bench/budget.py, `--cpu-suite-out`).

The suite's records (each phase's runs.jsonl, the run histories, the artefacts' rounds and policies; bench/snapshot.py)
are kept in `<docs>/data/evidence/`, committed with the doc: the suite first restores what `--out` lacks from there
and saves its records there after each phase, so a fresh clone resumes where the committed records stop and
`--report` rewrites the doc from them alone.

Then `claims` turns the harness summaries into a verdict per seed-paper claim (bench/claims.py) and `--docs`
(default docs/) gets evidence.md and its plots. The defaults are the CPU cut that fits the suite in about 6-8
CPU-hours here (docs/evidence.md, "What was cut"); `--max-tasks 4 --full-tasks 4` is the issue's full panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import artefacts, learnability  # noqa: E402  (light at import: the heavy parts load lazily)
from bench.records import read_records  # noqa: E402
from zoo.artefact import WEIGHTS_NAME  # noqa: E402
from bench.claims import MORE_PREFIX_SEEDS, load_summary, share_pairs_to_decide  # noqa: E402
from bench.cli import Parser, numbers, stop_line  # noqa: E402
from l2o.errors import UserError  # noqa: E402

PHASES = ("scan", "memory", "prefix", "widen", "artefacts", "full", "bf16", "lora", "metainit")
PREFIX_METHODS = ["mezo", "fo-adamw", "gv-matched:mezo-gv:match=mezo", "greedy-matched:mezo-greedy:match=mezo", "bszo",
                  "bilevel-zofo", "bszo-matched:bszo:match=mezo", "mezo-gv", "mezo-greedy", "fo-sgd"]
FULL_METHODS = ["mezo:mezo:lr=1e-5:eps=1e-3", "zo-finetuner:zo-finetuner:lr=1e-5:eps=1e-3",  # MeZO's full-parameter eps
                "zo-finetuner-matched:zo-finetuner:match=mezo:eps=1e-3"]
PANEL_POLICY = "zo-finetuner-panel"  # the artefacts phase's policy, at the shipped one's settings
BF16_METHODS = ("mezo", "bszo")  # each at its lr of the prefix phase
HARNESS_PHASES = ("prefix", "full", "bf16", "metainit")
SCAN_PHASES = ("scan", "widen")
PREFIX_FIRST = "prefix-first"  # the prefix phase on the first task up to BSZO: bf16 runs after it (`ordered`)
FULL_SHIPPED = "full-shipped"  # the full phase without the panel policy's rows: metainit runs after it (`ordered`)
# --workers 2: the second process's phases, in this order (they need the panel only); lora is here, not beside the
# prefix phase, to even the lanes out (estimated from the runs' costs so far: about 25 CPU-hours each on SmolLM2-135M)
SECOND_LANE = ("artefacts", "full", "metainit", "lora")
DEFAULT_CPU_HOURS = 8.0
SUITE_FILE = "suite.json"  # under --out (kept with the records): the budget the suite last ran under


def parse_args(argv=None):
    ap = Parser(prog="bench.evidence", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--report", action="store_true", help="run nothing: the harness reports and the doc from the "
                    "runs that exist")
    ap.add_argument("--status", action="store_true", help="run nothing, write nothing: print where the suite stands "
                    "(each phase's runs and CPU-hours, runs under way or interrupted, what cannot start yet and why)")
    ap.add_argument("--cpu-hours", type=float, default=None, help="the suite's CPU budget: no run starts once the "
                    "suite's runs have spent it (default: the budget it last ran under, kept in <out>/suite.json, "
                    f"else {DEFAULT_CPU_HOURS:g})")
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--docs", default="docs")
    ap.add_argument("--policy", default="smollm2-135m/zo-finetuner@1")
    ap.add_argument("--meta-init", default=None, help="zoo id or folder of a Bilevel-ZOFO meta-initialisation")
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--seeds", default="auto")
    ap.add_argument("--max-tasks", type=int, default=2, help="panel tasks the prefix phase runs (the panel's order)")
    ap.add_argument("--full-tasks", type=int, default=1, help="panel tasks the full phase runs (the panel's order)")
    ap.add_argument("--max-median", default="48,64,96,128", help="the scan's CPU cuts, in turn while the panel is "
                    "short: tasks whose median prompt is longer are not scanned (bench.learnability --max-median), "
                    "at max length bench.learnability.cut_length(cut)")
    ap.add_argument("--panel-min", type=int, default=4, help="widen the scan while the panel has fewer tasks")
    ap.add_argument("--meta-steps", default=None, help="artefacts: meta-steps per round, N or kind=N,... (default "
                    "bench.artefacts's zo-finetuner=40,bilevel-zofo=400; --smoke 2)")
    ap.add_argument("--max-rounds", type=int, default=None, help="artefacts: at most this many rounds (default 4; "
                    "--smoke 2)")
    ap.add_argument("--workers", type=int, default=1, help="processes at a time, one thread each: with 2, the scan "
                    "runs in two processes (they share its tasks), then artefacts, full, metainit and lora in a second "
                    "process beside memory, prefix and bf16 (make evidence: 2)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.phase_list = [p for p in args.phases.split(",") if p]
    args.budget_given = args.cpu_hours is not None
    if args.budget_given and not 0 < args.cpu_hours < float("inf"):  # it would be kept in suite.json as the budget
        ap.error(f"--cpu-hours must be a positive number of CPU-hours, got {args.cpu_hours:g}")
    args.cpu_hours = args.cpu_hours if args.budget_given else last_budget(args)
    args.prefix_methods = PREFIX_METHODS
    try:  # int() and steps_per_kind's refusal were tracebacks here
        args.cuts = numbers(args.max_median, "--max-median", int)
        args.meta_steps = artefacts.steps_per_kind(args.meta_steps or (2 if args.smoke else artefacts.DEFAULT_STEPS))
    except (UserError, argparse.ArgumentTypeError) as err:
        ap.error(str(err))
    args.max_rounds = args.max_rounds or (2 if args.smoke else 4)
    if args.smoke:
        args.budget = 8  # the harness's --smoke budget
    unknown = set(args.phase_list) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if args.workers not in (1, 2):
        ap.error(f"--workers {args.workers}: 1 or 2 (the suite has two lanes; the issue's machine has two cores)")
    return args


def last_budget(args) -> float:
    """The CPU budget the suite last ran under (<out>/suite.json, else the kept records' copy), else the default."""
    for path in (Path(args.out) / SUITE_FILE, Path(args.docs) / "data" / "evidence" / SUITE_FILE):
        if path.exists():
            return json.loads(path.read_text())["cpu_hours"]
    return DEFAULT_CPU_HOURS


def record_budget(args) -> None:
    """A run under a given --cpu-hours keeps it in <out>/suite.json (a report does not: it runs nothing)."""
    if args.budget_given and not args.report:
        from l2o.filelock import write_atomic

        path = Path(args.out) / SUITE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: f.write((json.dumps({"cpu_hours": args.cpu_hours}) + "\n").encode()))


def budget_argv(args) -> list[str]:
    """The CPU budget flags of a phase's runner: the budget, and the suite's records, which it reads before each
    run (every process's runs count: two processes of the suite share the budget)."""
    return ["--cpu-budget-h", str(args.cpu_hours), "--cpu-suite-out", str(args.out)]


def scan_argv(args, cut: int) -> list[str]:
    out = ["--base", args.base, "--out", str(Path(args.out) / "learnability"), "--max-median", str(cut),
           "--panel-min", str(args.panel_min), *budget_argv(args)]
    # --smoke: the scan's own tiny length
    out += [] if args.smoke else ["--max-length", str(learnability.cut_length(cut))]
    return out + (learnability.SUITE_SMOKE if args.smoke else [])


def panel_tasks(args) -> list[str]:
    path = Path(args.out) / "learnability" / "panel.json"
    return json.loads(path.read_text())["tasks"] if path.exists() else []


def scan(args, cuts: list[int], extra: tuple[str, ...] = ()) -> None:
    """The scan at each of `cuts` in turn while the panel has fewer than --panel-min tasks (always at the first);
    the report (table, plot, panel) is the last cut's. A scan that cannot have every candidate task's data here
    (BIG-bench's files, with no source of them) is skipped, saying why: it would otherwise rewrite the panel without
    the tasks it cannot read, and the records of the scan stand as they are."""
    from l2o.tasks.errors import TaskError

    try:
        for i, cut in enumerate(cuts):
            if i and len(panel_tasks(args)) >= args.panel_min:
                return
            if i:
                print(f"evidence: the panel has {len(panel_tasks(args))} < {args.panel_min} tasks; widening the scan "
                      f"to --max-median {cut}", flush=True)
            scan_at(args, scan_argv(args, cut) + list(extra))
    except TaskError as why:
        print(f"evidence: the scan is skipped, its records and panel stand as they are: {why}", flush=True)


def scan_at(args, argv: list[str]) -> None:
    """One cut of the scan: here and, with --workers 2, in a second process at once (they claim tasks, so none
    runs twice); then a last pass here for what each left the other (a task whose stage 1 finished in one process
    after the other had chosen its stage-2 tasks) and the report of all their runs, written once."""
    if args.workers == 1:
        learnability.main(argv)
        return
    helper = spawn(["-m", "bench.learnability", *argv, "--no-report"])
    learnability.main(argv + ["--no-report"])
    join(helper, "the scan's second process")
    learnability.main(argv)


def spawn(python_argv: list[str]):
    """A second process of the suite, one thread, its output beside this one's."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"evidence: second process: python {' '.join(python_argv)}", flush=True)
    return subprocess.Popen([sys.executable, *python_argv], env=env)


INTERRUPT_GRACE_S = 120  # after Ctrl-C, how long the second process gets to stop by itself (its step, a checkpoint)


def join(proc, what: str, interrupted: bool = False) -> int:
    """Wait for a second process; a failure is said in one line (its finished runs are recorded and resume). After
    Ctrl-C the terminal interrupted it too; if it is still running `INTERRUPT_GRACE_S` later (only this process
    was signalled: `kill -INT <pid>`), it gets the Ctrl-C from here (a second one would stop its run unsaved)."""
    import signal
    import subprocess

    if interrupted:
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            print(f"evidence: interrupting {what} (pid {proc.pid})", flush=True)
            proc.send_signal(signal.SIGINT)
    code = proc.wait()
    if code:
        print(f"evidence: {what} exited with code {code}; its finished runs are recorded, a rerun continues",
              flush=True)
    return code


def reported_cut(args) -> int:
    """The cut the scan last reported at (the panel's), else the first: a rerun resumes the scan there, so that a
    widened panel is not narrowed back to the first cut's tasks."""
    path = Path(args.out) / "learnability" / "panel.json"
    cut = json.loads(path.read_text())["settings"].get("max_median") if path.exists() else None
    return cut or args.cuts[0]


def scan_report(args) -> None:
    """The scan's table, plot and panel rewritten from its runs, at the cut it last reported (kept as they are
    when its tasks' data cannot be had here: the report profiles every task)."""
    from l2o.tasks.errors import TaskError

    try:
        learnability.main(scan_argv(args, reported_cut(args)) + ["--report"])
    except TaskError as why:
        print(f"evidence: the scan's report is kept as it is, its tasks' data cannot be had here: {why}", flush=True)


def resumed_cuts(args) -> list[int]:
    """`--max-median`'s cuts from the one the scan last reported at."""
    cut = reported_cut(args)
    return args.cuts[args.cuts.index(cut):] if cut in args.cuts else args.cuts


def prefix_lrs(args, task: str) -> dict[str, float]:
    """The prefix phase's chosen lr per method label on `task` (empty before that phase has run there)."""
    methods = (load_summary(Path(args.out), "prefix") or {"methods": {}})["methods"]
    return {label: m["per_task"][task]["lr"] for label, m in methods.items()
            if task in m["per_task"] and m["per_task"][task]["lr"] is not None}


def panel_policy_methods(args) -> list[str]:
    """The full phase's rows of the artefacts phase's policy (none before it has one)."""
    policy = artefacts.best(Path(args.out), "zo-finetuner")
    if not policy:
        return []
    if args.smoke:
        return [f"{PANEL_POLICY}:zo-finetuner:policy={policy}:lr=1e-3"]
    return [f"{PANEL_POLICY}:zo-finetuner:policy={policy}:lr=1e-5:eps=1e-3",
            f"{PANEL_POLICY}-matched:zo-finetuner:policy={policy}:match=mezo:eps=1e-3"]


def artefacts_argv(args) -> list[str]:
    steps = ",".join(f"{k}={n}" for k, n in args.meta_steps.items())
    return ["--out", args.out, "--base", args.base, "--meta-steps", steps, "--max-rounds",
            str(args.max_rounds), *budget_argv(args)] + (["--smoke"] if args.smoke else [])


def skip_reason(args, phase: str) -> str | None:
    """Why a harness phase cannot run yet (None: it can)."""
    panel = Path(args.out) / "learnability" / "panel.json"
    if not panel.exists():
        return f"no panel yet ({panel} is written by the scan phase)"
    if not panel_tasks(args):
        return (f"the panel is empty: no scanned task has moved by the panel rule yet ({panel.parent / 'table.md'} "
                "says what remains to run)")
    if phase == "metainit":
        init = artefacts.meta_init(args.meta_init, args.out)
        if not init:
            return "no --meta-init given and no meta-initialisation trained by the artefacts phase yet"
        # the records keep only its card; a report needs only the runs' records
        if not args.meta_init and not args.report and not (Path(init) / WEIGHTS_NAME).exists():
            return (f"the artefacts phase's meta-initialisation {init} is gone (a base's weights are not kept with the "
                    "records, bench/snapshot.py); the artefacts phase meta-trains it again from its records (checked "
                    "against them), or give --meta-init")
    if phase == "bf16":
        task = panel_tasks(args)[0]
        missing = [m for m in BF16_METHODS if m not in prefix_lrs(args, task)]
        if missing:  # the lrs are read from the report the prefix phase writes when a pass over its methods ends
            return (f"the prefix phase has not reported {' and '.join(missing)}'s lr on {task} yet (its report comes "
                    f"at the end of the pass that runs {BF16_METHODS[-1]} there)")
    return None


def prefix_seeds(methods: list[str]) -> list[str]:
    """The prefix phase's methods under `--seeds auto`: the claims on a share of pairs (FO-AdamW's k, Bilevel-ZOFO's
    reach) need 4 pairs on a task to be decided at all (`share_pairs_to_decide`), so MeZO, which runs every seed any
    method runs, runs 4; every other method then pairs with each of those runs too, and a method in
    `MORE_PREFIX_SEEDS` with that many."""
    n = share_pairs_to_decide()
    return [m if m == "mezo" else f"{m if ':' in m else f'{m}:{m}'}:seeds={MORE_PREFIX_SEEDS.get(m, n)}"
            for m in methods]


def harness_argv(args, phase: str) -> list[str] | None:
    """The harness flags of a phase (None: it cannot run yet, `skip_reason` says why)."""
    panel, tasks = Path(args.out) / "learnability" / "panel.json", panel_tasks(args)
    if skip_reason(args, phase):
        return None
    first, shipped_only = phase == PREFIX_FIRST, phase == FULL_SHIPPED
    phase = {PREFIX_FIRST: "prefix", FULL_SHIPPED: "full"}.get(phase, phase)  # a pass of the phase: its --out
    tasks = tasks[:1 if first else {"full": args.full_tasks, "bf16": 1}.get(phase, args.max_tasks)]
    seeds = args.seeds
    if phase == "full" and seeds == "auto":  # enough pairs for the ZO Fine-tuner claim to hold at all, and never
        # fewer seeds than a task has recorded already (a widened phase would otherwise drop its pairs from the report)
        recorded = [r["config"]["seed"] for r in read_records(Path(args.out) / "full" / "runs.jsonl")
                    if r["config"]["task"] in tasks and r.get("label") == "mezo"]
        n = max(3, -(-share_pairs_to_decide() // len(tasks)), max(recorded, default=-1) + 1)
        seeds = ",".join(map(str, range(n)))
    argv = ["--panel", str(panel), "--out", str(Path(args.out) / phase), "--budget", str(args.budget),
            "--seeds", seeds, "--order", "tasks", "--policy", args.policy, *budget_argv(args)]
    argv += ["--report"] if args.report else []
    if phase == "metainit":  # MeZO from the base is the prefix phase's MeZO: same configurations, not run twice
        argv += ["--reuse", str(Path(args.out) / "prefix" / "runs.jsonl")]
    methods = {"prefix": PREFIX_METHODS, "full": FULL_METHODS,
               "metainit": ["mezo", f"mezo-init:mezo:init={artefacts.meta_init(args.meta_init, args.out)}"],
               }.get(phase)
    if phase == "bf16":
        lrs = prefix_lrs(args, tasks[0])
        methods = [f"{m}:{m}:dtype=bf16:lr={lrs[m]:.6g}:search=0" for m in BF16_METHODS]
    if phase == "prefix" and args.seeds == "auto":
        methods = prefix_seeds(methods)
    if args.smoke:
        methods = {"prefix": ["mezo", "gv-matched:mezo-gv:match=mezo", "fo-adamw", "bszo"],
                   "full": ["mezo:mezo:lr=1e-3"]}.get(phase, methods)
        argv += ["--smoke", "--base", args.base, "--lr-grid", "1,3", "--extend", "0", "--seeds", "0,1",
                 "--probe-steps", "2"]
    if first:  # up to the last method whose lr bf16 needs
        methods = methods[:1 + max(i for i, m in enumerate(methods) if m.split(":")[0] in BF16_METHODS)]
    if phase == "full":
        argv += ["--peft", "full"]
        methods = methods + ([] if shipped_only else panel_policy_methods(args))
        labels = [m.split(":")[0] for m in methods]
        argv += [f"--versus={PANEL_POLICY}:zo-finetuner"] if {PANEL_POLICY, "zo-finetuner"} <= set(labels) else []
    argv += ["--tasks", ",".join(tasks)]
    for m in methods:
        argv += ["--method", m]
    return argv


def run_phase(args, phase: str) -> None:
    if phase == "scan":
        scan(args, resumed_cuts(args)[:1])
    elif phase == "scan-widened":  # --workers 2: the scan widened first (lanes), the prefix phase comes after
        scan(args, resumed_cuts(args))
    elif phase == "widen":
        scan(args, resumed_cuts(args))
        run_phase(args, "prefix")
    elif phase == "lora":
        scan(args, resumed_cuts(args), ("--stage", "2", "--lora", "--skip-missing"))
    elif phase == "artefacts":
        try:
            artefacts.run(artefacts.parse_args(artefacts_argv(args)))
        except artefacts.ArtefactsError as why:
            print(f"evidence: phase artefacts skipped: {why}", flush=True)
    elif phase == "memory":
        from bench.budget import spent_hours

        from bench.evidence_doc import memory_file

        path = memory_file(Path(args.docs))
        if path.exists() or spent_hours(Path(args.out)) >= args.cpu_hours:
            print(f"evidence: phase memory skipped ({path} exists, or the CPU budget is spent)", flush=True)
            return
        from bench import fo_memory

        extra = (["--batch-size", "2", "--max-length", "32", "--steps", "1", "--task", "tweet_sentiment", "--peft",
                  "full", "--methods", "mezo,fo-adamw"] if args.smoke else [])
        fo_memory.main(["--base", args.base, "--out", str(path), *extra])
    else:
        argv = harness_argv(args, phase)
        if argv is None:
            print(f"evidence: phase {phase} skipped: {skip_reason(args, phase)}", flush=True)
            return
        from bench import harness

        harness.run_suite(harness.parse_args(argv))


def ordered(phases: list[str], args) -> list[str]:
    """Every claim has a verdict before any gains power, or before the artefacts phase's policy is compared:
    - the bf16 phase needs only MeZO's and BSZO's lrs on the prefix phase's first task: with both asked, it runs
      right after the first task's methods up to BSZO (`PREFIX_FIRST`), before that task's others and other tasks;
    - the metainit phase (Bilevel-ZOFO's second claim) runs right after the full phase's MeZO and shipped ZO
      Fine-tuner rows (the ZO Fine-tuner claim) and before its rows of the artefacts phase's policy."""
    if "prefix" in phases and "bf16" in phases and args.max_tasks >= 2:
        rest = [p for p in phases if p != "bf16"]
        i = rest.index("prefix")
        phases = rest[:i] + [PREFIX_FIRST, "bf16"] + rest[i:]
    if "full" in phases and "metainit" in phases:
        rest = [p for p in phases if p != "metainit"]
        i = rest.index("full")
        phases = rest[:i] + [FULL_SHIPPED, "metainit"] + rest[i:]
    return phases


def lanes(args) -> tuple[list[str], list[str]]:
    """--workers 2: this process's phases, with "lane" where the second process starts, and that process's phases.
    The scan comes first (widened as far as it will be: the task family of the artefacts is the scanned tasks off
    the panel), then the artefacts, full, metainit and lora phases (SECOND_LANE, in its order) in the second process
    beside the others here."""
    asked = args.phase_list
    second = [p for p in SECOND_LANE if p in asked]
    here = [p for p in asked if p not in SECOND_LANE and p not in SCAN_PHASES]
    if "widen" in asked and "prefix" not in here:
        here.insert(0, "prefix")  # widen's own prefix run on the widened panel
    scans = ["scan-widened" if "widen" in asked else "scan"] if set(asked) & set(SCAN_PHASES) else []
    return scans + (["lane"] if second else []) + ordered(here, args), second


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.status:
        from bench import evidence_status

        root = evidence_status.suite_root(args)
        there = argparse.Namespace(**{**vars(args), "out": str(root)})
        panel = panel_tasks(there)
        print(evidence_status.status(args, root, budget=last_budget(args), panel=panel,
                                     reasons={p: skip_reason(there, p) for p in evidence_status.HARNESS},
                                     data=evidence_status.panel_data(panel)), flush=True)
        return 0
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from l2o.errors import UserError
    from l2o.stop import exit_code, terminate_as_interrupt

    from bench import snapshot

    out, records = Path(args.out), Path(args.docs) / "data" / "evidence"
    threads, proc, code, interrupted = torch.get_num_threads(), None, 0, None
    terminate_as_interrupt()  # SIGTERM (a scheduler's stop) saves the run under way as Ctrl-C does
    if args.workers > 1:
        torch.set_num_threads(1)  # one thread per process (the second one is started with one)
    try:
        got = snapshot.restore(records, out)
        if got:
            print(f"evidence: {got} file(s) of the kept records restored from {records} into {out}", flush=True)
        record_budget(args)
        if args.report and set(SCAN_PHASES) & set(args.phase_list):
            print("evidence: phase scan (report only)", flush=True)
            scan_report(args)
        if args.report:
            phases, second = [p for p in args.phase_list if p in HARNESS_PHASES], []
        elif args.workers > 1:
            phases, second = lanes(args)
        else:
            phases, second = ordered(args.phase_list, args), []
        for phase in phases:
            if phase == "lane":
                proc = spawn(["-m", "bench.evidence", *args.argv, "--phases", ",".join(second), "--workers", "1"])
                continue
            print(f"evidence: phase {phase}" + (" (report only)" if args.report else ""), flush=True)
            run_phase(args, phase)
            snapshot.save(out, records)
    except UserError as err:
        print(f"bench.evidence: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        interrupted = err
    finally:
        torch.set_num_threads(threads)
        if proc is not None:
            code = join(proc, f"the second process (phases {','.join(second)})", interrupted is not None)
    if interrupted is not None:  # the finished runs' records are kept; the doc is rewritten by the run that finishes
        snapshot.save(out, records)
        print(f"bench.evidence: {stop_line(interrupted)}", file=sys.stderr)
        return exit_code(interrupted)
    from bench.evidence_doc import write_doc

    write_doc(out, Path(args.docs), args)
    snapshot.save(out, records)
    print(f"evidence: the records are kept in {records} ({len(snapshot.kept(records))} files): commit them with "
          f"{Path(args.docs) / 'evidence.md'}", flush=True)
    return 2 if code else 0


if __name__ == "__main__":
    raise SystemExit(main())
