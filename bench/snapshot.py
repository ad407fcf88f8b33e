"""The evidence suite's records, kept beside its doc so that CPU-hours survive a wiped `runs/`.

`<docs>/data/evidence/` mirrors the small files of `--out` that the suite resumes and reports from; it is committed
with the doc. A fresh clone, or a machine whose `runs/` was wiped, then resumes the suite where its records stop and
`--report` rewrites the doc from them, instead of rerunning the runs:

    restore(records, out)   # before the suite: what `out` lacks, or holds fewer records of, from `records`
    save(out, records)      # after each phase: `out`'s records into `records`

    python -m bench.snapshot [--out runs/evidence] [--docs docs]   # save now, e.g. while a long phase runs

Kept (`kept`): every phase's `runs.jsonl` and the artefacts' `rounds.jsonl` (the records, bench/records.py; the
runs' own seed ledgers are not); every run's `history.json` (its loss curve: the harness's reach and k columns);
the scan's `forward_time.json` (its cost model), `panel.json` (the cut it last reported at) and its report
(`table.md`, `learnability.png`: rewriting them needs every scanned task's data, which a machine may lack); the suite's
`suite.json` (the CPU budget it last ran under); and the files of the learned artefacts' folders up to MAX_BYTES
each (a ZO Fine-tuner policy is ~0.5 MB; a meta-initialisation of a whole base is not kept: after a wipe its
rounds' records stand, and the artefacts phase meta-trains it again from them, bench/artefacts.py `rebuild`).
Checkpoints, TensorBoard logs, plots and reports are not kept: they are rewritten from the records, or not needed.

Records only grow. A records file is copied only when its copy on the other side is missing or a prefix of it, and
only up to its last newline (a line still being appended is never kept torn); when neither copy is a prefix of the
other (`--out` was started afresh beside committed records of other runs) the copy is refused in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.records import suite_records
from l2o.errors import UserError
from l2o.filelock import write_atomic

MAX_BYTES = 5 << 20  # an artefact file larger than this is not kept (a base's weights)
ARTEFACT_FOLDERS = ("artefacts/*/round-*/policy", "artefacts/*/round-*/meta-init")
# the scan's report: the one report its records cannot rewrite alone (it profiles every task's prompts, so it needs
# the tasks' data, which a machine may lack: BIG-bench's files since PyPI dropped their sdist)
SCAN_REPORT = ("table.md", "learnability.png")


class SnapshotError(UserError):
    """Two records files that do not extend one another."""


def kept(root: Path) -> list[Path]:
    """The files under `root` that a snapshot keeps, relative to it."""
    root = Path(root)
    files = [*suite_records(root), *root.glob("*/*/history.json"), *root.glob("suite.json"),
             *root.glob("learnability/forward_time.json"), *root.glob("learnability/panel.json"),
             *(root / "learnability" / name for name in SCAN_REPORT)]
    for pattern in ARTEFACT_FOLDERS:
        files += [f for d in root.glob(pattern) for f in d.rglob("*") if f.is_file() and f.stat().st_size <= MAX_BYTES]
    return sorted({f.relative_to(root) for f in files if f.is_file()})


def _write(dst: Path, data: bytes) -> None:
    """Atomically (l2o.filelock.write_atomic: a temporary of its own, fsync, rename): two suite processes may save
    at once, and a full disk leaves the kept file as it was."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, lambda f: f.write(data))


def _whole_lines(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:data.rfind(b"\n") + 1]


def _copy_records(src: Path, dst: Path) -> bool:
    """`src`'s whole lines onto `dst` when `dst` is missing or a prefix of them (True: copied)."""
    new = _whole_lines(src)
    old = dst.read_bytes() if dst.exists() else b""
    if new.startswith(old):
        if len(new) == len(old):
            return False
        _write(dst, new)
        return True
    if old.startswith(new):
        return False  # dst is ahead
    raise SnapshotError(f"{src} and {dst} hold different runs (neither extends the other); keep one of them, or give "
                        f"the suite another --out or --docs")


def _copy(src_root: Path, dst_root: Path, overwrite: bool) -> int:
    n, records = 0, set(suite_records(src_root))
    for rel in kept(src_root):
        src, dst = src_root / rel, dst_root / rel
        if src in records:
            n += _copy_records(src, dst)
        elif not dst.exists() or (overwrite and dst.read_bytes() != src.read_bytes()):
            _write(dst, src.read_bytes())
            n += 1
    return n


def restore(records: Path, out: Path) -> int:
    """Files of `records` that `out` lacks (records files: also those it holds fewer lines of); how many."""
    return _copy(Path(records), Path(out), overwrite=False) if Path(records).is_dir() else 0


def save(out: Path, records: Path) -> int:
    """`out`'s kept files into `records` (records files only ever extended); how many changed. An `out` that lacks
    a kept records file, or holds fewer of its lines, is refused: its other files (a panel, a forward time) are
    not those of the kept runs, and would overwrite theirs."""
    out, records = Path(out), Path(records)
    if not out.is_dir():
        return 0
    for kept_file in suite_records(records):
        mine = out / kept_file.relative_to(records)
        if not mine.exists() or len(_whole_lines(mine)) < kept_file.stat().st_size:
            raise SnapshotError(f"{out} is behind the kept records ({mine} lacks runs that {kept_file} holds): "
                                "restore them first (the suite does, before it runs) or give the suite's --out")
    return _copy(out, records, overwrite=True)


def main(argv=None) -> int:
    from bench.cli import Parser, cli_exit

    ap = Parser("bench.snapshot", description="save the evidence suite's records beside its doc now")
    ap.add_argument("--out", default="runs/evidence", help="the suite's --out")
    ap.add_argument("--docs", default="docs", help="the suite's --docs (the records go to <docs>/data/evidence)")
    args = ap.parse_args(argv)
    records = Path(args.docs) / "data" / "evidence"

    def run():
        if not Path(args.out).is_dir():
            raise UserError(f"no suite folder {args.out} (give the suite's --out)")
        n = save(Path(args.out), records)
        print(f"bench.snapshot: {n} file(s) saved; {records} holds {len(kept(records))} (commit them)", flush=True)

    return cli_exit("bench.snapshot", run)


if __name__ == "__main__":
    raise SystemExit(main())
