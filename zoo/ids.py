"""Zoo ids: ``base/name@version``, validated so that an id can never name a path outside a registry.

Rules (kept deliberately narrow, because ids become directory names):
- exactly two components ``base`` and ``name`` separated by one ``/``;
- each component is 1-64 characters from ``[A-Za-z0-9._-]``, starts with a letter or digit,
  and never contains ``..`` (so no ``.``/``..`` components, no traversal);
- the version is a positive integer (``1``) or semver-like (``1.2`` / ``1.2.3``).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Callable, NamedTuple

from .errors import ZooError

Raise = Callable[[str], Exception]  # the error a check raises with its one sentence (a caller's context added)

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,2}$")
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ZooId(NamedTuple):
    base: str
    name: str
    version: str | None

    @property
    def key(self) -> str:
        """``base/name`` without the version."""
        return f"{self.base}/{self.name}"

    def __str__(self) -> str:
        return self.key if self.version is None else f"{self.key}@{self.version}"


def _component_problem(value: str, what: str) -> str | None:
    """Why `value` is not a valid id component (None when it is)."""
    if not isinstance(value, str) or not _COMPONENT.match(value) or ".." in value:
        return (f"invalid {what} {value!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
                "starting with a letter or digit, without '..'")
    return None


def check_component(value: str, what: str = "id component") -> str:
    problem = _component_problem(value, what)
    if problem:
        raise ZooError(problem)
    return value


def check_version(value: str, error: Raise = ZooError) -> str:
    value = str(value)
    if not _VERSION.match(value) or value == "0":
        raise error(
            f"invalid version {value!r}: use a positive integer such as 1 or a semver-like 1.2.3"
        )
    return value


def version_key(version: str) -> tuple[int, ...]:
    """Sort key: ``2`` < ``10``; ``1`` == ``1.0.0`` for ordering purposes."""
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (3 - len(parts))


def parse_id(text: str, *, require_version: bool = False, error: Raise = ZooError) -> ZooId:
    """Parse and validate ``base/name[@version]``; otherwise raise `error` (ZooError) with one sentence."""
    if not isinstance(text, str) or not text:
        raise error("invalid zoo id: expected 'base/name' or 'base/name@version'")
    bad = f"invalid zoo id {text!r}: expected 'base/name' or 'base/name@version'"
    if text.startswith(("/", "\\", "~")) or "\\" in text or ":" in text or "\x00" in text:
        raise error(f"{bad} (absolute paths and drive letters are not ids)")
    spec, at, version = text.partition("@")
    parts = spec.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") for p in parts) or ".." in spec:
        raise error(f"{bad} (no '..', no extra '/')")
    base, name = parts
    problem = _component_problem(base, "base") or _component_problem(name, "name")
    if problem:
        raise error(f"{bad}; {problem}")
    if at:
        version = check_version(version, error)
    elif require_version:
        raise error(f"{bad} (a version is required here, e.g. {spec}@1)")
    else:
        version = None
    return ZooId(base, name, version)


def check_fingerprint(fp: str, error: Raise = ZooError) -> str:
    if not isinstance(fp, str) or not _FINGERPRINT.match(fp):
        raise error(f"invalid base fingerprint {fp!r}: expected 'sha256:' followed by 64 hex digits")
    return fp


def short_fp(fp: str | None) -> str:
    """``sha256:ab12cd34…`` for messages."""
    if not fp:
        return "no fingerprint"
    return fp[: len("sha256:") + 8] + "\u2026" if len(fp) > 15 else fp


def is_sha256(value) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


def is_commit(value) -> bool:
    return isinstance(value, str) and bool(_COMMIT.match(value))


CHUNK = 1 << 20  # bytes read at a time when hashing or copying a file


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """Stream a file through sha256; return ``(hexdigest, size)``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def short_hash(hexdigest: str) -> str:
    return hexdigest[:12] + "\u2026"
