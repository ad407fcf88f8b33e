"""Finding, downloading, caching and verifying zoo entries.

Which *entry* an id means (first manifest that has it wins; ``@latest`` = highest version found):
  1. an explicit artefact path or ``file://`` URL (no manifest; used as is);
  2. the registry named by ``registry=`` / ``--registry`` or ``$L2O_ZOO_REGISTRY`` (a directory,
     ``file://`` or ``http(s)://`` URL holding ``zoo.json``);
  3. the local cache's index (``$L2O_CACHE/zoo`` or ``~/.cache/l2o/zoo``), filled by downloads;
  4. the defaults shipped in the package (``zoo/builtin/zoo.json``).

Where each *file* of the entry comes from (every candidate is sha256- and size-checked):
  cache blob (content-addressed, so any verified copy is the same bytes) -> local registry or
  ``file://`` source -> ``http(s)://`` registry or URL source -> a GitHub repository at the pinned
  commit (remote entries) -> Hugging Face Hub at the pinned commit (skipped when ``HF_HUB_OFFLINE=1``:
  then only the Hugging Face cache is consulted) -> built-in package folder.

A remote entry's verified source file is then converted (``zoo/convert.py``, no pickle code runs) into
the artefact files, beside it in the entry folder; ``converted.json`` there records their sha256s, which
every later use checks like any other file.

Cache layout (nothing is ever overwritten in place; versions never clobber each other)::

    <cache>/blobs/sha256/<hex>                              verified file contents
    <cache>/entries/<base>/<name>/<version>/<digest>/<file> hard links (or copies) of blobs
    <cache>/zoo.json                                        index of downloaded entries

Files are streamed into ``<cache>/.staging-*`` and renamed into ``blobs`` only once every file of
the entry verified; any failure removes the staging folder, so the cache is unchanged. The staging folder is
held by its writer's lock (``l2o.filelock.writer_folder``), so the next download removes one a killed download
left (and says so in one line), never a live one's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from l2o.cache import writing_cache
from l2o.filelock import writer_folder

from .artefact import not_an_artefact_folder
from .errors import IntegrityError, ZooError
from .ids import parse_id, sha256_file, version_key
from .manifest import (
    MANIFEST_NAME,
    REQUIRED_FILES,
    Location,
    Manifest,
    builtin_manifest,
    entry_digest,
    entry_layout,
    file_url_to_path,
    first_missing_ancestor,
    is_remote,
    locked,
    parse_location,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from .transfer import TransferError, copy_verified

REGISTRY_ENV = "L2O_ZOO_REGISTRY"
CONVERTED_NAME = "converted.json"  # a remote entry's converted files and their sha256s, in its cache folder


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` or ``$L2O_CACHE/zoo`` or ``~/.cache/l2o/zoo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    from l2o.cache import cache_dir

    return (cache_dir() / "zoo").resolve()


def registry_location(registry: str | os.PathLike | None = None) -> Location | None:
    text = registry if registry is not None else os.environ.get(REGISTRY_ENV) or None
    return parse_location(text) if text else None


@dataclass
class Catalog:
    """The manifests an id is looked up in, in precedence order, plus notes on skipped ones."""

    manifests: list
    notes: list
    cache: Path

    def find(self, text: str) -> tuple[dict, Manifest]:
        zid = parse_id(text)
        if zid.version is not None:
            for m in self.manifests:
                if str(zid) in m.entries:
                    return m.entries[str(zid)], m
        else:
            best = None
            for m in self.manifests:
                for v in m.versions(zid.key):
                    if best is None or version_key(v) > version_key(best[0]):
                        best = (v, m)
            if best is not None:
                return best[1].entries[f"{zid.key}@{best[0]}"], best[1]
        available = sorted({v for m in self.manifests for v in m.versions(zid.key)}, key=version_key)
        searched = ", ".join(m.label.split(" manifest ")[0] + f" {m.root}" for m in self.manifests)
        note = f"; note: {'; '.join(self.notes)}" if self.notes else ""
        if available:
            raise ZooError(f"'{zid.key}' has no version {zid.version} (available: {', '.join(available)}){note}")
        raise ZooError(f"unknown zoo id '{zid}' (searched {searched}; try `zoo list`){note}")

    def all_entries(self) -> list[tuple[dict, Manifest]]:
        seen, out = set(), []
        for m in self.manifests:
            for eid, entry in m.entries.items():
                if eid not in seen:
                    seen.add(eid)
                    out.append((entry, m))
        return out


def catalog(registry: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Catalog:
    manifests, notes = [], []
    loc = registry_location(registry)
    if loc is not None:
        try:
            manifests.append(read_manifest(loc, "registry"))
        except ZooError as err:
            if loc.is_local:
                raise
            notes.append(str(err))
    root = cache_root(cache_dir)
    manifests.append(read_manifest(Location(path=root), "cache", missing_ok=True))
    manifests.append(builtin_manifest())
    return Catalog(manifests, notes, root)


# ----------------------------------------------------------------------------- cache entries
def entry_folder(entry: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    zid = parse_id(entry["id"], require_version=True)
    return cache_root(cache_dir) / "entries" / zid.base / zid.name / zid.version / entry_digest(entry)


def blob_path(root: Path, hexdigest: str) -> Path:
    return root / "blobs" / "sha256" / hexdigest


def _verified(path: Path, meta: dict) -> bool:
    try:
        return path.is_file() and sha256_file(path) == (meta["sha256"], meta["size"])
    except OSError:
        return False


def file_problems(folder: Path, files: dict) -> list[str]:
    """Problems (one clause each) with ``folder``'s copies of ``files`` ({name: {sha256, size}})."""
    problems = []
    for name, meta in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        digest, size = sha256_file(path)
        if size != meta["size"]:
            problems.append(f"{name} has {size} bytes, expected {meta['size']}")
        elif digest != meta["sha256"]:
            problems.append(f"{name} failed its sha256 check (expected {meta['sha256'][:12]}…, got {digest[:12]}…)")
    return problems


def verify_folder(folder: Path, entry: dict) -> list[str]:
    """Problems (one clause each) with ``folder``'s copy of ``entry``; [] when every file verifies (for a
    remote entry also the converted files, against the record the conversion wrote)."""
    problems = file_problems(folder, entry["files"])
    if is_remote(entry) and not problems:
        try:
            record = json.loads((folder / CONVERTED_NAME).read_text(encoding="utf-8"))["files"]
            if set(record) != set(REQUIRED_FILES):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{CONVERTED_NAME} is missing or damaged"]
        problems = file_problems(folder, record)
    return problems


def _candidates(entry: dict, manifest: Manifest, fname: str) -> list[tuple[str, object]]:
    """``[(label, source)]`` in preference order; a source is a path/URL or a zero-arg callable."""
    rel = entry_layout(entry["id"])
    local, remote, hub, builtin = [], [], [], []
    for src in entry.get("sources", []):
        t = src["type"]
        if t == "registry" and manifest.root is not None:
            loc = manifest.root.join(f"{rel}/{fname}")
            if manifest.origin == "builtin":
                builtin.append(("built-in defaults", loc.path))
            elif loc.is_local:
                local.append((f"registry {manifest.root}", loc.path))
            else:
                remote.append((f"registry {manifest.root}", loc.url))
        elif t == "file":
            local.append((src["url"], file_url_to_path(src["url"]) / fname))
        elif t == "url":
            from urllib.parse import quote

            remote.append((src["url"], src["url"].rstrip("/") + "/" + quote(fname)))
        elif t == "github":
            from .transfer import github_file

            label = f"GitHub {src['repo']}@{src['commit'][:8]}"
            remote.append((label, lambda src=src: github_file(src, fname)))
        elif t == "hf":
            from .hub import hub_fetch

            repo, rev = src["repo_id"], src["revision"]
            hub.append((f"Hub {repo}", lambda repo=repo, rev=rev: hub_fetch(repo, rev, fname)))
    if not builtin and not is_remote(entry):  # the package's own copy of the same entry is the last resort
        shipped = builtin_manifest()
        same = shipped.entries.get(entry["id"])
        if same is not None and same["files"] == entry["files"]:
            builtin.append(("built-in defaults", shipped.root.join(f"{rel}/{fname}").path))
    return local + remote + hub + builtin


def _cache_index_entry(entry: dict, manifest: Manifest) -> dict:
    """The entry as the cache index stores it: registry-relative sources made absolute."""
    out = dict(entry)
    sources = []
    for src in entry.get("sources", []):
        if src["type"] == "registry":
            if manifest.root is None or manifest.origin == "builtin":
                continue
            loc = manifest.root.join(entry_layout(entry["id"]))
            if loc.is_local:
                sources.append({"type": "file", "url": loc.path.as_uri() + "/"})
            else:
                sources.append({"type": "url", "url": loc.url + "/"})
        else:
            sources.append(dict(src))
    out["sources"] = sources
    return out


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def fetch(entry: dict, manifest: Manifest, cache_dir: str | os.PathLike | None = None) -> Path:
    """Make a verified copy of ``entry`` in the cache (a remote entry's source file converted beside it)
    and return its folder.

    On any failure a ZooError says why in one sentence and the cache is left exactly as it was (a read-only
    or full cache: l2o.cache.CacheError, naming the folder and L2O_CACHE).
    """
    root = cache_root(cache_dir)
    with writing_cache(root):
        return _fetch(entry, manifest, root)


def _fetch(entry: dict, manifest: Manifest, root: Path) -> Path:
    folder = entry_folder(entry, root)
    if folder.is_dir() and not verify_folder(folder, entry):
        _update_index(root, entry, manifest)
        return folder
    created_top = first_missing_ancestor(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with writer_folder(root, ".staging-") as staging:  # removed on the way out, whatever happens
            staged = _stage(entry, manifest, root, staging)
            tmp_folder = staging / "entry"
            tmp_folder.mkdir()
            for fname, meta in entry["files"].items():
                _link_or_copy(staged.get(meta["sha256"]) or blob_path(root, meta["sha256"]), tmp_folder / fname)
            if is_remote(entry):
                _convert(tmp_folder, entry)
            # Every file verified (and converted): commit blobs, then move the entry folder into place.
            for hexdigest, path in staged.items():
                blob = blob_path(root, hexdigest)
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, blob)
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(tmp_folder, folder)
            except OSError:  # another process installed the same entry meanwhile: use it if it verifies
                if verify_folder(folder, entry):
                    raise
        _update_index(root, entry, manifest)
        return folder
    except BaseException:
        if created_top is not None:
            shutil.rmtree(created_top, ignore_errors=True)
        raise


def _stage(entry: dict, manifest: Manifest, root: Path, staging: Path) -> dict:
    """Stream every file of ``entry`` not yet in the cache's blobs into ``staging`` from the first source
    that gives a verified copy; ``{sha256: staged path}``. IntegrityError (one line) when none does."""
    staged = {}
    for fname, meta in sorted(entry["files"].items()):
        if meta["sha256"] in staged or _verified(blob_path(root, meta["sha256"]), meta):
            continue
        reasons = []
        for label, src in _candidates(entry, manifest, fname):
            dest = staging / meta["sha256"]
            try:
                path = src() if callable(src) else src
                copy_verified(path, dest, meta["sha256"], meta["size"], fname)
            except TransferError as err:
                reasons.append(f"{label}: {err}")
                continue
            staged[meta["sha256"]] = dest
            break
        else:
            why = "; ".join(reasons) if reasons else "the entry lists no sources"
            hint = ""
            if is_remote(entry):
                key = entry["id"]
                hint = (f"; on a machine with internet, `zoo mirror --to DIR {key}` copies it, then "
                        f"set {REGISTRY_ENV}=DIR (`zoo` also takes --registry DIR)")
            raise IntegrityError(f"could not get a verified copy of {fname} for '{entry['id']}' ({why}){hint}")
    return staged


def _convert(folder: Path, entry: dict) -> None:
    """Convert a remote entry's source file (already in ``folder``) into the artefact files beside it,
    and record their sha256s in ``converted.json``."""
    from .convert import convert_entry

    (fname,) = entry["files"]
    convert_entry(folder / fname, entry, folder)
    record = {}
    for name in REQUIRED_FILES:
        digest, size = sha256_file(folder / name)
        record[name] = {"sha256": digest, "size": size}
    write_json_atomic(folder / CONVERTED_NAME, {"from": fname, "files": record})


def _update_index(root: Path, entry: dict, manifest: Manifest) -> None:
    if manifest.origin == "cache":
        return
    new = _cache_index_entry(entry, manifest)
    with locked(root, "cache"):  # concurrent downloads each add their entry
        current = read_manifest(Location(path=root), "cache", missing_ok=True).entries
        if current.get(entry["id"]) != new:
            current[entry["id"]] = new
            write_manifest(root, current)


# ----------------------------------------------------------------------------- public resolution
@dataclass
class Resolved:
    path: Path  # a verified folder (cache entry) or the explicit artefact folder
    id: str | None  # None for explicit paths
    entry: dict | None
    origin: str  # "path" | "registry" | "cache" | "builtin"


def is_explicit_path(spec: str | os.PathLike) -> bool:
    s = os.fspath(spec)
    return s.startswith("file://") or (Path(s).expanduser() / "config.json").is_file()


def resolve(spec: str | os.PathLike, *, registry=None, cache_dir=None) -> Resolved:
    """Turn an id (``base/name[@version]``), a folder or a ``file://`` URL into a verified folder."""
    s = os.fspath(spec)
    if is_explicit_path(s):
        path = file_url_to_path(s) if s.startswith("file://") else Path(s).expanduser().resolve()
        if not path.is_dir():
            raise ZooError(f"artefact folder {path} does not exist")
        return Resolved(path, None, None, "path")
    cat = catalog(registry, cache_dir)
    entry, manifest = _find(cat, s)
    return Resolved(fetch(entry, manifest, cat.cache), entry["id"], entry, manifest.origin)


def _find(cat: Catalog, s: str) -> tuple[dict, Manifest]:
    """``cat.find(s)``; a spec that is not a known id but names a folder gets a message about the folder, and so
    does one that can only be a path (absolute, ``~``, ``./``, or more than one ``/``) naming no folder: a
    mistyped folder used to be refused as an invalid id."""
    try:
        return cat.find(s)
    except ZooError:
        path = Path(s).expanduser()
        if path.is_dir():
            raise not_an_artefact_folder(path.resolve()) from None
        if path.exists():
            raise ZooError(f"{path.resolve()} is a file, not an artefact folder (an artefact folder holds config.json, "
                           "model.safetensors, README.md; zoo ids look like base/name@version)") from None
        if s.startswith(("/", "~", ".")) or s.count("/") > 1:
            raise ZooError(f"no artefact folder {path.resolve()} (no such folder), and {s!r} is an invalid zoo id "
                           "(ids look like base/name@version)") from None
        raise


def load(spec, expected_fingerprint=None, expected_kind=None, expected_keys=None, *, model_name=None,
         registry=None, cache_dir=None, device="cpu"):
    """``resolve`` then ``load_artefact``: ``(tensors, config)`` from an id or a folder."""
    from .artefact import load_artefact

    r = resolve(spec, registry=registry, cache_dir=cache_dir)
    tensors, config = load_artefact(r.path, expected_fingerprint, expected_kind, expected_keys,
                                    model_name=model_name, device=device)
    if r.entry is not None and config.get("base_fingerprint") != r.entry["base_fingerprint"]:
        raise IntegrityError(f"'{r.id}' is inconsistent: its config.json and the manifest name different "
                             "base fingerprints")
    return tensors, config


def verify(spec: str, *, registry=None, cache_dir=None) -> list[str]:
    """Check an entry end to end; return the list of checked locations (ZooError on any problem).

    Verifies (fetching if needed) the cached copy, the local registry copy when there is one,
    and that the artefact's config and tensors agree with the manifest entry.
    """
    from .artefact import check_artefact_dir

    s = os.fspath(spec)
    if is_explicit_path(s):
        folder = resolve(s).path
        verify_artefact_folder(folder)
        return [str(folder)]
    cat = catalog(registry, cache_dir)
    entry, manifest = _find(cat, s)
    checked = []
    in_registry = any(s["type"] == "registry" for s in entry.get("sources", []))
    if (in_registry and manifest.origin in ("registry", "builtin") and manifest.root is not None
            and manifest.root.is_local):
        reg_folder = manifest.root.path / entry_layout(entry["id"])
        problems = file_problems(reg_folder, entry["files"])
        if problems:
            raise IntegrityError(f"'{entry['id']}' in {manifest.origin} {manifest.root} is corrupt: "
                                 f"{'; '.join(problems)}")
        checked.append(str(reg_folder))
    folder = entry_folder(entry, cat.cache)
    if folder.is_dir():  # report a damaged cache copy instead of silently repairing it
        problems = verify_folder(folder, entry)
        if problems:
            raise IntegrityError(
                f"cached copy of '{entry['id']}' is corrupt ({'; '.join(problems)}); "
                f"`zoo download {entry['id']}` fetches it again"
            )
    else:
        folder = fetch(entry, manifest, cat.cache)
    config, _ = check_artefact_dir(folder)
    if config["kind"] != entry["kind"] or config.get("base_fingerprint") != entry["base_fingerprint"]:
        raise IntegrityError(f"'{entry['id']}' is inconsistent: its config.json disagrees with the manifest on "
                             "kind or base fingerprint")
    checked.append(str(folder))
    return checked


def _listing_manifest(folder: Path) -> tuple[dict, str] | None:
    """The manifest entry that lists ``folder`` by its place (``<registry>/base/name/version`` or
    ``<cache>/entries/base/name/version/<digest>``) and the manifest's label; None if none does."""
    p = folder.parents
    candidates = []
    if len(p) >= 3:
        candidates.append((p[2], f"{p[1].name}/{p[0].name}@{folder.name}", None))
    if len(p) >= 5 and p[3].name == "entries":
        candidates.append((p[4], f"{p[2].name}/{p[1].name}@{p[0].name}", folder.name))
    for root, eid, digest in candidates:
        if not (root / MANIFEST_NAME).is_file():
            continue
        m = read_manifest(Location(path=root), "registry" if digest is None else "cache")
        entry = m.entries.get(eid)
        if entry is not None and (digest is None or entry_digest(entry) == digest):
            return entry, m.label
    return None


def verify_artefact_folder(folder: Path) -> str | None:
    """Check an artefact folder's structure (config, tensor layout, header agreement) and, when a
    registry or cache manifest lists the folder, every file's size and sha256 against it.

    Returns the label of the manifest the hashes were checked against, or None when no manifest lists
    the folder (then only the structure was checked). IntegrityError on any mismatch.
    """
    from .artefact import check_artefact_dir

    folder = Path(folder).resolve()
    listed = _listing_manifest(folder)
    if listed is not None:
        entry, label = listed
        source_only = is_remote(entry) and not (folder / CONVERTED_NAME).exists()  # a mirror's copy of the source
        problems = file_problems(folder, entry["files"]) if source_only else verify_folder(folder, entry)
        if problems:
            raise IntegrityError(f"{folder} does not match {label}: {'; '.join(problems)}")
        if source_only:
            return label
    check_artefact_dir(folder)
    return listed[1] if listed else None


__all__ = ["MANIFEST_NAME", "Resolved", "cache_root", "catalog", "fetch", "file_problems", "load",
           "registry_location", "resolve", "verify", "verify_artefact_folder", "verify_folder"]
