"""`python -m bench.evidence --status` (bench/evidence_status.py): where a suite stands, from its folder alone, without
running, writing or locking anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import evidence


def _run_folder(path, *, ckpt=False, meter=None, pid=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("x: 1\n")
    if ckpt:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.ckpt").write_bytes(b"state")
    if meter is not None:
        (path / "cpu_s").write_text(f"{meter}\n")
    if pid is not None:
        (path / ".lock").write_text(f"{pid}\n")


def test_status_counts_records_and_tells_running_from_interrupted_runs(tmp_path, capsys):
    out, docs = tmp_path / "ev", tmp_path / "docs"
    scan = out / "learnability"
    scan.mkdir(parents=True)
    (scan / "runs.jsonl").write_text(json.dumps({"name": "s1-a", "cpu_s": 5400.0}) + "\n")
    (scan / "panel.json").write_text(json.dumps({"tasks": ["a"]}))
    _run_folder(scan / "s1-a", ckpt=True)  # recorded: not open
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _run_folder(scan / "s2-a-prefix-lr0.01", ckpt=True, meter=1200.0, pid=dead.pid)  # killed at a session's end
    _run_folder(scan / "s2-a-prefix-lr0.03", meter=60.0, pid=os.getpid())  # under way, no ckpt yet
    (scan / "claims" / "s2-a-prefix").mkdir(parents=True)  # a claim, not a run
    (out / "prefix").mkdir()
    (out / "prefix" / "runs.jsonl").write_text(
        json.dumps({"config": {"out": str(out / "prefix" / "mezo-a-s0")}, "cpu_s": 1800.0}) + "\n")
    _run_folder(out / "prefix" / "mezo-a-s0", ckpt=True)
    (out / "suite.json").write_text(json.dumps({"cpu_hours": 20}))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    assert evidence.main(["--status", "--out", str(out), "--docs", str(docs)]) == 0
    said = capsys.readouterr().out
    assert said.splitlines()[0] == f"evidence suite {out}: 2.00 of 20 CPU-hours spent (10%)"
    assert "learnability   1 runs      1.50 CPU-h   panel: a" in said
    assert "s2-a-prefix-lr0.01: interrupted (the next run resumes it), 20 CPU-min so far, checkpoint of" in said
    assert f"s2-a-prefix-lr0.03: running (pid {os.getpid()}), 1 CPU-min so far, no checkpoint yet" in said
    assert "s1-a:" not in said and "claims" not in said and "mezo-a-s0" not in said
    assert "prefix         1 runs      0.50 CPU-h" in said
    assert "full           0 runs      0.00 CPU-h   can start" in said
    assert "metainit       0 runs      0.00 CPU-h   cannot start yet: no --meta-init given" in said
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written, restored or locked


def test_status_of_a_fresh_clone_reads_the_kept_records(tmp_path, capsys):
    docs = tmp_path / "docs"
    kept = docs / "data" / "evidence" / "learnability"
    kept.mkdir(parents=True)
    (kept / "runs.jsonl").write_text(json.dumps({"name": "s1-a", "cpu_s": 3600.0}) + "\n")
    out = tmp_path / "nothing-yet"
    assert evidence.main(["--status", "--out", str(out), "--docs", str(docs)]) == 0
    said = capsys.readouterr().out
    assert f"(no {out} yet: the kept records): 1.00 of 8 CPU-hours spent" in said
    assert "prefix         0 runs      0.00 CPU-h   cannot start yet: no panel yet" in said
    assert not out.exists()


def test_status_names_the_panel_tasks_whose_data_is_not_on_this_machine_without_fetching_it(tmp_path, capsys,
                                                                                             monkeypatch):
    """BIG-bench's files no longer come from PyPI: --status says which panel tasks this machine cannot run (the
    harness skips their missing runs), and reads only: nothing is fetched into the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("L2O_CACHE", str(cache))
    out = tmp_path / "ev"
    (out / "learnability").mkdir(parents=True)
    (out / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["navigate", "tweet_sentiment"]}))
    assert evidence.main(["--status", "--out", str(out), "--docs", str(tmp_path / "docs")]) == 0
    said = capsys.readouterr().out
    assert "data not on this machine: navigate (their missing runs are skipped" in said
    assert "tweet_sentiment (" not in said and not cache.exists()
