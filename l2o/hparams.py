"""A method's hyperparameters, declared once on its class (no torch here: the CLIs read them fast).

    class MeZO(ZOOptimizer):
        hyperparameters = (
            HP("num_directions", int, 1, "n-SPSA directions q per step", "MeZO sec. 2 (n = 1 in all LLM runs)", low=1),
            ...)

`ZOOptimizer` merges the declarations along the class's bases (a subclass may re-declare a name to change
its default or help, or drop an inherited one), fills in the defaults, and checks every value against its
declaration before the optimizer exists. The registry's defaults, `fine_tune`'s config fields and flags,
`--list-optimizers`, the README's method table and the contract tests are all made from the same
declarations (`l2o.catalog`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from l2o.errors import ConfigError

TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str"}
_PHRASES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _is(kind: type, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: `name`, `type` (int, float, bool, str, or a tuple such as (float, str)),
    `default` (None: "decided by the method", e.g. BSZO's m = k + 1), `help` (one line), `paper` (where
    the default comes from). Bounds: `low <= value` (or `low < value` with `open_low`), `value <= high`;
    `choices` for strings."""

    name: str
    type: type | tuple
    default: object
    help: str
    paper: str = ""
    low: float | None = None
    open_low: bool = False
    high: float | None = None
    choices: tuple = ()

    @property
    def types(self) -> tuple:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    @property
    def type_name(self) -> str:
        return "|".join(TYPE_NAMES[t] for t in self.types)

    def describe(self) -> str:
        """What a valid value is, as the end of a sentence ("a number > 0", "mezo or shrink", ...)."""
        parts = []
        for t in self.types:
            if t is str and self.choices:
                parts.append(" or ".join(repr(c) for c in self.choices))
                continue
            bound = []
            if self.low is not None:
                bound.append(f"{'>' if self.open_low else '>='} {self.low:g}")
            if self.high is not None:
                bound.append(f"<= {self.high:g}")
            parts.append(" ".join([_PHRASES[t], *([" and ".join(bound)] if bound and t in (int, float) else [])]))
        if self.default is None:
            parts.append("unset")
        return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]

    def accepts(self, value) -> bool:
        if value is None:
            return self.default is None
        for t in self.types:
            if not _is(t, value):
                continue
            if t is str:
                return not self.choices or value in self.choices
            if t in (int, float):
                if not math.isfinite(value):
                    return False
                if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
                    return False
                if self.high is not None and value > self.high:
                    return False
            return True
        return False

    def check(self, method: str, value):
        """`value` (a YAML string that reads as a number counts as that number), or ConfigError (a ValueError)
        in one sentence."""
        if isinstance(value, str) and float in self.types and not (str in self.types and value in self.choices):
            try:
                value = float(value)
            except ValueError:
                pass
        if not self.accepts(value):
            raise ConfigError(f"{method}: {self.name} must be {self.describe()}, got {value!r}")
        if float in self.types and int not in self.types and _is(int, value):
            value = float(value)
        return value

    def as_dict(self) -> dict:
        out = {"type": self.type_name, "default": self.default, "help": self.help, "paper": self.paper}
        for key in ("low", "high"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.open_low:
            out["open_low"] = True
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "Hyperparameter":
        by_name = {v: k for k, v in TYPE_NAMES.items()}
        types = tuple(by_name[t] for t in d["type"].split("|"))
        return cls(name, types if len(types) > 1 else types[0], d["default"], d["help"], d.get("paper", ""),
                   d.get("low"), d.get("open_low", False), d.get("high"), tuple(d.get("choices", ())))


HP = Hyperparameter


def merge(declarations, dropped=()) -> dict[str, Hyperparameter]:
    """Name -> declaration, later declarations replacing earlier ones of the same name (base first)."""
    out: dict[str, Hyperparameter] = {}
    for hp in declarations:
        out[hp.name] = hp
    for name in dropped:
        out.pop(name, None)
    return out


def resolve(method: str, declared: dict[str, Hyperparameter], given: dict) -> dict:
    """The declared defaults overridden by `given`, each value checked; unknown names refused."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(f"{method} does not take {', '.join(unknown)}; it takes {', '.join(declared)}")
    return {name: hp.check(method, given.get(name, hp.default)) for name, hp in declared.items()}
