"""One run per --out folder (lock naming the holder, stale locks taken over) and clean-up after failure."""

import os
import signal

import pytest

from l2o.integrations.lightning.folder import RunFolder, RunInterrupted
from l2o.errors import UserError
from l2o.filelock import RunLock

from tests.helpers import hold_run_folder


def test_a_held_folder_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = hold_run_folder(out)
    try:
        with pytest.raises(UserError, match=rf"--out {out} is in use by process {holder.pid}; wait for it"):
            RunFolder(out).__enter__()
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run removed nothing of the holder's
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunFolder(out) as folder:  # the killed holder's lock is stale: taken over
        assert folder.lock.stale_pid == holder.pid
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunLock(out).acquire()  # the same process, another claim: still refused
    with RunFolder(out) as folder:
        assert folder.lock.stale_pid is None  # released cleanly: nothing stale


def test_a_failed_run_removes_only_what_it_created(tmp_path):
    fresh = tmp_path / "new" / "run"
    with pytest.raises(ValueError), RunFolder(fresh):
        (fresh / "tb").mkdir()
        raise ValueError("bad data")
    assert not (tmp_path / "new").exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    with pytest.raises(RunInterrupted, match="interrupted before the first checkpoint; nothing to resume"), \
            RunFolder(old):
        (old / "config.yaml").write_text("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]

    with pytest.raises(RunInterrupted, match="interrupted; continue with --resume"), RunFolder(old):
        (old / "checkpoints").mkdir()
        (old / "checkpoints" / "last.ckpt").write_bytes(b"state")
        raise KeyboardInterrupt
    assert (old / "checkpoints" / "last.ckpt").exists()  # resumable: kept
