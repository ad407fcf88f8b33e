"""An accelerator flag this machine cannot honour is refused in one sentence (both apps' `--accelerator`).

Without the check fine_tune's `--accelerator gpu` ran on the CPU on a machine without CUDA, and
meta_train's `--trainer.accelerator gpu` ended in Lightning's traceback ("No supported gpu backend found!").
"""

from __future__ import annotations

from l2o.errors import ConfigError


def available() -> list[str]:
    """What this machine can run on, in the flags' words: cpu, gpu (N CUDA devices), mps."""
    import torch

    have = ["cpu"]
    if torch.cuda.is_available():
        have.append(f"gpu ({torch.cuda.device_count()} CUDA device(s))")
    if torch.backends.mps.is_available():
        have.append("mps")
    return have


def check_accelerator(value, flag: str, gpu_is_cuda: bool = True) -> None:
    """Refuse `value` (cpu, gpu, cuda, mps, auto, ...) when this machine lacks it. `gpu_is_cuda`: "gpu" means CUDA
    (fine_tune's nccl backend); else Apple's MPS counts too (Lightning's "gpu"). Names this check does not know
    (tpu, an Accelerator object) are left to Lightning."""
    import torch

    if not isinstance(value, str):
        return
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    usable = {"gpu": cuda or (mps and not gpu_is_cuda), "cuda": cuda, "mps": mps}
    if usable.get(value.lower().partition(":")[0], True):  # cuda:1 needs CUDA as cuda does
        return
    lacks = "Apple MPS" if value.lower().startswith("mps") else "CUDA"
    raise ConfigError(f"{flag} {value}: this machine has no usable {lacks} device (available: {', '.join(available())}); "
                      f"use {flag} cpu or auto")
