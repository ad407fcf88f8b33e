"""The harness's numbers and report: per method against MeZO over (task, seed) pairs (bench/harness.py runs them).

`summarize` turns the final runs into a JSON-able summary: per method, the win-rates (Wilson 95%), paired
differences (stratified t, 95%), forwards to reach MeZO's final loss, and per task the cells of the
table; for first-order methods k, the forward passes MeZO needs to reach their final loss over theirs.
`write_report` writes `table.md`, `summary.json` and `loss_vs_forwards.png`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.stats import ci_text as _ci, forwards_to_reach, paired_interval, pairs_to_separate, win_rate

REFERENCE = "mezo"


def _curve(rec: dict) -> list[tuple[int, float]]:
    hist = json.loads(Path(rec["paths"]["history"]).read_text())
    return [(h["forwards"], h["loss"]) for h in hist if h["loss"] == h["loss"]]


def _window(rec: dict) -> int:
    """The final-train-loss window of a run: its last 10% of steps (fine_tune.run's definition)."""
    return max(1, rec["steps"] // 10)


def reach(method_rec: dict, ref_rec: dict) -> dict:
    """Forward passes `method_rec` needs to reach `ref_rec`'s final train loss, and that over the reference's."""
    f = forwards_to_reach(_curve(method_rec), ref_rec["final_train_loss"], _window(method_rec))
    total = ref_rec["forward_passes"]
    return {"forwards": f, "ratio": None if f is None else f / total}


def k_factor(fo_rec: dict, ref_rec: dict) -> dict:
    """k: forward passes the reference (MeZO) needs to reach the first-order run's final loss, over the FO run's
    forward passes; a lower bound (reference budget / FO forwards) when MeZO never reaches it."""
    f = forwards_to_reach(_curve(ref_rec), fo_rec["final_train_loss"], _window(ref_rec))
    fo = max(1, fo_rec["forward_passes"])
    return {"forwards": f, "k": None if f is None else f / fo, "k_at_least": ref_rec["forward_passes"] / fo}


def seeds_of(method, seeds: list[int], methods: list) -> list[int]:
    """The seeds `method` runs on a task whose seeds (--seeds, or auto) are `seeds`: those, or the first N of them
    continued (the next integers) where its spec says `seeds=N` (more pairs for a claim, at the cost of that
    method's runs only); the reference runs every seed any method runs, so that each one is a pair. None before
    the task has seeds (the reference's lr is chosen first). `method`, `methods`: bench.harness's `Method`s."""
    if not seeds:
        return []
    wanted = max([len(seeds), *(m.options.get("seeds", 0) for m in
                                (methods if method.label == REFERENCE else [method]))])
    more = range(max(seeds) + 1, max(seeds) + 1 + wanted - len(seeds))
    return [*seeds, *more] if wanted > len(seeds) else list(seeds)


def _ms(values) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "n": len(values)} if values else {}


def method_summary(label: str, tasks: list[str], seeds: dict, final: dict, first_order: bool,
                   reference: str = REFERENCE, no_data=()) -> dict:
    """One method's rows against the reference; `no_data`: the tasks whose data cannot be had here (no seed can join
    them, so "what would separate" grows only the others)."""
    acc_pairs, loss_pairs, acc_d, loss_d, reaches, ks, per_task = [], [], {}, {}, [], [], {}
    for t in tasks:
        cells = [(final[(t, label, s)], final[(t, reference, s)]) for s in seeds[t]
                 if (t, label, s) in final and (t, reference, s) in final]
        acc_pairs += [(m["final"]["eval"], r["final"]["eval"]) for m, r in cells]
        loss_pairs += [(m["final_train_loss"], r["final_train_loss"]) for m, r in cells]
        acc_d[t] = [m["final"]["eval"] - r["final"]["eval"] for m, r in cells]
        loss_d[t] = [m["final_train_loss"] - r["final_train_loss"] for m, r in cells]
        rs = [reach(m, r) for m, r in cells] if not first_order else []
        kk = [k_factor(m, r) for m, r in cells] if first_order else []
        reaches += rs
        ks += kk
        mine = [final[(t, label, s)] for s in seeds[t] if (t, label, s) in final]
        eff = [r["effective_step"] for r in mine if r.get("effective_step") is not None]
        per_task[t] = {"lr": mine[0]["lr"] if mine else None, "steps": mine[0]["steps"] if mine else None,
                       "eval": _ms([r["final"]["eval"] for r in mine]),
                       "loss": _ms([r["final_train_loss"] for r in mine]),
                       "effective_step": statistics.mean(eff) if eff else None,
                       "d_eval": paired_interval({t: acc_d[t]}) if label != reference else None,
                       "d_loss": paired_interval({t: loss_d[t]}) if label != reference else None,
                       "reach": rs, "k": kk}
    out = {"label": label, "first_order": first_order, "per_task": per_task}
    if label != reference:
        d_eval, d_loss = paired_interval(acc_d), paired_interval(loss_d)
        for d, diffs in ((d_eval, acc_d), (d_loss, loss_d)):
            d["pairs_to_separate"] = pairs_to_separate(diffs, fixed=no_data)
            d["fixed"] = [t for t in tasks if t in no_data and diffs[t]]  # tasks whose pairs cannot grow here
            d["tasks"] = {t: len(diffs[t]) for t in tasks if diffs[t]}  # the pairs per task (the claims name them)
        out.update(win_eval=win_rate(acc_pairs, True), win_loss=win_rate(loss_pairs, False), d_eval=d_eval,
                   d_loss=d_loss, reach=_reach_summary(reaches), k=_k_summary(ks))
    return out


def _reach_summary(reaches: list[dict]) -> dict:
    got = sorted(r["ratio"] for r in reaches if r["ratio"] is not None)
    return {"n": len(reaches), "reached": len(got), "median_ratio": statistics.median(got) if got else None,
            "at_half": sum(1 for x in got if x <= 0.5)}


def _k_summary(ks: list[dict]) -> dict:
    got = sorted(k["k"] for k in ks if k["k"] is not None)
    return {"n": len(ks), "reached": len(got), "median_k": statistics.median(got) if got else None,
            "k_at_least": min((k["k_at_least"] for k in ks if k["k"] is None), default=None),
            "cap": max((k["k_at_least"] for k in ks), default=None)}  # the budget, in FO forwards, MeZO ran within


def summarize(args, final: dict, chosen: dict, seeds: dict, zero: dict, no_data: dict | None = None) -> dict:
    """The report's summary; `no_data`: task -> why its data cannot be had here (the harness's Runner)."""
    own = {m.label: {t: seeds_of(m, seeds.get(t, []), args.methods) for t in args.task_list} for m in args.methods}
    fixed = set(no_data or {})
    methods = {m.label: method_summary(m.label, args.task_list, own[m.label], final, m.first_order, no_data=fixed)
               for m in args.methods}
    for m in args.methods:
        for t in args.task_list:
            lr, runs = chosen.get((t, m.label), (None, []))
            methods[m.label]["per_task"][t]["dev_per_lr"] = {} if m.options.get("match") else {  # a probe: no dev
                f"{r['lr']:.3g}": r["final"].get("dev") for r in sorted(runs, key=lambda r: r["lr"])}  # an edge
            # extension runs last: in lr order the dev column reads as the curve it is
        methods[m.label]["spec"] = {"optimizer": m.optimizer, **m.options}
    settings = {k: getattr(args, k) for k in ("base", "peft", "budget", "select_budget", "batch_size", "num_train",
                                              "num_dev", "num_eval", "max_length", "data_seed", "lr_grid", "extend")}
    settings["data_per_seed"] = bool(getattr(args, "data_per_seed", False))
    settings["max_lengths"] = {t: L for t, L in getattr(args, "max_lengths", {}).items()
                               if t in args.task_list and L != args.max_length}
    planned = sum(len(ss) for m in own.values() for ss in m.values())
    complete = len(final) == planned and all((t, m.label) in chosen for t in args.task_list for m in args.methods)
    versus = {f"{a}:{b}": method_summary(a, args.task_list, own[a], final, False, reference=b, no_data=fixed)
              for a, b in getattr(args, "versus", [])}  # A against B, paired as against MeZO
    every = {t: sorted({s for m in own.values() for s in m[t]}) for t in args.task_list}  # with any method's own
    return {"settings": settings, "tasks": args.task_list, "seeds": every, "methods": methods, "versus": versus,
            "final_runs": len(final), "complete": complete, "same_runs": same_runs(final, [m.label for m in
                                                                                      args.methods]),
            "zero_shot": dict(zero)}


def same_runs(final: dict, labels: list[str]) -> dict[str, str]:
    """label -> an earlier label whose final runs are the very runs it has (the harness keys runs by configuration:
    a matched-step method whose matched lr is its dev-chosen one makes no run of its own), so its rows repeat
    that method's."""
    same = {}
    for i, b in enumerate(labels):
        mine = [(t, s) for t, label, s in final if label == b]
        for a in labels[:i]:
            if mine and all(final.get((t, a, s)) == final[(t, b, s)] for t, s in mine):  # one record: one run
                same[b] = a
                break
    return same


def seed_text(s: dict) -> str:
    """What a seed varies, from the summary's settings."""
    if s.get("data_per_seed"):
        return (f"A seed draws its own train, dev and eval sample (data seed {s['data_seed']} + seed, MeZO's protocol; "
                "a method and MeZO on one seed share it) and the optimizer's randomness (ZO directions, an adapter's "
                "initialisation), so the intervals cover another training sample too; zero-shot: the mean over the "
                "seeds' eval samples.")
    return ("A seed is the optimizer's randomness (ZO directions, an adapter's initialisation): every run trains on "
            f"the same data sample in the same batch order (data seed {s['data_seed']}), so the intervals cover the "
            "optimizers' randomness, not another training sample.")


def _mean_sd(d: dict) -> str:
    """Mean ± sd over seeds ('(1 seed)' for one: its sd is not 0, it is unknown)."""
    if not d:
        return "—"
    return f"{d['mean']:.3f} (1 seed)" if d["n"] == 1 else f"{d['mean']:.3f} ± {d['sd']:.3f}"


def _win(w: dict) -> str:
    """A win-rate with its Wilson interval; "—" before any pair (not a rate of nan over [0, 1])."""
    return f"{w['rate']:.2f} [{w['lo']:.2f}, {w['hi']:.2f}]" if w["n"] else "—"


def no_data_text(no_data: dict) -> str:
    """The tasks whose missing runs cannot be made where the report ran, grouped by why, each why said whole once
    (what every source answered, and how to add one): "**a, b**: the runs they lack cannot be made where this ran;
    each needs BIG-bench task files: ..."."""
    groups: dict[str, list[str]] = {}
    for task, why in no_data.items():
        prefix = f"task {task!r} "
        groups.setdefault(why[len(prefix):] if why.startswith(prefix) else f"\0{why}", []).append(task)
    return "".join(f" **{', '.join(tasks)}**: the runs {'it lacks' if len(tasks) == 1 else 'they lack'} cannot be "
                   "made where this ran; " + (why[1:] if why.startswith("\0") else
                                              f"{'it' if len(tasks) == 1 else 'each'} {why}").rstrip(".") + "."
                   for why, tasks in groups.items())


def render_table(summary: dict) -> str:
    s = summary["settings"]
    lines = [f"base {s['base']}, {s['peft']}; lr chosen per task and method on {s['num_dev']} dev examples from "
             f"{s['lr_grid']} x the method's centre (extended {s['extend']} step past an edge), {s['select_budget']} "
             f"forward passes per selection run; final runs {s['budget']} forward passes (first-order: their "
             f"steps), batch {s['batch_size']}, max length {s['max_length']}"
             + "".join(f" ({t}: {L})" for t, L in s.get("max_lengths", {}).items())
             + f", {s['num_eval']} eval examples. "
             "Δ = method − MeZO on the same (task, seed), mean [95% interval: t over seeds, stratified by task]; "
             "win-rate: ties count half, [95% Wilson interval]. " + seed_text(s)
             + ("" if summary.get("complete", True) else
                f" **Partial**: {summary['final_runs']} final runs so far; the protocol has not reached the others "
                "(a method or task without lr or seeds yet has no row values).")
             + no_data_text(summary.get("no_data", {})), "",
             "| method | pairs | win-rate, eval acc | Δ eval acc | win-rate, train loss | Δ train loss | "
             "reaches MeZO's final loss (median forwards / MeZO's) | k (FO) |", "|" + "---|" * 8]
    for label, m in summary["methods"].items():
        if label == REFERENCE:
            continue
        we, wl, r, k = m["win_eval"], m["win_loss"], m["reach"], m["k"]
        reach_txt = "—" if m["first_order"] or not r["n"] else (f"{r['reached']}/{r['n']}" + (
            f", median {r['median_ratio']:.2f}" if r["median_ratio"] is not None else ""))
        k_txt = "—" if not m["first_order"] or not k["n"] else (
            f"median {k['median_k']:.1f} ({k['reached']}/{k['n']} reached)"
            if k["median_k"] is not None else f"> {k['k_at_least']:.0f}")
        lines.append(f"| {label} | {we['n']} | {_win(we)} | {_ci(m['d_eval'])} | {_win(wl)} | "
                     f"{_ci(m['d_loss'], '{:+.4f}')} | {reach_txt} | {k_txt} |")
    lines += [f"\n{b}: the same runs as {a} (one configuration: its lr is {a}'s), so its rows repeat {a}'s."
              for b, a in summary.get("same_runs", {}).items()]
    lines += ["", "| task | zero-shot | method | dev per lr | lr | effective step | eval acc | Δ eval | train loss | "
              "Δ loss |", "|" + "---|" * 10]
    for t in summary["tasks"]:
        z = summary["zero_shot"].get(t)
        for label, m in summary["methods"].items():
            c = m["per_task"][t]
            dev = ", ".join(f"{k}: {v:.3f}" for k, v in c["dev_per_lr"].items() if v is not None)
            eff = "—" if c["effective_step"] is None else f"{c['effective_step']:.3g}"
            lines.append(f"| {t} | {'—' if z is None else f'{z:.3f}'} | {label} | {dev or '—'} | "
                         f"{'—' if c['lr'] is None else format(c['lr'], '.3g')} | {eff} | {_mean_sd(c['eval'])} | "
                         f"{_ci(c['d_eval'])} | {_mean_sd(c['loss'])} | {_ci(c['d_loss'], '{:+.4f}')} |")
    return "\n".join(lines) + "\n"


def write_report(args, summary: dict, final: dict, out: Path) -> None:
    import argparse

    from bench.compare_optimizers import plot
    from l2o.filelock import write_bytes_atomic

    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    table = render_table(summary)
    write_bytes_atomic(out / "table.md", table.encode())
    ns = argparse.Namespace(task_list=args.task_list, method_list=[m.label for m in args.methods], base=args.base,
                            peft=args.peft, seed_list=sorted({s for v in summary["seeds"].values() for s in v}))
    plot(final, out / "loss_vs_forwards.png", ns, {t: {"eval": z} for t, z in summary["zero_shot"].items()})
    print(table, flush=True)
