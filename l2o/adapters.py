"""A PEFT adapter's parameters as swappable copies, and the frozen backbone under it (Bilevel-ZOFO's two levels).

`AdapterSlots` finds the adapter's slots (module, attribute); a copy of the adapter is a list of its own
`nn.Parameter`s installed by assigning `module._parameters[attr]`, so each copy keeps its own optimizer state.
`backbone_params` names the frozen rest as the plain base model does, so a backbone change (a meta-initialisation)
applies to the base without the adapter.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from l2o.blocks import named_blocks
from l2o.errors import ConfigError
from l2o.wrappers import unwrap_peft


def _adapter_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def backbone_params(model: nn.Module, exclude: set[int] | None = None) -> list[tuple[str, nn.Parameter]]:
    """The backbone's (name, parameter) blocks under a PEFT wrapper, named as in the plain base model
    (peft's `.base_layer.` removed), tied weights once; adapter parameters (`exclude`, by default the
    ones that require grad) left out."""
    exclude = _adapter_ids(model) if exclude is None else exclude
    base = unwrap_peft(model)
    return [(name.replace(".base_layer.", "."), p) for name, p in named_blocks(base, trainable_only=False)
            if id(p) not in exclude]


class AdapterSlots:
    """The adapter's parameter slots (module, attribute); copies of the adapter are swapped in and out
    by assigning `module._parameters[attr]`, so each copy keeps its own Parameter objects (and Adam state)."""

    def __init__(self, model: nn.Module, method: str = "bilevel-zofo"):
        self.slots: list[tuple[nn.Module, str]] = []
        self.names: list[str] = []
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for attr, p in module._parameters.items():
                if p is None or not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                self.slots.append((module, attr))
                self.names.append(f"{mod_name}.{attr}" if mod_name else attr)
        if not self.slots:
            raise ConfigError(f"{method} needs a PEFT adapter (lora, prefix or prompt): the model has no trainable "
                              "parameters; call l2o.peft_modes.apply_peft(model, mode) first")

    def current(self) -> list[nn.Parameter]:
        return [m._parameters[a] for m, a in self.slots]

    def clone(self, source: Sequence[torch.Tensor] | None = None) -> list[nn.Parameter]:
        src = self.current() if source is None else source
        return [nn.Parameter(t.detach().clone(), requires_grad=True) for t in src]

    def install(self, params: Sequence[nn.Parameter]) -> None:
        for (m, a), p in zip(self.slots, params):
            m._parameters[a] = p


class AdapterCopies:
    """Named copies of the adapter ("p0", "w0", ... : a letter and a task), each with its own Adam state (the
    engine's `adam` rule) and step count; `step` applies Adam through `Engine.first_order_update`, so the
    copies' weights are written where every other weight is."""

    def __init__(self, model: nn.Module, letters: str, num_tasks: int):
        from l2o.updates import Adam

        self.slots = AdapterSlots(model)
        self.init_copy = [t.detach().clone() for t in self.slots.current()]
        self.copies = {f"{c}{k}": self.slots.clone(self.init_copy) for c in letters for k in range(num_tasks)}
        self.adam = {name: Adam() for name in self.copies}
        self.t = {name: 0 for name in self.copies}
        self.installed = next(iter(self.copies))

    def install(self, name: str) -> None:
        """Put copy `name` ("init": a fresh copy of the initial values) into the adapter slots."""
        self.slots.install(self.slots.clone(self.init_copy) if name == "init" else self.copies[name])
        self.installed = name

    def step(self, engine, name: str, grads, lr: float, rounding_seed: int) -> None:
        """One Adam step on copy `name` with `grads` (None entries: that tensor is left as it is)."""
        from l2o.blocks import as_blocks

        self.t[name] += 1
        engine.first_order_update(as_blocks(self.copies[name]), grads, self.adam[name], lr, {"t": self.t[name]},
                                  rounding_seed)

    def state_dict(self) -> dict:
        return {"names": list(self.slots.names), "t": dict(self.t),
                "copies": {n: [q.detach().clone() for q in c] for n, c in self.copies.items()},
                "adam": {n: rule.state_dict() for n, rule in self.adam.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.slots.names or set(state["copies"]) != set(self.copies):
            raise ConfigError("this state was saved for other adapters or another number of tasks")
        for name, mine in self.copies.items():
            for q, t in zip(mine, state["copies"][name]):
                q.copy_(t)
            self.adam[name].load_state_dict(state["adam"][name])
        self.t = dict(state["t"])
