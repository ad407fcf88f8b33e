"""Bilevel-ZOFO's meta-initialisation: a backbone change (theta_meta - theta_base per tensor) learned over
a task family, and its meta-test use (a fresh adapter adapted on a few examples of a new task).

Artefacts leave `l2o` as tensors + config: `meta_init_artefact` gives what the zoo stores, and the apps
save and load it through `zoo` (`zoo.learned`). `apply_meta_init` adds the tensors to a base through the
engine (float32 accumulation, stochastic rounding in bf16/fp16, so a change below half an ulp survives
in expectation).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from l2o.adapters import backbone_params
from l2o.engine import Engine
from l2o.errors import UserError
from l2o.noise import mix
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.streams import Stream

KIND = "bilevel-meta-init"


def meta_init_artefact(delta: dict[str, torch.Tensor], base_model: str, base_fingerprint: str,
                       training: dict | None = None) -> tuple[dict, dict]:
    """(tensors, config) of a meta-initialisation: what the zoo stores."""
    if not delta:
        raise UserError("the meta-initialisation is identical to the base: no backbone tensor changed")
    training = dict(training or {})
    config = {"kind": KIND, "base_model": base_model, "base_fingerprint": base_fingerprint,
              "arch": {"delta": True}, "training": training}
    return {k: v.detach().float().cpu().contiguous() for k, v in delta.items()}, config


@torch.no_grad()
def apply_meta_init(model: nn.Module, tensors: dict[str, torch.Tensor], rounding_seed: int = 0) -> list[str]:
    """Add a meta-initialisation's tensors to `model`'s backbone in place (a PEFT wrapper is looked
    through), through the engine: accumulated in float32, stochastic rounding in bf16/fp16. The caller
    checks the base (the zoo does, by fingerprint). Returns the names of the tensors changed."""
    pairs = backbone_params(model) if hasattr(model, "peft_config") else backbone_params(model, exclude=set())
    params = dict(pairs)
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise UserError(f"the meta-initialisation names tensors the model lacks, e.g. {missing[0]!r}")
    for name, delta in tensors.items():
        if tuple(delta.shape) != tuple(params[name].shape):
            raise UserError(f"meta-initialisation tensor {name!r} has shape {list(delta.shape)} but the model's "
                            f"is {list(params[name].shape)}")
    Engine(model, named_params=[(n, p) for n, p in pairs if n in tensors]).add_(tensors, rounding_seed)
    return sorted(tensors)


def _metric_and_loss(objective, model, tokenizer, examples: Sequence, batch_size: int) -> tuple[float, float]:
    """The eval metric (accuracy or F1: `Objective.evaluate`'s mean of example scores) and the mean loss."""
    scores, loss = objective.scores_and_mean_loss(model, tokenizer, list(examples), batch_size)
    return sum(scores) / len(scores), loss


def quick_adapt(opt: BilevelZOFO, objective, tokenizer, train: Sequence, evaluate_on: Sequence, steps: int = 5,
                lr: float = 2e-4, batch_size: int = 1, eval_batch_size: int = 16, seed: int = 0) -> dict:
    """Meta-test adaptation on `opt`'s current backbone: a fresh adapter (the initial values), `steps`
    first-order AdamW steps on `train` (batches of `batch_size`, seeded order), then the metric on
    `evaluate_on`, before ('zero_shot') and after ('adapted'), and the objective's mean loss there
    ('zero_shot_loss', 'adapted_loss'). The training copies are untouched."""
    model = opt.model
    metric = "accuracy" if evaluate_on and evaluate_on[0].candidates else "f1"
    fresh = opt.slots.clone(opt.init_copy)
    opt.slots.install(fresh)
    try:
        zero, zero_loss = _metric_and_loss(objective, model, tokenizer, evaluate_on, eval_batch_size)
        adam = torch.optim.AdamW(fresh, lr=lr)
        stream = Stream(list(train), batch_size, mix(0xADA9, seed))
        losses = []
        for i in range(steps):
            with torch.enable_grad():
                loss = objective.loss(model, tokenizer, stream.batch(i))
                grads = torch.autograd.grad(loss, fresh, allow_unused=True)
            for q, gq in zip(fresh, grads):
                q.grad = gq
            adam.step()
            adam.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        adapted, adapted_loss = _metric_and_loss(objective, model, tokenizer, evaluate_on, eval_batch_size)
    finally:
        opt.adapters.install(opt.adapters.installed)
    return {"metric": metric, "zero_shot": zero, "adapted": adapted, "zero_shot_loss": zero_loss,
            "adapted_loss": adapted_loss, "losses": losses}
