"""The bench suites' command-line exit: a user error (`l2o.errors.UserError`: a bad flag, a damaged runs.jsonl, no
panel yet) is one line on stderr, `<prog>: error: <sentence>`, and its exit code (2); anything else is a bug and
keeps its traceback. Ctrl-C (a KeyboardInterrupt, the fine-tuning run's `RunInterrupted`) is one line too, exit
130, and so is SIGTERM, exit 143 (l2o/stop.py: a scheduler's stop saves the run under way as Ctrl-C does): the
suites keep their finished runs in runs.jsonl, so the same command continues. A suite's `main` raises, so
`bench.evidence` can call another suite's in-process and stop on its error; the suite's `python -m` entry goes
through `cli_exit`, and so does every measurement's (`resumable=False`: it keeps no runs.jsonl)."""

from __future__ import annotations

import math
import sys
from typing import Callable

from l2o.errors import OneLineParser, RunFailed, UserError
from l2o.stop import exit_code, stopped, terminate_as_interrupt

CONTINUES = "the same command continues (the runs its runs.jsonl records are not run again)"


def stop_line(err: BaseException, resumable: bool = True) -> str:
    """What a suite says when Ctrl-C or SIGTERM (`err`) stopped it; a measurement that keeps no runs.jsonl
    (`resumable=False`) says only that."""
    return f"{stopped(err)}; {CONTINUES}" if resumable else stopped(err)


def continues_after(failure: RunFailed, kept: str = "") -> RunFailed:
    """`failure` (a full disk, from a run or from appending its record) as a suite says it: what happened, what to
    do first, and that the same command then continues; `kept`: what survives (a run's checkpoint). fine_tune's
    own words end in "continue with --resume", which is not how a suite goes on."""
    then = f"{failure.fix}, then " if failure.fix else ""
    return RunFailed(f"{failure.what}; {kept}{then}{CONTINUES}", failure.fix)


def cli_exit(prog: str, body: Callable[[], object], resumable: bool = True) -> int:
    """Run `body`; its return code (0 when it returns anything but an int), or the exit code of the UserError it
    raised, said in one line; 130 after Ctrl-C, 143 after SIGTERM. `resumable`: `body` keeps its finished runs in a
    runs.jsonl, so the stop line says that the same command continues."""
    terminate_as_interrupt()
    try:
        code = body()
        return code if isinstance(code, int) else 0
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        print(f"{prog}: {stop_line(err, resumable)}", file=sys.stderr)
        return exit_code(err)


def Parser(prog: str, **kwargs) -> OneLineParser:
    """A suite's flags (`prog`: bench.<suite>): argparse's refusals are one line, as its UserErrors are."""
    return OneLineParser(prog=prog, command=f"python -m {prog}", **kwargs)


def numbers(text, flag: str, kind=float) -> list:
    """A comma-separated list of `kind` (float or int: seeds); a UserError naming `flag` otherwise (these flags were
    read with float()/int() after argparse, so a typo was a traceback)."""
    try:
        return [kind(x) for x in str(text).split(",")]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UserError(f"{flag} must be comma-separated {what}, got {text!r}") from None


def lr_grid(text, flag: str = "--lr-grid") -> list[float]:
    """An lr grid's multipliers, ascending: positive finite numbers (a 0 divided by zero in `select_runs`)."""
    grid = sorted(numbers(text, flag))
    if not all(math.isfinite(g) and g > 0 for g in grid):
        raise UserError(f"{flag} must be positive numbers (multipliers of the lr), got {text!r}")
    return grid


def check_counts(args, *names: str) -> None:
    """Each of `args`'s `names` that is set (a forward budget, a batch size, ...) is an integer >= 1: a budget of 0
    or -8 ran one step per run without a word."""
    for name in names:
        value = getattr(args, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
