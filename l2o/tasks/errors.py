"""The tasks' error: a task, its source or its data cannot be used (one sentence, a `UserError`)."""

from l2o.errors import UserError


class TaskError(UserError):
    """A task cannot be found, loaded, or its data is malformed (one sentence, naming task and row)."""
