"""Reproduce a paper's table with one command: `python -m bench.reproduce <table> [--smoke]`.

Each table is a YAML file next to this module (`bench/reproduce/<table>.yaml`):

    title, paper, metric: what the table is
    seeds: seeds per cell (each run uses it as both --seed and --data-seed, as MeZO's SEED)
    defaults: fine_tune options shared by every cell (keys of `fine_tune --config`)
    tasks: {task: options for that task}            (the table's columns)
    methods: {name: {config: {...}, sweep: {lr: [...]}, tasks: {task: {...}}, reported: {task: number}}}

A cell is (method, task): defaults <- task options <- method config <- the method's per-task options.
`sweep` lists values tried per cell; the value with the best mean dev metric over the seeds is the
one reported (the papers' grid search). `reported` holds the paper's number (null: not verified).
Every cell is one `fine_tune` run (`fine_tune.run.run`), the same path as `fine_tune --config`;
`--write-configs DIR` writes those per-run YAML files.

`--smoke` keeps each table's structure but swaps what needs GPUs or the hub: the embedded base
(SmolLM2-135M, fp32, CPU), hub tasks read from the hand-written rows in tests/fixtures/hub,
released policies replaced by the built-in smollm2-135m one, 2 steps, tiny data, one seed and the
first sweep value, and by default one cell per (optimizer, PEFT) pair.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from dataclasses import fields
from pathlib import Path

import yaml

from l2o import catalog
from l2o.errors import ConfigError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hub"
SMOKE = dict(base="smollm2-135m", dtype="fp32", device="cpu", steps=2, batch_size=2, num_train=4, num_dev=2,
             num_eval=2, eval_every=0, save_every=None, eval_batch_size=4, max_length=64, zero_shot=False,
             save_model=False, resume=False)
SMOKE_POLICY = "smollm2-135m/zo-finetuner"
TABLE_KEYS = {"title", "paper", "metric", "seeds", "defaults", "tasks", "methods", "notes"}
METHOD_KEYS = {"config", "sweep", "tasks", "reported"}


def list_tables() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_table(name: str) -> dict:
    path = Path(name) if name.endswith(".yaml") else HERE / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown table {name!r}; known tables: {', '.join(list_tables())}")
    from l2o.config_files import read_yaml_mapping  # a file that is not YAML text was a traceback

    table = read_yaml_mapping(path, "table")
    bad = sorted(set(table) - TABLE_KEYS)
    if bad or not table.get("methods") or not table.get("tasks"):
        raise ConfigError(f"table {path.name} needs tasks and methods (unknown keys: {bad})")
    for key in ("methods", "tasks"):
        if not isinstance(table[key], dict):
            raise ConfigError(f"table {path.name}: {key} must be a mapping of name: options")
    for mname, m in table["methods"].items():
        if not isinstance(m, dict):
            raise ConfigError(f"table {path.name}, method {mname!r}: expected a mapping of "
                              f"{', '.join(sorted(METHOD_KEYS))}")
        if set(m) - METHOD_KEYS:
            raise ConfigError(f"table {path.name}, method {mname!r}: unknown keys {sorted(set(m) - METHOD_KEYS)}")
    table["name"] = path.stem
    return table


def cells(table: dict) -> list[dict]:
    """Every (method, task) cell with its merged fine_tune options, sweep and reported number."""
    out = []
    for mname, m in table["methods"].items():
        task_names = list(m.get("tasks") or table["tasks"])
        for task in task_names:
            cfg = {**(table.get("defaults") or {}), "task": task, **(table["tasks"].get(task) or {}),
                   **(m.get("config") or {}), **((m.get("tasks") or {}).get(task) or {})}
            out.append({"method": mname, "task": task, "config": cfg, "sweep": dict(m.get("sweep") or {}),
                        "reported": (m.get("reported") or {}).get(task)})
    return out


def sweep_points(sweep: dict) -> list[dict]:
    keys = sorted(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))] or [{}]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_configs(table: dict, cell: dict, seeds, out: Path) -> list[tuple[dict, dict]]:
    """(sweep point, fine_tune options) for every run of a cell."""
    runs = []
    for point in sweep_points(cell["sweep"]):
        for seed in seeds:
            tag = "-".join(f"{k}{v}" for k, v in point.items())
            folder = out / _slug(cell["method"]) / cell["task"] / _slug(f"{tag}-s{seed}".lstrip("-"))
            runs.append((point, {**cell["config"], **point, "seed": seed, "data_seed": seed, "out": str(folder)}))
    return runs


def smoke_options(cfg: dict) -> dict:
    """The same run shrunk to seconds on the embedded base, offline."""
    from l2o.tasks import get_task

    cfg = {**cfg, **SMOKE}
    task = get_task(cfg["task"])
    fixture = FIXTURES / task.name
    if fixture.is_dir():
        cfg["source"] = str(fixture)
    elif "offline" not in task.tags:
        cfg.update(task="sst2", source=str(FIXTURES / "sst2"))
    else:
        cfg["source"] = None
    if cfg.get("policy"):
        cfg["policy"] = SMOKE_POLICY
    if "t_low" in catalog.defaults(cfg.get("optimizer", "mezo")):
        cfg["t_low"] = 1  # a method with periodic upper steps (Bilevel-ZOFO) takes one inside the 2 smoke steps
    cfg.pop("init", None)
    return cfg


def fine_tune_config(options: dict):
    from fine_tune.config import FineTuneConfig

    known = {f.name for f in fields(FineTuneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown fine_tune option(s) {', '.join(unknown)}")
    return FineTuneConfig(**options).validate()


def smoke_cells(all_cells: list[dict], limit: int | None) -> list[dict]:
    """One cell per (optimizer, PEFT) pair (or the first `limit` of those)."""
    seen, chosen = set(), []
    for c in all_cells:
        key = (c["config"].get("optimizer"), c["config"].get("peft"))
        if key not in seen:
            seen.add(key)
            chosen.append(c)
    return chosen[:limit] if limit else chosen


def run_cell(table: dict, cell: dict, seeds, out: Path, smoke: bool, log) -> dict:
    """Run (or reuse finished) runs of one cell; returns the cell with per-point dev/eval results."""
    from fine_tune.run import run

    points = {}
    for point, options in run_configs(table, cell, seeds, out):
        cfg = fine_tune_config(smoke_options(options) if smoke else options)
        done = Path(cfg.out) / "results.json"
        res = json.loads(done.read_text()) if done.is_file() else run(cfg, log=log)
        key = json.dumps(point, sort_keys=True)
        points.setdefault(key, []).append({"dev": res["final"].get("dev"), "eval": res["final"].get("eval"),
                                           "metric": res["metric"], "seed": cfg.seed})
    return {**cell, "points": points}


def summarise(cell: dict) -> dict:
    """The sweep point with the best mean dev metric (eval when there is no dev), its eval mean ± sd."""
    def mean(rs, k):
        vals = [r[k] for r in rs if r[k] is not None]
        return statistics.fmean(vals) if vals else None

    best_key, best = None, None
    for key, rs in cell["points"].items():
        score = mean(rs, "dev") if mean(rs, "dev") is not None else mean(rs, "eval")
        if best is None or (score is not None and score > best):
            best_key, best = key, score
    rs = cell["points"][best_key]
    evals = [100 * r["eval"] for r in rs if r["eval"] is not None]
    return {"method": cell["method"], "task": cell["task"], "reported": cell["reported"],
            "chosen": json.loads(best_key), "ours": statistics.fmean(evals) if evals else None,
            "sd": statistics.stdev(evals) if len(evals) > 1 else None, "n": len(evals)}


def format_table(table: dict, rows: list[dict]) -> str:
    """Markdown: one line per method, one column per task, "ours (paper)" in each cell."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lines = [f"{table['title']} — {table.get('metric', '')}", "",
             "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells_ = []
        for t in tasks:
            r = next((r for r in rows if r["method"] == method and r["task"] == t), None)
            if r is None:
                cells_.append("")
                continue
            ours = "—" if r["ours"] is None else f"{r['ours']:.1f}" + (f" ± {r['sd']:.1f}" if r["sd"] else "")
            paper = "n/v" if r["reported"] is None else f"{r['reported']}"
            cells_.append(f"{ours} ({paper})")
        lines.append(f"| {method} | " + " | ".join(cells_) + " |")
    lines += ["", "Each cell: ours, mean ± sd over seeds in %, at the sweep value with the best dev metric "
              "(paper's number in brackets; n/v: not verified)."]
    return "\n".join(lines)


def write_configs(table: dict, out: Path, folder: Path, smoke: bool) -> list[Path]:
    """One `fine_tune --config` YAML per run of the table."""
    if folder.exists() and not folder.is_dir():  # a FileExistsError traceback
        raise ConfigError(f"--write-configs {folder} is a file; give a folder to write the configs to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write the configs to {folder}: {err.strerror or err}") from None
    seeds = table.get("seeds") or [0]
    written = []
    for cell in cells(table):
        for point, options in run_configs(table, cell, seeds, out):
            options = smoke_options(options) if smoke else options
            fine_tune_config(options)
            path = folder / (_slug(Path(options["out"]).relative_to(out).as_posix()) + ".yaml")
            path.write_text(yaml.safe_dump(options, sort_keys=False))
            written.append(path)
    return written
