"""Publishing artefacts into a registry directory (and optionally the Hugging Face Hub), and
mirroring entries into a registry for machines without internet."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from l2o.filelock import writer_folder

from .artefact import CARD_NAME, check_artefact_dir
from .card import card_front_matter
from .errors import ZooError
from .ids import check_component, check_version, sha256_file
from .manifest import (
    DEFAULT_NAMES,
    required_files,
    Location,
    builtin_manifest,
    entry_layout,
    locked,
    parse_location,
    read_manifest,
    utc_now,
    write_manifest,
)
from .transfer import copy_verified


NO_LICENSE = "no-license-file"  # the card license_name of files whose source carries no license (remote entries)


def _local_registry(registry) -> Path:
    loc = parse_location(registry)
    if not loc.is_local:
        raise ZooError(f"cannot write to registry {registry}: publishing and mirroring need a local directory")
    return loc.path


def default_base(base_model: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M`` -> ``smollm2-135m`` (the id's base component)."""
    return base_model.rstrip("/").split("/")[-1].lower()


def _install(root: Path, entry_id: str, files: dict, src_folder: Path) -> None:
    """Copy ``files`` from ``src_folder`` to ``root/base/name/version`` (verified, via a staging folder held by its
    writer's lock: a publish or mirror killed mid-way leaves one, which the next one here removes)."""
    target = root / entry_layout(entry_id)
    root.mkdir(parents=True, exist_ok=True)
    with writer_folder(root, ".staging-") as staging:
        for name, meta in files.items():  # a failure is copy_verified's TransferError, which names the file
            copy_verified(src_folder / name, staging / name, meta["sha256"], meta["size"], name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # an orphan folder without a manifest entry: replace it
            shutil.rmtree(target)
        os.replace(staging, target)


def publish(artefact_dir, registry, *, name: str | None = None, version: str | int | None = None,
            license: str | None = None, base: str | None = None, push_to_hub: str | None = None,
            shadow_builtin: bool = False) -> dict:
    """Publish an artefact folder into the registry directory ``registry``; return its manifest entry.

    - id = ``base/name@version``: ``base`` defaults to the last component of ``config.base_model``
      (lower-cased), ``name`` to ``zo-finetuner`` / ``meta-init`` by kind, ``version`` to the next
      integer after the highest one published in the registry or shipped as a built-in default;
    - the manifest's read-modify-write and the choice of the version happen under the registry's
      exclusive lock, so concurrent publishes all land, each under its own version;
    - refuses to overwrite an existing id@version with different content (same content: no-op), and
      to shadow a built-in id with different content unless ``shadow_builtin=True``;
    - ``push_to_hub="org/repo"`` first uploads the folder with ``HfApi().upload_folder`` and records
      the returned commit as a pinned ``hf`` source; if that fails nothing is written.
    """
    src = Path(artefact_dir).expanduser().resolve()
    config = _publishable(src)
    root = _local_registry(registry)
    base = check_component(base or default_base(config["base_model"]), "base")
    name = check_component(name or DEFAULT_NAMES[config["kind"]], "name")
    files = {}
    for req in required_files(config["kind"]):
        digest, size = sha256_file(src / req)
        files[req] = {"sha256": digest, "size": size}
    front = card_front_matter((src / CARD_NAME).read_text(encoding="utf-8"))
    if license is None:  # the card's license ("other" is named by license_name when the card has one)
        named = front.get("license") == "other" and front.get("license_name")
        license = str(front.get("license_name") if named else front.get("license") or "other")
    if push_to_hub and front.get("license_name") == NO_LICENSE:
        raise ZooError(f"refusing to push {src} to the Hugging Face Hub: its source carries no license file "
                       f"(license_name {NO_LICENSE}), so it is not ours to redistribute; share its zoo id instead")
    shipped = builtin_manifest()
    with locked(root):
        entries = dict(read_manifest(Location(path=root), "registry", missing_ok=True).entries)
        if version is None:
            taken = [e.partition("@")[2] for e in (*entries, *shipped.entries)
                     if e.partition("@")[0] == f"{base}/{name}"]
            version = max((int(v.split(".")[0]) for v in taken), default=0) + 1
        entry_id = f"{base}/{name}@{check_version(str(version))}"
        old = entries.get(entry_id)
        _check_not_clobbering(entry_id, old, shipped.entries.get(entry_id), files, config, root, shadow_builtin)
        sources = list(old["sources"]) if old else [{"type": "registry", "path": entry_layout(entry_id)}]
        if push_to_hub:
            from .hub import push_folder

            oid = push_folder(push_to_hub, str(src), f"publish {entry_id}")
            sources = [s for s in sources if not (s["type"] == "hf" and s["repo_id"] == push_to_hub)]
            sources.append({"type": "hf", "repo_id": push_to_hub, "revision": oid})
        entry = {"id": entry_id, "kind": config["kind"], "base_model": config["base_model"],
                 "base_fingerprint": config["base_fingerprint"], "license": old["license"] if old else license,
                 "created": old["created"] if old else utc_now(), "files": files, "sources": sources}
        if old is None or not (root / entry_layout(entry_id)).is_dir():
            _install(root, entry_id, files, src)
        entries[entry_id] = entry
        write_manifest(root, entries)
    return entry


def _publishable(src: Path) -> dict:
    """The config of an artefact folder that can be published (complete, with a base fingerprint)."""
    config, _ = check_artefact_dir(src)
    for req in required_files(config["kind"]):
        if not (src / req).is_file():
            raise ZooError(f"artefact {src} has no {req}")
    if not config.get("base_fingerprint"):
        raise ZooError(
            f"artefact {src} records no base fingerprint, so users could not check it against their model; "
            "re-create it with a fingerprint"
        )
    return config


def _check_not_clobbering(entry_id, old, builtin, files, config, root, shadow_builtin) -> None:
    if old is not None and (old["files"] != files or old["kind"] != config["kind"]):
        raise ZooError(
            f"'{entry_id}' already exists in registry {root} with different content; publish it under a new --version"
        )
    if builtin is not None and builtin["files"] != files and not shadow_builtin:
        raise ZooError(
            f"'{entry_id}' is a built-in entry with different content, and this registry's copy would shadow it for "
            "everyone who uses the registry; choose another --version or --name, or pass --shadow-builtin"
        )


def mirror(to, ids=None, *, registry=None, cache_dir=None, warn=None) -> list[str]:
    """Copy entries (all known ones when ``ids`` is empty) into the registry directory ``to``.

    Each entry is first fetched and verified into the cache; the mirror's manifest keeps the
    entry's hashes and its remote (``http(s)``/Hub/GitHub) sources, so the mirror is self-contained.
    A remote entry (``convert``) is mirrored as its pinned source file, converted on each machine.
    Without ``ids``, a remote entry that cannot be fetched here is skipped (``warn(message)``); a named
    one that cannot be fetched is an error.
    """
    from .resolve import catalog

    root = _local_registry(to)
    cat = catalog(registry, cache_dir)
    chosen = [cat.find(i) for i in ids] if ids else cat.all_entries()
    with locked(root):  # an unwritable target is refused here, before the cache is touched
        return _mirror_locked(root, chosen, cat.cache, None if ids else (warn or (lambda message: None)))


def _mirror_locked(root: Path, chosen: list, cache: Path, skip=None) -> list[str]:
    from .manifest import is_remote
    from .resolve import fetch

    entries = dict(read_manifest(Location(path=root), "registry", missing_ok=True).entries)
    done = []
    for entry, manifest in chosen:
        eid = entry["id"]
        if eid in entries:
            if entries[eid]["files"] != entry["files"]:
                raise ZooError(f"'{eid}' already exists in registry {root} with different content")
            if (root / entry_layout(eid)).is_dir():
                done.append(eid)
                continue
        try:
            folder = fetch(entry, manifest, cache)
        except ZooError:
            if skip is None or not is_remote(entry):
                raise
            skip(f"skipped {eid}: its source cannot be fetched from here (`zoo download {eid}` says why)")
            continue
        _install(root, eid, entry["files"], folder)
        new = dict(entry)
        new["sources"] = [{"type": "registry", "path": entry_layout(eid)}] + [
            dict(s) for s in entry.get("sources", []) if s["type"] in ("url", "hf", "github")
        ]
        entries[eid] = new
        write_manifest(root, entries)
        done.append(eid)
    if not chosen:
        write_manifest(root, entries)
    return done
