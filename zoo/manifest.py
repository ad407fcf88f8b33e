"""Versioned ``zoo.json`` manifests, entries, registry locations and sha256 helpers (stdlib only).

A manifest is ``{"schema_version": 1, "entries": {"base/name@version": ENTRY}}`` where ENTRY is::

    {"id": "smollm2-135m/zo-finetuner@1", "kind": "zo-finetuner-policy",
     "base_model": "smollm2-135m", "base_fingerprint": "sha256:<64 hex>",
     "license": "apache-2.0", "created": "2026-11-23T22:30:00Z",
     "files": {"config.json": {"sha256": "<64 hex>", "size": 123}, ...},
     "sources": [{"type": "registry", "path": "smollm2-135m/zo-finetuner/1"},
                 {"type": "file", "url": "file:///srv/zoo/smollm2-135m/zo-finetuner/1/"},
                 {"type": "url", "url": "https://example.org/zoo/smollm2-135m/zo-finetuner/1/"},
                 {"type": "hf", "repo_id": "org/repo", "revision": "<40 hex commit>"}]}

``registry`` sources are relative to the root of the manifest that lists the entry (a registry
directory, a registry URL, or the built-in package folder).

A *remote* entry is fetched from someone else's repository and converted here (never redistributed):
its ``files`` are the one pinned source file, its sources ``{"type": "github", "repo": "owner/name",
"commit": "<40 hex>", "path": "folder"}`` (and, once mirrored, a registry copy), and ``convert`` says
how to turn the file into the entry's ``kind``: ``{"from": "zo-finetuner-pth", "blocks": B, "arch":
{...}, "training": {...}, "card": {...}}`` (``arch``/``training`` are merged into the artefact's config,
``card`` into its model card; see ``zoo/convert.py``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from l2o.filelock import write_bytes_atomic

from .errors import IntegrityError, ZooError
from .ids import check_fingerprint, is_commit, is_sha256, parse_id

SCHEMA_VERSION = 1
MANIFEST_NAME = "zoo.json"
LOCK_NAME = ".zoo.lock"  # flock'ed around every read-modify-write of a directory's zoo.json
KINDS = {"zo-finetuner-policy": "policy", "bilevel-meta-init": "meta-initialisation", "zo-ledger": "ledger"}
DEFAULT_NAMES = {"zo-finetuner-policy": "zo-finetuner", "bilevel-meta-init": "meta-init", "zo-ledger": "fine-tune"}
REQUIRED_FILES = ("config.json", "model.safetensors", "README.md")
LEDGER_KIND = "zo-ledger"  # a fine-tune as its base plus a seed ledger (l2o/ledger.py), no tensors
LEDGER_FILES = ("config.json", "ledger.jsonl", "README.md")


def required_files(kind: str) -> tuple[str, ...]:
    """The files an artefact of `kind` consists of (data file second)."""
    return LEDGER_FILES if kind == LEDGER_KIND else REQUIRED_FILES


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GITHUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REL_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
CONVERTERS = {"zo-finetuner-pth": "zo-finetuner-policy"}  # convert["from"] -> the kind it produces
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def is_remote(entry: dict) -> bool:
    """Whether ``entry`` is fetched as someone else's file and converted here (it has ``convert``)."""
    return "convert" in entry


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def entry_layout(entry_id: str) -> str:
    """Relative folder of an entry inside a registry: ``base/name/version``."""
    zid = parse_id(entry_id, require_version=True)
    return f"{zid.base}/{zid.name}/{zid.version}"


def entry_digest(entry: dict) -> str:
    """A short digest of an entry's file hashes: the cache keys entry folders by it."""
    files = {k: entry["files"][k]["sha256"] for k in sorted(entry["files"])}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- locations
@dataclass(frozen=True)
class Location:
    """Where a registry lives: a local directory or an http(s) URL prefix."""

    path: Path | None = None
    url: str | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else str(self.url)

    def join(self, rel: str) -> "Location":
        if self.path is not None:
            return Location(path=self.path / rel)
        return Location(url=self.url.rstrip("/") + "/" + urllib.parse.quote(rel))


def file_url_to_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ZooError(f"unsupported file URL {url!r}: use file:///absolute/path")
    return Path(urllib.request.url2pathname(parsed.path))


def parse_location(text: str | os.PathLike) -> Location:
    """``/dir``, ``./dir``, ``file:///dir`` -> local; ``http(s)://host/prefix`` -> URL."""
    text = os.fspath(text)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "file":
            return Location(path=file_url_to_path(text))
        if scheme in ("http", "https"):
            return Location(url=text)
        raise ZooError(f"unsupported registry location {text!r}: use a directory, file://, http:// or https://")
    return Location(path=Path(text).expanduser().resolve())


# ----------------------------------------------------------------------------- entries
def check_entry(key: str, entry: dict, label: str = "manifest") -> dict:
    """Validate one untrusted manifest entry; raise ZooError naming the manifest otherwise."""

    def bad(why: str) -> ZooError:
        return IntegrityError(f"{label} has an invalid entry {key!r}: {why}")

    zid = parse_id(key, require_version=True, error=bad)
    if not isinstance(entry, dict):
        raise bad("not an object")
    if entry.get("id", key) != key:
        raise bad(f"its id {entry.get('id')!r} differs from its key")
    if entry.get("kind") not in KINDS:
        raise bad(f"unknown kind {entry.get('kind')!r} (expected one of {', '.join(KINDS)})")
    check_fingerprint(entry.get("base_fingerprint"), bad)
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("no files")
    if is_remote(entry):
        _check_convert(entry, bad)
    else:
        for req in required_files(entry["kind"])[:2]:
            if req not in files:
                raise bad(f"missing file {req}")
    for name, meta in files.items():
        if not _FILE_NAME.match(name) or ".." in name:
            raise bad(f"unsafe file name {name!r}")
        if not isinstance(meta, dict) or not is_sha256(meta.get("sha256")):
            raise bad(f"file {name} has no valid sha256")
        if not isinstance(meta.get("size"), int) or isinstance(meta.get("size"), bool) or meta["size"] < 0:
            raise bad(f"file {name} has no valid size")
    sources = entry.get("sources", [])
    if not isinstance(sources, list):
        raise bad("sources is not a list")
    for src in sources:
        t = src.get("type") if isinstance(src, dict) else None
        if t == "registry":
            if src.get("path") != f"{zid.base}/{zid.name}/{zid.version}":
                raise bad(f"registry source path must be {zid.base}/{zid.name}/{zid.version}")
        elif t == "file":
            if not str(src.get("url", "")).startswith("file://"):
                raise bad("a file source needs a file:// url")
        elif t == "url":
            if not str(src.get("url", "")).lower().startswith(("http://", "https://")):
                raise bad("a url source needs an http:// or https:// url")
        elif t == "hf":
            if not _HF_REPO.match(str(src.get("repo_id", ""))) or ".." in str(src.get("repo_id")):
                raise bad(f"invalid Hub repo id {src.get('repo_id')!r}")
            if not is_commit(src.get("revision")):
                raise bad("a Hub source must pin a 40-hex commit revision")
        elif t == "github":
            if not _GITHUB_REPO.match(str(src.get("repo", ""))) or ".." in str(src.get("repo")):
                raise bad(f"invalid GitHub repository {src.get('repo')!r}")
            if not is_commit(src.get("commit")):
                raise bad("a GitHub source must pin a 40-hex commit")
            path = src.get("path", "")
            if not isinstance(path, str) or (path and (not _REL_PATH.match(path) or ".." in path.split("/"))):
                raise bad(f"invalid GitHub path {path!r}")
        else:
            raise bad(f"unknown source {src!r}")
    for fieldname in ("license", "created", "base_model"):
        if not isinstance(entry.get(fieldname), str):
            raise bad(f"missing {fieldname}")
    return entry


def _check_convert(entry: dict, bad) -> None:
    """A remote entry: one source file, a known converter for its kind, a positive block count."""
    conv = entry["convert"]
    if not isinstance(conv, dict) or CONVERTERS.get(conv.get("from")) != entry["kind"]:
        raise bad(f"convert must be an object whose 'from' turns a file into a {entry['kind']} "
                  f"(known: {', '.join(f'{k} -> {v}' for k, v in CONVERTERS.items())})")
    if len(entry["files"]) != 1:
        raise bad("a remote entry lists exactly one source file")
    blocks = conv.get("blocks")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
        raise bad("convert.blocks must be a positive integer")
    for key in ("arch", "training", "card"):
        if not isinstance(conv.get(key, {}), dict):
            raise bad(f"convert.{key} must be an object")


# ----------------------------------------------------------------------------- manifests
@dataclass
class Manifest:
    entries: dict = field(default_factory=dict)
    root: Location | None = None  # what ``registry`` sources are relative to
    origin: str = "registry"  # "registry" | "cache" | "builtin"
    label: str = "manifest"

    def versions(self, key: str) -> list[str]:
        out = []
        for eid in self.entries:
            k, _, v = eid.partition("@")
            if k == key:
                out.append(v)
        return out


def parse_manifest(data: bytes | str, label: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{label} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        raise IntegrityError(f"{label} is not a zoo manifest (expected an object with 'entries')")
    sv = doc.get("schema_version")
    if sv != SCHEMA_VERSION:
        raise ZooError(f"{label} has schema_version {sv!r} but this zoo reads schema_version {SCHEMA_VERSION}")
    for key, entry in doc["entries"].items():
        check_entry(key, entry, label)
    return doc["entries"]


def read_manifest(location: Location, origin: str = "registry", *, missing_ok: bool = False,
                  timeout: float | None = None) -> Manifest:
    """Read ``zoo.json`` at a registry root (local or URL)."""
    label = f"{origin} manifest {location.join(MANIFEST_NAME)}"
    if location.is_local:
        path = location.path / MANIFEST_NAME
        if not path.is_file():
            if missing_ok:
                return Manifest({}, location, origin, label)
            raise ZooError(f"no {MANIFEST_NAME} in registry {location.path}")
        data = path.read_bytes()
    else:
        from .transfer import fetch_small

        data = fetch_small(location.join(MANIFEST_NAME).url, _MAX_MANIFEST_BYTES, timeout=timeout)
    return Manifest(parse_manifest(data, label), location, origin, label)


def first_missing_ancestor(path: Path) -> Path | None:
    """The top-most directory that ``path.mkdir(parents=True)`` would create (None if it exists)."""
    top = None
    while not path.exists():
        top, path = path, path.parent
        if path == top:
            break
    return top


@contextlib.contextmanager
def locked(directory: Path, what: str = "registry"):
    """Hold the exclusive lock of ``directory``'s manifest (creating the directory if needed).

    Every read-modify-write of ``zoo.json`` (and every choice of a version number) happens inside,
    so concurrent publishes, mirrors and downloads never lose each other's entries. A directory that
    cannot be created or written is refused (ZooError) before anything else happens; if the body fails
    and this call created the directory, it is removed again.
    """
    from l2o.filelock import lock_fd

    directory = Path(directory)
    created = first_missing_ancestor(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = lock_fd(directory / LOCK_NAME)
    except OSError as err:
        raise ZooError(f"cannot write to {what} {directory} ({err.strerror or err})") from None
    try:
        yield
    except BaseException:
        if created is not None and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            import shutil

            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def write_manifest(directory: Path, entries: dict) -> None:
    """Atomically (temp file + rename) write ``directory/zoo.json``."""
    doc = {"schema_version": SCHEMA_VERSION, "entries": dict(sorted(entries.items()))}
    write_json_atomic(Path(directory) / MANIFEST_NAME, doc)


def write_json_atomic(path: Path, doc) -> None:
    write_bytes_atomic(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def builtin_root() -> Path:
    return Path(__file__).resolve().parent / "builtin"


def builtin_manifest() -> Manifest:
    return read_manifest(Location(path=builtin_root()), "builtin", missing_ok=True)
