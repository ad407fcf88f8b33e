"""`make evidence`: the whole evidence suite, resumable, and the claims table `docs/evidence.md` written from it.

    python -m bench.evidence                          # everything (CPU-hours; rerun to continue where it stopped)
    python -m bench.evidence --phases scan,memory     # some phases only; --report rewrites the doc from what ran
    python -m bench.evidence --smoke --base <tiny>    # the whole path in a few CPU-minutes (the fast tests)

Phases (each keeps its runs under `--out`, so a rerun skips what is done):
- scan: `bench.learnability`, stages 1 and 2 -> the evidence panel (`<out>/learnability/panel.json`);
- memory: `bench/fo_memory.py`: peak RSS of FO-SGD, FO-AdamW, MeZO and inference on one batch;
- prefix: `bench.harness` on the panel, prefix tuning: MeZO, MeZO-GV, MeZO-Greedy, BSZO (each at its dev-chosen lr),
  GV and Greedy again at MeZO's effective step, Bilevel-ZOFO (its first-order lower lr tuned around the paper's
  prefix value 1e-2; the rest at its defaults), FO-SGD and FO-AdamW;
- full: full-parameter MeZO and the ZO Fine-tuner policy (`--policy`, made for full-parameter runs) on the panel,
  at the policy's dev-chosen lr and at MeZO's effective step;
- bf16: MeZO and BSZO in bf16, prefix, on the cheapest panel task;
- metainit: MeZO from the base and from a Bilevel-ZOFO meta-initialisation (`--meta-init`) on the panel.

Then `claims` turns the harness summaries into a verdict per seed-paper claim (bench/claims.py) and `--docs`
(default docs/) gets evidence.md and its plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("scan", "memory", "prefix", "full", "bf16", "metainit")
PREFIX_METHODS = ["mezo", "fo-sgd", "fo-adamw", "mezo-gv", "gv-matched:mezo-gv:match=mezo", "mezo-greedy",
                  "greedy-matched:mezo-greedy:match=mezo", "bszo", "bilevel-zofo:bilevel-zofo:lr=1e-2"]
FULL_METHODS = ["mezo:mezo:lr=1e-5", "zo-finetuner:zo-finetuner:lr=1e-5",
                "zo-finetuner-matched:zo-finetuner:match=mezo"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--report", action="store_true", help="only rewrite the doc from the runs that exist")
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--docs", default="docs")
    ap.add_argument("--policy", default="smollm2-135m/zo-finetuner@1")
    ap.add_argument("--meta-init", default=None, help="zoo id or folder of a Bilevel-ZOFO meta-initialisation")
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--seeds", default="auto")
    ap.add_argument("--max-tasks", type=int, default=4, help="panel tasks the harness phases run (cheapest first)")
    ap.add_argument("--max-median", type=int, default=48, help="the scan's CPU cut: tasks whose median prompt is "
                    "longer are not scanned (bench.learnability --max-median)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    args.phase_list = [p for p in args.phases.split(",") if p]
    unknown = set(args.phase_list) - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    return args


def scan_argv(args) -> list[str]:
    out = ["--base", args.base, "--out", str(Path(args.out) / "learnability"), "--max-median", str(args.max_median)]
    return out + (["--smoke", "--tasks", "strategyqa", "--moved-se", "-100", "--panel-se", "-100", "--lr-grid", "1,3",
                   "--extend", "0"] if args.smoke else [])


def harness_argv(args, phase: str) -> list[str] | None:
    """The harness flags of a phase (None: the phase cannot run, e.g. no panel or no meta-initialisation)."""
    panel = Path(args.out) / "learnability" / "panel.json"
    if not panel.exists() or not json.loads(panel.read_text())["tasks"]:
        return None
    tasks = json.loads(panel.read_text())["tasks"][: args.max_tasks]
    argv = ["--panel", str(panel), "--out", str(Path(args.out) / phase), "--budget", str(args.budget),
            "--seeds", args.seeds, "--order", "tasks", "--policy", args.policy]
    methods = {"prefix": PREFIX_METHODS, "full": FULL_METHODS,
               "bf16": ["mezo:mezo:dtype=bf16", "bszo:bszo:dtype=bf16"],
               "metainit": ["mezo", f"mezo-init:mezo:init={args.meta_init}"]}[phase]
    if phase == "metainit" and not args.meta_init:
        return None
    if phase == "full":
        argv += ["--peft", "full"]
    tasks = tasks[:1] if phase == "bf16" else tasks
    if args.smoke:
        methods = {"prefix": ["mezo", "gv-matched:mezo-gv:match=mezo", "fo-adamw"], "full": ["mezo:mezo:lr=1e-3"],
                   "bf16": ["mezo:mezo:dtype=bf16", "bszo:bszo:dtype=bf16"], "metainit": methods}[phase]
        argv += ["--smoke", "--base", args.base, "--lr-grid", "1,3", "--extend", "0", "--seeds", "0,1"]
    argv += ["--tasks", ",".join(tasks)]
    for m in methods:
        argv += ["--method", m]
    return argv


def run_phase(args, phase: str) -> None:
    if phase == "scan":
        from bench import learnability

        learnability.main(scan_argv(args))
    elif phase == "memory":
        from bench import fo_memory

        extra = (["--batch-size", "2", "--max-length", "32", "--steps", "1", "--task", "strategyqa", "--peft", "full",
                  "--methods", "mezo,fo-adamw"] if args.smoke else [])
        fo_memory.main(["--base", args.base, "--out", str(Path(args.out) / "memory"), *extra])
    else:
        argv = harness_argv(args, phase)
        if argv is None:
            print(f"evidence: phase {phase} skipped (no panel yet, or no --meta-init)", flush=True)
            return
        from bench import harness

        harness.run_suite(harness.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.report:
        for phase in args.phase_list:
            print(f"evidence: phase {phase}", flush=True)
            run_phase(args, phase)
    from bench.claims import write_doc

    write_doc(Path(args.out), Path(args.docs), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
