"""docs/evidence.md from the evidence suite's outputs (bench/evidence.py writes it; nothing here runs anything)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import artefacts, claims_plot, learnability
from bench.learnability import cut_length
from bench.claims import MORE_PREFIX_SEEDS, NOT_RUN, claim_rows, load_summary, share_pairs_to_decide
from bench.harness import METHOD_DEFAULTS
from bench.records import read_records
from zoo.artefact import WEIGHTS_NAME


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _runs(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("*/runs.jsonl")):
        rows += read_records(p)
    return rows


def copy_plot(src: Path, docs: Path, name: str) -> str | None:
    """Copy a plot into the docs folder; its name there (None if the run has not made it yet)."""
    if not src.exists():
        return None
    from l2o.filelock import copy_atomic  # a report killed midway leaves the old plot, not half a PNG

    docs.mkdir(parents=True, exist_ok=True)
    copy_atomic(src, docs / name)
    return name


def _plot(out: Path, docs: Path, src: str, name: str) -> str:
    got = copy_plot(out / src, docs, name)
    return f"\n![{name}]({got})\n" if got else ""


def _phase_ran(out: Path, phase: str) -> bool:
    """Whether a harness phase has any final run: a partial report before its first one (an lr search under way,
    or `--report` on a panel it has not reached) is a table of dashes and an empty plot, shown as not run."""
    return (load_summary(out, phase) or {}).get("final_runs", 0) > 0


def _section(title: str, command: str, table: str | None, plot: str, missing: str) -> list[str]:
    return [f"## {title}", "", f"`{command}`", "", table or f"*{missing}*", plot, ""]


def cost_line(out: Path) -> str:
    runs = _runs(out)
    cpu = sum(r.get("cpu_s", 0.0) for r in runs)
    untimed = sum(1 for r in runs if "cpu_s" not in r)
    commits = sorted({r.get("commit") for r in runs if r.get("commit")})
    return (f"{len(runs)} fine-tuning runs so far, {cpu / 3600:.2f} CPU-hours measured (one thread each; a run "
            "resumed after a kill counts its earlier attempts' CPU too"
            + (f"; {untimed} early scan runs recorded wall time only" if untimed else "") + ")"
            + (f"; the runs ran at commit(s) {', '.join(commits)}" if commits else "") + ".")


def render(out: Path, docs: Path, args, rows: list[tuple]) -> str:
    panel_path = out / "learnability" / "panel.json"
    panel = json.loads(panel_path.read_text()) if panel_path.exists() else None
    lines = ["# Evidence: where zeroth-order fine-tuning learns on a CPU, and the seed papers' claims there", "",
             "Written by `make evidence` (`python -m bench.evidence`); rerunning it continues the suite where it "
             f"stopped and rewrites this page, within a CPU budget of {args.cpu_hours:g} CPU-hours "
             "(`--cpu-hours`; a rerun with a larger one continues); `python -m bench.evidence --report` rewrites it "
             "from the runs so far and runs nothing. The runs' records are committed beside this page, in "
             "`data/evidence/` (`bench/snapshot.py`): on a fresh clone the suite resumes from them and `--report` "
             "rewrites this page from them alone. " + cost_line(out), "", *panel_status(panel, args),
             *where_ran(out, panel, args),
             "## The claims", "",
             "| claim (paper) | restated at our scale | measured (95% intervals) | verdict | what would separate |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | **{d}** | {e} |" for a, b, c, d, e in rows]
    if claims_plot.plot(out, out / "claims.png"):  # the "measured" column's Δ eval accuracy, drawn
        lines += [_plot(out, docs, "claims.png", "evidence_claims.png")]
    lines += ["", "Verdict rules: `bench/claims.py` (module doc). Intervals: paired differences, a t interval "
              "over seeds, stratified by task (Welch-Satterthwaite df; `bench/stats.py`); win-rates and shares, "
              "Wilson score intervals; ties count half.", "",
              "Terms. *Pair*: a method's run and MeZO's on the same task and seed; Δ = method − MeZO. *Effective "
              "step*: the lr multiplier of a step's expected update to first order, E[Δθ] = −lr·(effective step)·∇L "
              "(MeZO's is 1; docs/benchmarks.md §3); a *matched-step* row sets a method's lr so that lr x its "
              "effective step equals MeZO's dev-chosen lr, which takes the step size out of the comparison. *k*: "
              "the forward passes MeZO needs to reach a first-order run's final train loss, over that run's. "
              "*Stratified by task*: each task's pairs give a mean and a spread, and the tasks are weighted by their "
              "pairs (Welch-Satterthwaite df). *Label prior*: an accuracy gain from answering one label more often, "
              "seen when balanced accuracy does not move (section 1).", ""]
    panel_txt = ("Panel: " + ", ".join(f"{t} (Δ {panel['delta'][t][0]:+.3f} ± {panel['delta'][t][1]:.3f})"
                                       for t in panel["tasks"]) + "." if panel and panel["tasks"] else None)
    lines += _section("1. The learnability scan and the evidence panel",
                      "python -m bench.evidence --phases scan,widen",
                      _read(out / "learnability" / "table.md"),
                      _plot(out, docs, "learnability/learnability.png", "evidence_learnability.png"),
                      "the scan has not finished yet")
    if panel_txt:
        lines += [panel_txt, ""]
    lines += lora_records(out, args)
    for phase, title in (("prefix", "2. The ZO methods and the first-order baselines (prefix tuning)"),
                         ("full", "3. The ZO Fine-tuner policy (full-parameter)"), ("bf16", "4. bf16 (prefix)"),
                         ("metainit", "5. Bilevel-ZOFO meta-initialisation")):
        ran = _phase_ran(out, phase)
        lines += _section(title, f"python -m bench.evidence --phases {phase}",
                          _read(out / phase / "table.md") if ran else None,
                          _plot(out, docs, f"{phase}/loss_vs_forwards.png", f"evidence_{phase}.png") if ran else "",
                          "not run yet" if phase != "metainit" or artefacts.meta_init(args.meta_init, out) else
                          "no meta-initialisation yet (--meta-init, or the artefacts phase's)")
        lines += meta_init_gone(out, args) if phase == "metainit" else []
    lines += memory_section(docs) + own_section(out) + artefacts_section(out, args) + cuts_section(args, out)
    return "\n".join(lines) + "\n"


def meta_init_gone(out: Path, args) -> list[str]:
    """Under section 5, when the artefacts phase's meta-initialisation is not on this machine: why its rows stop."""
    init = artefacts.meta_init(args.meta_init, out)
    if args.meta_init or not init or (Path(init) / WEIGHTS_NAME).exists() or (
            load_summary(out, "metainit") or {}).get("complete"):
        return []
    try:
        family = sorted(sum(artefacts.split_family(out)[:2], []))
    except artefacts.ArtefactsError:
        family = []
    return [f"*The meta-initialisation these rows use (`{artefacts.shown(init, out)}`) is not on this machine: a "
            "base's weights are not kept with the records (bench/snapshot.py). The artefacts phase meta-trains it "
            "again from its records, on its task family" + (f" ({', '.join(family)})" if family else "")
            + ", which needs those tasks' data; until then its missing runs cannot be made.*", ""]


def where_ran(out: Path, panel: dict | None, args) -> list[str]:
    """A note above the claims when some panel tasks' data cannot be had where the suite ran (the harness phases'
    summaries say which): the runs per panel task, so a reader sees what the verdicts rest on."""
    if not panel or not panel.get("tasks"):
        return []
    runs, no_data = {t: 0 for t in panel["tasks"]}, {}
    for phase in ("prefix", "full", "bf16", "metainit"):
        for r in read_records(out / phase / "runs.jsonl"):
            if r.get("task") in runs:
                runs[r["task"]] += 1
        no_data.update((load_summary(out, phase) or {}).get("no_data", {}))
    lacking = [t for t in panel["tasks"] if t in no_data]
    if not lacking:
        return []
    beyond = [t for t in panel["tasks"][max(args.max_tasks, args.full_tasks):] if not runs[t]]
    have = [t for t in panel["tasks"] if t not in no_data and t not in beyond]
    return ["**Where this ran.** Fine-tuning runs of the harness phases per panel task: "
            + ", ".join(f"{t} {n}" for t, n in runs.items())
            + (f" ({', '.join(beyond)}: past the phases' --max-tasks {args.max_tasks} and --full-tasks "
               f"{args.full_tasks})" if beyond else "") + ". "
            f"The data of {', '.join(lacking)} cannot be had on the machine this page was written on (section 2 says "
            f"why), so their runs stay as recorded and the remaining runs are on {', '.join(have) or 'no task'}. "
            "Each claim below names the tasks its pairs are on.", ""]


def panel_status(panel: dict | None, args) -> list[str]:
    """A warning above the claims while the evidence panel is short (nothing when it is established)."""
    n = len(panel["tasks"]) if panel else 0
    if n >= args.panel_min:
        return []
    return [f"**The evidence panel is not established yet.** It needs {args.panel_min} tasks where MeZO moves eval "
            f"accuracy by ≥ 3 paired standard errors; the scan has found {n} so far. The harness phases run on the "
            f"panel, so every claim below that needs them reads *{NOT_RUN}*. Section 1 shows the scan so far, what "
            "it has still to run, the estimated CPU-hours and the command that continues it.", ""]


def memory_file(docs: Path) -> Path:
    """bench/fo_memory.py's output for section 6 and the MeZO claim's memory. It lives beside the doc, committed,
    not under the suite's --out (an ignored runs/ folder: a lost measurement cannot be re-rendered)."""
    return docs / "data" / "fo_memory_full_prefix.json"


def load_memory(docs: Path) -> dict | None:
    path = memory_file(docs)
    return json.loads(path.read_text()) if path.exists() else None


def memory_section(docs: Path) -> list[str]:
    mem = load_memory(docs)
    title = ["## 6. Peak memory: first-order vs MeZO on the same batch", ""]
    if mem is None:
        return title + ["`python bench/fo_memory.py`", "", "*not run yet*", ""]
    s = mem["settings"]
    lines = title + [f"`{mem.get('command', 'python bench/fo_memory.py')}`", "",
                     f"Measured at commit {mem.get('commit', 'unknown')} on {mem.get('date', 'an unrecorded date')}; "
                     f"the raw output is `{memory_file(Path('docs')).as_posix()}`. {s['base']}, {s['task']}, batch "
                     f"{s['batch_size']} x max length {s['max_length']}, {s['steps']} steps; each row its own process "
                     "(peak RSS, the kernel's high-water mark).", "",
                    "| process | PEFT | peak RSS (GiB) | vs MeZO, same PEFT |", "|---|---|---|---|"]
    for r in mem["rows"]:
        ratio = "—" if r.get("vs_mezo") is None else f"{r['vs_mezo']:.2f}x"
        lines.append(f"| {r['what']} | {r['peft'] or '—'} | {r['peak_rss_gb']:.3f} | {ratio} |")
    return lines + [""]


def run_cost(out: Path, budget: int) -> float | None:
    """Median CPU-minutes of a MeZO prefix run of `budget` forward passes (stage-2 scan runs count), or None."""
    import statistics

    got = [r["cpu_s"] / 60 for r in _runs(out) if r.get("cpu_s") and r["config"]["optimizer"] == "mezo"
           and r["config"]["peft"] == "prefix" and r["forward_passes"] == budget and r["config"]["dtype"] != "bf16"]
    return statistics.median(got) if got else None


def own_section(out: Path) -> list[str]:
    """How to put another method or a learned policy through the same protocol on the panel."""
    panel = out / "learnability" / "panel.json"
    return ["## 7. Your optimizer or policy on the panel", "",
            "Any registered method by name, any policy folder or zoo id, against MeZO, by the same protocol (lr on "
            "dev, equal forward budgets, seeds, the report above); runs already made with the same configuration "
            "are reused. `--method all` runs every registered ZO method (the zo-finetuner* ones only with `--policy`), "
            "each at its own dev-chosen lr; without `--method` the suite is mezo, mezo-gv, mezo-greedy, bszo, fo-sgd "
            "and fo-adamw:", "", "```bash",
            f"python -m bench.harness --panel {panel} --out runs/mine --method mezo --method zo-sgd-sign",
            f"python -m bench.harness --panel {panel} --out runs/all --method all --method fo-sgd",
            f"python -m bench.harness --panel {panel} --out runs/mine-full --peft full \\",
            "    --method mezo:mezo:lr=1e-5:eps=1e-3 --method es:zo-finetuner:policy=runs/es/policy:lr=1e-5:eps=1e-3",
            "```",
            "", "From Python: `bench.harness.compare([\"mezo\", \"es:zo-finetuner:policy=<folder>\"], "
            f"panel=\"{panel}\", out=\"runs/x\")` returns the summary (also `runs/x/summary.json`).", ""]


def artefacts_section(out: Path, args) -> list[str]:
    """The artefacts phase's rounds per kind (bench/artefacts.py) and the round the suite uses."""
    lines = ["## 8. Learned artefacts meta-trained for the panel", "", "`python -m bench.evidence --phases artefacts`",
             ""]
    try:
        train, held, panel = artefacts.split_family(out)
    except artefacts.ArtefactsError as why:
        return lines + [f"*not run yet: {why}*", ""]
    lines += [f"Task family: {', '.join(train)} (meta-training), {', '.join(held)} (meta-validation); the panel "
              f"({', '.join(panel['tasks']) or 'none yet'}) is in neither. Each round is {_steps(args)} more "
              "meta-steps from the round before; the rounds stop when one does not beat the one before by more than "
              "the tolerance, or after --max-rounds; the suite uses the best round's artefact.", ""]
    what = {"zo-finetuner": "ZO Fine-tuner policy; held-out gain: MeZO's eval loss minus the policy's after the "
                            "meta-validation's ZO steps (higher is better)",
            "bilevel-zofo": "Bilevel-ZOFO meta-initialisation; held-out gain: the eval loss after quick adaptation "
                            "from the base minus from it (higher is better)"}
    for kind in artefacts.KINDS:
        rows = artefacts.rounds(out, kind)
        stop, top = artefacts.decide(rows, artefacts.TOLERANCE[kind], args.max_rounds)
        lines += [f"**{what[kind]}** (tolerance {artefacts.TOLERANCE[kind]:g})", ""]
        if not rows:
            lines += ["*not run yet*", ""]
            continue
        lines += ["| round | meta-steps | held-out gain | improved | CPU-hours |", "|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['meta_steps']} | {r['metric']:+.4f} | {'yes' if r['improved'] else 'no'} | "
                  f"{r['cpu_s'] / 3600:.2f} |" for r in rows]
        used = artefacts.artefact(out, kind, top["round"])
        ships = "".join(f" It ships in the built-in zoo as `{eid}` (the same weights, byte for byte)."
                        for eid in artefacts.shipped_as(used))
        lines += ["", f"Used: round {top['round']} (`{used}`), the round with the highest held-out gain ('improved' "
                  "compares a round with the one before it, the first with nothing)" + ("." if stop else
                  "; the rounds have not stopped improving yet (a rerun continues them).") + ships, ""]
    return lines


def lora_records(out: Path, args) -> list[str]:
    """The scan's LoRA stage from its records, where the scan's table above lacks it: the table is rewritten only
    where every scanned task's data can be had (it profiles each), while the lora phase runs on the tasks that have
    theirs (`bench.learnability --skip-missing`)."""
    from bench.learnability_doc import lora_table

    path = out / "learnability" / "runs.jsonl"
    if not path.exists() or "LoRA dev per lr" in (_read(out / "learnability" / "table.md") or ""):
        return []
    done = {r["name"]: r for r in read_records(path)}
    scan = learnability.parse_args(learnability.SUITE_SMOKE if args.smoke else [])  # its stage-2 grids
    tasks = {r.get("config", {}).get("task") for n, r in done.items() if "-lora-" in n} - {None}
    rows = [{"task": t, "lora": row} for t in sorted(tasks) if (row := learnability.stage2_row(done, t, "lora", scan))]
    if not rows:
        return []
    unfinished = [r["task"] for r in rows if not r["lora"]["complete"]]
    edge = [r["task"] for r in rows if r["lora"]["complete"] and r["lora"]["next"] is not None]
    return ["LoRA in the scan's stage 2 (`python -m bench.evidence --phases lora`), from its records: the table above "
            "gains these rows when its report can be rewritten, which needs every scanned task's data"
            + (f"; lr grid still running on {', '.join(unfinished)}" if unfinished else "")
            + (f"; on {', '.join(edge)} the dev-chosen lr is the edge of those run, so one more run past it comes "
               "next (provisional until then)" if edge else "") + ".", *lora_table(rows), ""]


def lora_line(out: Path) -> list[str]:
    """The scan's LoRA stage, said where it has not run (the issue asks for it where prefix moved), not left out."""
    path = out / "learnability" / "runs.jsonl"
    if path.exists() and any("-lora-" in r.get("name", "") for r in read_records(path)):
        return []
    return ["- LoRA in the scan (stage 2 in LoRA on the tasks whose prefix run moved; `--phases lora`) has not run: "
            "it is the second process's last phase (`--workers 2`), after the artefacts, full-parameter and "
            "meta-initialisation phases, on the moved tasks whose data can be had (`python -m bench.evidence "
            "--status` names what is missing)."]


def _more_seeds_text() -> str:
    """The methods given more prefix seeds than the 4 (MORE_PREFIX_SEEDS), and why."""
    more = ", ".join(f"`{m}` (at its own lr) runs {n}" for m, n in MORE_PREFIX_SEEDS.items())
    return (f"{more}, and MeZO with it: one more look at that claim, its count fixed once from its interval at 4 "
            "seeds and the pairs that interval said would separate it, not raised again as results came in (a "
            "second look, not a stopping rule, so its claim is judged on intervals corrected for the two looks, "
            "97.5% each); ") if more else ""


def prefix_runs(methods: list[str], seeds: int, mezo_seeds: int, more: dict[str, int]) -> tuple[int, int]:
    """(lr-selection runs, seed runs) the prefix phase makes on one task: 3 lrs for a method with its own lr (a
    `match=` method takes its reference's lr after a short probe, counted as nothing); `seeds` seeds for each method
    but MeZO, `more` for those it names; MeZO `mezo_seeds`, or every seed any method runs if that is more
    (bench.evidence.prefix_seeds)."""
    n = {m.split(":")[0]: (0 if "match=" in m else 3, more.get(m, seeds)) for m in methods if m != "mezo"}
    mezo = max([mezo_seeds, *(s for _, s in n.values())]) if "mezo" in methods else 0
    return sum(lr for lr, _ in n.values()) + 3 * ("mezo" in methods), sum(s for _, s in n.values()) + mezo


def cuts_section(args, out: Path) -> list[str]:
    c = run_cost(out, args.budget)
    small = METHOD_DEFAULTS["bilevel-zofo"]
    if args.seeds == "auto":  # MeZO: 5 where a run costs under 10 CPU-minutes, else 3 (seeds 1.. on a panel task:
        mezo = 5 if c is not None and c < 10 else 3  # its seed 0 chose it); the others bench.evidence.prefix_seeds'
        lrs, seeded = prefix_runs(args.prefix_methods, share_pairs_to_decide(), mezo, MORE_PREFIX_SEEDS)
    else:
        lrs, seeded = prefix_runs(args.prefix_methods, *[len(args.seeds.split(","))] * 2, {})
    per_task = (lrs + seeded) * c / 60 if c is not None else 0
    full = ("" if c is None else f" A MeZO prefix run of {args.budget} forward passes costs {c:.0f} CPU-minutes "
            f"(median of those run), so a panel task costs about {per_task:.0f} CPU-hours in the prefix phase "
            f"({len(args.prefix_methods)} methods: {lrs} lr-selection runs and {seeded} seed runs, first-order ones "
            f"counted as ZO ones): about {args.max_tasks * per_task:.0f} on the {args.max_tasks} task(s) --max-tasks "
            f"takes, {4 * per_task:.0f} for the issue's 4, before the full-parameter, bf16, LoRA and "
            f"artefact cells. The issue's budget was 6-8 CPU-hours; `--cpu-hours` ({args.cpu_hours:g}) stops the "
            "suite there, every phase reports what exists, and a rerun with a larger budget continues.")
    return ["## What was cut, and why", "",
            "- Tasks: the scan's rules (section 1) leave out tasks whose candidates are several tokens (one forward "
            "per candidate), whose median prompt exceeds the max length (longer prompts cost proportionally more "
            "and are cut from the left), or whose validation pool is under 50 examples (the panel rule's standard "
            "error carries the eval size); multiple-choice tasks "
            f"(PIQA, SIQA, ...) are not classification tasks of this kind. CPU cut: median prompt ≤ "
            f"{args.cuts[0]} tokens, widened to {', then '.join(map(_cut, args.cuts[1:])) or 'nothing'} while the "
            f"panel has fewer than {args.panel_min} tasks (a task keeps the max length of the cut that first ran it).",
            *lora_line(out),
            f"- The prefix phase runs on the panel's first {args.max_tasks} task(s) (cheapest first, label-prior ones "
            f"last), the full-parameter phase on {args.full_tasks}, bf16 on 1 (at the fp32 phase's lrs, no search; it "
            "runs once the first task has MeZO's and BSZO's, before the other methods and tasks); "
            f"{args.budget} forward passes per ZO "
            "run; first-order baselines run a tenth of that in steps (each a forward and a backward); Bilevel-ZOFO's "
            "two Adam rates (lower and upper copy, tied) are dev-chosen like the others' lr around the paper's prefix "
            f"1e-2, at docs/bilevel.md's small-scale lam {small['lam']:g}, theta_lr {small['theta_lr']:g}, T_low "
            f"{small['t_low']} (its declared prefix defaults, bench/harness.py's `METHOD_DEFAULTS`; at the official "
            "LoRA sweep's lam 1e4 our ZO-SGD backbone step diverged). A phase "
            "runs one task "
            "at a time and on it one method at a time (MeZO, FO-AdamW, then by claim; FO-SGD, MeZO's second "
            "first-order reference, last), so a stopped suite holds whole comparisons; the meta-initialisation is "
            "scheduled before the full phase's rows of the artefacts phase's policy, so that every claim whose "
            "tasks' data can be had gets a verdict before any gains power."
            + full,
            f"- Seeds: `{args.seeds}` (auto: 5 where a MeZO run of the task costs under 10 CPU-minutes, else 3; in the "
            "full-parameter phase at least as many as the ZO Fine-tuner claim needs to hold at all: 4 pairs, since "
            "a Wilson interval of 3 wins in 3 is [0.44, 1]; for the same reason FO-AdamW and Bilevel-ZOFO, whose "
            "claims count a share of pairs, run 4 seeds on each prefix task, and MeZO with them, so every prefix "
            "method pairs with each of MeZO's 4; " + _more_seeds_text() + "a task whose data cannot be had where the "
            "suite runs keeps the seeds recorded before). "
            "Where MeZO's seed-0 run is the scan's (prefix), seeds 1.. instead: that run put the task on the panel "
            "by its eval accuracy, so it only chooses lrs, and is no comparison pair.",
            "- The ZO Fine-tuner rows use the shipped policy, made for full-parameter runs, and the policy the "
            "artefacts phase meta-trained for the panel's task family; neither has networks for prefix parameters, "
            "so that comparison runs full-parameter MeZO beside them.",
            f"- Learned artefacts (section 8): rounds of {_steps(args)} meta-steps, at most {args.max_rounds}; the "
            "policy with the one-step look-ahead at the shipped policy's recipe (lr_policy 0.01, lr_llm 1e-4, "
            "reset_every 40; meta-validation: 20 ZO steps, 100 eval examples per held-out task); "
            "the meta-initialisation at docs/bilevel.md's small-scale settings (lam "
            f"{artefacts.BILEVEL_SMALL['lam']:g}, theta_lr {artefacts.BILEVEL_SMALL['theta_lr']:g}, 2 tasks per "
            "upper step, batch 4), not the paper's 13B ones. One meta-training seed each.", ""]


def write_doc(out: Path, docs: Path, args) -> Path:
    """Write docs/evidence.md (the claims table from bench/claims.py) from the suite's outputs in `out`."""
    from l2o.filelock import write_bytes_atomic

    docs.mkdir(parents=True, exist_ok=True)
    path = docs / "evidence.md"
    write_bytes_atomic(path, render(out, docs, args, claim_rows(out, load_memory(docs))).encode())
    print(f"evidence: wrote {path}", flush=True)
    return path


def _steps(args) -> str:
    """The artefacts' meta-steps per round, e.g. "40 (policy) / 400 (meta-initialisation)"."""
    names = {"zo-finetuner": "policy", "bilevel-zofo": "meta-initialisation"}
    return " / ".join(f"{n} ({names[k]})" for k, n in args.meta_steps.items())


def _cut(cut: int) -> str:
    return f"{cut} (max length {cut_length(cut)})"
