"""SIGTERM stops a run as Ctrl-C does.

A batch scheduler asks a job to stop with SIGTERM, then kills it after a grace period (SLURM at preemption or its
time limit, Kubernetes at eviction, `kill <pid>`, a machine shutting down). Python's default lets SIGTERM end the
process where it stands: the steps since the last periodic checkpoint are lost, and a CPU meter or a half-made
run folder is not written back. With `terminate_as_interrupt()` (the CLIs call it first) SIGTERM raises the
KeyboardInterrupt that Ctrl-C raises, so every place that handles Ctrl-C handles it too; during a fit the
interrupt callback (l2o/integrations/lightning/interrupt.py) takes both signals as a request: finish the step,
save `last.ckpt`, stop. The stop then says which signal it was ("stopped by SIGTERM") and exits 128 + its
number (130 after Ctrl-C, 143 after SIGTERM), as a shell reports a process the signal killed.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt(signum: int | None = None) -> KeyboardInterrupt:
    """The KeyboardInterrupt a stop signal becomes; `signum` (None: Ctrl-C) rides along as `.signum`."""
    err = KeyboardInterrupt()
    err.signum = signum or signal.SIGINT
    return err


def _raise(signum, frame):
    raise interrupt(signum)


def terminate_as_interrupt() -> None:
    """From now on SIGTERM raises KeyboardInterrupt (with `.signum` SIGTERM) in this process, unless a handler of
    its own is installed already. Only the main thread can install one; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise)


def signum_of(err: BaseException) -> int:
    """The signal that stopped a run (`err`: a KeyboardInterrupt); SIGINT when none is said (Python's Ctrl-C)."""
    return getattr(err, "signum", None) or signal.SIGINT


def stopped(err: BaseException) -> str:
    """How a stop reads: "interrupted" after Ctrl-C, "stopped by SIGTERM" after SIGTERM."""
    signum = signum_of(err)
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def exit_code(err: BaseException) -> int:
    """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + int(signum_of(err))


class StopRequest:
    """SIGINT and SIGTERM taken as a request to stop at the next safe point (a training loop's step end).

    `install()` takes both signals on the main thread (only there can Python take one) and keeps the handlers it
    replaced; the first signal is only noted (`signum`), so the step under way finishes; a second, or one after
    `restore()`, raises its KeyboardInterrupt at once. The Lightning callback (integrations/lightning/interrupt.py)
    and `ZOTrainer` (integrations/hf.py) each check `requested` after a step, save, and stop.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _take(self, signum, frame) -> None:
        if self.requested or not self.installed:  # a second signal, or one after restore()
            raise interrupt(signum)
        self.signum = signum

    def install(self) -> bool:
        """Take the stop signals; False (and nothing taken) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = {s: signal.signal(s, self._take) for s in STOP_SIGNALS}
        return True

    def retake(self) -> None:
        """Take the signals back from a handler installed since `install()` (Lightning's own SIGTERM handler)."""
        for s in self._previous:
            signal.signal(s, self._take)

    def restore(self) -> None:
        """Put back the handlers `install()` replaced (one not installed from Python, None, cannot be put back)."""
        for s, handler in self._previous.items():
            if handler is not None:
                signal.signal(s, handler)
        self._previous = {}
