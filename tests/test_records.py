"""The bench suites' run records (bench/records.py, appended through l2o.filelock.append_bytes): a kill or a full disk
during an append leaves a torn last line, which must neither stop a suite from resuming nor be glued onto the next
record; a damaged line elsewhere is refused in one sentence; a failed append leaves the file as it was."""

from __future__ import annotations

import errno
import json
import os

import pytest

from bench import compare_optimizers as co
from bench import harness as hn
from bench import learnability as lb
from bench.budget import spent_hours
from bench.records import append_record, read_records, records_lock
from l2o.errors import RunFailed, UserError


def _torn(path, records, fragment_of=None):
    """`records` as whole lines, then the first half of `fragment_of`'s line (an append cut short)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if fragment_of is not None:
        line = json.dumps(fragment_of)
        text += line[: len(line) // 2]
    path.write_text(text)


def _lines(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_torn_last_line_is_dropped_and_the_next_append_is_a_whole_line_of_its_own(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    a, b, torn, new = ({"name": n, "per_example": list(range(50))} for n in "abcd")
    _torn(path, [a, b], fragment_of=torn)
    assert read_records(path) == [a, b]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "torn last line 3" in err
    append_record(path, new)
    assert _lines(path) == [a, b, new]  # the fragment is cut off, not glued onto
    assert read_records(path) == [a, b, new] and capsys.readouterr().err.count(str(path)) == 1  # the cut's warning


def test_a_torn_line_longer_than_one_read_back_is_cut_without_the_records_before_it(tmp_path, capsys):
    """A real record is ~100 KB: its torn half spans several of the 64 KiB reads that look back for its start."""
    path = tmp_path / "runs.jsonl"
    a, b, torn, new = ({"name": n, "per_example": [0.123456789] * 30000} for n in "abcd")  # ~390 KB a line
    _torn(path, [a, b], fragment_of=torn)
    assert len(json.dumps(torn)) // 2 > 2 * (1 << 16)
    append_record(path, new)
    assert _lines(path) == [a, b, new]
    assert "cutting off its torn last line" in capsys.readouterr().err


def test_a_whole_last_record_without_its_newline_is_kept_and_completed(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"name": "a"}) + "\n" + json.dumps({"name": "b"}))
    assert read_records(path) == [{"name": "a"}, {"name": "b"}]
    append_record(path, {"name": "c"})
    assert _lines(path) == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert capsys.readouterr().err == ""


def test_missing_and_new_files(tmp_path):
    path = tmp_path / "rounds.jsonl"
    assert read_records(path) == []
    append_record(path, {"round": 1})
    assert path.read_text() == '{"round": 1}\n'


@pytest.mark.parametrize("bad", ['{"name": "b", "per_ex', "[1, 2]", '{"name": "b"}{"name": "c"}'])
def test_a_damaged_line_before_the_last_is_refused_naming_the_file_and_line(tmp_path, bad):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"name": "a"}) + "\n" + bad + "\n" + json.dumps({"name": "d"}) + "\n")
    with pytest.raises(UserError, match=rf"{path} line 2 is not a JSON record") as err:
        read_records(path)
    assert "\n" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_a_failed_append_leaves_the_file_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl"
    append_record(path, {"name": "a"})
    before = path.read_bytes()
    write = os.write

    def disk_full(fd, data):  # the first write gets half in, the next meets a full disk
        if disk_full.calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        disk_full.calls += 1
        return write(fd, bytes(data)[: len(data) // 2])

    disk_full.calls = 0
    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(RunFailed) as err:  # the suite's one line, exit 1, not an OSError's traceback
        append_record(path, {"name": "b", "per_example": list(range(1000))})
    assert str(err.value) == (f"cannot write {path} (No space left on device); free space, then the same command "
                              "continues (the runs its runs.jsonl records are not run again)")
    assert disk_full.calls == 1 and err.value.exit_code == 1 and err.value.__suppress_context__
    assert path.read_bytes() == before


def test_an_append_that_fails_for_another_reason_keeps_its_oserror(tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl"

    def refused(fd, data):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(os, "write", refused)
    with pytest.raises(OSError) as err:
        append_record(path, {"name": "a"})
    assert not isinstance(err.value, RunFailed) and err.value.errno == errno.EBADF and err.value.filename == str(path)


# ------------------------------------------------------------------ the suites' resume paths read through it
def test_the_harness_runner_resumes_past_a_torn_runs_jsonl_and_refuses_a_damaged_one(tmp_path, capsys):
    out = tmp_path / "h"
    done = {"config": {"task": "sst2", "seed": 0}, "lr": 1e-3, "cpu_s": 60.0}
    _torn(out / "runs.jsonl", [done], fragment_of={**done, "config": {"task": "sst2", "seed": 1}})
    runner = hn.Runner(hn.parse_args(["--tasks", "sst2", "--out", str(out)]))
    assert list(runner.done.values()) == [done] and "torn last line" in capsys.readouterr().err
    (out / "runs.jsonl").write_text("{\n" + json.dumps(done) + "\n")
    with pytest.raises(UserError, match="runs.jsonl line 1"):
        hn.Runner(hn.parse_args(["--tasks", "sst2", "--out", str(out)]))


def test_the_compare_runner_resumes_past_a_torn_runs_jsonl(tmp_path):
    out = tmp_path / "c"
    done = {"phase": "select", "task": "sst2", "lr": 1e-3, "config": {"optimizer": "mezo", "seed": 0}}
    _torn(out / "runs.jsonl", [done], fragment_of={**done, "lr": 1e-2})
    runner = co.Runner(co.parse_args(["--out", str(out)]))
    assert list(runner.done.values()) == [done]


def test_the_scan_appends_its_next_record_after_cutting_a_torn_one(tmp_path, monkeypatch, capsys):
    """The learnability runner (shards share its runs.jsonl) reads past a torn last line and its next append,
    under the lock, cuts it off: every line then parses and the new record is the last."""
    out = tmp_path / "scan"
    done = {"name": "s1-a", "config": {"max_length": 64}}
    _torn(out / "runs.jsonl", [done], fragment_of={"name": "s1-b", "per_example": list(range(100))})
    runner = lb.Runner(lb.parse_args(["--out", str(out)]))
    assert runner.done() == {"s1-a": done}
    assert runner("s1-a", task="sst2", peft="prefix", lr=1e-2, eps=1e-3, forwards=4, num_dev=8, zero_shot=False) == done
    monkeypatch.setattr(lb, "run_to_end", lambda cfg, say: {"config": {"max_length": cfg.max_length},
                                                           "final": {"eval": 0.5}, "fit_time_s": 1.0, "cpu_s": 2.0})
    res = runner("s1-b", task="sst2", peft="prefix", lr=1e-2, eps=1e-3, forwards=4, num_dev=8, zero_shot=False)
    assert _lines(out / "runs.jsonl") == [done, res] and set(runner.done()) == {"s1-a", "s1-b"}


def test_the_budget_counts_past_a_torn_rounds_jsonl(tmp_path):
    _torn(tmp_path / "full" / "runs.jsonl", [{"cpu_s": 3600.0}], fragment_of={"cpu_s": 7200.0})
    _torn(tmp_path / "artefacts" / "zo-finetuner" / "rounds.jsonl", [{"cpu_s": 1800.0}], fragment_of={"cpu_s": 1.0})
    assert spent_hours(tmp_path) == pytest.approx(1.5)


def test_two_processes_of_a_suite_share_one_budget_through_its_records(tmp_path):
    """A runner given the suite's --out (--cpu-suite-out) counts every process's recorded runs at each check: the
    other process's runs stop this one at the budget, which a count of its own runs would overrun."""
    from bench.budget import BudgetSpent, CpuBudget

    mine = CpuBudget(hours=2.0, suite_out=tmp_path)
    alone = CpuBudget(hours=2.0)  # before: what was spent when it started, plus its own runs
    _torn(tmp_path / "prefix" / "runs.jsonl", [{"cpu_s": 3600.0}])
    mine.check("a run")
    _torn(tmp_path / "full" / "runs.jsonl", [{"cpu_s": 3600.0}])  # the other process's run, recorded meanwhile
    with pytest.raises(BudgetSpent, match=r"CPU budget of 2 h spent \(2.00 h\): not starting a run"):
        mine.check("a run")
    alone.check("a run")


def _during_an_append(path, first, second, work):
    """Run `work()` in a thread while "another process" holds `path`'s records lock halfway through appending
    `second` after `first`: it must still be waiting 0.3 s in, with the half line untouched; the append then
    completes, and `work`'s result comes back."""
    import threading
    import time

    got = []
    with records_lock(path):
        _torn(path, [first], fragment_of=second)
        thread = threading.Thread(target=lambda: got.append(work()))
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and not got and path.read_text().count("\n") == 1
        _torn(path, [first, second])
    thread.join(5)
    assert not thread.is_alive()
    return got[0]


def test_the_scan_reads_its_records_under_the_lock_another_process_appends_under(tmp_path, capsys):
    """While another process of the scan holds the append lock halfway through a line, a read waits for it (before,
    it read the half line as a torn one and warned) and then sees the whole record."""
    out = tmp_path / "scan"
    first, second = {"name": "s1-a"}, {"name": "s1-b", "per_example": list(range(100))}
    runner = lb.Runner(lb.parse_args(["--out", str(out)]))
    got = _during_an_append(out / "runs.jsonl", first, second, runner.done)
    assert got == {"s1-a": first, "s1-b": second} and "torn" not in capsys.readouterr().err


def test_the_harness_reads_its_records_under_the_lock_another_harness_appends_under(tmp_path, capsys):
    """A second harness process on one --out starts while the first is halfway through an append: it waits, then
    counts that run as done (before, it read the half line as a torn one, warned, and would have run it again)."""
    out = tmp_path / "h"
    first = {"config": {"task": "sst2", "seed": 0}, "lr": 1e-3, "cpu_s": 60.0}
    second = {**first, "config": {"task": "sst2", "seed": 1}}
    out.mkdir()
    args = hn.parse_args(["--tasks", "sst2", "--out", str(out)])
    runner = _during_an_append(out / "runs.jsonl", first, second, lambda: hn.Runner(args))
    assert list(runner.done.values()) == [first, second] and "torn" not in capsys.readouterr().err


def test_an_append_waits_for_another_append_in_progress_instead_of_cutting_it_off(tmp_path, capsys):
    """Every suite's appends (the harness's, the scan's, the artefacts' rounds) hold one lock per records file. Two
    harness commands on one --out: while one is halfway through its line, the other's append waits for it, where
    before it took that half line for a torn one, cut it off (that record lost) and warned."""
    path = tmp_path / "prefix" / "runs.jsonl"
    first, second, third = {"name": "a"}, {"name": "b", "per_example": list(range(100))}, {"name": "c"}
    path.parent.mkdir()
    _during_an_append(path, first, second, lambda: append_record(path, third))
    assert _lines(path) == [first, second, third] and "torn" not in capsys.readouterr().err
