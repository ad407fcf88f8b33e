"""The learnability scan's report, rendered (bench/learnability.py runs the scan, applies its rules, writes these):
the table of `<out>/table.md` (`render_table`, `class_table`) and its status lines (`status`: whether the panel is
established, what remains, the command that continues), the plot `<out>/learnability.png` (`plot`) and the plan
`--plan` prints (`print_plan`). The panel rule's verdicts come in as arguments: nothing here applies a rule."""

from __future__ import annotations

from pathlib import Path

from bench.stats import z_score
from l2o.filelock import write_png_atomic


def _d(delta) -> str:
    return f"{delta[0]:+.3f} ± {delta[1]:.3f} ({z_score(delta):+.1f} se)"


def _per_lr(runs: list[dict]) -> str:
    return ", ".join(f"{x['lr']:.3g}: {x['final']['dev']:.3f}" for x in runs)


def lora_table(rows: list[dict]) -> list[str]:
    """The LoRA table: stage 2 in LoRA, one row per task that has its runs (`row["lora"]`, learnability's
    `stage2_row`)."""
    lora = [r for r in rows if "lora" in r]
    if not lora:
        return []
    return ["", "| task | LoRA dev per lr | chosen lr | eval | Δ |", "|---|---|---|---|---|",
            *(f"| {r['task']} | {_per_lr(r['lora']['runs'])} | {r['lora']['lr']:.3g} | {r['lora']['eval']:.3f} | "
              f"{_d(r['lora']['delta'])} |" for r in lora)]


def render_table(rows: list[dict], excluded: list[dict], chosen: list[dict], pending: list[str], prior: list[str],
                 args, t_forward: float) -> str:
    """table.md's table: the settings, one row per scanned task, the LoRA and per-class tables, the tasks not
    scanned, and the panel: `chosen`, the `pending` tasks (passing with their lr grid unfinished) and the `prior`
    ones (learned as a label prior)."""
    a = args
    cut = f" and median prompt ≤ {a.max_median} tokens (CPU cut)" if a.max_median is not None else ""
    head = (f"base {a.base}, MeZO, batch {a.batch_size}, max length {a.max_length}{cut}, {a.num_train} train examples, "
            f"eval on min({a.num_eval}, validation pool) examples (data seed {a.data_seed}, seed {a.seed}). Stage 1: "
            f"prefix, lr {a.lr:g}, eps {a.eps:g}, {a.forwards1} forward passes. Stage 2 (tasks with stage-1 Δ ≥ "
            f"{a.moved_se:g} se): prefix, {a.forwards2} forward passes per lr of {a.lr_grid} x {a.lr:g}"
            + (f" (up to {a.extend} more lr(s) past the grid's edge where the best dev score is at that edge)"
               if a.extend else "")
            + f", lr chosen on {a.num_dev} dev examples. Δ = accuracy after − zero-shot on the same eval examples, "
            f"± its paired standard error. Forward: {t_forward:.2f} CPU-s for {a.batch_size} x {a.max_length} tokens "
            f"(one thread). Panel rule: stage-2 Δ ≥ {a.panel_se:g} se.")
    if any(r["max_length"] != a.max_length for r in rows):
        head += (" A task marked with another max length was run in an earlier scan of this --out at that length and "
                 "is kept: a task is run once, at the max length of the scan that first reached it.")
    lines = [head, "", "| task | classes | eval n | median tokens | majority | zero-shot | stage 1 | Δ stage 1 | "
             "stage 2: dev per lr | chosen lr | stage 2 eval | Δ stage 2 | panel |", "|" + "---|" * 13]
    on, pending = {r["task"] for r in chosen}, set(pending)
    for r in rows:
        p, s2 = r["profile"], r.get("prefix")
        per_lr = _per_lr(s2["runs"]) if s2 else "—"
        at = f" (max length {r['max_length']})" if r["max_length"] != a.max_length else ""
        lines.append(f"| {r['task']}{at} | {p['classes']} | {r['n']} | {p['len_p50']} | {r['majority']:.3f} | "
                     f"{r['zero_shot']:.3f} | {r['s1_eval']:.3f} | {_d(r['s1_delta'])} | {per_lr} | "
                     f"{s2['lr']:.3g} | {s2['eval']:.3f} | {_d(s2['delta'])} | "
                     f"{'yes' if r['task'] in on else 'pending (grid unfinished)' if r['task'] in pending else 'no'} |"
                     if s2 else
                     f"| {r['task']} | {p['classes']} | {r['n']} | {p['len_p50']} | {r['majority']:.3f} | "
                     f"{r['zero_shot']:.3f} | {r['s1_eval']:.3f} | {_d(r['s1_delta'])} | — | — | — | — | no |")
    lines += lora_table(rows)
    lines += class_table(rows)
    if excluded:
        lines += ["", "Not scanned: " + "; ".join(f"{p['task']} ({p['excluded']})" for p in excluded) + "."]
    lines += ["", f"Panel ({len(chosen)} task(s)): {', '.join(r['task'] for r in chosen) or 'none'}."
              + (f" Passing the rule at the best lr run so far, their lr grid unfinished (not counted yet): "
                 f"{', '.join(sorted(pending))}." if pending else "")]
    if prior:
        lines += ["", f"{', '.join(sorted(prior))} passed the rule on accuracy, but balanced accuracy did not move "
                  f"by {a.panel_se:g} se (Δ balanced at the chosen lr: "
                  + "; ".join(f"{r['task']} {_d(r['prefix']['balanced'])}" for r in rows if r["task"] in prior)
                  + "): the accuracy gain is a label prior, answering one label more often (per-class table). The "
                  "panel rule is on accuracy, so they count; a comparison on them measures how fast each method "
                  "learns that prior."]
    return "\n".join(lines) + "\n"


def class_table(rows: list[dict]) -> list[str]:
    """Per-class accuracies and balanced accuracy (their mean; 1/classes for a prompt that always answers one
    label) per run of each task: whether a Δ is the task or a label prior."""
    rows = [r for r in rows if "per_class" in r]
    if not rows:
        return []
    lines = ["", "Per class (accuracy on each gold label's eval examples, in label order; balanced = their mean, "
             "1/classes for a prompt that always answers one label):", "",
             "| task | run | per class | balanced |", "|---|---|---|---|"]
    for r in rows:
        for run, acc in r["per_class"].items():
            lines.append(f"| {r['task']} | {run} | {' / '.join(f'{a:.3f}' for a in acc.values())} | "
                         f"{sum(acc.values()) / len(acc):.3f} |")
    return lines


def plot(rows: list[dict], chosen: list[dict], path: Path, args) -> None:
    """Per task: zero-shot, majority rate, after stage 1 and after stage 2 (dev-chosen lr), with 2 paired se."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.5))
    on = {r["task"] for r in chosen}
    for i, r in enumerate(rows):
        ax.plot([i - 0.3, i + 0.3], [r["majority"]] * 2, color="0.5", lw=2, label="majority rate" if i == 0 else None)
        ax.plot(i - 0.15, r["zero_shot"], "ko", label="zero-shot" if i == 0 else None)
        ax.errorbar(i, r["s1_eval"], yerr=2 * r["s1_delta"][1], fmt="s", color="C0", capsize=3,
                    label=f"stage 1 (lr {args.lr:g}, {args.forwards1} fw)" if i == 0 else None)
        if "prefix" in r:
            ax.errorbar(i + 0.15, r["prefix"]["eval"], yerr=2 * r["prefix"]["delta"][1], fmt="D", color="C3",
                        capsize=3, label=f"stage 2 (dev-chosen lr, {args.forwards2} fw)")
    ax.set_xticks(range(len(rows)), [r["task"] + (" *" if r["task"] in on else "") for r in rows], rotation=35,
                  ha="right", fontsize=8)
    ax.set_ylabel("eval accuracy (bars: ± 2 paired se of Δ)")
    ax.set_title(f"MeZO prefix learnability scan ({args.base}, batch {args.batch_size}); * = panel", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.tight_layout()
    write_png_atomic(path, fig)


def status(rem: dict, chosen: list[dict], cal: dict, args, resume: str) -> list[str]:
    """Whether the panel is established and, if the scan is not finished, what remains, its cost and the command
    that continues it (`resume`)."""
    def cost(items):
        return sum(s for _, _, s in items) * cal["ratio"] / 3600

    n, need = len(chosen), args.panel_min
    lines = [f"**The panel is established** (it needs {need} tasks)." if n >= need else
             f"**The panel is not established yet**: it needs {need} tasks at ≥ {args.panel_se:g} se."]
    todo = ([f"stage 1 on {', '.join(t for t, _, _ in rem['stage1'])}"] if rem["stage1"] else []) + [
        f"stage 2{mode} on {', '.join(f'{t} ({k} run(s) of {args.forwards2} forward passes)' for t, k, _ in rem[key])}"
        for key, mode in (("stage2", ""), ("lora", " in LoRA")) if rem.get(key)]
    if todo:
        runs = rem["stage1"] + rem["stage2"] + rem.get("lora", [])
        lines.append(f"Still to run at this cut: {'; '.join(todo)}: about {cost(runs):.1f} "
                     "CPU-hours, plus a run past the grid's edge for a task whose best lr sits there and stage 2 on "
                     f"any task stage 1 still moves. Continue with `{resume}` (recorded runs are "
                     "skipped).")
    elif n < need:
        lines.append("Nothing is left to run at this cut.")
    on = {r.get("task") for r in chosen}
    reachable = n + len(rem["stage1"]) + len([t for t, _, _ in rem["stage2"] if t not in on])
    if todo and reachable < need:
        lines.append(f"Even if every task still to run here reaches the rule, the panel would have {reachable} < "
                     f"{need} tasks at this cut: it needs tasks with longer prompts (a larger --max-median, or "
                     "--max-length for the tasks over the max length).")
    if n < need and rem["widen"]:
        lines.append(f"Widening: the CPU cut (median prompt ≤ {args.max_median} tokens) leaves out "
                     f"{', '.join(t for t, _, _ in rem['widen'])}; stage 1 on them would cost about "
                     f"{cost(rem['widen']):.1f} CPU-hours (`--max-median {args.max_length}`), then stage 2 on those "
                     "that move (`make evidence` widens while the panel is short).")
    if todo or n < need:
        model = "CPU-hours are the cost model's (one thread, scaled from the measured forward)"
        wall = f"; their wall time on this shared machine was {cal['wall']:.1f}x their CPU time" if cal["wall"] else ""
        lines.append(f"{model} x {cal['ratio']:.2f}, the measured / estimated CPU time of the {cal['n']} run(s) timed "
                     f"so far{wall}." if cal["n"]
                     else f"{model}; no run has been timed in CPU seconds yet to check it.")
    return lines


def print_plan(scanned: list[dict], excluded: list[dict], args) -> None:
    for p in scanned + excluded:
        print(f"{p['task']:32s} classes {p['classes']} train pool {p['train_pool']:6d} validation pool "
              f"{p['valid_pool']:6d} tokens p50 {p['len_p50']:4d} p90 {p['len_p90']:4d}  "
              + (f"stage 1 ~{p['stage1_cpu_s'] / 60:.0f} CPU-min" if not p["excluded"] else f"cut: {p['excluded']}"))
    print(f"stage 1: {sum(p['stage1_cpu_s'] for p in scanned) / 3600:.2f} CPU-hours")
