"""Artefact folders: ``config.json`` + ``model.safetensors`` + ``README.md`` (the layout
``huggingface_hub``'s ModelHubMixin writes, so a folder can be pushed to the Hub unchanged).

Tensors are read and written with ``safetensors`` only; nothing here ever unpickles.
torch and safetensors are imported lazily.

Agreed tensor layouts (``config["kind"]``):

- ``zo-finetuner-policy``: ``w1`` float32 [B, H, F], ``b1`` [B, H], ``w2`` [B, 1, H], ``b2`` [B, 1]
  with B = len(arch["block_names"]), F = arch["in_features"] (5), H = arch["hidden"] (64);
  ``arch = {"in_features": 5, "hidden": 64, "block_names": [...], "normalize": true}``.
- ``bilevel-meta-init``: one tensor per changed backbone parameter (difference from the base),
  keyed by parameter name; ``arch = {"delta": true}``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import IntegrityError, ZooError
from .ids import check_fingerprint, short_fp
from .manifest import KINDS, LEDGER_KIND, REQUIRED_FILES, write_bytes_atomic, write_json_atomic

ARTEFACT_SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
LEDGER_NAME = "ledger.jsonl"  # a zo-ledger artefact's ledger (zoo.ledger)
LEDGER_HEADER_KEYS = ("dtype", "peft", "noise", "base_digest", "method")  # what its config repeats from the header
_MAX_HEADER = 100 * 1024 * 1024
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


# ----------------------------------------------------------------------------- safetensors header
def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict]:
    """``({name: {"dtype": "F32", "shape": [..]}}, metadata)`` without loading any tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > _MAX_HEADER:
                raise ValueError("implausible header length")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{path} is not a readable safetensors file ({err})") from None
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info:
            raise IntegrityError(f"{path} is not a readable safetensors file (bad entry {name!r})")
        out[name] = {"dtype": info["dtype"], "shape": list(info["shape"])}
    return out, meta


# ----------------------------------------------------------------------------- config + layout
def check_config(config: dict, label: str = "artefact") -> dict:
    if not isinstance(config, dict):
        raise ZooError(f"{label} config is not a JSON object")
    kind = config.get("kind")
    if "kind" not in config:  # a model folder (fine_tune's <out>/model, a hub download) was "unknown kind None"
        raise ZooError(f"{label}: its config.json has no kind, so it is not a zoo artefact (kinds: {', '.join(KINDS)});"
                       " a model's own config.json is not an artefact's")
    if kind not in KINDS:
        raise ZooError(f"{label} has unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    sv = config.get("schema_version")
    if not isinstance(sv, int) or sv < 1 or sv > ARTEFACT_SCHEMA_VERSION:
        raise ZooError(
            f"{label} has schema_version {sv!r} but this zoo reads schema_version {ARTEFACT_SCHEMA_VERSION}"
        )
    if not isinstance(config.get("base_model"), str) or not config["base_model"]:
        raise ZooError(f"{label} config has no base_model")
    if config.get("base_fingerprint") is not None:
        check_fingerprint(config["base_fingerprint"], lambda why: ZooError(f"{label} config: {why}"))
    if not isinstance(config.get("arch"), dict):
        raise ZooError(f"{label} config has no arch object")
    if not isinstance(config.get("training", {}), dict):
        raise ZooError(f"{label} config field 'training' is not an object")
    return config


def check_layout(config: dict, shapes: dict, label: str = "artefact") -> None:
    """Check tensor names/dtypes/shapes (``{name: {"dtype", "shape"}}``) against the kind's layout."""
    kind, arch = config["kind"], config["arch"]
    if kind == "zo-finetuner-policy":
        names = arch.get("block_names")
        f, h = arch.get("in_features"), arch.get("hidden")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ZooError(f"{label} arch.block_names must be a non-empty list of parameter names")
        if len(set(names)) != len(names):
            raise ZooError(f"{label} arch.block_names has duplicates")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (f, h)):
            raise ZooError(f"{label} arch needs positive integers in_features and hidden")
        if not isinstance(arch.get("normalize"), bool):
            raise ZooError(f"{label} arch.normalize must be true or false")
        b = len(names)
        want = {"w1": [b, h, f], "b1": [b, h], "w2": [b, 1, h], "b2": [b, 1]}
        if set(shapes) != set(want):
            raise ZooError(
                f"{label} must hold exactly the tensors w1, b1, w2, b2 but holds {', '.join(sorted(shapes)) or 'none'}"
            )
        for key, shape in want.items():
            if shapes[key]["dtype"] != "F32":
                raise ZooError(f"{label} tensor {key} is {shapes[key]['dtype']}, expected F32")
            if list(shapes[key]["shape"]) != shape:
                raise ZooError(f"{label} tensor {key} has shape {list(shapes[key]['shape'])}, expected {shape}")
    elif kind == LEDGER_KIND:
        for key in ("dtype", "peft", "noise", "updates", "head", "base_digest"):
            if key not in arch:
                raise ZooError(f"{label} arch has no {key!r} (a ledger config records its header and length)")
    else:  # bilevel-meta-init
        if arch.get("delta") is not True:
            raise ZooError(f"{label} arch.delta must be true (tensors are differences from the base)")
        if not shapes:
            raise ZooError(f"{label} holds no tensors")
        for key, info in shapes.items():
            if info["dtype"] not in _FLOAT_DTYPES:
                raise ZooError(f"{label} tensor {key} is {info['dtype']}, expected a floating dtype")


def not_an_artefact_folder(directory: Path) -> ZooError:
    """The refusal for a folder that lacks some of the files every artefact folder holds."""
    missing = [f for f in REQUIRED_FILES if not (Path(directory) / f).is_file()]
    return ZooError(f"{directory} is not an artefact folder: it lacks {', '.join(missing) or CONFIG_NAME} "
                    f"(an artefact folder holds {', '.join(REQUIRED_FILES)}; zoo ids look like base/name@version)")


def read_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise not_an_artefact_folder(directory) from None
    except (OSError, ValueError) as err:
        raise ZooError(f"{path} is not valid JSON ({err})") from None
    return check_config(config, f"artefact {directory}")


# ----------------------------------------------------------------------------- save / load
def save_artefact(directory: str | os.PathLike, tensors: dict, config: dict, card: dict | str) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``directory``.

    ``config`` needs ``kind``, ``base_model``, ``arch`` (and should carry ``base_fingerprint`` and a
    ``training`` summary); ``schema_version`` is filled in. ``card`` is a dict rendered by
    :func:`zoo.card.render_card` or a ready README text. Each file is written to a temporary name and renamed.
    """
    import torch
    from safetensors.torch import save

    directory = Path(directory)
    config = dict(config)
    config.setdefault("schema_version", ARTEFACT_SCHEMA_VERSION)
    config.setdefault("base_fingerprint", None)
    config.setdefault("training", {})
    check_config(config, "artefact config")
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ZooError("tensors must be a dict of parameter name -> torch.Tensor")
    dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    shapes = {k: {"dtype": dtype_names.get(t.dtype, str(t.dtype)), "shape": list(t.shape)} for k, t in tensors.items()}
    check_layout(config, shapes, "artefact")
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "kind": config["kind"], "schema_version": str(config["schema_version"]),
            "base_model": config["base_model"], "base_fingerprint": config["base_fingerprint"] or ""}
    clean = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    data = _canonical_safetensors(save(clean, metadata=meta))
    write_bytes_atomic(directory / WEIGHTS_NAME, data)
    write_json_atomic(directory / CONFIG_NAME, config)
    if isinstance(card, str):
        text = card
    else:
        from .card import render_card

        text = render_card(dict(card or {}), config, shapes)
    write_bytes_atomic(directory / CARD_NAME, text.encode("utf-8"))
    return directory


def _canonical_safetensors(data: bytes) -> bytes:
    """Re-emit a safetensors blob with its ``__metadata__`` keys sorted.

    safetensors writes metadata in hash-map order, so identical tensors and metadata would give
    different bytes (and sha256) on every save; sorting makes artefacts reproducible, which is
    what lets ``publish`` recognise a re-publication of the same content.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def fingerprint_mismatch(config: dict, expected: str, model_name: str | None) -> str:
    noun = KINDS[config["kind"]]
    model = f"'{model_name}'" if model_name else "the given model"
    return (
        f"{noun} was made for base '{config['base_model']}' ({short_fp(config.get('base_fingerprint'))}) "
        f"but the model is {model} ({short_fp(expected)})"
    )


def check_artefact_dir(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Validate an artefact folder without loading tensors: ``(config, header_shapes)`` (a ledger's
    whole hash chain is verified instead; it has no tensors)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ZooError(f"artefact folder {directory} does not exist")
    config = read_config(directory)
    if config["kind"] == LEDGER_KIND:
        read_ledger(directory, config)
        return config, {}
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ZooError(f"artefact {directory} has no {WEIGHTS_NAME}")
    shapes, meta = read_safetensors_header(weights)
    for key in ("kind", "base_fingerprint"):
        if key in meta and (meta[key] or None) != (config.get(key) or None):
            raise IntegrityError(
                f"artefact {directory} is inconsistent: {WEIGHTS_NAME} says {key}={meta[key]!r} "
                f"but {CONFIG_NAME} says {config.get(key)!r}"
            )
    check_layout(config, shapes, f"artefact {directory}")
    return config, shapes


def load_artefact(directory, expected_fingerprint: str | None = None, expected_kind: str | None = None,
                  expected_keys=None, *, model_name: str | None = None, device: str = "cpu"):
    """Load ``(tensors, config)`` from an artefact folder with safetensors (never unpickling).

    - ``expected_kind``: refuse an artefact of another kind;
    - ``expected_fingerprint``: refuse an artefact made for another base (``model_name`` names
      the current base in the message);
    - ``expected_keys``: strict key matching (missing or unexpected tensors are refused).
    """
    directory = Path(directory)
    config, shapes = check_artefact_dir(directory)
    if expected_kind is not None and config["kind"] != expected_kind:
        raise ZooError(f"artefact {directory} is a {config['kind']}, not a {expected_kind}")
    if config["kind"] == LEDGER_KIND:
        raise ZooError(f"artefact {directory} is a ledger (no tensors): load it with zoo.load_ledger")
    if expected_fingerprint is not None:
        check_fingerprint(expected_fingerprint)
        if config.get("base_fingerprint") is None:
            raise ZooError(
                f"{KINDS[config['kind']]} for base '{config['base_model']}' records no base fingerprint, "
                f"so it cannot be checked against {('the model ' + repr(model_name)) if model_name else 'the model'}"
            )
        if config["base_fingerprint"] != expected_fingerprint:
            raise ZooError(fingerprint_mismatch(config, expected_fingerprint, model_name))
    if expected_keys is not None:
        want, have = set(expected_keys), set(shapes)
        if want != have:
            missing, extra = sorted(want - have), sorted(have - want)
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {', '.join(extra[:5])}{' …' if len(extra) > 5 else ''}")
            raise ZooError(f"artefact {directory} does not match the expected tensors ({'; '.join(parts)})")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(directory / WEIGHTS_NAME), device=device)
    except Exception as err:  # noqa: BLE001
        raise IntegrityError(f"cannot read {directory / WEIGHTS_NAME} ({type(err).__name__}: {err})") from None
    return tensors, config


def read_ledger(directory, config: dict):
    """The verified ledger of an artefact folder whose config is `config` (ZooError otherwise)."""
    from l2o.ledger import Ledger, LedgerError

    directory = Path(directory)
    label = f"artefact {directory}"
    check_layout(config, {}, label)
    arch = config["arch"]
    if not (directory / LEDGER_NAME).is_file():
        raise ZooError(f"{label} has no {LEDGER_NAME}")
    try:
        ledger = Ledger.read(directory / LEDGER_NAME, updates=arch["updates"], head=arch["head"])
    except LedgerError as err:  # damaged: cut, reordered, edited, or not the ledger the config pins
        raise IntegrityError(f"{label}: {err}") from None
    h = ledger.header
    wrong = [k for k in LEDGER_HEADER_KEYS if h.get(k) != arch.get(k)]
    if h["base_fingerprint"] != config.get("base_fingerprint"):
        wrong.insert(0, "base_fingerprint")
    if wrong:
        raise IntegrityError(f"{label} is inconsistent: {LEDGER_NAME} and {CONFIG_NAME} disagree on {', '.join(wrong)}")
    return ledger
