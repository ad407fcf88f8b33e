"""The zeroth-order optimizers, one module per method, and the registry of their names.

    from l2o.optim import build_optimizer
    opt = build_optimizer("mezo-gv", model, lr=1e-6)

A method is registered by one line in `METHODS` below; its name, paper, hyperparameters (with the papers'
defaults) and forwards per step come from its class (`method`, `paper`, `hyperparameters`,
`evaluation_batches`). docs/adding_a_method.md walks through adding one.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from l2o.optim.base import StepResult, ZOOptimizer

# One line per method, "module:Class", in the order --list-optimizers and the README's table show them.
METHODS = (
    "l2o.optim.mezo:MeZO",
    "l2o.optim.mezo_gv:MeZOGV",
    "l2o.optim.mezo_gv:MeZOGreedy",
    "l2o.optim.bszo:BSZO",
    "l2o.optim.bszo:BSZOB",
    "l2o.optim.mezo:ZOSGD",
    "l2o.optim.zo_sgd_sign:ZOSGDSign",
    "l2o.optim.zo_sgd_cons:ZOSGDCons",
    "l2o.optim.zo_sgd_mmt:ZOSGDMMT",
    "l2o.optim.zo_adam:ZOAdam",
    "l2o.optim.hizoo:HiZOO",
    "l2o.optim.lozo:LOZO",
    "l2o.optim.lozo:LOZOM",
    "l2o.optim.sparse_mezo:SparseMeZO",
    # ZO Fine-tuner: a method above with a learned policy's per-block scales (`policy=ZOPolicy`; zo_finetuner.compose)
    "l2o.optim.zo_finetuner:ZOFineTuner",
    "l2o.optim.zo_finetuner:ZOFineTunerGV",
    "l2o.optim.zo_finetuner:ZOFineTunerGreedy",
    "l2o.optim.zo_finetuner:ZOFineTunerBSZO",
    "l2o.optim.zo_finetuner:ZOFineTunerSign",
    "l2o.optim.zo_finetuner:ZOFineTunerCons",
    "l2o.optim.zo_finetuner:ZOFineTunerMMT",
    "l2o.optim.zo_finetuner:ZOFineTunerHiZOO",
    "l2o.optim.zo_finetuner:ZOFineTunerLOZO",
    "l2o.optim.zo_finetuner:ZOFineTunerLOZOM",
    "l2o.optim.zo_finetuner:ZOFineTunerSparseMeZO",
    # Bilevel-ZOFO: FO PEFT inside, ZO backbone outside; needs a PEFT-wrapped model and closure(split, task)
    "l2o.optim.bilevel_zofo:BilevelZOFO",
)


def _load(path: str) -> type[ZOOptimizer]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, type[ZOOptimizer]] = {cls.method: cls for cls in map(_load, METHODS)}  # name -> class


def __getattr__(name: str):
    """`from l2o.optim import MeZOGV`: any registered class by its name."""
    for path in METHODS:
        if path.endswith(f":{name}"):
            return _load(path)
    raise AttributeError(f"module 'l2o.optim' has no attribute {name!r}")


def optimizer_names() -> list[str]:
    return sorted(REGISTRY)


def optimizer_class(name: str) -> type[ZOOptimizer]:
    if name not in REGISTRY:
        from l2o.errors import ConfigError  # a user's misspelling: one line from every CLI, not a traceback

        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}")
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


__all__ = ["METHODS", "REGISTRY", "StepResult", "ZOOptimizer", "build_optimizer", "forwards_per_step",
           "optimizer_class", "optimizer_defaults", "optimizer_names", "probe"]
