"""The base model under a wrapper: below both `l2o.blocks` and `l2o.placement`, which need it."""

from __future__ import annotations

from torch import nn


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The base model under a PEFT wrapper (`peft.PeftModel`), or `model` itself."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model
