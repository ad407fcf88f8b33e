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
