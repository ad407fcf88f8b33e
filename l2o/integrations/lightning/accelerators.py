"""An accelerator flag this machine cannot honour is refused in one sentence (both apps' `--accelerator`).

Without the check fine_tune's `--accelerator gpu` ran on the CPU on a machine without CUDA, and
meta_train's `--trainer.accelerator gpu` ended in Lightning's traceback ("No supported gpu backend found!"),
`tpu` in one about torch_xla, an unknown name in one listing Lightning's names. The names and whether each is
usable here come from Lightning's AcceleratorRegistry (`Accelerator.is_available()`); gpu, cuda and mps are
asked of torch, as the apps decide where to run with torch.
"""

from __future__ import annotations

from l2o.errors import ConfigError

# the words of the message; other names: "<name> accelerator"
LACKS = {"cuda": "CUDA device", "mps": "Apple MPS device"}


def _registry():
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return AcceleratorRegistry


def _usable(name: str) -> bool:
    """Whether accelerator `name` (a Lightning registry name) can run here."""
    import torch

    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    try:
        return bool(_registry()[name]["accelerator"].is_available())
    except Exception:  # noqa: BLE001 - an accelerator whose check itself fails (its package broken) is not usable
        return False


def available() -> list[str]:
    """What this machine can run on, in the flags' words: cpu, gpu (N CUDA devices), mps, and any other accelerator
    Lightning's registry knows and finds usable (tpu with torch_xla, ...)."""
    import torch

    have = ["cpu"]
    if torch.cuda.is_available():
        have.append(f"gpu ({torch.cuda.device_count()} CUDA device(s))")
    have += sorted(n for n in _registry().available_accelerators() if n not in ("cpu", "cuda") and _usable(n))
    return have


def check_accelerator(value, flag: str, gpu_is_cuda: bool = True, supported: tuple[str, ...] | None = None,
                      device: bool = False) -> None:
    """Refuse `value` (auto, cpu, gpu, cuda, mps, tpu, ...: Lightning's names, case and all) when this machine lacks
    it, when Lightning knows no such accelerator, or when it is not in `supported` (the app's own choices; None:
    any). `gpu_is_cuda`: "gpu" means CUDA (fine_tune's nccl backend); else Apple's MPS counts too (Lightning's
    "gpu"). `device`: `value` is a torch device (cuda:1 needs CUDA as cuda does). An Accelerator object is left to
    Lightning."""
    if not isinstance(value, str):
        return
    name = value.partition(":")[0] if device else value
    have = ", ".join(available())
    known = ("auto", "gpu", *sorted(_registry().available_accelerators()))
    if supported is not None and name not in supported:
        raise ConfigError(f"{flag} {value}: this command runs on {', '.join(supported)} (this machine has: {have})")
    if name not in known:
        raise ConfigError(f"{flag} {value}: no such accelerator; Lightning knows {', '.join(known)} (this machine "
                          f"has: {have})")
    if name == "auto":
        return
    usable = _usable("cuda") or (not gpu_is_cuda and _usable("mps")) if name == "gpu" else _usable(name)
    if usable:
        return
    lacks = LACKS.get("cuda" if name == "gpu" else name, f"{name} accelerator")
    raise ConfigError(f"{flag} {value}: this machine has no usable {lacks} (available: {have}); use {flag} cpu or auto")
