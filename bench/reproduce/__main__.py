"""python -m bench.reproduce <table> [--smoke] [--limit N] [--out DIR] [--dry-run] [--write-configs DIR]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.reproduce import (cells, format_table, list_tables, load_table, run_cell, smoke_cells,
                             summarise, write_configs)
from bench.cli import Parser
from l2o.errors import UserError
from zoo.errors import ZooError


def _parser() -> argparse.ArgumentParser:
    ap = Parser(prog="bench.reproduce",
                                 description="Run every cell of a paper's table and print the table.")
    ap.add_argument("table", nargs="?", help=f"one of: {', '.join(list_tables())} (or a path to a table .yaml)")
    ap.add_argument("--smoke", action="store_true", help="2 steps on the embedded base, offline, one cell per "
                    "(optimizer, PEFT) pair")
    ap.add_argument("--limit", type=int, default=None, help="run at most N cells")
    ap.add_argument("--method", default=None, help="only the methods (rows) whose name contains this text")
    ap.add_argument("--out", default=None, help="run folder (default runs/reproduce/<table>[-smoke])")
    ap.add_argument("--dry-run", action="store_true", help="check every run's configuration and list the cells")
    ap.add_argument("--write-configs", metavar="DIR", help="write one `fine_tune --config` YAML per run and exit")
    ap.add_argument("--list", action="store_true", help="list the tables and exit")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.list or not args.table:
        print("\n".join(list_tables()))
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        table = load_table(args.table)
        out = Path(args.out or f"runs/reproduce/{table['name']}{'-smoke' if args.smoke else ''}")
        if args.write_configs:
            paths = write_configs(table, out, Path(args.write_configs), args.smoke)
            print(f"{len(paths)} fine_tune configs in {args.write_configs} (run each with fine_tune --config FILE)")
            return 0
        todo = [c for c in cells(table) if args.method is None or args.method in c["method"]]
        if not todo:  # an empty table, exit 0
            methods = ", ".join(dict.fromkeys(c["method"] for c in cells(table)))
            raise UserError(f"--method {args.method!r} matches no method of {table['name']} ({methods})")
        if args.limit is not None and args.limit < 1:  # -1 ran all cells but the last
            raise UserError(f"--limit must be a positive integer, got {args.limit}")
        seeds = table.get("seeds") or [0]
        if args.smoke:
            todo, seeds = smoke_cells(todo, args.limit), seeds[:1]
            for c in todo:
                c["sweep"] = {k: v[:1] for k, v in c["sweep"].items()}
        elif args.limit:
            todo = todo[:args.limit]
        if args.dry_run:
            write_configs(table, out, out / "configs", args.smoke)  # validates every run's configuration
            for c in todo:
                print(f"{c['method']:32s} {c['task']:10s} sweep {c['sweep'] or '-'} seeds {seeds}")
            return 0
        rows = []
        for i, c in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {c['method']} / {c['task']}")
            rows.append(summarise(run_cell(table, c, seeds, out, args.smoke, log)))
    except (UserError, ZooError) as err:
        print(f"bench.reproduce: error: {err}", file=sys.stderr)
        return 2
    text = format_table(table, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    (out / "cells.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
