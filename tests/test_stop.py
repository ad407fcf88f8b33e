"""l2o/stop.py's StopRequest: the one piece both training loops (Lightning's callback and ZOTrainer) stop by."""

import os
import signal
import threading

import pytest

from l2o.stop import StopRequest, signum_of


@pytest.fixture
def handlers():
    """The process's own SIGINT/SIGTERM handlers, put back after the test whatever it did."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield before
    for s, h in before.items():
        signal.signal(s, h)


def test_the_first_signal_is_noted_a_second_raises_and_restore_gives_the_handlers_back(handlers):
    note = StopRequest()
    assert note.install() and note.installed and not note.requested
    os.kill(os.getpid(), signal.SIGTERM)       # a scheduler's request: only noted, the step goes on
    assert note.requested and note.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt) as err:
        os.kill(os.getpid(), signal.SIGINT)    # the user insists: at once
    assert signum_of(err.value) == signal.SIGINT
    ours = signal.getsignal(signal.SIGTERM)
    note.restore()
    assert {s: signal.getsignal(s) for s in handlers} == handlers and not note.installed
    signal.signal(signal.SIGTERM, ours)        # put back by someone else after the fit (Lightning does)
    with pytest.raises(KeyboardInterrupt) as err:
        os.kill(os.getpid(), signal.SIGTERM)   # no loop checks the note any more: a signal must not be lost
    assert signum_of(err.value) == signal.SIGTERM


def test_after_restore_a_signal_reaching_the_note_raises_even_if_none_came_before(handlers):
    """Restored before any signal came (a fit that ended normally), then put back by someone else: the note is no
    longer read by any loop, so a SIGTERM arriving there must raise, not be noted and lost."""
    note = StopRequest()
    note.install()
    ours = signal.getsignal(signal.SIGTERM)
    note.restore()
    signal.signal(signal.SIGTERM, ours)
    with pytest.raises(KeyboardInterrupt) as err:
        os.kill(os.getpid(), signal.SIGTERM)
    assert signum_of(err.value) == signal.SIGTERM and not note.requested


def test_sigterm_becomes_an_interrupt_unless_the_process_has_a_handler_of_its_own(handlers):
    from l2o.stop import terminate_as_interrupt

    def own(signum, frame):
        pass

    signal.signal(signal.SIGTERM, own)
    terminate_as_interrupt()
    assert signal.getsignal(signal.SIGTERM) is own
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    terminate_as_interrupt()
    with pytest.raises(KeyboardInterrupt) as err:
        os.kill(os.getpid(), signal.SIGTERM)
    assert signum_of(err.value) == signal.SIGTERM


def test_retake_takes_the_signals_back_from_a_handler_installed_since(handlers):
    note = StopRequest()
    note.install()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # as Lightning installs its own SIGTERM handler in fit
    note.retake()
    os.kill(os.getpid(), signal.SIGTERM)
    assert note.signum == signal.SIGTERM
    note.restore()
    assert signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]   # the original, not Lightning's


def test_off_the_main_thread_nothing_is_taken(handlers):
    note, took = StopRequest(), []
    worker = threading.Thread(target=lambda: took.append(note.install()))
    worker.start()
    worker.join()
    assert took == [False] and not note.installed
    assert {s: signal.getsignal(s) for s in handlers} == handlers
