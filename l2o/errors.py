"""The one base class for errors a user can cause (bad flag, unknown model, wrong file, bad data).

Every such error in `l2o` and the apps subclasses `UserError`; `str(err)` is one sentence. The CLIs
catch `UserError` (and `zoo.errors.ZooError`) and print `<prog>: error: <sentence>` with exit 2;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A failure the user can fix; its message is one sentence naming what to change."""


class ConfigError(UserError):
    """A bad option, hyperparameter or config file (both apps' flags, a module's hyperparameters)."""
