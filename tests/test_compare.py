"""The comparison harness (bench/compare_optimizers.py): lr selection on dev, paired differences, the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_optimizers", ROOT / "bench" / "compare_optimizers.py")
cmp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cmp)


@pytest.mark.parametrize("argv, said", [
    (["--lr-grid", "1,x"], "--lr-grid must be comma-separated numbers, got '1,x'"),     # ValueError tracebacks
    (["--seeds", "x"], "--seeds must be comma-separated integers, got 'x'"),
    (["--lr", "mezo=abc"], "--lr must be name=number,... (e.g. mezo=1e-2), got 'mezo=abc'"),
    (["--optimizers", "mezzo"], "--optimizers mezzo: unknown optimizer 'mezzo' (known: "),  # a KeyError in lr_centres
    (["--budget", "-4"], "--budget must be a positive integer, got -4"),                 # ran 1 step per run, exit 0
])
def test_bad_options_are_one_line_before_anything_runs(argv, said, tmp_path, capsys):
    from bench.cli import cli_exit

    out = tmp_path / "c"
    assert cli_exit("bench.compare_optimizers", lambda: cmp.main(["--tasks", "boolq", "--optimizers", "mezo",
                                                                   "--out", str(out), *argv])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench.compare_optimizers: error: {said}"), err
    assert not out.exists()


def _run(task, method, seed, acc, loss, lr=1e-2, dev=0.5, eff=1.0):
    return {"task": task, "lr": lr, "final": {"dev": dev, "eval": acc}, "final_train_loss": loss, "steps": 10,
            "effective_step": eff, "bszo_prior": None, "config": {"optimizer": method, "seed": seed}}


def test_lr_is_chosen_on_dev_with_train_loss_breaking_ties():
    runs = [_run("t", "m", 0, 0.9, 1.0, lr=1e-3, dev=0.6), _run("t", "m", 0, 0.1, 0.5, lr=1e-2, dev=0.7),
            _run("t", "m", 0, 0.9, 0.2, lr=3e-2, dev=0.7)]
    assert cmp.choose_lr(runs) == 3e-2            # dev 0.7 twice: the lower train loss wins; eval is never used
    pooled = cmp._pool_by_lr(runs + [_run("u", "m", 0, 0.5, 9.0, lr=3e-2, dev=0.0)])
    assert cmp.choose_lr(pooled) == 1e-2          # summed over selection tasks, 3e-2 now averages dev 0.35


@pytest.mark.parametrize("peak,extend,tried", [
    (1e-2, 1, [3e-3, 1e-2, 3e-2]),                 # interior: no extension
    (1e-3, 1, [3e-3, 1e-2, 3e-2, 9e-4]),           # best at the low edge: one step below it
    (1e-3, 2, [3e-3, 1e-2, 3e-2, 9e-4, 2.7e-4]),   # 9e-4 is then the best and at the edge again: one more
    (1e-1, 2, [3e-3, 1e-2, 3e-2, 0.1, 0.333]),     # high edge, twice (0.1 still best of what was tried)
    (1e-3, 0, [3e-3, 1e-2, 3e-2]),
])
def test_lr_grid_is_extended_past_an_edge_while_the_best_lr_sits_there(peak, extend, tried):
    import math

    calls = []

    def run(lr):  # dev metric peaks at `peak` (log scale)
        calls.append(lr)
        return _run("t", "m", 0, 0.5, 1.0, lr=lr, dev=1 - abs(math.log(lr / peak)))

    runs = cmp.select_runs(run, [3e-3, 1e-2, 3e-2], extend)
    assert calls == pytest.approx(tried, rel=2e-3) and [r["lr"] for r in runs] == calls


def test_a_grid_of_one_lr_runs_that_lr_only():
    """`--lr-grid 1` (no search: the method's centre) is one run, extended or not (it was an IndexError)."""
    calls = []
    runs = cmp.select_runs(lambda lr: calls.append(lr) or _run("t", "m", 0, 0.5, 1.0, lr=lr, dev=0.5), [1e-2], 2)
    assert calls == [1e-2] and [r["lr"] for r in runs] == [1e-2]


def test_paired_differences_are_method_minus_mezo_on_the_same_seed():
    final = {("t", "mezo", s): _run("t", "mezo", s, a, 1.0) for s, a in enumerate([0.50, 0.60, 0.70])}
    final.update({("t", "gv", s): _run("t", "gv", s, a, 0.9) for s, a in enumerate([0.55, 0.70, 0.75])})
    out = cmp._paired(final, "t", "gv", [0, 1, 2], lambda r: r["final"]["eval"])
    assert out == "+0.067 ± 0.029"                 # diffs 0.05, 0.10, 0.05 (a flipped sign gives -0.067)
    assert cmp._paired(final, "t", "mezo", [0, 1, 2], lambda r: r["final"]["eval"]) == "—"


def test_table_has_zero_shot_chosen_lr_and_paired_columns():
    args = cmp.parse_args(["--tasks", "t", "--optimizers", "mezo,gv", "--seeds", "0,1", "--budget", "40"])
    final = {("t", m, s): _run("t", m, s, 0.5 + 0.1 * s + (m == "gv") * 0.1, 1.0, eff=1.0 + (m == "gv"))
             for m in ("mezo", "gv") for s in (0, 1)}
    chosen = {("t", m): (1e-2, [_run("t", m, 0, 0, 0, lr=1e-2, dev=0.5)]) for m in ("mezo", "gv")}
    table = cmp.render_table(final, chosen, {"t": {"eval": 0.42}}, args)
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| t |")}
    assert "0.420" in rows["zero-shot"]
    assert "+0.100 ± 0.000" in rows["gv"] and "| 2 | 0.02 |" in rows["gv"] and "0.01: 0.50" in rows["gv"]


def test_a_partial_reports_plot_leaves_out_tasks_without_runs(tmp_path):
    """docs/evidence_prefix.png showed navigate as empty axes while only valid_parentheses had runs: a task gets a
    column once it has a final run (the figure is 5.5 inches wide per column, at 110 dpi)."""
    import json

    from matplotlib.image import imread

    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"forwards": f, "loss": 0.7 - f / 1000} for f in range(0, 40, 2)]))
    args = cmp.parse_args(["--tasks", "t,u", "--optimizers", "mezo", "--seeds", "0,1", "--budget", "40"])
    final = {("t", "mezo", s): {**_run("t", "mezo", s, 0.6, 0.69), "paths": {"history": str(history)}}
             for s in (0, 1)}
    widths = []
    for got in (final, {**final, **{("u", "mezo", 0): final[("t", "mezo", 0)]}}, {}):
        cmp.plot(got, tmp_path / "plot.png", args)
        widths.append(imread(tmp_path / "plot.png").shape[1])
    assert widths == [605, 1210, 605]


@pytest.mark.parametrize("name,forwards", [("mezo", 2), ("mezo-gv", 6), ("mezo-greedy", 6), ("bszo", 3),
                                           ("bszo-b", 4), ("zo-finetuner+gv", 6)])
def test_forward_counts_follow_the_registry(name, forwards):
    from l2o.optim import forwards_per_step

    assert forwards_per_step(name) == forwards
