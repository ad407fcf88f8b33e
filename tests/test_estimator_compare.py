"""bench/estimator_compare.py's table stage on hand-made run records: per-seed differences against MeZO,
the half-budget reach, and the curves figure (the stage that ends a long experiment must not fail there)."""

from __future__ import annotations

import json

from bench.estimator_compare import parse_args, table


def _run(root, name, task, seed, losses, acc):
    out = root / f"final-{name}" / f"final-{task}-{name}-s{seed}"
    out.mkdir(parents=True)
    (out / "history.json").write_text(json.dumps([{"forwards": 2 * (i + 1), "loss": x} for i, x in enumerate(losses)]))
    ran = f"runs/moved/final-{name}/{out.name}"  # where it ran: the records were moved since (read where they are)
    rec = {"phase": "final", "task": task, "config": {"seed": seed, "out": ran}, "final_train_loss": losses[-1],
           "final": {"eval": acc}, "paths": {"history": f"{ran}/history.json", "model": None}}
    with (root / f"final-{name}" / "runs.jsonl").open("a") as f:
        f.write(json.dumps(rec) + "\n")


def test_table_pairs_seeds_with_mezo_and_counts_half_budget_reaches(tmp_path):
    a = parse_args(["--out", str(tmp_path), "--tasks", "t", "--estimators", "es", "--seeds", "0,1", "--budget", "20"])
    for seed in (0, 1):
        _run(tmp_path, "mezo", "t", seed, [1.0] * 9 + [0.8], 0.5)
    _run(tmp_path, "es", "t", 0, [0.7] * 10, 0.6)           # below MeZO's final loss from the start: reaches
    _run(tmp_path, "es", "t", 1, [1.0] * 9 + [0.75], 0.4)   # only at the last step: not within half the budget
    (tmp_path / "meta-es").mkdir()
    history = [{"snr": 0.2}, {"snr": float("nan")}, {"snr": 0.4}]  # a step without pairs' spread has no SNR
    (tmp_path / "meta-es" / "results.json").write_text(json.dumps({"meta_forwards": 990, "history": history}))
    text = table(a, 1e-5, ["es"])
    row = next(line for line in text.splitlines() if line.startswith("| t | es |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "990" and cells[3] == "0.300 ± 0.141 (n=2)"
    assert cells[6] == "-0.075 ± 0.035 (n=2)" and cells[7] == "+0.000 ± 0.141 (n=2)" and cells[8] == "1/2"
    mezo = next(line for line in text.splitlines() if line.startswith("| t | mezo |"))
    assert [c.strip() for c in mezo.strip("|").split("|")][3] == "—"  # no meta-training, no SNR
    assert (tmp_path / "table.md").read_text().strip() == text and (tmp_path / "curves.png").stat().st_size > 0
