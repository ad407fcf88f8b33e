"""`fine_tune --device-map auto|balanced|sequential` and `--offload cpu`: the run's model placed by
l2o.placement inside each process, with GPU budgets from the memory plan (fine_tune/plan.py).

The base is loaded into CPU memory, its PEFT adapter added there (where the base's weights are), then
placed: layers across this process's GPUs (each GPU's weight budget is --gpu-memory, or what it has, less
the step's other rows of the plan), or every transformer block kept in CPU memory and streamed to the
process's device. Zero-shot evaluation then looks through the adapter (`base_only`)."""

from __future__ import annotations

import contextlib

from fine_tune.config import ConfigError, FineTuneConfig


def rank_gpus(cfg: FineTuneConfig, device: str) -> list[int]:
    """This process's GPUs: --gpus of them (default: the visible ones shared out over the processes of a
    node), starting at its local rank's share."""
    import torch

    visible = torch.cuda.device_count()
    index = torch.device(device).index or 0
    per = cfg.gpus or max(1, visible // cfg.devices)
    first = index * per if cfg.devices > 1 else index
    if first + per > visible:
        raise ConfigError(f"--device-map on {per} GPU(s) per process x {cfg.devices} process(es) needs "
                          f"{cfg.devices * per} GPUs; this machine has {visible}")
    return list(range(first, first + per))


def gpu_budgets(cfg: FineTuneConfig, model, device: str) -> dict | None:
    """accelerate's max_memory for this process's GPUs: each one's memory (or --gpu-memory) less the plan's
    temporaries, activations and runtime reserve; None for a process on the CPU (place() keeps the layers in
    CPU memory then, also on a GPU machine: --device cpu, --accelerator cpu)."""
    import torch

    if not torch.device(device).type == "cuda":
        if cfg.gpus is not None or cfg.gpu_memory is not None:
            raise ConfigError(f"--{'gpus' if cfg.gpus is not None else 'gpu-memory'} sizes GPUs, but this process "
                              f"runs on {device}; drop it, or run on the GPUs (--device cuda / --accelerator gpu)")
        return None
    from fine_tune.plan import overhead_bytes, state_ratio
    from l2o.memory_plan import weight_budget

    rest, ratio = overhead_bytes(cfg, model), state_ratio(cfg, model)  # a stateful method's buffers join the weights
    out = {}
    for i in rank_gpus(cfg, device):
        cap = torch.cuda.get_device_properties(i).total_memory
        if cfg.gpu_memory:
            cap = min(cap, int(cfg.gpu_memory * 1024 ** 3))
        out[i] = weight_budget(cap, rest, ratio)
    return out


def place_model(cfg: FineTuneConfig, model, device: str, log):
    """`model` placed as --device-map / --offload say (l2o.placement.place), with a log line of where."""
    from l2o.placement import place

    if cfg.offload:
        place(model, offload=cfg.offload, execution_device=device)
    else:
        place(model, device_map=cfg.device_map, max_memory=gpu_budgets(cfg, model, device), execution_device=device)
    where = ", ".join(f"{n / 1e6:,.1f}M on {k}" for k, n in model._l2o_placement["parameters"].items())
    log(f"placement {'--offload ' + cfg.offload if cfg.offload else '--device-map ' + cfg.device_map}: {where}")
    return model


@contextlib.contextmanager
def base_only(model):
    """The base's outputs from a model that may carry a PEFT adapter (peft's `disable_adapter`)."""
    with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        yield model
