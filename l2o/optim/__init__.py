"""The zeroth-order optimizers, one module per method, and the registry of their names.

    from l2o.optim import build_optimizer
    opt = build_optimizer("mezo-gv", model, lr=1e-6)

A method is registered by one line below; its name, paper, hyperparameters (with the papers' defaults)
and forwards per step come from its class (`method`, `paper`, `hyperparameters`, `evaluation_batches`).
"""

from __future__ import annotations

import torch
from torch import nn

from l2o.optim.base import StepResult, ZOOptimizer
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.optim.bszo import BSZO, BSZOB
from l2o.optim.hizoo import HiZOO
from l2o.optim.lozo import LOZO, LOZOM
from l2o.optim.mezo import MeZO
from l2o.optim.mezo_gv import MeZOGreedy, MeZOGV
from l2o.optim.sparse_mezo import SparseMeZO
from l2o.optim.zo_adam import ZOAdam
from l2o.optim.zo_finetuner import ZOFineTuner, ZOFineTunerBSZO, ZOFineTunerGreedy, ZOFineTunerGV
from l2o.optim.zo_sgd_cons import ZOSGDCons
from l2o.optim.zo_sgd_mmt import ZOSGDMMT
from l2o.optim.zo_sgd_sign import ZOSGDSign

# name -> class, in the order --list-optimizers and the README's table show them
REGISTRY: dict[str, type[ZOOptimizer]] = {cls.method: cls for cls in (
    MeZO,
    MeZOGV,
    MeZOGreedy,
    BSZO,
    BSZOB,
    ZOSGDSign,
    ZOSGDCons,
    ZOSGDMMT,
    ZOAdam,
    HiZOO,
    LOZO,
    LOZOM,
    SparseMeZO,
    # ZO Fine-tuner: the method above with a learned policy's per-block scales (`policy=ZOPolicy`)
    ZOFineTuner,
    ZOFineTunerGV,
    ZOFineTunerGreedy,
    ZOFineTunerBSZO,
    # Bilevel-ZOFO: FO PEFT inside, ZO backbone outside; needs a PEFT-wrapped model and closure(split, task)
    BilevelZOFO,
)}


def optimizer_names() -> list[str]:
    return sorted(REGISTRY)


def optimizer_class(name: str) -> type[ZOOptimizer]:
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}")
    return REGISTRY[name]


def optimizer_defaults(name: str) -> dict:
    """The papers' defaults of every hyperparameter `name` declares."""
    return optimizer_class(name).defaults()


class _Probe(nn.Module):
    """A two-weight model to build an optimizer on for its step's shape: `w` trainable, `frozen` not (the
    backbone a PEFT method such as Bilevel-ZOFO moves by zeroth order)."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(1, 1)
        self.w = nn.Parameter(torch.ones(1, 1))
        self.frozen.requires_grad_(False)


def probe(name: str, **overrides) -> ZOOptimizer:
    """`name` built on a two-weight model: what its step does (forwards, evaluation batches) without a model."""
    return build_optimizer(name, _Probe(), **overrides)


def forwards_per_step(name: str, **overrides) -> int:
    """Forward passes one step of `name` takes (its defaults overridden by `overrides`), from its own
    `evaluation_batches()`."""
    return probe(name, **overrides).forwards_per_step()


def build_optimizer(name: str, model, **overrides) -> ZOOptimizer:
    """Instantiate a registered optimizer with the papers' defaults, overridden by `overrides`."""
    return optimizer_class(name)(model, **overrides)


__all__ = ["REGISTRY", "BSZO", "BSZOB", "BilevelZOFO", "MeZO", "MeZOGV", "MeZOGreedy", "StepResult", "ZOOptimizer",
           "ZOFineTuner", "ZOFineTunerBSZO", "ZOFineTunerGV", "ZOFineTunerGreedy",
           "build_optimizer", "forwards_per_step", "optimizer_class", "optimizer_defaults", "optimizer_names", "probe"]
