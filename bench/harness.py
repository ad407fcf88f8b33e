"""The evidence harness: every method against MeZO on the evidence panel, at a power that can separate them.

    python -m bench.harness --panel runs/learnability/panel.json --out runs/harness            # the default suite
    python -m bench.harness --panel runs/learnability/panel.json --method mezo \\
        --method es:zo-finetuner:policy=runs/es/policy --method pes:zo-finetuner:policy=runs/pes/policy \\
        --out runs/es-vs-pes                                                                   # learned policies
    python -m bench.harness --panel runs/learnability/panel.json --method all --out runs/all   # the whole registry
    python -m bench.harness --smoke --base <tiny folder>                                      # seconds (tests)

From Python: `bench.harness.compare(["mezo", "es:zo-finetuner:policy=<folder>"], panel="panel.json",
out="runs/x")` returns the summary dict (also `<out>/summary.json`).

A method is `optimizer` or `label:optimizer[:key=value...]`. Keys: `policy` (zoo id or folder, for zo-finetuner*),
`init` (a zoo meta-initialisation or ledger applied to the base first), `peft`, `lr` (the centre of its lr grid;
default: bench/lr_centres.py's for the method and the run's PEFT mode), `search` (`search=0`: no lr search, `lr` is
used as given), `eps` (default: MeZO's in the run's PEFT mode, bench/lr_centres.py's `MEZO_EPS`: prefix and prompt
1e-1, LoRA 1e-2, full 1e-3; Bilevel-ZOFO, which perturbs the whole backbone: full's), `steps` (first-order methods:
steps per run, default --budget // 10), `seeds` (`seeds=N`: N seeds of each task for this method, the task's
continued, and MeZO's runs on them too), `match` (`match=<label>` of a method listed before it, e.g. `match=mezo`: no
lr search; the lr that gives that method's chosen lr x effective step, measured on a probe of `--probe-steps`
steps), and any other fine_tune optimizer flag (`pool_size=8`, `dtype=bf16` ...; the value `lr` sets it to the
run's lr, e.g. `upper_lr=lr`). `METHOD_DEFAULTS` gives Bilevel-ZOFO its small-scale settings unless the spec sets
them. Any registered method enters by its registry name (`python -m fine_tune --list-optimizers`; e.g. `--method
zo-sgd-sign`, `--method cons:zo-sgd-cons`), its lr grid centred on its bench/lr_centres.py centre (one the table
lacks needs `lr=`). An
unknown name or key is refused before anything runs. `--method all` enters every registered ZO method (the catalog's
names; zo-finetuner* only with --policy, their policy) beside any other spec given (e.g. `--method all --method
fo-sgd`); without --method the suite is mezo, mezo-gv, mezo-greedy, bszo, fo-sgd and fo-adamw (the CPU budget).
MeZO, the reference, always runs first; the others in the order given.

Protocol, per task (the panel's tasks, or --tasks) and method:
1. lr: one run (seed --select-seed) per lr of `--lr-grid` x the centre, `--select-budget` forward passes, chosen
   on the dev metric (train loss breaks ties), the grid extended past an edge the best lr sits at
   (bench/compare_optimizers.py's `select_runs`).
2. Seeds: `--seeds` runs at the chosen lr, `--budget` forward passes (steps = budget // forwards per step). A seed
   is the optimizer's randomness (ZO directions, an adapter's initialisation); every seed and method trains on the
   same data sample in the same batch order and is evaluated on the same examples (`--data-seed`), so the pairs
   share those, and an interval says nothing about another training sample. `--data-per-seed`: seed s also draws
   its own train, dev and eval sample (data seed `--data-seed` + s, MeZO's protocol; a method and MeZO on one seed
   still share theirs), so the intervals cover another training sample too. `--seeds auto`: 5 seeds where a
   MeZO run of the task costs under 10 CPU-minutes (measured on its selection runs), else 3; on a panel task whose
   MeZO selection run is the scan's (reused), seeds 1.. instead of 0..: the scan put the task on the panel by that
   run's eval accuracy, so it would be a pair biased towards MeZO (the selection runs then only choose lrs).
3. Report (against the reference method, MeZO, over (task, seed) pairs): win-rate on final train loss and on
   eval accuracy with its 95% Wilson interval (ties count half); paired differences with 95% t intervals over seeds,
   stratified by task (bench/stats.py); forward passes to reach MeZO's final train loss (the mean of its
   last 10% of steps), for each pair, over the method's moving mean on the same window. First-order methods
   run `steps` backprop steps; the report gives k = the forward passes MeZO needs to reach their final loss,
   over theirs.
   `--versus A:B` also reports method A against method B in the same way (summary.json "versus"; e.g. a new policy
   against a shipped one).

A run is identified by its full fine_tune configuration: records in `<out>/runs.jsonl` (and in `--reuse` files,
e.g. the learnability scan's) whose configuration matches are never rerun, so an interrupted suite resumes and
a selection run at the final budget doubles as that seed's final run, as does one method's run for another that
reaches the same configuration (a matched-step lr equal to the dev-chosen one, up to float rounding). Two harness
commands may share one --out (two lanes, each with its own methods): a run is made by one process at a time (its
claim, `claim_path`), and a process that reaches a run another is making waits for it and takes its record. Writes
`<out>/table.md`, `<out>/summary.json` and `<out>/loss_vs_forwards.png`.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget import CpuBudget, NotRun  # noqa: E402
from bench.cli import Parser, check_counts, cli_exit, lr_grid, numbers  # noqa: E402
from bench.evidence_report import seeds_of  # noqa: E402
from bench.lr_centres import centre as lr_centre  # noqa: E402
from bench.lr_centres import MEZO_EPS, unrunnable  # noqa: E402
from bench.records import append_record, located, read_records, records_lock  # noqa: E402
from bench.resume import recorded, run_to_end  # noqa: E402
from l2o import catalog  # noqa: E402
from l2o.filelock import exclusive  # noqa: E402

REFERENCE = "mezo"
CONFIG_ONLY = ("out", "zero_shot", "resume")  # fields that do not change what a run computes
RUN_KEYS = ("policy", "init", "peft", "dtype")  # method keys that are FineTuneConfig fields beside the optimizer's
# A method's options unless its spec sets them; a value "lr" follows the run's lr. Bilevel-ZOFO runs, in any PEFT
# mode, at the small-scale lam, theta_lr and T_low it declares for prefix tuning (l2o/optim/bilevel_zofo.py says
# why: its defaults, the official OPT-13B LoRA sweep's, diverged here), both Adam rates the searched lr (the official
# OPT-1.3B ablations tie them, and the upper copy p is the one evaluated).
METHOD_DEFAULTS = {"bilevel-zofo": {**{k: v for k, v in catalog.defaults("bilevel-zofo", "prefix").items()
                                       if k in ("lam", "theta_lr", "t_low")}, "upper_lr": "lr"}}


@dataclass
class Method:
    label: str
    optimizer: str
    options: dict = field(default_factory=dict)

    @property
    def first_order(self) -> bool:
        return self.optimizer.startswith("fo-")

    @property
    def lr_field(self) -> str:
        return step_size(self.optimizer)


def step_size(optimizer: str) -> str:
    """The flag an lr search sets: `lr`, or the one a registered method declares (its class's `step_size`)."""
    from l2o import catalog

    return catalog.load()["methods"].get(optimizer, {}).get("step_size", "lr")


def parse_method(spec: str) -> Method:
    """`optimizer` or `label:optimizer[:key=value...]` (values parsed as numbers where they are)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return Method(parts[0], parts[0])
    options = {}
    for item in parts[2:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--method {spec}: '{item}' is not key=value")
        try:
            options[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            options[key] = value
    return Method(parts[0], parts[1], options)


def default_methods() -> list[str]:
    return ["mezo", "mezo-gv", "mezo-greedy", "bszo", "fo-sgd", "fo-adamw"]


def expand_all(specs: list[str], policy: str | None = None) -> list[str]:
    """`specs` with `all` replaced by every registered ZO method (the catalog's names) not given by its own spec;
    the zo-finetuner* ones only with a `policy` (they need a learned one)."""
    from l2o import catalog

    if "all" not in specs:
        return specs
    given = {parse_method(s).label for s in specs if s != "all"}
    names = [n for n in catalog.method_names() if n not in given and (policy or not n.startswith("zo-finetuner"))]
    at = specs.index("all")
    return [*specs[:at], *names, *(s for s in specs[at + 1:] if s != "all")]


def parse_args(argv=None):
    ap = Parser(prog="bench.harness", description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--panel", default=None, help="panel.json of bench.learnability (tasks and settings)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (instead of / narrowing the panel's)")
    ap.add_argument("--method", action="append", default=None, help="a method spec (repeat), or all: every "
                    "registered ZO method; see the module doc")
    ap.add_argument("--policy", default=None, help="default policy of zo-finetuner* methods (zoo id or folder)")
    ap.add_argument("--seeds", default="auto", help="comma-separated seeds, or auto (5 or 3, see the doc)")
    ap.add_argument("--budget", type=int, default=500, help="forward passes per final ZO run")
    ap.add_argument("--select-budget", type=int, default=None, help="forward passes per lr-selection run")
    ap.add_argument("--select-seed", type=int, default=0)
    ap.add_argument("--lr-grid", default="0.3,1,3")
    ap.add_argument("--extend", type=int, default=1)
    ap.add_argument("--probe-steps", type=int, default=10, help="steps of a match=... method's probe run")
    ap.add_argument("--peft", default="prefix")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-train", type=int, default=1000)
    ap.add_argument("--num-dev", type=int, default=200)
    ap.add_argument("--num-eval", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--data-per-seed", action="store_true", help="seed s draws its own train, dev and eval sample "
                    "(data seed = --data-seed + s, MeZO's protocol), so the intervals cover another training sample "
                    "too; default: every seed trains and is scored on --data-seed's sample")
    ap.add_argument("--reuse", action="append", default=[], help="another runs.jsonl whose matching runs count")
    ap.add_argument("--versus", action="append", default=[], help="A:B (method labels): also A against B over the "
                    "same (task, seed) pairs, as each against MeZO (summary.json 'versus')")
    ap.add_argument("--order", choices=("seeds", "tasks"), default="seeds", help="seeds: seed i everywhere before "
                    "seed i + 1; tasks: one task at a time")
    ap.add_argument("--out", default="runs/harness")
    ap.add_argument("--report", action="store_true", help="run nothing: the report from the runs made so far")
    CpuBudget.add_arguments(ap)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (with a tiny --base): seconds")
    args = ap.parse_args(argv)
    if args.panel:
        panel = read_panel(args.panel, need_tasks=not args.tasks)
        for k, v in panel["settings"].items():  # the scan's data settings, so its runs are reusable
            if k in ("base", "batch_size", "max_length", "num_train", "num_dev", "num_eval", "data_seed"):
                setattr(args, k, v)
        args.max_lengths = panel.get("max_length", {})  # per task: a wider scan keeps a task's earlier runs
        beside = Path(args.panel).parent / "runs.jsonl"  # the scan's runs, wherever the harness is started from
        args.reuse.append(str(beside) if beside.exists() else panel["runs"])
        args.tasks = args.tasks or ",".join(panel["tasks"])
    if args.smoke:
        args.batch_size, args.budget, args.num_train, args.num_dev, args.num_eval = 2, 8, 16, 8, 12
        args.max_length, args.tasks = 32, args.tasks or "imdb,boolq"
        args.seeds = "0,1" if args.seeds == "auto" else args.seeds
    if not args.tasks:
        ap.error("name the tasks: --panel panel.json (bench.learnability) or --tasks a,b")
    check_counts(args, "budget", "select_budget", "probe_steps")
    args.select_budget = args.select_budget or args.budget
    args.grid = lr_grid(args.lr_grid)
    if args.seeds != "auto":
        numbers(args.seeds, "--seeds", int)
    args.task_list = args.tasks.split(",")
    args.methods = [parse_method(m) for m in expand_all(args.method or default_methods(), args.policy)]
    if REFERENCE not in [m.label for m in args.methods]:
        args.methods.insert(0, Method(REFERENCE, REFERENCE))
    args.versus = [tuple(v.split(":")) for v in args.versus]
    labels = {m.label for m in args.methods}
    problem = check_methods(args.methods, args.peft) or next(
        (f"--versus {':'.join(v)}: name two method labels A:B" for v in args.versus
         if len(v) != 2 or not set(v) <= labels), None)
    if problem:
        ap.error(problem)
    return args


def read_panel(path: str, need_tasks: bool = True) -> dict:
    """A panel.json of bench.learnability; UserError when it is missing or (with `need_tasks`) holds no task yet."""
    from l2o.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"no panel at {path}: run the learnability scan first (python -m bench.learnability)")
    panel = json.loads(Path(path).read_text())
    if need_tasks and not panel["tasks"]:
        s = panel["settings"]
        raise UserError(f"the panel {path} is empty: no scanned task has moved by >= {s.get('panel_se', 3):g} standard "
                        f"errors yet ({Path(path).parent / 'table.md'} says what remains to run), "
                        "or name tasks with --tasks")
    return panel


def check_methods(methods: list[Method], peft: str = "prefix") -> str | None:
    """Why a list of method specs cannot run (None: it can): an unknown optimizer or key, a repeated label, a
    method with neither `lr=` nor an lr centre for its PEFT mode (bench/lr_centres.py), a `match` that names no
    method listed before it."""
    from fine_tune.config import OPTIMIZER_FLAGS

    seen = []
    for m in methods:
        unknown = unrunnable(m.optimizer, lr_given=True)  # its name; its lr centre (in its mode) below
        if unknown:
            return f"--method {m.label}: {unknown}"
        bad = sorted(set(m.options) - {*OPTIMIZER_FLAGS, *RUN_KEYS, "steps", "match", "search", "seeds"})
        if bad:
            return f"--method {m.label}: unknown key(s) {', '.join(bad)}"
        if not isinstance(m.options.get("seeds", 1), int) or m.options.get("seeds", 1) < 1:
            return f"--method {m.label}: seeds={m.options['seeds']} is not a count of seeds (an integer >= 1)"
        if m.label in seen:
            return f"--method {m.label}: the label is used twice"
        if m.options.get("search", 1) == 0 and "lr" not in m.options:
            return f"--method {m.label}: search=0 needs lr=..."
        mode = m.options.get("peft", peft)
        problem = unrunnable(m.optimizer, mode, lr_given="lr" in m.options or "match" in m.options)
        if problem:
            return f"--method {m.label}: {problem}"
        if m.options.get("match") not in (None, *seen):
            return f"--method {m.label}: match={m.options['match']} names no method listed before it"
        seen.append(m.label)
    return None


# ------------------------------------------------------------------------------------ runs
def config_key(cfg: dict) -> str:
    """What identifies a run: its configuration's fields that differ from FineTuneConfig's defaults (so a field
    added later with a default does not orphan older records), but the output folder and zero-shot scoring; a path
    under the run's suite relative to it (`_in_suite`); numbers as floats to 10 significant digits, so that one lr
    reached two ways (a grid's 1e-5 x 3 = 3.0000000000000004e-05, a matched step's ratio rounded to 3e-05) is one
    run, made once."""
    from fine_tune.config import FineTuneConfig

    default = {k: _digits(v) for k, v in FineTuneConfig().to_dict().items()}
    suite = Path(cfg["out"]).parent.parent if cfg.get("out") else None
    mine = {k: _in_suite(_digits(v), suite) for k, v in cfg.items() if k not in CONFIG_ONLY}
    return json.dumps({k: v for k, v in sorted(mine.items()) if default.get(k, object()) != v}, sort_keys=True,
                      default=str)


def _in_suite(value, suite: Path | None):
    """A path under the suite a run belongs to (`suite`: the folder above its phase's, `<suite>/<phase>/<run>` being
    the run's out), as `<suite>/...`: a run of the evidence suite names the suite's own artefacts by path (`--policy
    runs/evidence/artefacts/...`, `--init ...`), so its records, restored into another --out (a fresh clone's
    `--out /scratch/evidence`), would otherwise name other runs than the suite now asks for, and run them again."""
    if not isinstance(value, str) or suite is None:
        return value
    try:
        return f"<suite>/{Path(value).relative_to(suite).as_posix()}" if suite.parts else value
    except ValueError:
        return value


def _digits(value):
    """A number as the key compares it: ints as floats (lam 10 and 10.0 are one setting), floats to 10 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(f"{value:.10g}") if isinstance(value, float) else float(value)


class Runner:
    """Runs a fine_tune configuration once: records here or in --reuse files with the same `config_key` count.
    Under --report, once --cpu-spent-h plus this invocation's runs reach --cpu-budget-h, or when the task's data
    cannot be had here, a missing run raises NotRun instead (the suite then reports what exists; a selection or seed
    it lacks stays empty)."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.t0 = self.out / "runs.jsonl", time.perf_counter()
        self.budget = CpuBudget.of(args)
        reused = [located(r, p) for p in args.reuse for r in read_records(p)]
        self.done: dict[str, dict] = {}  # config_key -> the first record made of it here, else in the --reuse files
        self.read_own()
        for r in reused:
            self.done.setdefault(config_key(r["config"]), r)
        self.from_reuse = {config_key(r["config"]) for r in reused}
        self.no_data: dict[str, str | None] = {}  # task -> why its data cannot be had here (None: it can)
        self.fingerprints: dict[tuple, str] = {}  # data_key -> the fingerprint of this machine's sample

    def say(self, line: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {line}", flush=True)

    def read_own(self) -> None:
        """Adds this --out's records to `done`, read under the lock another harness process on this --out appends
        under (at the start, and again once a run's claim is held: that run may have been recorded meanwhile)."""
        with records_lock(self.log_path):
            for r in read_records(self.log_path):
                self.done.setdefault(config_key(r["config"]), located(r, self.log_path))

    def reused(self, record: dict) -> bool:
        """Whether `record` is one of the --reuse files' (another tool's run, e.g. the scan's)."""
        return config_key(record["config"]) in self.from_reuse

    def zero_shot(self, task: str, data_seed: int) -> dict | None:
        """A record of `task` scored zero-shot on the eval sample of `data_seed`: any run with the same data
        settings."""
        a = self.args
        for r in self.done.values():
            c = r["config"]
            if (r["task"] == task and r.get("zero_shot") and r.get("per_example", {}).get("zero_shot")
                    and (c["base"], c["num_eval"], c["data_seed"], c["max_length"], c.get("eval_seed")) ==
                    (a.base, a.num_eval, data_seed, max_length(a, task), None)):
                return r
        return None

    def zero_shot_eval(self, task: str, seeds: list[int]) -> float | None:
        """`task`'s zero-shot eval accuracy: on --data-seed's sample, or with --data-per-seed the mean over the
        samples of `seeds` measured so far (None before any)."""
        got = [self.zero_shot(task, ds) for ds in sorted({data_seed_of(self.args, s) for s in seeds or [0]})]
        got = [r["zero_shot"]["eval"] for r in got if r is not None]
        return sum(got) / len(got) if got else None

    def need_data(self, task: str, source: str | None) -> None:
        """NotRun when `task`'s data cannot be had on this machine (zoo.acquire: BIG-bench with no source of its
        files, say), checked once per task: the suite goes on with the tasks it has, and the task's recorded runs
        still count. One line says so."""
        if task not in self.no_data:
            from l2o.tasks.errors import TaskError
            from zoo.acquire import ensure_task

            try:
                ensure_task(task, source)
                self.no_data[task] = None
            except TaskError as why:
                self.no_data[task] = str(why)
                print(f"harness: {task}'s runs that are not recorded yet are skipped, since its data cannot be had "
                      f"here ({why})", flush=True)
        if self.no_data[task]:
            raise NotRun(f"{task}: no data")

    def same_data(self, cfg) -> None:
        """UserError when this machine's sample of the task (its examples' fingerprint, l2o.tasks.Splits) is not the
        one the records of the same data configuration were made on: another copy of the task's files (BIG-bench
        from another source, another package version). Pairing those runs would compare methods on other examples.
        Records from before fingerprints were kept are not checked."""
        from l2o.errors import UserError

        key = data_key(cfg.to_dict())
        if key not in self.fingerprints:
            self.fingerprints[key] = cfg.sample().fingerprint()  # the sample fine_tune will draw
        mine = self.fingerprints[key]
        other = sorted({fp for r in self.done.values() if data_key(r["config"]) == key
                        and (fp := r.get("splits", {}).get("fingerprint")) and fp != mine})
        if other:
            raise UserError(f"{cfg.task}'s examples here (data seed {cfg.data_seed}) are not those its records were "
                            f"made on (fingerprint {mine[:19]}, recorded {other[0][:19]}): its files come from another "
                            "source or version; give the records' data back, or another --out")

    def __call__(self, cfg, label: str) -> dict:
        key = config_key(cfg.to_dict())
        if key in self.done:
            return self.done[key]
        self.need_data(cfg.task, cfg.source)  # also under --report: the report says which tasks have no data here
        if self.args.report:
            raise NotRun(f"{label} {cfg.task} seed {cfg.seed}")
        self.same_data(cfg)
        lr = getattr(cfg, step_size(cfg.optimizer))
        what = f"{label} {cfg.task} lr {lr:.3g} seed {cfg.seed}"
        with exclusive(claim_path(cfg.out), waiting=lambda: self.say(f"{what}: another process is making this run "
                                                                     f"({cfg.out}); waiting for its record")):
            self.read_own()
            if key in self.done:
                return self.done[key]  # another process's run: not charged here
            self.budget.check(f"{label} {cfg.task} seed {cfg.seed}")
            cfg.zero_shot = self.zero_shot(cfg.task, cfg.data_seed) is None
            self.say(f"{what}: {cfg.steps} steps")
            res = run_to_end(cfg, say=lambda m: print(m, flush=True))  # its cpu_s: every attempt's
            res.update(label=label, lr=lr)
            append_record(self.log_path, res)
            recorded(cfg.out)
        self.done[key] = res
        self.budget.charge(res["cpu_s"])
        self.say(f"  eval {res['final'].get('eval', float('nan')):.3f}, train loss {res['final_train_loss']:.4f}, "
                 f"{res['cpu_s']:.0f} CPU-s")
        return res


def claim_path(out) -> Path:
    """The lock a harness process holds while it makes the run in folder `out`, from before it looks at the folder
    until its record is appended: a second process (two harness commands on one --out) waits there and then takes
    the record, where it used to find no checkpoint yet, clear the folder the first was writing and run it again
    beside it. A file beside the folder, `<name>.claim`: clearing or resuming the folder never touches it."""
    out = Path(out)
    return out.with_name(out.name + ".claim")


def data_key(cfg: dict) -> tuple:
    """What a run's data sample depends on (its configuration's SAMPLE_FIELDS): runs with one key train and are
    evaluated on the same examples."""
    from fine_tune.config import SAMPLE_FIELDS

    return tuple(cfg.get(k) for k in SAMPLE_FIELDS)


def steps_for(method: Method, budget: int) -> int:
    """Steps that spend `budget` forward passes (first-order methods: the `steps` option, else budget // 10), from
    the method's own forwards per step (a mean for Bilevel-ZOFO, whose upper step comes every t_low steps)."""
    from l2o.optim import forwards_per_step, optimizer_defaults

    o = options(method)
    if method.first_order:
        return int(o.get("steps", max(1, budget // 10)))
    hp = optimizer_defaults(method.optimizer)
    return max(1, int(budget / forwards_per_step(method.optimizer,
                                                 **{k: v for k, v in o.items() if k in hp and v != "lr"})))


def options(method: Method) -> dict:
    """The method's options: its spec's over its `METHOD_DEFAULTS` (a value "lr" still to be set to the run's)."""
    return {**METHOD_DEFAULTS.get(method.optimizer, {}), **method.options}


def make_config(args, method: Method, task: str, lr: float, seed: int, budget: int, steps: int | None = None):
    from fine_tune.config import OPTIMIZER_FLAGS, FineTuneConfig
    from l2o import catalog

    o = options(method)
    flags = {k: lr if v == "lr" else v for k, v in o.items() if k != "lr" and k in OPTIMIZER_FLAGS}  # `lr`: the centre
    peft = o.get("peft", args.peft)
    if not method.first_order:  # MeZO's eps for the weights the method perturbs, unless it sets eps=: the run's
        # PEFT parameters, or all the backbone's for a method that trains the adapter first-order (Bilevel-ZOFO)
        flags.setdefault("eps", MEZO_EPS["full" if catalog.entry(method.optimizer)["needs_adapter"] else peft])
    flags[method.lr_field] = lr
    policy = o.get("policy", args.policy) if method.optimizer.startswith("zo-finetuner") else None
    name = f"{method.label}-{task}-lr{lr:.3g}-s{seed}-f{budget}" + (f"-probe{steps}" if steps else "")
    return FineTuneConfig(base=args.base, task=task, optimizer=method.optimizer, policy=policy, init=o.get("init"),
                          peft=peft, dtype=o.get("dtype", "auto"),
                          steps=steps or steps_for(method, budget),
                          batch_size=args.batch_size, eval_every=0, seed=seed, data_seed=data_seed_of(args, seed),
                          num_train=args.num_train, num_dev=args.num_dev, num_eval=args.num_eval,
                          max_length=max_length(args, task), out=str(Path(args.out) / name), save_model=False,
                          **flags)


def data_seed_of(args, seed: int) -> int:
    """The data seed of a run of `seed` (--data-per-seed: its own sample; seed 0, the lr selection's by default,
    keeps --data-seed's, so the selection runs and the scan's are the same either way)."""
    return args.data_seed + seed if getattr(args, "data_per_seed", False) else args.data_seed


def max_length(args, task: str) -> int:
    """The task's max length: the panel's for it (the scan's runs of the task were made at it), else --max-length."""
    return getattr(args, "max_lengths", {}).get(task, args.max_length)


# ------------------------------------------------------------------------------------ the protocol
def select(args, runner: Runner, method: Method, task: str, chosen: dict) -> tuple[float, list[dict]]:
    """(the method's lr on `task`, the runs that chose it)."""
    from bench.compare_optimizers import choose_lr, select_runs

    def run(lr):
        return runner(make_config(args, method, task, lr, args.select_seed, args.select_budget), method.label)

    if method.options.get("match"):
        if (task, method.options["match"]) not in chosen:
            raise NotRun(f"{method.label} {task}: {method.options['match']}'s lr is not chosen yet")
        ref_lr, ref_runs = chosen[(task, method.options["match"])]
        # its effective step E||d||^2/D at any lr (a property of the direction, not of lr), over a short probe
        probe = runner(make_config(args, method, task, ref_lr, args.select_seed, args.select_budget,
                                   steps=args.probe_steps), method.label)
        ref_eff = statistics.mean(r["effective_step"] or 1.0 for r in ref_runs if r["lr"] == ref_lr)
        lr = float(f"{ref_lr * ref_eff / (probe['effective_step'] or 1.0):.4g}")
        return lr, [probe]
    o = method.options
    centre = o["lr"] if "lr" in o else lr_centre(method.optimizer, o.get("peft", args.peft))
    if method.options.get("search", 1) == 0:  # pinned: its seed-0 run is the only "selection"
        return centre, [run(centre)]
    runs = select_runs(run, [centre * g for g in args.grid], args.extend)
    return choose_lr(runs), runs


def seeds_for(args, runner: Runner, task: str, chosen: dict) -> list[int]:
    """--seeds, or auto: 5 where the reference's selection runs on `task` cost under 10 CPU-minutes, else 3; and
    not --select-seed where the reference's run at its chosen lr is a reused one (the scan's): that run put the
    task on the panel by its eval accuracy, so as a comparison pair it would favour the reference."""
    if args.seeds != "auto":
        return [int(s) for s in args.seeds.split(",")]
    lr, runs = chosen[(task, REFERENCE)]
    cost = statistics.median(r.get("cpu_s", r["fit_time_s"]) for r in runs) * args.budget / args.select_budget
    n = 5 if cost < 600 else 3
    selected = any(r["lr"] == lr and runner.reused(r) for r in runs)
    return [s for s in range(n + 1) if s != args.select_seed][:n] if selected else list(range(n))


def compare(methods: list[str] | None = None, argv: list[str] | None = None, **options) -> dict:
    """Run the protocol for `methods` (specs) with the harness's flags (`argv`, or keyword options such as
    panel="panel.json", out="runs/x", seeds="0,1,2"); returns the summary (also written to <out>/summary.json)."""
    argv = list(argv or [])
    for m in methods or []:
        argv += ["--method", m]
    for k, v in options.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return run_suite(parse_args(argv))


def run_suite(args) -> dict:
    """Selection, then the seeds. `--order seeds`: every selection, then seed i of every task and method before
    seed i + 1 (a partial suite covers every cell); `--order tasks`: one task at a time (in the order given) and,
    within it, one method at a time, MeZO first (a partial suite has whole comparisons)."""
    from l2o.tasks import get_task

    for task in args.task_list:  # a misspelt task was skipped as one "whose data cannot be had here", exit 0
        get_task(task)
    runner, chosen, seeds, final = Runner(args), {}, {}, {}
    methods = sorted(args.methods, key=lambda m: m.label != REFERENCE)  # MeZO first, then as given

    def finals(task, m, seed):
        if (task, m.label) in chosen:
            cfg = make_config(args, m, task, chosen[(task, m.label)][0], seed, args.budget)
            with contextlib.suppress(NotRun):
                final[(task, m.label, seed)] = runner(cfg, m.label)

    for tasks in [args.task_list] if args.order == "seeds" else [[t] for t in args.task_list]:
        for task in tasks:
            for m in methods:
                with contextlib.suppress(NotRun):
                    chosen[(task, m.label)] = select(args, runner, m, task, chosen)
                if m.label == REFERENCE:
                    seeds[task] = seeds_for(args, runner, task, chosen) if (task, m.label) in chosen else []
                if args.order == "tasks":
                    for seed in seeds_of(m, seeds[task], methods):
                        finals(task, m, seed)
        if args.order == "seeds":  # seed i of every task and method before seed i + 1
            own = {(t, m.label): seeds_of(m, seeds[t], methods) for t in tasks for m in methods}
            for i in range(max(map(len, own.values()))):
                for task in tasks:
                    for m in args.methods:
                        if i < len(own[(task, m.label)]):
                            finals(task, m, own[(task, m.label)][i])
    from bench.evidence_report import summarize, write_report

    for task in args.task_list:  # a task whose runs were all recorded before its data went: no run asked yet
        with contextlib.suppress(NotRun):
            runner.need_data(task, None)
    no_data = {t: why for t, why in runner.no_data.items() if why}
    summary = summarize(args, final, chosen, seeds, {t: runner.zero_shot_eval(t, seeds.get(t)) for t in args.task_list},
                        no_data)
    summary["no_data"] = no_data
    write_report(args, summary, final, runner.out)
    return summary


def main(argv=None) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from l2o.integrations.lightning.progress import quiet_libraries

    quiet_libraries()
    return cli_exit("bench.harness", lambda: run_suite(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
