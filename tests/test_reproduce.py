"""bench/reproduce: every paper table's configs are valid fine_tune runs, and each runs as a 2-step smoke."""

from __future__ import annotations

import json

import pytest

from bench.reproduce import SMOKE, cells, format_table, list_tables, load_table, summarise, write_configs
from bench.reproduce.__main__ import main
from fine_tune.config import FineTuneConfig, load_yaml

TABLES = ["bilevel_zofo", "bszo_table3", "mezo_gv_table5", "mezo_opt13b", "zo_finetuner"]


@pytest.mark.parametrize("content, said", [
    (b"\xff\xfe", "table {path} is not a YAML text file (it is not UTF-8)"),                  # UnicodeDecodeError
    (b"tasks: [x\n", "table {path} is not valid YAML (line 2): expected ',' or ']', but got '<stream end>'"),
    (b"tasks:\n  sst2: {}\nmethods:\n  M: 5\n", "table t.yaml, method 'M': expected a mapping of config, reported, "
                                                "sweep, tasks"),                                    # a TypeError
    (b"tasks: [sst2]\nmethods:\n  M: {}\n", "table t.yaml: tasks must be a mapping of name: options"),
])
def test_a_damaged_table_file_is_one_line(content, said, tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_bytes(content)
    assert main([str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bench.reproduce: error: {said.format(path=path)}"]


def test_options_that_select_nothing_or_cannot_be_written_are_one_line(tmp_path, capsys):
    """--method matching no row printed an empty table (exit 0); --limit -1 ran every cell but the last;
    --write-configs onto a file was a FileExistsError traceback."""
    assert main(["mezo_opt13b", "--smoke", "--method", "nothing"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench.reproduce: error: --method 'nothing' matches no method of mezo_opt13b (MeZO (full), MeZO (LoRA), "
        "MeZO (prefix))"]
    assert main(["mezo_opt13b", "--limit", "-1", "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "bench.reproduce: error: --limit must be a positive integer, got -1"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["mezo_opt13b", "--smoke", "--write-configs", str(blocker)]) == 2
    assert capsys.readouterr().err.strip() == (f"bench.reproduce: error: --write-configs {blocker} is a file; give a "
                                               "folder to write the configs to")
    with pytest.raises(SystemExit) as stop:  # argparse's refusal: one line too, not the usage first
        main(["mezo_opt13b", "--limit", "x"])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "bench.reproduce: error: argument --limit: invalid int value: 'x' (see `python -m bench.reproduce --help`)"]


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
