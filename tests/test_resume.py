"""bench.resume: a benchmark's run continues after a kill, and its CPU time counts every attempt (what a killed
attempt spent is charged to the run and the suite's budget, not lost with its process)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import resume


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
            raise RunFailed(f"cannot write {out}/loss.png (No space left on device); the last checkpoint is intact")
        return {"final": {}}

    monkeypatch.setattr("fine_tune.run.run", full_disk)
    with pytest.raises(RunFailed, match="No space left on device"):
        resume.run_to_end(Cfg(str(out)))
    assert attempts == [True] and (out / "checkpoints" / "last.ckpt").read_bytes() == b"state"
