"""The registry's declarations as data, for the CLIs (which must answer `--help` without importing torch).

`l2o/optim/catalog.json` is made from the classes in `l2o.optim.REGISTRY`: every method's paper,
update, forwards per step, declared hyperparameters with their defaults and declared per-parameter buffers
(l2o/footprint.py, which the `--dry-run` memory plans count); and the names of the engine's
noise sources (`l2o.noise.SOURCES`). `fine_tune`'s config fields and flags and `--list-optimizers` read it;
the README's method table is rendered from it.

    python -m l2o.catalog            # rewrite catalog.json and the README's method table
    python -m l2o.catalog --check    # exit 1 when either is out of date (a test runs this)

Nothing here is written by hand: after adding a method (its module and one registry line), run the first.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path

from l2o.hparams import Hyperparameter

CATALOG = Path(__file__).with_name("optim") / "catalog.json"
README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_BEGIN = "<!-- methods table: generated from the declarations by `python -m l2o.catalog` -->"
TABLE_END = "<!-- end of the methods table -->"


def build() -> dict:
    """The catalog of the registry as it is now (imports the optimizers, so torch)."""
    from l2o.noise import SOURCES
    from l2o.optim import REGISTRY, forwards_per_step

    flags: dict[str, dict] = {}
    methods: dict[str, dict] = {}
    for name, cls in REGISTRY.items():
        declared = cls.declared()
        for hp in declared.values():
            entry = flags.setdefault(hp.name, {**hp.as_dict(), "methods": []})
            if entry["type"] != hp.type_name:
                raise TypeError(f"{name} declares {hp.name} as {hp.type_name}, another method as {entry['type']}: "
                                "one flag name needs one type")
            entry["methods"].append(name)
        methods[name] = {"class": f"{cls.__module__}:{cls.__qualname__}", "paper": cls.paper, "summary": cls.summary,
                         "forwards_per_step": forwards_per_step(name), "replayable": cls.replayable,
                         "distributed": cls.distributed, "needs_adapter": cls.needs_adapter,
                         "step_size": cls.step_size, "hyperparameters": {n: hp.as_dict() for n, hp in declared.items()},
                         "buffers": [b.as_dict() for b in cls.buffers]}
        if cls.buffer_args:
            methods[name]["buffer_args"] = dict(cls.buffer_args)
        if cls.peft_defaults:
            for peft, values in cls.peft_defaults.items():
                cls.resolve(dict(values))  # each a valid value (a ConfigError at `make catalog`, not at a run)
            methods[name]["peft_defaults"] = {peft: dict(v) for peft, v in cls.peft_defaults.items()}
    for entry in flags.values():
        entry.pop("default")  # defaults are per method
    return {"flags": flags, "methods": methods, "noise_sources": list(SOURCES),
            "noise_options": {name: _constructor_defaults(cls) for name, cls in SOURCES.items()}}


def _constructor_defaults(cls) -> dict:
    """A noise source's options and their defaults (what a run that names it gets; the table's size sizes the
    memory plans' "noise table" row), less the path, which changes no value and no memory."""
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k not in ("self", "path") and p.default is not inspect.Parameter.empty}


def text(catalog: dict) -> str:
    return json.dumps(catalog, indent=1, ensure_ascii=False) + "\n"


@lru_cache(maxsize=1)
def load() -> dict:
    """The stored catalog (no torch)."""
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def flags() -> dict[str, Hyperparameter]:
    """Every hyperparameter name any method declares (help, type and bounds of its first declaration)."""
    return {name: Hyperparameter.from_dict(name, {**d, "default": None}) for name, d in load()["flags"].items()}


def methods_taking(name: str) -> list[str]:
    return list(load()["flags"][name]["methods"])


def noise_sources() -> list[str]:
    """The engine's noise sources (l2o.noise.SOURCES), the first the default."""
    return list(load()["noise_sources"])


def noise_options(name: str) -> dict:
    """The options of noise source `name` at their defaults (l2o.noise.SOURCES), e.g. the table's size."""
    return dict(load()["noise_options"][name])


def method_names() -> list[str]:
    return sorted(load()["methods"])


def entry(name: str) -> dict:
    """A method's entry: class, paper, summary, forwards_per_step, replayable, distributed, needs_adapter,
    step_size."""
    return load()["methods"][name]


def defaults(method: str, peft: str | None = None) -> dict:
    """The declared defaults of `method`, with its own for the `peft` mode where it declares them (no torch)."""
    m = load()["methods"][method]
    return {**{n: d["default"] for n, d in m["hyperparameters"].items()}, **m.get("peft_defaults", {}).get(peft, {})}


def _in_modes(m: dict) -> str:
    """A method's own defaults per --peft mode, as the listings show them ("" for none)."""
    return "".join(f"; with --peft {peft}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in values.items())
                   for peft, values in m.get("peft_defaults", {}).items())


def buffers(method: str) -> tuple:
    """`method`'s declared per-parameter buffers (l2o.footprint.Buffer) and the defaults of the constructor
    arguments they may name (no torch)."""
    from l2o.footprint import Buffer

    m = load()["methods"][method]
    return tuple(Buffer.from_dict(b) for b in m["buffers"]), dict(m.get("buffer_args", {}))


def _fmt(value) -> str:
    return "unset" if value is None else (f"{value:g}" if isinstance(value, float) else str(value).lower()
                                          if isinstance(value, bool) else str(value))


def listing(catalog: dict | None = None) -> str:
    """`fine_tune --list-optimizers`: each method, its paper, forwards per step and defaults."""
    catalog = catalog or load()
    lines = []
    for name in sorted(catalog["methods"]):
        m = catalog["methods"][name]
        lines.append(f"{name}  ({m['paper']}; {m['forwards_per_step']} forwards/step)")
        lines.append(f"    update: {m['summary']}")
        lines.append("    " + "  ".join(f"--{n.replace('_', '-')} {_fmt(d['default'])}"
                                         for n, d in m["hyperparameters"].items()) + _in_modes(m))
    return "\n".join(lines)


def readme_table(catalog: dict) -> str:
    """The README's method table (between TABLE_BEGIN and TABLE_END)."""
    rows = ["| name | module | forwards/step | update | paper | defaults |", "|---|---|---|---|---|---|"]
    for name, m in catalog["methods"].items():
        module = "l2o/" + m["class"].split(":")[0].split(".", 1)[1].replace(".", "/") + ".py"
        hps = ", ".join(f"{n} {_fmt(d['default'])}" for n, d in m["hyperparameters"].items()) + _in_modes(m)
        rows.append(f"| `{name}` | `{module}` | {m['forwards_per_step']} | {m['summary']} | {m['paper']} | {hps} |")
    return "\n".join([TABLE_BEGIN, *rows, TABLE_END])


def with_table(readme: str, table: str) -> str:
    if TABLE_BEGIN not in readme or TABLE_END not in readme:
        raise ValueError(f"the README has no methods table markers ({TABLE_BEGIN!r} ... {TABLE_END!r})")
    head, rest = readme.split(TABLE_BEGIN, 1)
    return head + table + rest.split(TABLE_END, 1)[1]


def stale() -> list[str]:
    """The generated files that differ from what the declarations give now."""
    catalog = build()
    out = []
    if not CATALOG.is_file() or CATALOG.read_text(encoding="utf-8") != text(catalog):
        out.append(str(CATALOG))
    if README.is_file():
        readme = README.read_text(encoding="utf-8")
        if with_table(readme, readme_table(catalog)) != readme:
            out.append(str(README))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m l2o.catalog", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that the generated files are current")
    args = p.parse_args(argv)
    if args.check:
        out = stale()
        for path in out:
            print(f"{path} is out of date with the optimizers' declarations: run python -m l2o.catalog",
                  file=sys.stderr)
        return 1 if out else 0
    from l2o.filelock import write_bytes_atomic

    catalog = build()
    write_bytes_atomic(CATALOG, text(catalog).encode("utf-8"))
    if README.is_file():
        write_bytes_atomic(README, with_table(README.read_text(encoding="utf-8"), readme_table(catalog)).encode())
    print(f"wrote {CATALOG} ({len(catalog['methods'])} methods) and the README's method table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
