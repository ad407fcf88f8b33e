"""Where things are kept on this machine, and whether the Hugging Face Hub may be used.

One helper per concern: every part of the project (models, tasks, the zoo, acquisition) asks here.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The user cache: `$L2O_CACHE` or `~/.cache/l2o` (converted models, task data, the zoo's downloads)."""
    env = os.environ.get("L2O_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "l2o"


def hub_offline(datasets: bool = False) -> bool:
    """True when `HF_HUB_OFFLINE` (or, for dataset loads, also `HF_DATASETS_OFFLINE`) is set."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in names)
