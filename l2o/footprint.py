"""What a method keeps per parameter between steps, declared once on its class (no torch here: the memory plans
read it from the catalog).

    class ZOAdam(MeZO):
        buffers = (Buffer("Adam's m and v", copies=2),)

A `Buffer` is one kind of per-parameter state over the method's trainable tensors (`shapes`): `copies` dense
copies of each (times the hyperparameter `times` names, e.g. Bilevel-ZOFO's num_tasks), in float32 or in the
weights' own dtype (`dtype="weights"`); or, with `rank` (a hyperparameter's name), factored as LOZO-M's momentum:
a tensor of two or more dims (m rows, the rest flattened) keeps m x r float32, a vector one dense copy. Scalars
(BSZO's noise estimate, Sparse-MeZO's thresholds) are not buffers. `ZOOptimizer.buffer_bytes` evaluates the
declaration for a model; `l2o.catalog` exports it, so `fine_tune --dry-run` and `meta_train --dry-run` count it;
tests/test_methods.py checks it against the tensors a method holds after its steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DTYPES = ("fp32", "weights")


@dataclass(frozen=True)
class Buffer:
    what: str
    copies: float = 1
    dtype: str = "fp32"          # "fp32", or "weights": the trainable tensors' own dtype
    rank: str | None = None      # a hyperparameter's name: factored, rows x rank per matrix
    times: str | None = None     # a hyperparameter's name multiplying `copies` (or a constructor argument's)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"Buffer {self.what!r}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def elements(self, shapes, hp: dict) -> float:
        """Elements held over the trainable tensors `shapes` at hyperparameters `hp`."""
        copies = self.copies * (hp[self.times] if self.times else 1)
        if self.rank is None:
            return copies * sum(math.prod(s) for s in shapes)
        r = hp[self.rank]
        return copies * sum(s[0] * r if len(s) >= 2 else math.prod(s) for s in shapes)

    def nbytes(self, shapes, hp: dict, weight_bytes: int) -> int:
        return int(self.elements(shapes, hp) * (4 if self.dtype == "fp32" else weight_bytes))

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Buffer":
        return cls(**d)


def buffer_bytes(buffers, shapes, hp: dict, weight_bytes: int) -> int:
    """Bytes of every declared buffer over the trainable tensors `shapes` (weights of `weight_bytes` each)."""
    return sum(b.nbytes(shapes, hp, weight_bytes) for b in buffers)


def describe(buffers) -> str:
    """One line for a plan: what the buffers are and how many copies."""
    def one(b: Buffer) -> str:
        n = f"{b.copies:g}" + (f" x {b.times}" if b.times else "")
        size = f"rows x {b.rank} per matrix" if b.rank else f"{n} {'fp32' if b.dtype == 'fp32' else 'weight-dtype'} " \
                                                             f"cop{'y' if n == '1' else 'ies'}"
        return f"{b.what} ({size})"
    return ", ".join(one(b) for b in buffers)
