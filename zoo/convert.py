"""Importing the policies released by the ZO Fine-tuner authors (arXiv 2510.00419).

Their ``*_finetuner.pth`` files are ``torch.save`` of a dict ``{parameter name: nn.Sequential(
Linear(5, 64), Tanh(), Linear(64, 1))}`` (whole pickled modules, some in fp16). We read them with
:mod:`zoo.safe_pickle` (no arbitrary code runs), convert to float32 and stack them into the
agreed ``zo-finetuner-policy`` layout: ``w1`` [B, 64, 5], ``b1`` [B, 64], ``w2`` [B, 1, 64],
``b2`` [B, 1], with ``arch.block_names`` = the file's dict order.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from l2o.filelock import staged_files

from .errors import IntegrityError, ZooError
from .ids import check_fingerprint, sha256_file
from .manifest import first_missing_ancestor
from .safe_pickle import ModuleRecord, restricted_load


def _layers(label: str, name: str, module) -> list:
    """``[w1, b1, w2, b2]`` of one block from a Sequential record or a plain state dict."""
    if isinstance(module, ModuleRecord):
        if module.cls_name != "Sequential":
            raise ZooError(f"{label}: block {name!r} is a {module.cls_name}, expected Sequential(Linear, Tanh, Linear)")
        subs = list((module.state.get("_modules") or {}).values())
        kinds = [getattr(m, "cls_name", type(m).__name__) for m in subs]
        if kinds != ["Linear", "Tanh", "Linear"]:
            raise ZooError(f"{label}: block {name!r} is Sequential({', '.join(kinds)}), "
                           "expected (Linear, Tanh, Linear)")
        out = []
        for lin in (subs[0], subs[2]):
            params = lin.state.get("_parameters") or {}
            out += [params.get("weight"), params.get("bias")]
    elif isinstance(module, dict):
        out = [module.get(k) for k in ("0.weight", "0.bias", "2.weight", "2.bias")]
    else:
        raise ZooError(f"{label}: block {name!r} holds a {type(module).__name__}, expected an nn.Sequential")
    import torch

    if not all(isinstance(t, torch.Tensor) for t in out):
        raise ZooError(f"{label}: block {name!r} lacks a weight or bias")
    return out


def read_zo_finetuner(path) -> tuple[dict, list, dict]:
    """``(tensors, block_names, info)`` from a released ZO Fine-tuner ``.pth`` (restricted unpickling)."""
    import torch

    label = str(path)
    obj = restricted_load(path)
    if not isinstance(obj, dict) or not obj:
        raise ZooError(f"{label}: expected a non-empty dict of parameter name -> nn.Sequential")
    names, w1, b1, w2, b2, dtypes = [], [], [], [], [], set()
    shape = None
    for name, module in obj.items():
        if not isinstance(name, str) or not name:
            raise ZooError(f"{label}: block names must be non-empty strings")
        layers = _layers(label, name, module)
        dtypes.update(str(t.dtype).replace("torch.", "") for t in layers)
        this = tuple(tuple(t.shape) for t in layers)
        h, f = this[0] if len(this[0]) == 2 else (None, None)
        if h is None or this != ((h, f), (h,), (1, h), (1,)):
            raise ZooError(f"{label}: block {name!r} has shapes {list(this)}, "
                           "expected Linear(F, H) -> Tanh -> Linear(H, 1)")
        if shape is not None and (h, f) != shape:
            raise ZooError(f"{label}: block {name!r} has hidden/in sizes {(h, f)} unlike the first block's {shape}")
        shape = (h, f)
        names.append(name)
        for dst, t in zip((w1, b1, w2, b2), layers):
            dst.append(t.detach().to(torch.float32))
    tensors = {"w1": torch.stack(w1), "b1": torch.stack(b1), "w2": torch.stack(w2), "b2": torch.stack(b2)}
    info = {"hidden": shape[0], "in_features": shape[1], "source_dtypes": sorted(dtypes)}
    return tensors, names, info


def _clip(err: BaseException, limit: int = 300) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 1].rstrip(" ,;") + "\u2026"


def _base_identity(base: str) -> tuple[str, list[str]]:
    """(fingerprint, block names) of `base` through l2o: from its config where one is at hand (a local
    folder, the Hugging Face cache), else from the shapes l2o ships for an alias (offline)."""
    fix = "pass --fingerprint sha256:<hex>, or --no-fingerprint to record none"
    try:
        from l2o.models import base_block_names, base_fingerprint
    except Exception as err:  # noqa: BLE001 - the l2o side may be missing or broken
        raise ZooError(f"cannot compute the fingerprint of base '{base}' (l2o.models is unavailable: "
                       f"{type(err).__name__}); {fix}") from None
    try:
        return check_fingerprint(base_fingerprint(base)), base_block_names(base)
    except Exception as err:  # noqa: BLE001
        first = err
    try:
        from l2o.models import shipped_config, shipped_identity

        if shipped_config(base) is not None:
            return shipped_identity(base)
    except Exception:  # noqa: BLE001 - no shipped shapes to fall back on: report the first failure
        pass
    raise ZooError(f"cannot compute the fingerprint of base '{base}' ({type(first).__name__}: {_clip(first)}); "
                   f"{fix}") from None


def _check_blocks(file: Path, names: list[str], base: str, base_names: list[str]) -> None:
    """One line when the file's per-tensor networks are not exactly the base's parameter blocks."""
    extra = [n for n in names if n not in set(base_names)]
    missing = [n for n in base_names if n not in set(names)]
    if extra or missing:
        example = f"{extra[0]!r} is not a block of it" if extra else f"its block {missing[0]!r} has no network"
        raise ZooError(f"{file.name} holds {len(names)} per-tensor networks but base '{base}' has {len(base_names)} "
                       f"parameter blocks ({example}): it was made for another base; give --base the base it was "
                       "trained for")


def _save_policy(out, file: Path, tensors: dict, names: list, info: dict, base: str, fingerprint: str | None,
                 arch: dict | None = None, training: dict | None = None, card: dict | None = None) -> Path:
    """Write the stacked policy as a `zo-finetuner-policy` artefact; the import record goes into `training`."""
    from .artefact import save_artefact

    digest, size = sha256_file(file)
    config = {
        "kind": "zo-finetuner-policy",
        "base_model": base,
        "base_fingerprint": fingerprint,
        "arch": {"normalize": True, **(arch or {}), "in_features": info["in_features"], "hidden": info["hidden"],
                 "block_names": names},
        "training": {
            "method": "zo-finetuner",
            "source": "ZO Fine-tuner released policy (arXiv 2510.00419, github.com/ASTRAL-Group/ZO_Fine_tuner)",
            "imported_from": file.name,
            "imported_sha256": digest,
            "imported_size": size,
            "source_dtypes": info["source_dtypes"],
            "blocks": len(names),
            **(training or {}),
        },
    }
    card = {
        "license": "other",
        "tags": ["zo-fine-tuner", "imported"],
        "title": f"ZO Fine-tuner policy for {base} (imported)",
        "description": (
            f"Converted from `{file.name}` (sha256 {digest}) by `zoo import-zo-finetuner`: {len(names)} "
            "per-tensor MLPs Linear(5,64)-Tanh-Linear(64,1) stacked to float32; no pickle is shipped."
        ),
        **(card or {}),
    }
    return save_artefact(out, tensors, config, card)


def import_zo_finetuner(file, base: str, out, *, fingerprint: str | None = None, compute_fingerprint: bool = True,
                        license: str | None = None) -> Path:
    """Convert a released ZO Fine-tuner ``.pth`` into a ``zo-finetuner-policy`` artefact folder ``out``.

    The base fingerprint is ``fingerprint`` if given, else ``l2o.models.base_fingerprint(base)`` (or, for an
    alias whose config is not at hand, the shapes l2o ships for it); with ``compute_fingerprint=False`` and
    no ``fingerprint`` none is recorded (such an artefact can be inspected but not published).
    """
    file = Path(file)
    if not file.is_file():
        raise ZooError(f"{file} does not exist")
    if fingerprint is not None:
        fingerprint = check_fingerprint(fingerprint)
    tensors, names, info = read_zo_finetuner(file)
    if fingerprint is None and compute_fingerprint:
        fingerprint, base_names = _base_identity(base)
        _check_blocks(file, names, base, base_names)
    if fingerprint is None:
        print(f"zoo: warning: no base fingerprint recorded for '{base}'", file=sys.stderr)
    out = Path(out)
    created = first_missing_ancestor(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # the artefact's files are written beside each other and renamed into --out once all are whole: a stop
        # mid-write left weights without their config (or a temp file that nothing removed, after a kill -9)
        with staged_files(out, IMPORT_STAGING, log=lambda m: print(f"zoo: {m}", file=sys.stderr),
                          what="import") as staging:
            _save_policy(staging, file, tensors, names, info, base, fingerprint,
                         arch={"size_rule": "authors"},   # trained by the authors' code, whose nf is this rule
                         card={"license": license or "other",
                               "tasks": ["as released by the ZO Fine-tuner authors (see the paper)"]})
    except BaseException:
        if created is not None:  # --out as it was: no folder this import made
            shutil.rmtree(created, ignore_errors=True)
        raise
    return out


IMPORT_STAGING = ".tmp-import-"  # `zoo import-zo-finetuner` writes into <out>/.tmp-import-<8 characters>, then moves


def convert_entry(source: Path, entry: dict, out) -> Path:
    """Turn the verified source file of a remote entry (``entry["convert"]``, zoo/manifest.py) into an
    artefact folder ``out``: restricted unpickling, the pinned block count, the file's blocks checked
    against the base's (its config, or the shapes l2o ships for it; skipped when neither is at hand), and
    the pinned base fingerprint checked against the base's."""
    conv, base, pinned = entry["convert"], entry["base_model"], entry["base_fingerprint"]
    tensors, names, info = read_zo_finetuner(source)
    if len(names) != conv["blocks"]:
        raise IntegrityError(f"'{entry['id']}': {source.name} holds {len(names)} per-tensor networks, but the "
                             f"catalogue says {conv['blocks']}")
    try:
        fp, base_names = _base_identity(base)
    except ZooError:
        fp = base_names = None
    if fp is not None and fp != pinned:
        raise IntegrityError(f"'{entry['id']}' pins base fingerprint {pinned[:15]}… but base '{base}' has {fp[:15]}…")
    if base_names is not None:
        _check_blocks(source, names, base, base_names)
    training = {**conv.get("training", {}), "provenance": remote_provenance(entry)}
    rule = (conv.get("arch") or {}).get("size_rule")
    how = (f"```bash\nfine_tune --base {base} --optimizer zoo:{entry['id']}"
           f"{' --policy-size-rule ' + rule if rule else ''} --task <task> ...\n```\n\n"
           f"`zoo download {entry['id']}` fetches, verifies and converts it into the local cache"
           f"{'; --policy-size-rule ' + rule if rule else ''}"
           f"{' deploys it with the normaliser it was meta-trained with' if rule else ''}.")
    card = {"license": entry["license"], "tags": ["zo-fine-tuner", "remote"], "how_to_use": how,
            "title": f"ZO Fine-tuner policy for {base} (the authors' release, converted)", **conv.get("card", {})}
    return _save_policy(out, source, tensors, names, info, base, pinned, conv.get("arch"), training, card)


def remote_provenance(entry: dict) -> dict:
    """Where a remote entry's source file comes from (its pinned GitHub source, sha256 and size), then the
    catalogue's own provenance notes (paper, license, what was checked)."""
    (fname, meta), = entry["files"].items()
    out = {}
    for src in entry.get("sources", []):
        if src["type"] == "github":
            path = "/".join(p for p in (src.get("path", ""), fname) if p)
            out = {"repository": f"https://github.com/{src['repo']}", "commit": src["commit"], "file": path,
                   "url": f"https://github.com/{src['repo']}/blob/{src['commit']}/{path}"}
            break
    out.update({"sha256": meta["sha256"], "bytes": meta["size"]})
    return {**out, **entry["convert"].get("training", {}).get("provenance", {})}


def preview_config(entry: dict) -> dict:
    """The config a remote entry converts to, less its block names (for `zoo info` before a download)."""
    conv = entry["convert"]
    return {"kind": entry["kind"], "base_model": entry["base_model"], "base_fingerprint": entry["base_fingerprint"],
            "arch": {"normalize": True, **conv.get("arch", {})},
            "training": {"method": "zo-finetuner", **conv.get("training", {}), "blocks": conv["blocks"],
                         "provenance": remote_provenance(entry)}}
