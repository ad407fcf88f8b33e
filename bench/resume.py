"""A benchmark's fine-tune run that survives its benchmark being killed.

The benchmarks (the learnability scan, the harness) record a run only once it has finished. A run cut short
by a kill or a session's end leaves its folder with ``checkpoints/last.ckpt``; the next invocation continues
it from there (``fine_tune --resume`` gives the weights of an uninterrupted run) instead of from step 0, and
starts it again only when it cannot resume (other flags, a damaged checkpoint).

A run's CPU time counts every attempt at it: ``<out>/cpu_s`` holds what the attempts so far spent, rewritten
every ``METER_EVERY_S`` seconds while one runs, so what a killed attempt spent (up to its last write) is charged
to the run and to the suite's budget, not lost with the process."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

METER_FILE = "cpu_s"  # in the run folder: CPU seconds of its attempts so far; removed once the run is recorded
METER_EVERY_S = 30.0


def run_to_end(cfg, say=print) -> dict:
    """fine_tune's result of `cfg`, continuing an unfinished run in `cfg.out`, with ``cpu_s``: the CPU seconds of
    this process's attempt plus those earlier attempts recorded. `say`: one line when it resumes or cannot."""
    from bench.cli import continues_after
    from fine_tune.run import run
    from l2o.errors import RunFailed, UserError
    from l2o.filelock import FolderLockedError
    from l2o.integrations.lightning.checkpoints import intact

    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    with CpuMeter(out) as meter:
        try:
            res = None
            if last.exists():
                try:
                    res = run(replace(cfg, resume=True), log=lambda m: None)
                    before = (f"{meter.before:.0f} CPU-s before it, counted" if meter.metered else
                              "no CPU meter from its earlier attempts, whose CPU is not counted")
                    say(f"         resumed {cfg.out} from its last checkpoint ({before})")
                except (FolderLockedError, RunFailed):
                    raise  # another live process is running it (its folder is not ours to clear), or a full disk
                    #        stopped it, not its checkpoint: that still resumes once fixed
                except UserError as err:
                    say(f"         cannot resume {cfg.out} ({err}); running it again")
            if res is None:
                shutil.rmtree(out, ignore_errors=True)  # what an unresumable interrupted run left
                res = run(cfg, log=lambda m: None)
        except RunFailed as failure:  # in fine_tune's words "continue with --resume": a suite reruns its command
            kept = f"{intact(last)}: " if last.exists() else ""
            raise continues_after(failure, kept) from None
    res["cpu_s"] = meter.total  # the meter stays until the caller has recorded the run (`recorded`)
    return res


def recorded(out) -> None:
    """The run in `out` is recorded with its cpu_s: its meter goes. Callers call it after appending the record, so
    that a kill between the two leaves the meter, and the rerun (which replays the finished run from its last
    checkpoint) still charges every attempt."""
    (Path(out) / METER_FILE).unlink(missing_ok=True)


class CpuMeter:
    """CPU seconds spent on one run folder over every attempt: `before` (what `<out>/cpu_s` held) plus this
    process's CPU time since entering, written back to that file every METER_EVERY_S seconds (by a daemon
    thread) and on exit. One thread per process: time.process_time() is then this run's CPU time."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / METER_FILE
        try:
            self.before, self.metered = float(self.path.read_text()), True
        except (OSError, ValueError):
            self.before, self.metered = 0.0, False  # a first attempt (or one made before this meter existed)
        self.total = self.before
        self._stop = threading.Event()

    def _now(self) -> float:
        return self.before + time.process_time() - self._c0

    def _write(self) -> None:
        from l2o.filelock import write_bytes_atomic

        if self.out.is_dir():  # fine_tune makes the folder (and refuses one it did not make a run in)
            try:
                write_bytes_atomic(self.path, f"{self._now():.1f}\n".encode())
            except OSError:  # a full disk, or the folder being replaced: the next write tries again
                pass

    def _loop(self) -> None:
        while not self._stop.wait(METER_EVERY_S):
            self._write()

    def __enter__(self) -> "CpuMeter":
        self._c0 = time.process_time()
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.total = self._now()
        self._write()  # a failed attempt's CPU counts towards the next one, and a finished one's until it is recorded
