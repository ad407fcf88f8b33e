"""bench.resume: a benchmark's run continues after a kill, and its CPU time counts every attempt (what a killed
attempt spent is charged to the run and the suite's budget, not lost with its process)."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import resume
from bench.cli import CONTINUES


@dataclass
class Cfg:
    out: str
    resume: bool = False


def _burn(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        sum(i * i for i in range(1000))


def test_a_resumed_run_counts_the_cpu_its_killed_attempts_spent(tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"state")
    (out / resume.METER_FILE).write_text("1000.0\n")  # what the killed attempts had spent at their last write
    seen = []

    def fake_run(cfg, log=print):
        seen.append(cfg.resume)
        _burn(0.05)
        return {"final": {}}

    monkeypatch.setattr("fine_tune.run.run", fake_run)
    said = []
    res = resume.run_to_end(Cfg(str(out)), say=said.append)
    assert seen == [True] and 1000.05 <= res["cpu_s"] < 1010
    assert "resumed" in said[0] and "1000 CPU-s before it, counted" in said[0]
    assert (out / resume.METER_FILE).exists()  # until the caller has recorded the run
    resume.recorded(out)
    assert not (out / resume.METER_FILE).exists()  # the record holds it now
    (out / "checkpoints" / "last.ckpt").write_bytes(b"state")  # an attempt killed before the meter existed
    resume.run_to_end(Cfg(str(out)), say=said.append)
    assert "no CPU meter from its earlier attempts, whose CPU is not counted" in said[-1]


def test_an_attempt_writes_what_it_has_spent_while_it_runs_and_the_next_attempt_adds_it(tmp_path, monkeypatch):
    """The meter file grows during an attempt (a kill -9 then loses at most METER_EVERY_S of it); an attempt that
    cannot resume starts the run again and still counts the failed attempt's CPU."""
    monkeypatch.setattr(resume, "METER_EVERY_S", 0.01)
    out = tmp_path / "run"
    midway = []

    def failing_run(cfg, log=print):
        out.mkdir()
        _burn(0.3)
        time.sleep(0.1)  # the meter thread's turn
        midway.append(float((out / resume.METER_FILE).read_text()))
        raise RuntimeError("killed")

    monkeypatch.setattr("fine_tune.run.run", failing_run)
    with pytest.raises(RuntimeError):
        resume.run_to_end(Cfg(str(out)))
    assert 0.2 < midway[0] and float((out / resume.METER_FILE).read_text()) >= midway[0]

    monkeypatch.setattr("fine_tune.run.run", lambda cfg, log=print: {"final": {}, "fresh": not Path(out).exists()})
    res = resume.run_to_end(Cfg(str(out)))  # no checkpoint: the folder is cleared and the run starts again
    assert res["fresh"] and res["cpu_s"] >= midway[0]


def test_a_run_another_live_process_holds_is_not_cleared_to_start_again(tmp_path, monkeypatch):
    """Resuming a run whose folder another live process holds fails with that process named; the folder, its
    checkpoint included, is left to it (before: "cannot resume", and the live run's folder was removed)."""
    from l2o.filelock import FolderLockedError

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"state")

    def held(cfg, log=print):
        raise FolderLockedError(f"--out {cfg.out} is in use by process 4242; wait for it to finish")

    monkeypatch.setattr("fine_tune.run.run", held)
    with pytest.raises(FolderLockedError, match="in use by process 4242"):
        resume.run_to_end(Cfg(str(out)))
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == b"state"


def test_a_run_a_full_disk_stopped_while_resuming_keeps_its_checkpoint_and_stops_the_suite(tmp_path, monkeypatch):
    """A full disk (or a lost process: l2o.errors.RunFailed) during a resumed attempt is no reason to start the run
    again: it was taken for "cannot resume", and the folder with its intact checkpoint was removed and the run made
    again from step 0 (on the same full disk). It stops the suite now, whose next invocation resumes."""
    from l2o.errors import RunFailed

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"state")
    attempts = []

    def full_disk(cfg, log=print):
        attempts.append(cfg.resume)
        if cfg.resume:
            raise _fine_tunes_disk_failure(out / "loss.png", "the last checkpoint is intact")
        return {"final": {}}

    monkeypatch.setattr("fine_tune.run.run", full_disk)
    with pytest.raises(RunFailed) as err:
        resume.run_to_end(Cfg(str(out)))
    assert attempts == [True] and (out / "checkpoints" / "last.ckpt").read_bytes() == b"state"
    assert str(err.value) == (f"cannot write {out}/loss.png (No space left on device); the last checkpoint "
                              f"{out}/checkpoints/last.ckpt is intact: free space, then {CONTINUES}")


def _fine_tunes_disk_failure(path, survivors):
    """A full disk as fine_tune raises it (l2o.integrations.lightning: what happened, then what survives)."""
    from l2o.integrations.lightning.failures import disk_failure

    failure = disk_failure(OSError(errno.ENOSPC, "No space left on device", str(path)))
    failure.args = (f"{failure}; {survivors}: free space, then continue with --resume",)
    return failure


def test_a_suite_says_how_it_continues_after_a_full_disk_not_fine_tunes_resume_flag(tmp_path, monkeypatch):
    """A full disk stops a suite's run in the suite's words: fine_tune's "continue with --resume" is no way on for
    someone who ran `python -m bench.harness`; the same command is (and nothing survives a first attempt without
    a checkpoint, so none is named)."""
    from l2o.errors import RunFailed

    out = tmp_path / "run"

    def full_disk(cfg, log=print):
        raise _fine_tunes_disk_failure(out / "results.json", f"nothing to resume, --out {out} is as it was")

    monkeypatch.setattr("fine_tune.run.run", full_disk)
    with pytest.raises(RunFailed) as err:
        resume.run_to_end(Cfg(str(out)))
    assert str(err.value) == f"cannot write {out}/results.json (No space left on device); free space, then {CONTINUES}"
    assert "--resume" not in str(err.value) and err.value.exit_code == 1
