"""Streaming transformer blocks from CPU memory, in the spirit of ZO2 (arXiv 2503.12668): `place(offload="cpu")`.

Every transformer block's weights live in CPU memory (pinned when the execution device is a GPU). A
block's hook puts its weights on the execution device for its forward, using the copy that was started
on a side CUDA stream while the previous block ran, starts the next block's copy, and drops the weights
afterwards. The embeddings, the final norm and the head stay on the execution device. So each block
crosses the host link once per forward, and the device holds about two blocks at a time.

The hook is an accelerate `ModelHook` that offloads (offload=True, weights_map), by duck typing: the
engine and `l2o.placement.homes` treat it like accelerate's own offloading hooks, and the weights_map's
tensors are the blocks' homes, where updates are written.
"""

from __future__ import annotations

import torch
from torch import nn

from l2o.errors import PlacementError


def _set_tensor(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """module.<dotted name> <- tensor (a parameter keeps its class's requires_grad flag)."""
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    old = module._parameters.get(leaf)
    if old is not None or leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else False)
    else:
        module._buffers[leaf] = tensor


class _Group:
    """The streamed blocks of one model, in forward order, and what they share."""

    def __init__(self, device: torch.device):
        self.device = device
        self.hooks: list[StreamHook] = []
        self.epoch = 0  # forward passes started; a prefetched copy is only used in the pass that made it
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.uploads = 0  # blocks copied to the execution device (tests and benchmarks count link crossings)
        self.unpinned = 0  # block tensors left in pageable memory: pinning them failed (`_pinned`)


def _pinned(home: torch.Tensor, group: _Group) -> torch.Tensor:
    """`home` in pinned (page-locked) CPU memory, which the side stream copies from asynchronously; where the
    host cannot lock more memory, `home` itself: its copies then wait for the host, but the numbers are the
    same. `group.unpinned` counts those."""
    try:
        return home.pin_memory()
    except RuntimeError:
        group.unpinned += 1
        return home


class StreamHook:
    """One transformer block whose weights live in CPU memory (pinned when the execution device is a GPU),
    as ZO2 streams them: `pre_forward` puts the block's weights on the execution device, using the copy
    prefetched while the previous block ran (on a side CUDA stream), and starts the next block's copy;
    `post_forward` drops them. Each block crosses the link once per forward pass, and the device holds
    about two blocks at a time. An accelerate `ModelHook` by duck typing (offload=True, weights_map), so
    `offload_hook`, `homes` and the engine treat it like accelerate's own offloading hooks."""

    offload = True
    place_submodules = True
    no_grad = False

    def __init__(self, group: _Group):
        self.group, self.execution_device = group, group.device
        self.weights_map: dict[str, torch.Tensor] = {}
        self.next: StreamHook | None = None
        self._staged = None  # (epoch, {name: device copy}, event)

    def init_hook(self, module):
        pin = self.execution_device.type == "cuda"
        for name, p in list(module.named_parameters()):
            home = p.detach().to("cpu")
            self.weights_map[name] = _pinned(home, self.group) if pin else home
            _set_tensor(module, name, torch.empty_like(home, device="meta"))
        for name, buf in list(module.named_buffers()):
            _set_tensor(module, name, buf.to(self.execution_device))
        return module

    def _copies(self):
        """The block's weights on the execution device (the homes themselves when that is the CPU)."""
        self.group.uploads += 1
        dev, stream = self.execution_device, self.group.stream
        if dev.type == "cpu":
            return dict(self.weights_map), None
        if stream is None:
            return {n: t.to(dev) for n, t in self.weights_map.items()}, None
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            copies = {n: t.to(dev, non_blocking=True) for n, t in self.weights_map.items()}
        return copies, stream.record_event()

    def prefetch(self) -> None:
        self._staged = (self.group.epoch, *self._copies())

    def pre_forward(self, module, *args, **kwargs):
        """The block's inputs come from the previous block (or the resident embeddings) on the same device,
        so they stay as they are; only the weights move."""
        group = self.group
        if self is group.hooks[0]:
            group.epoch += 1
        staged, self._staged = self._staged, None
        copies, event = staged[1:] if staged is not None and staged[0] == group.epoch else self._copies()
        if event is not None:
            current = torch.cuda.current_stream(self.execution_device)
            current.wait_event(event)
            for t in copies.values():
                t.record_stream(current)
        for name, t in copies.items():
            _set_tensor(module, name, t)
        if self.next is not None:
            self.next.prefetch()
        return args, kwargs

    def post_forward(self, module, output):
        for name, home in self.weights_map.items():
            _set_tensor(module, name, torch.empty_like(home, device="meta"))
        return output

    def detach_hook(self, module):
        for name, home in self.weights_map.items():
            _set_tensor(module, name, home)
        return module


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks (a Hugging Face model's `_no_split_modules` classes, outermost), in order."""
    from l2o.wrappers import unwrap_peft

    classes = set(getattr(unwrap_peft(model), "_no_split_modules", None) or ())
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__ in classes and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    if not found:
        raise PlacementError(f"cannot find the repeated transformer blocks of {type(model).__name__} "
                             "(no _no_split_modules); offloading streams them one at a time")
    return found


def stream_blocks(model: nn.Module, device: torch.device) -> _Group:
    """Keep every transformer block's weights in CPU memory, streamed to `device` for its forward (the
    model's other weights, embeddings and head, are moved to `device` and stay there)."""
    from accelerate.hooks import add_hook_to_module

    blocks = transformer_blocks(model)
    group = _Group(device)
    inside = {id(p) for _, m in blocks for p in m.parameters()} | {id(b) for _, m in blocks for b in m.buffers()}
    for name, p in list(model.named_parameters()):
        if id(p) not in inside:
            p.data = p.data.to(device)
    for name, b in list(model.named_buffers()):
        if id(b) not in inside:
            _set_tensor(model, name, b.to(device))
    for _, module in blocks:
        hook = StreamHook(group)
        add_hook_to_module(module, hook)
        if group.hooks:
            group.hooks[-1].next = hook
        group.hooks.append(hook)
    model._l2o_stream = group
    # what transformers' Trainer and accelerate read to leave a placed model's devices alone
    model.hf_device_map = {**{n: str(device) for n, m in model.named_children() if not any(
        b.startswith(n + ".") or b == n for b, _ in blocks)}, **{b: "cpu" for b, _ in blocks}}
    return group
