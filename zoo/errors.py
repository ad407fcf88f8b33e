"""The one exception type the zoo raises for anything a user can cause."""


class ZooError(Exception):
    """A user-facing zoo failure; ``str(err)`` is one sentence, suitable for ``zoo: error: ...``."""
