"""Models larger than one device: where each weight lives, and where its module runs.

accelerate places a model in one of two ways, and `place` offers both (DESIGN.md, Scale):

- **resident** (`device_map="auto"|"balanced"|"sequential"`): each module's weights sit on the device its
  forward runs on, layers spread across the visible GPUs. The weights live where they run.
- **offloaded** (`offload="cpu"|"disk"`, or a device map that spills): a module's weights live in a
  *store* (CPU memory, or files in a folder) and a hook copies them onto the execution device just
  before the module's forward and drops them (to the meta device) right after. `offload="cpu"` streams
  each transformer block from (pinned) CPU memory, the next block's copy prefetched while the current
  one runs, as ZO2 does (arXiv 2503.12668; l2o/streaming.py).

For the engine, an offloaded weight has two faces:
    home    the tensor in the store: what an update writes, what checkpoints save (`homes`);
    live    the execution-device copy the hook put in place for one forward: what is perturbed.
The engine perturbs a block inside its module's forward *after* the placement hook has put the live
copy in place (`after_placement`), and writes updates to its home. Tied weights that offloading split
into two stores are joined again: every name of a tie group reads the same home (`homes`).

Only the engine writes weights; this module only says where they are (and, for disk stores, opens
their files writable, once).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from l2o.errors import PlacementError

DEVICE_MAPS = ("auto", "balanced", "sequential")
OFFLOADS = ("cpu", "disk")


# ------------------------------------------------------------------------------- offload hooks
def _hooks(module: nn.Module) -> list:
    """The accelerate hooks on a module, a SequentialHook flattened (duck-typed: no accelerate import)."""
    hook = getattr(module, "_hf_hook", None)
    out, todo = [], [hook] if hook is not None else []
    while todo:
        h = todo.pop(0)
        inner = getattr(h, "hooks", None)
        if inner is not None:
            todo[:0] = list(inner)
        else:
            out.append(h)
    return out


def offload_hook(module: nn.Module):
    """The hook that loads this module's weights for its forward (an offloading AlignDevicesHook), or None."""
    for h in _hooks(module):
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h
    return None


def _entries(model: nn.Module) -> dict[str, tuple]:
    """Every offloaded parameter: qualified name -> (store, key, execution device)."""
    out = {}
    for prefix, module in model.named_modules():
        hook = offload_hook(module)
        if hook is None:
            continue
        for local, _ in module.named_parameters(recurse=bool(hook.place_submodules)):
            store, key = hook.weights_map, local
            while hasattr(store, "dataset") and hasattr(store, "prefix"):  # accelerate's PrefixedDataset
                store, key = store.dataset, store.prefix + key
            out[f"{prefix}.{local}" if prefix else local] = (store, key, hook.execution_device)
    return out


def is_offloaded(model: nn.Module) -> bool:
    return any(offload_hook(m) is not None for m in model.modules())


def _in_memory(store) -> dict | None:
    """The dict of in-memory tensors of a store: a plain dict, or an OffloadedWeightsLoader's state_dict."""
    if isinstance(store, dict):
        return store
    return getattr(store, "state_dict", None) if hasattr(store, "index") else None


def _open_writable(store, key: str) -> torch.Tensor:
    """A disk entry (accelerate's `<folder>/<key>.dat` memmap) opened read-write as a tensor; it is
    registered in the store's in-memory dict, so every forward from now on reads this very tensor and
    an update written to it is what the next forward sees."""
    info = store.index[key]
    if info.get("safetensors_file") is not None:
        raise PlacementError(
            f"{key} is offloaded to the read-only file {info['safetensors_file']}; a zeroth-order optimizer "
            "writes its updates where the weights live, so place the model with l2o.placement.place "
            "(offload='disk' writes writable copies) or keep the trainable weights in memory")
    dtype = info["dtype"]
    shape = tuple(info["shape"]) or (1,)
    raw = {"bfloat16": "int16"}.get(dtype, dtype)
    if raw.startswith("float8_"):
        raw = "int8"
    array = np.memmap(os.path.join(store.save_folder, f"{key}.dat"), dtype=raw, mode="r+", shape=shape)
    tensor = torch.from_numpy(array)
    if dtype != raw:
        tensor = tensor.view(getattr(torch, dtype))
    tensor = tensor.reshape(tuple(info["shape"]))
    store.state_dict[key] = tensor
    if not hasattr(store, "_l2o_files"):
        store._l2o_files = set()
    store._l2o_files.add(key)
    return tensor


def _home_of(store, key: str) -> torch.Tensor:
    memory = _in_memory(store)
    if memory is not None and key in memory:
        return memory[key]
    if memory is not None:
        return _open_writable(store, key)
    return store[key]


def _point(store, key: str, tensor: torch.Tensor) -> None:
    """Make a store serve `tensor` for `key` from now on (joins a tie that offloading split)."""
    memory = _in_memory(store)
    if memory is None:
        raise PlacementError(f"cannot join the tied weight {key} in a store of type {type(store).__name__}")
    memory[key] = tensor


def tie_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names that are one tensor: recorded by `place` before dispatching, else the tie a Hugging
    Face model declares between its input and output embeddings (offloading hands each its own copy)."""
    recorded = getattr(model, "_l2o_tied", None)
    if recorded is not None:
        return [list(g) for g in recorded]
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if not (callable(get_in) and callable(get_out) and getattr(config, "tie_word_embeddings", False)):
        return []
    try:
        pair = (get_in(), get_out())
    except (NotImplementedError, AttributeError):
        return []
    if any(m is None for m in pair):
        return []
    names = {id(m): n for n, m in model.named_modules()}
    if not all(id(m) in names for m in pair):
        return []
    return [[f"{names[id(m)]}.weight" if names[id(m)] else "weight" for m in pair]]


def homes(model: nn.Module) -> dict[str, torch.Tensor]:
    """Offloaded parameter name -> its home: the tensor in the store (writable), where updates go.

    Empty for a model that nothing offloads (its parameters are their own homes). Tied names that
    offloading split are joined: each reads the first name's tensor (home or resident parameter)."""
    entries = _entries(model)
    if not entries:
        return {}
    out = {name: _home_of(store, key) for name, (store, key, _) in entries.items()}
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in tie_groups(model):
        group = [n for n in group if n in params]
        if len(group) < 2:
            continue
        first = out.get(group[0], params[group[0]])
        for name in group[1:]:
            if name in entries and out[name] is not first:
                _point(entries[name][0], entries[name][1], first)
                out[name] = first
    return out


def execution_devices(model: nn.Module) -> dict[str, torch.device]:
    """Offloaded parameter name -> the device its module's forward runs on."""
    return {name: torch.device(dev if dev is not None else "cpu") for name, (_, _, dev) in _entries(model).items()}


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device, or, when that parameter is offloaded (a
    meta placeholder between forwards), the device its module runs on."""
    first = next(iter(model.named_parameters()), None)
    if first is None:
        return torch.device("cpu")
    if first[1].device.type != "meta":
        return first[1].device
    return execution_devices(model).get(first[0], torch.device("cpu"))


class _After:
    """A module's accelerate hook with the engine's swap-in nested inside it: the placement hook puts the
    weights in place, then `pre` perturbs them; after the forward `post` restores them, then the placement
    hook drops them. `new_forward` reads `module._hf_hook` at every call, so setting and restoring it is
    the whole installation."""

    def __init__(self, inner, pre, post):
        self.inner, self.pre, self.post = inner, pre, post
        self.no_grad = getattr(inner, "no_grad", False)

    def pre_forward(self, module, *args, **kwargs):
        args, kwargs = self.inner.pre_forward(module, *args, **kwargs)
        self.pre(module, args)
        return args, kwargs

    def post_forward(self, module, output):
        self.post(module, None, output)
        return self.inner.post_forward(module, output)

    def __getattr__(self, name):  # init_hook, detach_hook, execution_device, ...
        return getattr(self.inner, name)


class _Unwrap:
    def __init__(self, module, inner):
        self.module, self.inner = module, inner

    def remove(self) -> None:
        if isinstance(getattr(self.module, "_hf_hook", None), _After):
            self.module._hf_hook = self.inner


def after_placement(module: nn.Module, pre, post):
    """Run `pre(module, args)` / `post(module, args, output)` around the module's forward, after its
    offload hook has loaded its weights and before that hook drops them. Returns a handle with
    `.remove()`; None when nothing loads this module's weights (plain forward hooks then suffice: an
    ancestor's hook has already run by the time this module's torch pre-hooks do)."""
    if offload_hook(module) is None:
        return None
    inner = module._hf_hook
    module._hf_hook = _After(inner, pre, post)
    return _Unwrap(module, inner)


# ------------------------------------------------------------------------------------ placement
def accelerator() -> torch.device:
    """The execution device of offloaded blocks: the current GPU, else the CPU (tests, small runs)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _tie_record(model: nn.Module) -> list[list[str]]:
    """Tied parameter names, each group in `named_parameters` order (found before any hook splits them)."""
    from accelerate.utils import find_tied_parameters

    order = {n: i for i, (n, _) in enumerate(model.named_parameters(remove_duplicate=False))}
    return [sorted(g, key=lambda n: order.get(n, len(order))) for g in find_tied_parameters(model)]


def infer_device_map(model: nn.Module, kind: str, max_memory: dict | None = None, dtype=None) -> dict:
    """accelerate's placement of whole blocks over the visible devices: `balanced` (= `auto`, as in
    transformers) evens the GPUs out, `sequential` fills them in order; what does not fit spills to the
    CPU, then to disk."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    from l2o.wrappers import unwrap_peft

    no_split = list(getattr(unwrap_peft(model), "_no_split_modules", None) or [])
    if kind in ("auto", "balanced"):
        max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=no_split, dtype=dtype)
    else:
        max_memory = get_max_memory(max_memory)
    return dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype))


def _disk_map(model: nn.Module, device: torch.device) -> dict:
    """Every transformer block on disk, every other module on `device`."""
    from l2o.streaming import transformer_blocks

    blocks = [n for n, _ in transformer_blocks(model)]
    out = {}
    for key in model.state_dict():
        owner = next((b for b in blocks if key.startswith(b + ".")), key.rpartition(".")[0])
        out[owner] = "disk" if owner in blocks else device
    return out


def place(model: nn.Module, device_map: str | dict | None = None, offload: str | None = None, *,
          execution_device: str | torch.device | None = None, max_memory: dict | None = None,
          folder: str | os.PathLike | None = None) -> nn.Module:
    """Place `model` for forward-only training and return it (in place).

    device_map  "auto" | "balanced" | "sequential" | {module: device}: layers over the visible devices
                (accelerate's dispatch); what does not fit spills to CPU memory, then to `folder`. With a
                CPU `execution_device` and no `max_memory`, every layer stays in CPU memory.
    offload     "cpu": stream each transformer block from CPU memory to `execution_device` (default: the
                GPU, else the CPU); "disk": the same from files in `folder` (accelerate's disk offload).
    Ties are recorded first; `state_dict()` / `load_state_dict()` see the offloaded weights' homes."""
    if device_map is not None and offload is not None:
        raise PlacementError("choose one of --device-map (layers across devices) and --offload (stream from "
                             "CPU memory or disk), not both")
    if offload not in (None, *OFFLOADS):
        raise PlacementError(f"--offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise PlacementError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    model._l2o_tied = _tie_record(model)
    device = torch.device(execution_device) if execution_device is not None else accelerator()
    if isinstance(device_map, str) and max_memory is None and device.type == "cpu":
        max_memory = {"cpu": 1 << 60}  # runs on the CPU: no layer goes to a GPU; the weights are in memory already
    if offload == "cpu":
        from l2o.streaming import stream_blocks

        stream_blocks(model, device)
    elif offload is not None or device_map is not None:
        from accelerate import dispatch_model

        dmap = _disk_map(model, device) if offload == "disk" else (
            infer_device_map(model, device_map, max_memory) if isinstance(device_map, str) else dict(device_map))
        if "disk" in dmap.values() and folder is None:
            raise PlacementError("the placement puts blocks on disk (they fit neither the GPUs nor CPU memory), which "
                                 "needs place(..., folder=...); fine_tune does not offload to disk")
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        dispatch_model(model, dmap, main_device=device if offload == "disk" else None,
                       offload_dir=str(folder) if folder is not None else None)
    see_through(model)
    model._l2o_placement = describe(model, device_map, offload)
    return model


def describe(model: nn.Module, device_map=None, offload=None) -> dict:
    """What `place` did, for logs and results.json: parameters per place ("cuda:0", "cpu memory -> cuda:0"
    for a weight that lives in CPU memory and runs on cuda:0, "disk -> cpu", ...)."""
    entries = _entries(model)
    homes(model)  # opens disk entries, which marks them
    per: dict[str, int] = {}
    for name, p in model.named_parameters():
        if name in entries:
            store, key, dev = entries[name]
            where = f"{'disk' if key in getattr(store, '_l2o_files', ()) else 'cpu memory'} -> {dev or 'cpu'}"
        else:
            where = str(p.device)
        per[where] = per.get(where, 0) + p.numel()
    return {"device_map": device_map if not isinstance(device_map, dict) else "custom", "offload": offload,
            "parameters": per}


def placed(model: nn.Module) -> bool:
    """Whether a placement owns this model's devices (`.to()` must then leave it alone)."""
    return getattr(model, "_l2o_placement", None) is not None or is_offloaded(model) or \
        len(set(getattr(model, "hf_device_map", {}).values())) > 1


# --------------------------------------------------------- state_dict sees the offloaded weights
def _state_dict_hook(module, state_dict, prefix, local_metadata) -> None:
    for name, home in homes(module).items():
        key = prefix + name
        if key in state_dict and state_dict[key].device.type == "meta":
            state_dict[key] = home.detach()


@torch.no_grad()
def _load_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for name, home in homes(module).items():
        key = prefix + name
        if key in state_dict and state_dict[key].device.type != "meta":
            home.copy_(state_dict[key].to(home.dtype))
            state_dict[key] = torch.empty_like(home, device="meta")  # the placeholder's own copy: a no-op


def see_through(model: nn.Module) -> None:
    """`state_dict()` returns offloaded weights from their homes (not meta placeholders) and
    `load_state_dict()` writes them there: checkpoints, best-on-dev reloads and `save_pretrained` work
    on a placed model as on a resident one."""
    if getattr(model, "_l2o_see_through", False) or not is_offloaded(model):
        return
    model.register_state_dict_post_hook(_state_dict_hook)
    model.register_load_state_dict_pre_hook(_load_hook)
    model._l2o_see_through = True
