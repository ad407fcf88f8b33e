"""One run per --out folder (lock naming the holder, stale locks taken over) and clean-up after failure."""

import os
import signal
import threading

import pytest

from l2o.integrations.lightning import folder as run_folder
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


def test_a_released_lock_names_no_holder_and_a_symlink_named_like_a_temp_file_stays(tmp_path):
    """live_holder reports the live process holding a folder, never the one that let it go; remove_stale_temps removes
    the atomic writes' temp files, never a symlink that merely carries such a name (nor what it points to)."""
    from l2o.filelock import live_holder, remove_stale_temps

    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        assert live_holder(out) == os.getpid()
    assert live_holder(out) is None
    target = tmp_path / "kept.bin"
    target.write_text("mine")
    (out / ".tmp-last.ckpt-0123456789ab").symlink_to(target)
    (out / ".tmp-config.yaml-a1b2c3d4e5f6").write_text("stale")
    assert remove_stale_temps(out) == 1
    assert (out / ".tmp-last.ckpt-0123456789ab").is_symlink() and target.read_text() == "mine"


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


def test_the_temp_file_of_a_write_killed_mid_way_is_removed_by_the_next_run_and_nothing_else(tmp_path):
    """kill -9 during an atomic write leaves .tmp-<name>-<hex> beside the target; the next run holding the folder
    removes it (and says so), never a live writer's, another owner's or a foreign name."""
    out = tmp_path / "run"
    holder = hold_run_folder(out, writing="checkpoints/last.ckpt")
    try:
        (temp,) = (out / "checkpoints").iterdir()  # the real writer's temp file, half written
        assert temp.name.startswith(".tmp-last.ckpt-")
        with pytest.raises(UserError, match="in use by process"):
            RunFolder(out).__enter__()
        assert temp.exists()  # a live writer's temp file is its own
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    foreign = [out / ".tmp-notes", out / "my.tmp-last.ckpt-0123456789ab", out / ".tmp-last.ckpt-0123456789abc",
               out / "registry" / ".tmp-zoo.json-0123456789ab"]  # the registry has its own lock: its writers' files
    (out / "registry").mkdir()
    (out / "registry" / ".zoo.lock").touch()
    for f in foreign:
        f.write_text("not a stale temp of this run")
    (out / ".tmp-config.yaml-a1b2c3d4e5f6").write_text("stale")
    lines = []
    with RunFolder(out, log=lines.append):
        assert not temp.exists() and not (out / ".tmp-config.yaml-a1b2c3d4e5f6").exists()
        assert all(f.read_text() == "not a stale temp of this run" for f in foreign)
    assert lines == [f"removed 2 stale temp file(s) that an interrupted write left in {out}"]
    with RunFolder(out, log=lines.append):
        pass
    assert len(lines) == 1  # nothing removed: nothing said


def _age(folder, seconds: float) -> None:
    """Set the modification time of `folder` and everything in it `seconds` into the past."""
    import time

    then = time.time() - seconds
    for here, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            os.utime(os.path.join(here, name), (then, then))
    os.utime(folder, (then, then))


def test_a_temp_folder_without_a_lock_is_removed_once_unchanged_for_an_hour_never_a_live_writers(tmp_path):
    """Code from before writer_folder's locks made the same temp folders without a lock file, so they stayed in the
    cache for good. The next writer_folder in that folder removes one in which nothing has changed for
    UNLOCKED_TEMP_AGE_S (one hour), and leaves a younger one, one with a recent change deep inside, a live writer's
    (however old its files: its lock decides) and foreign names."""
    from l2o.filelock import UNLOCKED_TEMP_AGE_S, writer_folder
    from tests.helpers import hold_writer_folder

    cache, prefix = tmp_path / "cache", ".staging-"
    writer, live = hold_writer_folder(cache, prefix)
    try:
        old, young, busy, foreign = (cache / f"{prefix}{s}" for s in ("oldcode1", "oldcode2", "oldcode3", "notes"))
        for folder in (old, young, busy, foreign):
            (folder / "entry").mkdir(parents=True)
            (folder / "entry" / "blob.bin").write_bytes(b"half a download")
        for folder in (old, busy, foreign, live):
            _age(folder, UNLOCKED_TEMP_AGE_S + 60)
        _age(young, UNLOCKED_TEMP_AGE_S - 60)
        (busy / "entry" / "blob.bin").write_bytes(b"still being written")  # its writer wrote a minute ago
        assert UNLOCKED_TEMP_AGE_S == 3600

        lines = []
        with writer_folder(cache, prefix, log=lines.append) as mine:
            assert mine.is_dir()
        assert lines == [f"removed 1 stale temp folder(s) {prefix}* that an interrupted download or copy left in "
                         f"{cache}"]
        assert not old.exists()
        assert all((f / "entry" / "blob.bin").is_file() for f in (young, busy, foreign))
        assert (live / "half.bin").is_file()  # a live writer's, though its files are older than an hour
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with writer_folder(cache, prefix, log=lines.append):  # its writer died: now it goes, and only it
        pass
    assert not live.exists() and lines[-1].startswith("removed 1 stale temp folder(s)")
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name for f in (young, busy, foreign))


def test_a_survivor_cleans_up_for_a_lost_holder_still_closing_its_lock_and_not_for_a_live_one(tmp_path, monkeypatch):
    """Rank 0 holds --out and ranks > 0 adopt its record. A survivor can learn of a killed holder's death before the
    kernel has closed the holder's lock file (seen as a flaky CI failure under load): it waits for the lock, then
    removes what the run created. A holder that stays alive keeps its lock, and its folder is left to it."""
    top = tmp_path / "new"
    out = top / "run"
    state = {"created_top": str(top), "before": [], "last_mtime": None}

    def fail_as_survivor():
        survivor = RunFolder(out, holder=False)
        survivor.adopt(state)
        with pytest.raises(ValueError), survivor:
            raise ValueError("the collective lost rank 0")

    holder = hold_run_folder(out)
    (out / "config.yaml").write_text("written by the holder\n")
    threading.Timer(0.5, holder.kill).start()  # still holding when the survivor fails, gone half a second later
    fail_as_survivor()
    holder.wait()
    assert not top.exists()

    holder = hold_run_folder(out)
    (out / "config.yaml").write_text("written by the holder\n")
    monkeypatch.setattr(run_folder, "HOLDER_EXIT_S", 0.2)
    try:
        fail_as_survivor()
        assert (out / "config.yaml").exists()  # the live holder's: it cleans up itself
    finally:
        holder.kill()
        holder.wait()
