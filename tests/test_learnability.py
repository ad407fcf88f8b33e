"""The learnability scan (bench/learnability.py; its report, bench/learnability_doc.py): paired deltas, the task
rules, the panel rule, and the whole path (both stages, table, plot, panel.json, resume) on a tiny model with the
real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from bench import learnability as lb, learnability_doc as doc
from bench.stats import z_score


@pytest.mark.parametrize("argv, said", [
    (["--lr-grid", "1,x"], "--lr-grid must be comma-separated numbers, got '1,x'"),  # a ValueError traceback
    (["--lr-grid", "0,1"], "--lr-grid must be positive numbers (multipliers of the lr), got '0,1'"),  # ZeroDivision
    (["--forwards1", "0"], "--forwards1 must be a positive integer, got 0"),  # ran one step, exit 0
    (["--forwards2", "-4"], "--forwards2 must be a positive integer, got -4"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),  # a traceback in the forward's timing
])
def test_bad_numbers_are_one_line_before_the_base_loads(argv, said, tmp_path, capsys):
    from bench.cli import cli_exit

    out = tmp_path / "scan"
    argv = ["--base", "no-base-is-loaded", "--tasks", "tweet_sentiment", "--out", str(out), *argv]
    assert cli_exit("bench.learnability", lambda: lb.main(argv)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bench.learnability: error: {said}"]
    assert not out.exists()


def test_paired_delta_is_the_mean_per_example_difference_with_its_standard_error():
    final, zero = [1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 1, 1]
    d, se = lb.paired_delta(final, zero)
    diffs = [1, 0, 0, 1, -1, 0]                      # by hand
    assert d == pytest.approx(1 / 6)
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    with pytest.raises(ValueError):
        lb.paired_delta([1, 0], [1])


@pytest.mark.parametrize("delta,z", [((0.1, 0.02), 5.0), ((0.0, 0.0), 0.0), ((0.05, 0.0), math.inf),
                                     ((-0.05, 0.0), -math.inf), ((-0.06, 0.03), -2.0)])
def test_z_score(delta, z):
    assert z_score(delta) == z


def _profile(**kw):
    p = {"task": "t", "single_token": True, "len_p50": 30, "valid_pool": 500, "stage1_cpu_s": 1.0}
    p.update(kw)
    return p


def test_task_rules_say_why_a_task_is_not_scanned():
    args = lb.parse_args([])
    assert lb.exclusion(_profile(), args) is None
    assert "multi-token" in lb.exclusion(_profile(single_token=False), args)
    assert "median prompt 65 tokens > max length 64" == lb.exclusion(_profile(len_p50=65), args)
    assert "validation pool 49 < 50" in lb.exclusion(_profile(valid_pool=49), args)
    assert lb.exclusion(_profile(valid_pool=98), args) is None  # siqa: the se rule carries its small eval
    cut = lb.parse_args(["--max-median", "48"])
    assert lb.exclusion(_profile(len_p50=48), cut) is None and "CPU cut" in lb.exclusion(_profile(len_p50=49), cut)


def test_panel_is_chosen_by_the_se_rule_cheapest_first():
    args = lb.parse_args([])
    rows = [{"task": "a", "profile": _profile(stage1_cpu_s=5), "prefix": {"delta": (0.06, 0.02)}},   # 3.0 se: in
            {"task": "b", "profile": _profile(stage1_cpu_s=1), "prefix": {"delta": (0.10, 0.02)}},   # 5 se: in, first
            {"task": "c", "profile": _profile(stage1_cpu_s=2), "prefix": {"delta": (0.059, 0.02)}},  # 2.95 se: out
            {"task": "d", "profile": _profile(stage1_cpu_s=2), "prefix": {"delta": (-0.10, 0.02)}},  # wrong way
            {"task": "e", "profile": _profile(stage1_cpu_s=0)},                                      # no stage 2
            {"task": "f", "profile": _profile(stage1_cpu_s=0), "prefix": {"delta": (0.2, 0.02), "complete": False}}]
    assert [r["task"] for r in lb.panel(rows, args)] == ["b", "a"]
    assert lb.provisional(rows, args) == ["f"]   # passes at the best lr so far, grid unfinished: not counted yet


def test_per_class_accuracy_tells_a_label_prior_from_the_task():
    golds = [0, 0, 0, 1, 1, 2]
    always_0 = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]            # plain accuracy 0.5, above the 1/3 of chance
    assert lb.per_class(always_0, golds) == {0: 1.0, 1: 0.0, 2: 0.0}
    assert lb.majority_rate(golds) == 0.5
    assert lb.per_class([0.0, 1.0, 1.0, 1.0, 0.0, 1.0], golds) == {0: pytest.approx(2 / 3), 1: 0.5, 2: 1.0}
    with pytest.raises(ValueError, match="5 per-example scores for 6 eval labels"):
        lb.per_class(always_0[:5], golds)
    rows = [{"task": "t", "per_class": {"zero-shot": lb.per_class(always_0, golds)}}, {"task": "u"}]
    assert doc.class_table(rows)[-1] == "| t | zero-shot | 1.000 / 0.000 / 0.000 | 0.333 |"
    assert doc.class_table([{"task": "u"}]) == []


def test_balanced_delta_and_the_label_prior_flag():
    import random

    rng = random.Random(0)
    golds = [0] * 240 + [1] * 60 + [2] * 40
    zero = [float(rng.random() < 0.3) for _ in golds]
    final = [float(rng.random() < (0.9 if g == 0 else 0.4)) for g in golds]
    d, se = lb.balanced_delta(final, zero, golds)
    balanced = [sum(lb.per_class(x, golds).values()) / 3 for x in (final, zero)]   # an independent path
    assert d == pytest.approx(balanced[0] - balanced[1])
    by = [[f - z for f, z, g in zip(final, zero, golds) if g == c] for c in range(3)]
    assert se == pytest.approx(sum(statistics.variance(x) / len(x) for x in by) ** 0.5 / 3)
    with pytest.raises(ValueError):
        lb.balanced_delta(final[:-1], zero, golds)
    # "prior": zero-shot always answers the minority label 1, after training always the majority 0: accuracy
    # 0.2 -> 0.8 passes the rule, balanced accuracy 0.5 -> 0.5 does not move; "task": both classes learned
    golds = [0] * 80 + [1] * 20
    minority, majority = [float(g == 1) for g in golds], [float(g == 0) for g in golds]
    learned = [float(i % 10 != 0) for i in range(100)]
    args = lb.parse_args([])
    rows = [{"task": t, "profile": _profile(), "prefix": {"delta": lb.paired_delta(f, minority),
                                                          "balanced": lb.balanced_delta(f, minority, golds)}}
            for t, f in (("prior", majority), ("task", learned))]
    assert lb.label_prior(rows, args) == ["prior"]
    rows[0]["profile"] = _profile(stage1_cpu_s=0)   # the cheaper one, but a label prior: after the task
    assert [r["task"] for r in lb.panel(rows, args)] == ["task", "prior"]   # the rule is on accuracy: both count


def test_batch_length_is_the_cost_models_padded_length():
    p = {"lengths": list(range(1, 101))}
    assert lb.batch_length(p, 128, 16) == 95  # the longest of 16 prompts: the 16/17 quantile
    assert lb.batch_length(p, 48, 16) == 48   # capped at the max length


def _record(name, task, final=None, zero=None, cpu_s=None, fit_time_s=0.0):
    r = {"name": name, "task": task, "fit_time_s": fit_time_s,
         "per_example": {"final": {"eval": final or []}, "zero_shot": {"eval": zero or []}}}
    return {**r, "cpu_s": cpu_s} if cpu_s else r


def _status(rem, chosen, cal, args):
    return doc.status(rem, chosen, cal, args, lb.resume_command(args))


def test_the_status_says_what_remains_its_cost_and_the_command_that_continues():
    args = lb.parse_args(["--max-median", "48", "--out", "runs/x"])
    lengths = [30] * 100
    prof = {t: _profile(task=t, lengths=lengths, eval_n=500, stage1_cpu_s=s) for t, s in (("a", 600), ("b", 900))}
    cut = _profile(task="c", len_p50=50, lengths=lengths, eval_n=500, stage1_cpu_s=1200)   # only the CPU cut
    long = _profile(task="d", len_p50=90, lengths=lengths, eval_n=500, stage1_cpu_s=5000)  # over the max length
    for p in (cut, long):
        p["excluded"] = lb.exclusion(p, args)
    up = [1] * 40 + [0] * 60                             # +0.4 over a zero-shot of 0: moved
    done = {r["name"]: r for r in [
        _record(lb.s1_name("a", args), "a", up, [0] * 100, cpu_s=1200.0, fit_time_s=3000.0),  # 2x its estimate
        _record(lb.s2_name("a", "prefix", 1e-2), "a", up, [0] * 100)]}
    rem = lb.remaining(done, [prof["a"], prof["b"]], [cut, long], 1.0, args)
    per2 = lb.stage2_cpu_s(prof["a"], 1.0, args)
    assert per2 == pytest.approx(30 / 64 * (500 + math.ceil(700 / 16)))  # forwards + (eval + dev) batches
    assert rem == {"stage1": [("b", 1, 900)], "stage2": [("a", 2, pytest.approx(2 * per2))], "lora": [],
                   "widen": [("c", 1, 1200)]}
    lora = lb.remaining(done, [prof["a"], prof["b"]], [cut, long], 1.0, lb.parse_args(["--max-median", "48", "--lora"]))
    assert lora["lora"] == [("a", 3, pytest.approx(3 * per2))] and lora["stage2"] == rem["stage2"]
    text = "\n".join(_status(lora, [], {"ratio": 1.0, "wall": None, "n": 0}, args))
    assert ("stage 2 on a (2 run(s) of 500 forward passes); stage 2 in LoRA on a (3 run(s) of 500 forward passes): "
            f"about {(900 + 5 * per2) / 3600:.1f} CPU-hours") in text
    cal = lb.calibration(done, [prof["a"], prof["b"]], 1.0, args)
    assert cal == {"ratio": 2.0, "wall": 2.5, "n": 1}    # the untimed stage-2 record does not count
    text = "\n".join(_status(rem, [], cal, args))
    assert "not established yet" in text and "stage 1 on b; stage 2 on a (2 run(s) of 500 forward passes)" in text
    assert f"about {2 * (900 + 2 * per2) / 3600:.1f} CPU-hours" in text
    assert "`python -m bench.learnability --max-median 48 --out runs/x`" in text
    assert f"leaves out c; stage 1 on them would cost about {2 * 1200 / 3600:.1f} CPU-hours" in text
    assert "x 2.00, the measured / estimated CPU time of the 1 run(s) timed so far; their wall time" in text
    untimed = "\n".join(_status(rem, [], lb.calibration({}, [prof["a"]], 1.0, args), args))
    assert f"about {(900 + 2 * per2) / 3600:.1f} CPU-hours" in untimed and "no run has been timed" in untimed
    assert "the panel would have 2 < 4 tasks at this cut" in text    # a and b are all this cut can still give
    short = "\n".join(_status(rem, [{"task": "a"}], cal, lb.parse_args(["--panel-min", "3"])))
    assert "the panel would have 2 < 3 tasks at this cut" in short   # a (chosen, grid unfinished) and b
    assert "would have" not in "\n".join(_status(rem, [{"task": "a"}], cal, lb.parse_args(["--panel-min", "2"])))
    established = _status({"stage1": [], "stage2": [], "widen": rem["widen"]}, [{}] * 4, cal, args)
    assert established == ["**The panel is established** (it needs 4 tasks)."]


def test_lora_runs_are_estimated_at_their_measured_cost_over_prefix():
    """The cost model times a prefix forward; a LoRA run cost 1.1x a prefix one on tweets. LoRA's remaining runs
    and its runs in the calibration are estimated at that measured factor (1 before any task has both)."""
    args = lb.parse_args(["--max-median", "48", "--lora"])
    prof = _profile(task="a", lengths=[30] * 100, eval_n=500, stage1_cpu_s=600)
    up = [1] * 40 + [0] * 60
    timed = [(lb.s2_name("a", "prefix", 1e-2), 1000.0), (lb.s2_name("a", "prefix", 3e-2), 1400.0),
             (lb.s2_name("a", "lora", args.lora_lr), 1320.0)]
    done = {r["name"]: r for r in [_record(lb.s1_name("a", args), "a", up, [0] * 100),
                                   *(_record(n, "a", up, [0] * 100, cpu_s=c, fit_time_s=c) for n, c in timed)]}
    assert lb.lora_factor(done) == pytest.approx(1320 / 1200) and lb.lora_factor({}) == 1.0
    per2 = lb.stage2_cpu_s(prof, 1.0, args)
    assert lb.remaining(done, [prof], [], 1.0, args)["lora"] == [("a", 2, pytest.approx(2 * 1.1 * per2))]
    assert lb.calibration(done, [prof], 1.0, args)["ratio"] == pytest.approx(3720 / ((2 + 1.1) * per2))


def test_smoke_runs_both_stages_writes_the_report_and_resumes(tiny_smollm_base, tmp_path, capsys):
    out = tmp_path / "scan"
    argv = ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--moved-se", "-100", "--panel-se", "-100",
            "--docs", str(tmp_path / "docs"), "--lr-grid", "1,3", "--extend", "0"]
    assert lb.main(argv) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    names = {r["name"] for r in runs}
    assert "s1-tweet_sentiment-prefix-lr0.01" in names  # --smoke's task: short, and outside BIG-bench
    s2 = [r for r in runs if r["name"].startswith("s2-")]
    assert {r["task"] for r in s2} == {"tweet_sentiment"} and len(s2) == 2  # 2 lrs
    for r in runs:  # per-example scores average to the reported accuracy, on the eval sample the zero-shot used
        assert statistics.mean(r["per_example"]["final"]["eval"]) == pytest.approx(r["final"]["eval"])
        assert len(r["per_example"]["final"]["eval"]) == r["splits"]["eval"]
        assert r["commit"]
    s1 = next(r for r in runs if r["name"] == "s1-tweet_sentiment-prefix-lr0.01")
    assert statistics.mean(s1["per_example"]["zero_shot"]["eval"]) == pytest.approx(s1["zero_shot"]["eval"])
    assert all(r["config"]["num_dev"] == 8 and not r["config"]["zero_shot"] for r in s2)
    info = json.loads((out / "panel.json").read_text())
    assert info["tasks"] == ["tweet_sentiment"]  # it passes a -100 se rule
    table = (out / "table.md").read_text()
    assert "| tweet_sentiment | 3 | 12 |" in table and (out / "learnability.png").stat().st_size > 1000
    golds = lb.eval_golds("tweet_sentiment", lb.parse_args(argv))
    for run, correct in (("zero-shot", s1["per_example"]["zero_shot"]["eval"]),
                         ("stage 1", s1["per_example"]["final"]["eval"])):
        acc = lb.per_class(correct, golds)   # its class-weighted mean is the run's plain accuracy
        assert sum(a * golds.count(g) for g, a in acc.items()) / len(golds) == pytest.approx(statistics.mean(correct))
        assert f"| tweet_sentiment | {run} | {' / '.join(f'{a:.3f}' for a in acc.values())} |" in table
    assert "| tweet_sentiment | stage 2 prefix |" in table
    assert (tmp_path / "docs" / "learnability.md").read_text() == table
    assert "not established yet**: it needs 4 tasks" in table and "Nothing is left to run at this cut." in table
    capsys.readouterr()
    assert lb.main(argv) == 0                     # resumed: nothing is rerun
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(runs)
    assert "steps (estimated" not in capsys.readouterr().out
    # a wider scan of the same --out keeps these runs, says so, and scales the forward measured at 48 tokens
    t48 = json.loads((out / "forward_time.json").read_text())["cpu_s"]
    assert lb.main(argv + ["--max-length", "80"]) == 0
    said = capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(runs)
    assert "s1-tweet_sentiment-prefix-lr0.01: kept, run at max length 48" in said
    assert f"forward of 2 x 80 tokens: {t48 * 80 / 48:.2f} CPU-s" in said
    assert "| tweet_sentiment (max length 48) | 3 | 12 |" in (out / "table.md").read_text()


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result(tiny_smollm_base, tmp_path, capsys):
    """A scan killed inside a run continues that run from its last checkpoint (not from step 0), and its record
    equals the one an uninterrupted scan writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    def argv(out):
        return ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--tasks", "tweet_sentiment", "--stage", "1"]

    assert lb.main(argv(tmp_path / "full")) == 0
    killed = tmp_path / "killed"
    code = f"from tests.helpers import run_learnability_killed_at; run_learnability_killed_at(2, {argv(killed)!r})"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same sums as this process
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    name = "s1-tweet_sentiment-prefix-lr0.01"
    ckpt = killed / name / "checkpoints" / "last.ckpt"
    log = killed / "runs.jsonl"
    assert ckpt.exists() and not (log.exists() and log.read_text().strip())  # a checkpoint, no record
    capsys.readouterr()
    assert lb.main(argv(killed)) == 0
    out, err = capsys.readouterr()
    assert f"resumed {killed / name} from its last checkpoint" in out
    assert "step 2/2" in err and "step 1/2" not in err  # it ran only the step the kill cut short

    def record(out):
        return next(json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines() if name in x)

    a, b = record(tmp_path / "full"), record(killed)
    assert b["config"]["resume"] and not a["config"]["resume"]
    assert a["per_example"] == b["per_example"] and a["final_train_loss"] == b["final_train_loss"]
    assert (tmp_path / "full" / name / "ledger.jsonl").read_bytes() == (killed / name / "ledger.jsonl").read_bytes()


def test_the_harness_reuses_the_scans_stage_2_runs():
    """A stage-2 run and the harness's MeZO run of the same task, lr and seed are one configuration (the harness
    would otherwise rerun MeZO's lr selection)."""
    from pathlib import Path

    from bench import harness

    a = lb.parse_args(["--out", "runs/x"])
    scan = lb.scan_config(a, task="fever", peft="prefix", lr=3e-2, eps=a.eps, forwards=a.forwards2,
                                    num_dev=a.num_dev, zero_shot=True, out=Path("runs/x/s2"))
    h = harness.parse_args(["--tasks", "fever", "--out", "runs/y"])
    mine = harness.make_config(h, harness.parse_method("mezo"), "fever", 3e-2, a.seed, a.forwards2)
    assert harness.config_key(scan.to_dict()) == harness.config_key(mine.to_dict())
    other = harness.make_config(h, harness.parse_method("mezo"), "fever", 3e-2, a.seed + 1, a.forwards2)
    assert harness.config_key(other.to_dict()) != harness.config_key(mine.to_dict())


def test_two_processes_share_a_tasks_stage_2_lrs_and_the_extension_waits_for_the_whole_grid(tmp_path, monkeypatch):
    """Stage 2 claims each lr of a task's grid apart: while another process holds one, this one runs the others
    and leaves the extension past the grid's edge (which needs every lr's dev accuracy) to a later pass; once the
    grid is whole, that pass runs the held lr's record as recorded and the extension."""
    from l2o.filelock import RunLock

    from bench.records import append_record

    args = lb.parse_args(["--out", str(tmp_path / "scan"), "--lr-grid", "0.3,1,3", "--extend", "1"])
    runner, ran = lb.Runner(args), []

    def fake(self, name, *, lr, **kw):
        if name in (have := self.done()):
            return have[name]
        ran.append(name)
        rec = {"name": name, "lr": lr, "final": {"dev": 1.0 - lr}, "final_train_loss": 0.5}  # best: the lowest lr
        append_record(self.log_path, rec)
        return rec

    monkeypatch.setattr(lb.Runner, "__call__", fake)
    monkeypatch.setattr(lb, "moved", lambda done, profiles, a: profiles)
    grid = lb.stage2_grid(args, "prefix")
    held = lb.s2_name("navigate", "prefix", grid[1])
    (claim := tmp_path / "scan" / "claims" / held).mkdir(parents=True)
    other = RunLock(claim, what="task").acquire()  # another process's claim (a lock is per open file)
    lb.stage2(args, runner, [{"task": "navigate"}])
    assert ran == [lb.s2_name("navigate", "prefix", lr) for lr in (grid[0], grid[2])]  # no extension yet
    other.release()
    lb.stage2(args, runner, [{"task": "navigate"}])
    assert ran[2:] == [held, lb.s2_name("navigate", "prefix", grid[0] / (grid[1] / grid[0]))]


def test_skip_missing_leaves_out_the_tasks_without_data_and_then_writes_no_report(capsys):
    """BIG-bench's files cannot be had on every machine. --skip-missing runs the tasks that have their data (the lora
    phase on tweets) and keeps the report, which profiles every scanned task, as it is; without the flag, or with no
    task left, the first task's TaskError stops it."""
    from l2o.tasks.errors import TaskError

    def ensure_task(name):
        if name in ("navigate", "winowhy"):
            raise TaskError(f"task {name!r} needs BIG-bench task files: no source here")

    args = lb.parse_args(["--tasks", "navigate,tweet_sentiment,winowhy,boolq", "--skip-missing"])
    assert list(lb.have_data(args, ensure_task)) == ["navigate", "winowhy"]
    assert lb.candidate_tasks(args) == ["tweet_sentiment", "boolq"]
    assert "--skip-missing" in lb.resume_command(args) and "boolq" in lb.resume_command(args)  # the user's own
    assert capsys.readouterr().out == (
        "learnability: left out here, their data cannot be had: navigate, winowhy (task 'navigate' needs BIG-bench "
        "task files: no source here); the report, which profiles every scanned task, is not rewritten\n")
    everything = lb.parse_args(["--skip-missing"])
    lb.have_data(everything, ensure_task)
    assert "navigate" not in lb.candidate_tasks(everything) and "tweet_sentiment" in lb.candidate_tasks(everything)
    args = lb.parse_args(["--tasks", "boolq,tweet_sentiment", "--skip-missing"])
    assert lb.have_data(args, ensure_task) == {} and lb.candidate_tasks(args) == ["boolq", "tweet_sentiment"]
    for argv in (["--tasks", "tweet_sentiment,navigate"], ["--tasks", "navigate,winowhy", "--skip-missing"]):
        with pytest.raises(TaskError, match="task 'navigate' needs"):
            lb.have_data(lb.parse_args(argv), ensure_task)


def test_a_scan_that_left_tasks_out_keeps_its_report_and_panel(tiny_smollm_base, tmp_path, monkeypatch, capsys):
    """The scan with --skip-missing runs the task that has its data and writes no table or panel: rewritten without
    the tasks it left out, the panel would lose them. The same scan with every task's data writes both."""
    from l2o.tasks.errors import TaskError

    def ensure_task(name, source=None):
        if name == "navigate":
            raise TaskError("task 'navigate' needs BIG-bench task files: no source here")

    monkeypatch.setattr("zoo.acquire.ensure_task", ensure_task)
    out = tmp_path / "scan"
    argv = ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--moved-se", "-100", "--panel-se", "-100",
            "--lr-grid", "1", "--extend", "0", "--stage", "1"]
    assert lb.main(argv + ["--tasks", "tweet_sentiment,navigate", "--skip-missing"]) == 0
    assert [r["task"] for r in lb.read_records(out / "runs.jsonl")] == ["tweet_sentiment"]
    assert not (out / "table.md").exists() and not (out / "panel.json").exists()
    assert "left out here, their data cannot be had: navigate" in capsys.readouterr().out
    assert lb.main(argv + ["--tasks", "tweet_sentiment"]) == 0
    assert json.loads((out / "panel.json").read_text())["scanned"] == ["tweet_sentiment"]
