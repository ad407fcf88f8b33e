"""bench/reproduce: every paper table's configs are valid fine_tune runs, and each runs as a 2-step smoke."""

from __future__ import annotations

import json

import pytest

from bench.reproduce import SMOKE, cells, format_table, list_tables, load_table, summarise, write_configs
from bench.reproduce.__main__ import main
from fine_tune.config import FineTuneConfig, load_yaml

TABLES = ["bilevel_zofo", "bszo_table3", "mezo_gv_table5", "mezo_opt13b", "zo_finetuner"]


def test_one_config_per_paper_table():
    assert list_tables() == TABLES


@pytest.mark.parametrize("name", TABLES)
def test_every_run_of_a_table_is_a_valid_fine_tune_config(name, tmp_path):
    table = load_table(name)
    full = write_configs(table, tmp_path / "runs", tmp_path / "full", smoke=False)
    smoke = write_configs(table, tmp_path / "runs", tmp_path / "smoke", smoke=True)
    n_runs = sum(len(table.get("seeds") or [0]) * max(1, _n_points(c["sweep"])) for c in cells(table))
    assert len(full) == len(smoke) == n_runs > 0
    for path in full:
        cfg = FineTuneConfig(**load_yaml(str(path))).validate()
        assert cfg.base != SMOKE["base"] and cfg.steps >= 1000  # the papers' scale, not the smoke's
    for path in smoke:
        cfg = FineTuneConfig(**load_yaml(str(path))).validate()
        assert (cfg.base, cfg.steps, cfg.device) == ("smollm2-135m", 2, "cpu")
    for c in cells(table):
        assert c["reported"] is None or 0 < c["reported"] <= 100


def _n_points(sweep):
    n = 1
    for values in sweep.values():
        n *= len(values)
    return n


def test_written_config_runs_through_fine_tune_config_flag(tmp_path, capsys):
    from fine_tune.cli import main as fine_tune_main

    path = write_configs(load_table("mezo_opt13b"), tmp_path / "runs", tmp_path / "cfg", smoke=False)[0]
    assert fine_tune_main(["--config", str(path), "--print-config"]) == 0
    assert "opt-13b" in capsys.readouterr().out


def test_best_sweep_value_is_chosen_on_dev_not_eval():
    cell = {"method": "m", "task": "t", "reported": 50.0, "points": {
        json.dumps({"lr": 1}): [{"dev": 0.5, "eval": 0.9, "metric": "accuracy", "seed": 0}],
        json.dumps({"lr": 2}): [{"dev": 0.7, "eval": 0.6, "metric": "accuracy", "seed": 0},
                                {"dev": 0.7, "eval": 0.8, "metric": "accuracy", "seed": 1}]}}
    row = summarise(cell)
    assert row["chosen"] == {"lr": 2} and row["ours"] == pytest.approx(70.0) and row["n"] == 2
    assert row["sd"] == pytest.approx(14.142, abs=1e-3)
    text = format_table({"title": "T", "metric": "acc"}, [row])
    assert "| m | 70.0 ± 14.1 (50.0) |" in text


def _smoke(name, tmp_path, *extra):
    out = tmp_path / name
    assert main([name, "--smoke", "--out", str(out), *extra]) == 0
    rows = json.loads((out / "cells.json").read_text())
    assert rows and all(r["ours"] is not None and 0 <= r["ours"] <= 100 for r in rows)
    return out, rows


def test_smoke_run_of_the_mezo_table(tmp_path, capsys):
    out, rows = _smoke("mezo_opt13b", tmp_path, "--method", "prefix", "--limit", "1")
    assert [(r["method"], r["task"], r["reported"]) for r in rows] == [("MeZO (prefix)", "sst2", 90.7)]
    assert "| MeZO (prefix) |" in capsys.readouterr().out
    results = next(out.rglob("results.json"))
    assert json.loads(results.read_text())["config"]["peft"] == "prefix"
    stamp = results.stat().st_mtime_ns
    assert main(["mezo_opt13b", "--smoke", "--out", str(out), "--method", "prefix", "--limit", "1"]) == 0
    assert results.stat().st_mtime_ns == stamp  # a rerun reuses finished runs
    assert results.stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.parametrize("name", [t for t in TABLES if t != "mezo_opt13b"])
def test_smoke_run_of_each_other_table(name, tmp_path):
    _, rows = _smoke(name, tmp_path)
    table = load_table(name)
    pairs = {(c["config"].get("optimizer"), c["config"].get("peft")) for c in cells(table)}
    assert len(rows) == len(pairs)
