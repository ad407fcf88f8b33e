"""The bench suites' run records: one JSON object a line in a ``runs.jsonl`` (or ``rounds.jsonl``), appended once
a run has finished and read on restart to skip the finished runs. The one reader and the one writer of them.

A record is large (~100 KB: per-example lists), so a kill or a full disk during its append can leave a torn last
line. ``read_records`` drops such a line with a warning (its run simply reruns) and refuses a damaged line
anywhere else in one sentence naming the file and line; ``append_record`` first cuts a torn last line off (so
the new record is never glued onto it), then appends durably through ``l2o.filelock.append_bytes`` (fsync; a
failed append leaves the file as it was). It does both under ``records_lock`` (an flock on ``runs.lock`` beside
``runs.jsonl``): another process's append still in progress is a torn line to anyone without it, and cutting it
off would lose that record. A reader that shares its file with a live writer (the learnability scan's shards)
reads under the same lock. A full disk during an append is the suite's one line (`l2o.errors.RunFailed`, exit 1):
free space, then the same command continues (the unrecorded run replays from its last checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from bench.cli import continues_after
from l2o.errors import UserError
from l2o.filelock import append_bytes, exclusive
from l2o.integrations.lightning.failures import disk_failure

SUITE_RECORDS = ("*/runs.jsonl", "artefacts/*/rounds.jsonl",  # under a suite's --out: each phase's, each artefact's
                 "artefacts/*/rebuilds.jsonl")                   # and its rounds meta-trained again after a wipe
_CHUNK = 1 << 16  # how far append_record reads back at a time to find the last newline


def suite_records(out) -> list[Path]:
    """The records files under a suite's `out` (bench.evidence's layout), in a fixed order."""
    return [p for pattern in SUITE_RECORDS for p in sorted(Path(out).glob(pattern))]


class RecordsError(UserError):
    """A records file with a damaged line before its last one."""


def _record(line: bytes) -> dict | None:
    """The JSON object on `line`, None when it is not one."""
    try:
        rec = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    return rec if isinstance(rec, dict) else None


def read_records(path) -> list[dict]:
    """The records in `path` ([] when it does not exist). A torn last line (no newline after it, not a JSON
    object: an append cut short) is dropped with a one-line warning on stderr; a line that is not a JSON object
    anywhere else raises `RecordsError` naming the file and the line. Blank lines are skipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    *lines, tail = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rec = _record(line)
        if rec is None:
            raise RecordsError(f"{path} line {number} is not a JSON record (the file is damaged there); remove that "
                               "line and its run reruns") from None
        records.append(rec)
    if tail.strip():
        rec = _record(tail)
        if rec is None:
            print(f"warning: {path}: ignoring its torn last line {len(lines) + 1} ({len(tail)} bytes, a write cut "
                  "short); that run reruns", file=sys.stderr, flush=True)
        else:
            records.append(rec)  # complete but for its newline: append_record adds that
    return records


def located(record: dict, path) -> dict:
    """`record`, read from the records file `path`, with its `paths` (history, plot, TensorBoard, model) in its run
    folder beside `path`, where a suite keeps its runs (`<out>/<run name>`). A run writes them as it ran: under its
    --out, from its working folder (``runs/evidence/prefix/<run>/history.json``), so a suite reported with another
    --out, from another folder, or from the records a fresh clone restores (bench/snapshot.py) found none of them.
    A path outside the run's folder stays as it is."""
    run = Path((record.get("config") or {}).get("out") or "")
    if not run.name or not isinstance(record.get("paths"), dict):
        return record
    here = Path(path).parent / run.name

    def moved(p):
        try:
            return str(here / Path(p).relative_to(run))
        except (TypeError, ValueError):  # None (no model saved), or not in the run's folder
            return p

    return {**record, "paths": {k: moved(v) for k, v in record["paths"].items()}}


@contextlib.contextmanager
def records_lock(path):
    """Hold the lock every append to the records file `path` holds (an flock on its `.lock` sibling, created if
    missing): inside it, no other process is halfway through an append. Not re-entrant: `append_record` takes it."""
    with exclusive(Path(path).with_suffix(".lock")):
        yield


def append_record(path, record: dict) -> None:
    """Append `record` to `path` (created if missing) as one JSON line, durably, under `records_lock`. A torn last
    line (an append cut short) is cut off first, with a one-line warning on stderr; a last line that is a whole
    record but lacks its newline gets it. A failed append leaves the file as it was and raises OSError, or
    `RunFailed` for a full or failing disk (the suite stops in one line; its next invocation continues)."""
    data = (json.dumps(record) + "\n").encode("utf-8")
    try:
        with records_lock(path):
            _append_line(Path(path), data)
    except OSError as err:
        failure = disk_failure(err)
        if failure is None:
            raise
        raise continues_after(failure) from None


def _append_line(path: Path, data: bytes) -> None:
    start = _last_line_start(path)
    if start is not None:
        with path.open("rb") as f:
            f.seek(start)
            tail = f.read()
        if _record(tail) is not None:
            data = b"\n" + data
        else:
            print(f"warning: {path}: cutting off its torn last line ({len(tail)} bytes, a write cut short) before "
                  "appending; that run reruns", file=sys.stderr, flush=True)
            os.truncate(path, start)
    append_bytes(path, data)


def _last_line_start(path: Path) -> int | None:
    """Where the unterminated last line of `path` starts; None when the file is missing, empty or ends in a
    newline."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return None
        pos = end
        while pos > 0:
            size = min(_CHUNK, pos)
            pos -= size
            f.seek(pos)
            cut = f.read(size).rfind(b"\n")
            if cut >= 0:
                return pos + cut + 1
        return 0
