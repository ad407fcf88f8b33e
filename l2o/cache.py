"""Where things are kept on this machine, and whether the Hugging Face Hub may be used.

One helper per concern: every part of the project (models, tasks, the zoo, acquisition) asks here.
Whatever writes into the cache does so inside `writing_cache(folder)`, so that a read-only or full cache
ends in one sentence naming the folder and `L2O_CACHE`, in every CLI.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from l2o.errors import UserError

_TRUE = {"1", "true", "yes", "on"}
# a folder that cannot be written: read-only, full, over quota, not ours
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM}


class CacheError(UserError):
    """The cache folder cannot be written (read-only, full, no permission)."""


def cache_dir() -> Path:
    """The user cache: `$L2O_CACHE` or `~/.cache/l2o` (converted models, task data, the zoo's downloads)."""
    env = os.environ.get("L2O_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "l2o"


def hub_offline(datasets: bool = False) -> bool:
    """True when `HF_HUB_OFFLINE` (or, for dataset loads, also `HF_DATASETS_OFFLINE`) is set."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in names)


def _cache_error(folder: Path, reason: str) -> CacheError:
    return CacheError(f"cannot write to the cache folder {folder} ({reason}); set L2O_CACHE to a writable folder "
                      "with free space")


def _errno_of(err: BaseException) -> int | None:
    """An OSError's number, or the one a library's message carries (Rust I/O errors: "os error 28")."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"os error (\d+)", str(err))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def writing_cache(folder: Path):
    """Writes into the cache `folder` (or below it): an error from a read-only or full filesystem there
    leaves as one `CacheError` sentence naming the folder and L2O_CACHE; other errors are untouched."""
    folder = Path(folder)
    try:
        yield
    except CacheError:
        raise
    except Exception as err:  # noqa: BLE001 - only write failures in the cache are rewritten
        code = _errno_of(err)
        where = getattr(err, "filename", None)
        inside = where is None or Path(where).resolve().is_relative_to(folder.resolve())
        if code not in WRITE_ERRNOS or not inside:
            raise
        raise _cache_error(folder, os.strerror(code)) from None


def check_free(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse to start writing `what` (about `need_bytes`) into the cache `folder` if it cannot hold it or
    cannot be written at all."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise _cache_error(folder,
                           os.strerror(errno.EROFS if os.statvfs(probe).f_flag & os.ST_RDONLY else errno.EACCES))
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise _cache_error(folder, f"{free / 1e6:,.1f} MB free, {what} needs about {need_bytes / 1e6:,.0f} MB")
