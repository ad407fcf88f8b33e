"""The parameter-block list: the fixed order in which every method, policy and checkpoint indexes weights.

A *block* is one parameter tensor. Tied weights (OPT's / Llama's `lm_head.weight` sharing storage with
`embed_tokens.weight`) are one block: a shared tensor is perturbed and updated once, under the name it
is first reached by in `named_parameters()` order (module registration order, which transformers keeps
stable across versions for a given architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from l2o.placement import homes

# Weight decay is skipped on biases and norm weights, as MeZO does (it matches names containing "bias" or
# "layer_norm"/"layernorm"); we also match other norm spellings and every 1-D tensor, which covers norm
# layers whose names say nothing (e.g. `net.1.weight` of an nn.LayerNorm).
_NO_DECAY_MARKERS = ("bias", "norm", "ln_")


@dataclass(frozen=True)
class Block:
    """One parameter tensor as the optimizers see it."""

    index: int
    name: str
    param: torch.Tensor

    @property
    def decays(self) -> bool:
        """MeZO's rule: weight decay applies to everything except biases and norm weights."""
        lowered = self.name.lower()
        return self.param.ndim >= 2 and not any(m in lowered for m in _NO_DECAY_MARKERS)


def storage_key(t: torch.Tensor) -> tuple:
    """Identity of a tensor's memory: two views of one storage at one offset are one block."""
    if t.numel() and t.device.type != "meta":
        return (t.untyped_storage().data_ptr(), t.storage_offset(), t.device.type)
    return (id(t), 0, "")


def named_blocks(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Ordered (name, tensor) pairs with tied tensors listed once; the tensor is where the weights live.

    `model.named_parameters()` already skips duplicates by identity; we additionally deduplicate by
    storage so two Parameter objects viewing the same memory (some tying schemes) count once. A weight
    that a placement hook offloads (l2o.placement: CPU memory or disk, copied in for each forward) is
    listed as its home in the store, not as the meta-device placeholder its module holds in between.
    """
    offloaded = homes(model)
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[tuple] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if trainable_only and not p.requires_grad:
            continue
        p = offloaded.get(name, p)
        key = storage_key(p)
        if key in seen:
            continue
        seen.add(key)
        out.append((name, p))
    return out


def as_blocks(params: Iterable[torch.Tensor] | nn.Module, names: Iterable[str] | None = None) -> list[Block]:
    """Normalise a module, a list of tensors, or (name, tensor) pairs into an ordered block list."""
    if isinstance(params, nn.Module):
        pairs = named_blocks(params)
    else:
        items = list(params)
        if items and isinstance(items[0], tuple):
            pairs = [(str(n), p) for n, p in items]
        else:
            given = list(names) if names is not None else [f"param{i}" for i in range(len(items))]
            if len(given) != len(items):
                raise ValueError(f"got {len(items)} parameters but {len(given)} names")
            pairs = list(zip(given, items))
    seen: set[int] = set()
    blocks: list[Block] = []
    for name, p in pairs:
        if id(p) in seen:
            continue
        seen.add(id(p))
        blocks.append(Block(len(blocks), name, p))
    if not blocks:
        raise ValueError("no trainable parameters: nothing for a zeroth-order optimizer to update")
    return blocks
