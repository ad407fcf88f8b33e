"""`python -m bench.evidence --status`: where a long evidence suite stands, read from its folder alone.

It runs nothing and takes no lock, so it is safe beside a running suite (and reads the kept records,
`<docs>/data/evidence/`, where `--out` does not exist yet: a fresh clone's standing). Per phase folder:

- the runs (or meta-training rounds) recorded and their CPU-hours;
- its open runs: a folder with a checkpoint or a CPU meter (bench/resume.py) and no record. *Running* while a live
  process holds it (the pid its run lock records), else *interrupted*: the next `make evidence` resumes it from its
  checkpoint. With the CPU it has spent so far, by the meter;
- for a harness phase that has no runs, why it cannot start yet (bench.evidence's `skip_reason`), if it cannot.

Then the suite's CPU-hours against its budget.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.budget import spent_hours
from bench.records import read_records
from bench.resume import METER_FILE
from l2o.filelock import live_holder

FOLDERS = ("learnability", "prefix", "full", "bf16", "metainit")  # the phases' records folders (scan: learnability)
HARNESS = ("prefix", "full", "bf16", "metainit")


def _recorded(records: list[dict]) -> set[str]:
    """The run folder names that `records` hold (the scan's by name, the harness's by --out, a round by number)."""
    names = set()
    for r in records:
        names.add(r.get("name"))
        names.add(Path((r.get("config") or {}).get("out") or "").name)
        if "round" in r:
            names.add(f"round-{r['round']}")
    return names - {None, ""}


def open_runs(folder: Path, records: list[dict]) -> list[str]:
    """One line per unrecorded run folder under `folder` that a run has started in."""
    done, lines = _recorded(records), []
    for run in sorted(p for p in folder.glob("*") if p.is_dir() and p.name != "claims" and p.name not in done):
        ckpt, meter = run / "checkpoints" / "last.ckpt", run / METER_FILE
        pid = live_holder(run)
        if not (ckpt.exists() or meter.exists() or (pid and (run / "config.yaml").exists())):
            continue
        try:
            spent = f", {float(meter.read_text()) / 60:.0f} CPU-min so far"
        except (OSError, ValueError):
            spent = ""
        saved = (f", checkpoint of {time.strftime('%H:%M UTC', time.gmtime(ckpt.stat().st_mtime))}"
                 if ckpt.exists() else ", no checkpoint yet")
        state = f"running (pid {pid})" if pid else "interrupted (the next run resumes it)"
        lines.append(f"{run.name}: {state}{spent}{saved}")
    return lines


def _hours(records: list[dict]) -> float:
    return sum(r.get("cpu_s", 0.0) for r in records) / 3600


def suite_root(args) -> Path:
    """The suite's --out, or the kept records where --out does not exist yet."""
    root = Path(args.out)
    return root if root.is_dir() else Path(args.docs) / "data" / "evidence"


def panel_data(tasks: list[str]) -> dict[str, bool]:
    """Whether each task's data is on this machine now (read, never fetched: --status starts nothing)."""
    from l2o.tasks import get_task
    from l2o.tasks.errors import TaskError

    here = {}
    for task in tasks:
        try:
            get_task(task).rows("validation")
            here[task] = True
        except TaskError:
            here[task] = False
    return here


def status(args, root: Path, *, budget: float, panel: list[str], reasons: dict[str, str | None],
           data: dict[str, bool] | None = None) -> str:
    """The standing of the suite in `root` (`suite_root`); bench.evidence gives its budget, the panel's tasks,
    why each harness phase cannot start yet (`reasons`, None: it can) and which panel tasks' data is here
    (`data`, `panel_data`)."""
    from bench.evidence_doc import memory_file

    if not root.is_dir():
        return f"evidence suite {args.out}: nothing run yet (and no kept records in {root})"
    rows, said = [], None
    for name in FOLDERS:
        folder = root / name
        records = read_records(folder / "runs.jsonl") if (folder / "runs.jsonl").exists() else []
        head = f"  {name:12s} {len(records):3d} runs    {_hours(records):6.2f} CPU-h"
        if name == "learnability":
            head += f"   panel: {', '.join(panel) if panel else 'none yet'}"
            missing = [t for t, ok in (data or {}).items() if not ok]
            if missing:  # the harness skips their missing runs (bench.harness Runner.need_data)
                head += (f"\n      data not on this machine: {', '.join(missing)} (their missing runs are skipped; "
                         "`python -m zoo.acquire --tasks NAME` fetches one where a source can be had)")
        elif name in HARNESS and not records:
            why = reasons.get(name)
            head += f"   {'can start' if not why else 'cannot start yet: ' + (why if why != said else 'as above')}"
            said = why
        elif (folder / "summary.json").exists():
            head += "   reported"
        rows.append(head)
        rows += [f"      {line}" for line in open_runs(folder, records)]
    for folder in sorted((root / "artefacts").glob("*")):
        path = folder / "rounds.jsonl"
        records = read_records(path) if path.exists() else []
        rows.append(f"  {'artefacts':12s} {len(records):3d} rounds  {_hours(records):6.2f} CPU-h   {folder.name}")
        rows += [f"      {line}" for line in open_runs(folder, records)]
    memory = memory_file(Path(args.docs))
    rows.append(f"  {'memory':12s} {'measured: ' + str(memory) if memory.exists() else 'not measured yet'}")
    where = "" if root == Path(args.out) else f" (no {args.out} yet: the kept records)"
    total = spent_hours(root)  # what the budget counts
    return "\n".join([f"evidence suite {root}{where}: {total:.2f} of {budget:g} CPU-hours spent "
                      f"({100 * total / budget:.0f}%)", *rows])
