"""The exceptions the zoo raises for anything a user can see; both are `l2o.errors.UserError`s, which every
CLI catches.

``ZooError``: a user-facing failure (bad or unknown id, bad path, a refused publish); the ``zoo`` CLI
exits 2. ``IntegrityError``: bytes that fail their checks (sha256, size, a corrupt or inconsistent
copy, a damaged manifest, no verified copy obtainable); the CLI exits 1.
"""

from l2o.errors import UserError


class ZooError(UserError):
    """A user-facing zoo failure; ``str(err)`` is one sentence, suitable for ``zoo: error: ...``."""


class IntegrityError(ZooError):
    """Content failed verification (hash, size, consistency) or could not be obtained verified."""
