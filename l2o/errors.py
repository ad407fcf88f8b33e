"""The one base class for errors a user can cause (bad flag, unknown model, wrong file, bad data).

Every such error in `l2o` and the apps subclasses `UserError`; `str(err)` is one sentence. The CLIs
catch `UserError` (and `zoo.errors.ZooError`) and print `<prog>: error: <sentence>` with exit
`err.exit_code` (2; 1 for `RunFailed`); anything else is a bug and keeps its traceback. Their flags go through
`OneLineParser`, so argparse's own refusals are one line too.
"""

from __future__ import annotations

import argparse


class UserError(ValueError):
    """A failure the user can fix; its message is one sentence naming what to change."""

    exit_code = 2


class ConfigError(UserError):
    """A bad option, hyperparameter or config file (both apps' flags, a module's hyperparameters)."""


class RunFailed(UserError):
    """A run stopped by its surroundings, not by its input: a full disk, a lost process. `str(err)` says
    what happened and what survives (the checkpoint `--resume` continues from); `what` is what happened alone
    (the run's folder adds what survives to the message), and `fix` what to do first ("free space"), if anything."""

    exit_code = 1

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.what, self.fix = message, fix


class PlacementError(UserError):
    """A placement that cannot work (an impossible option, a read-only store of trainable weights)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals (an unknown flag, a bad value) are one line like every `UserError` the CLIs print,
    `<prog>: error: <message> (see `<command> --help`)`, exit 2, where plain argparse prints its whole usage first.
    `command`: how a user runs it (default `prog`; a subcommand's parser, `zoo download`, gets its own)."""

    def __init__(self, *args, command: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.command = command or self.prog

    def error(self, message):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see `{self.command} --help`)\n")
