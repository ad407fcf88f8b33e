"""The zeroth-order optimizers, one module per method, and a registry of names -> (class, paper defaults).

    from l2o.optim import build_optimizer
    opt = build_optimizer("mezo-gv", model, lr=1e-6)
"""

from __future__ import annotations

from l2o.optim.base import StepResult, ZOOptimizer
from l2o.optim.bilevel_zofo import DEFAULTS as BILEVEL_DEFAULTS
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.optim.bszo import BSZO, BSZOB
from l2o.optim.mezo import MeZO
from l2o.optim.mezo_gv import MeZOGreedy, MeZOGV
from l2o.optim.zo_finetuner import ZOFineTuner, ZOFineTunerBSZO, ZOFineTunerGreedy, ZOFineTunerGV

# name -> (class, the papers' defaults for full-parameter fine-tuning)
REGISTRY: dict[str, tuple[type[ZOOptimizer], dict]] = {
    "mezo": (MeZO, dict(lr=1e-6, eps=1e-3, num_directions=1, one_sided=False)),
    "mezo-gv": (MeZOGV, dict(lr=1e-6, eps=1e-3, pool_size=4, alpha=0.5)),
    "mezo-greedy": (MeZOGreedy, dict(lr=1e-6, eps=1e-3, pool_size=4)),
    "bszo": (BSZO, dict(lr=1e-6, eps=1e-4, k=2, m=None)),   # m None -> k + 1
    "bszo-b": (BSZOB, dict(lr=1e-6, eps=1e-4, k=2, m=None)),
    # ZO Fine-tuner: the method above with a learned policy's per-block scales (`policy=ZOPolicy`)
    "zo-finetuner": (ZOFineTuner, dict(lr=1e-6, eps=1e-3, num_directions=1, one_sided=False)),
    "zo-finetuner+gv": (ZOFineTunerGV, dict(lr=1e-6, eps=1e-3, pool_size=4, alpha=0.5)),
    "zo-finetuner+greedy": (ZOFineTunerGreedy, dict(lr=1e-6, eps=1e-3, pool_size=4)),
    "zo-finetuner+bszo": (ZOFineTunerBSZO, dict(lr=1e-6, eps=1e-4, k=2, m=None)),
    # Bilevel-ZOFO: FO PEFT inside, ZO backbone outside; needs a PEFT-wrapped model and closure(split, task)
    "bilevel-zofo": (BilevelZOFO, dict(BILEVEL_DEFAULTS)),
}


def optimizer_names() -> list[str]:
    return sorted(REGISTRY)


def optimizer_defaults(name: str) -> dict:
    return dict(_lookup(name)[1])


def _lookup(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}")
    return REGISTRY[name]


def forwards_per_step(name: str, **overrides) -> int:
    """Forward passes one step of a registered optimizer takes (registry defaults overridden by `overrides`)."""
    cls, defaults = _lookup(name)
    kw = {**defaults, **overrides}
    if issubclass(cls, MeZOGV):
        return kw["pool_size"] + 2
    if issubclass(cls, BSZO):
        return 1 + (kw["m"] or kw["k"] + 1) if cls.reevaluate_extra else 1 + kw["k"]
    q = kw["num_directions"]
    return 1 + q if kw["one_sided"] else 2 * q


def build_optimizer(name: str, model, **overrides) -> ZOOptimizer:
    """Instantiate a registered optimizer with the papers' defaults, overridden by `overrides`."""
    cls, defaults = _lookup(name)
    return cls(model, **{**defaults, **overrides})


__all__ = ["REGISTRY", "BSZO", "BSZOB", "BilevelZOFO", "MeZO", "MeZOGV", "MeZOGreedy", "StepResult", "ZOOptimizer",
           "ZOFineTuner", "ZOFineTunerBSZO", "ZOFineTunerGV", "ZOFineTunerGreedy",
           "build_optimizer", "forwards_per_step", "optimizer_defaults", "optimizer_names"]
