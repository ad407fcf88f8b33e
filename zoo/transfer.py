"""Streaming, verified copies: local files and http(s)/file URLs -> a staging file (stdlib + tqdm).

Nothing here writes to the cache directly: callers stream into a staging file and rename it into
place only after the size and sha256 matched, so an interrupted transfer never leaves a
half-valid file behind.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from l2o.errors import UserError

from .errors import ZooError
from .ids import CHUNK, short_hash

PROGRESS_MIN_BYTES = 1 << 20  # never draw a bar for files below 1 MiB
PROGRESS_BIG_BYTES = 64 << 20  # draw one for files this big even when stderr is not a TTY


def timeout_s() -> float:
    try:
        return float(os.environ.get("L2O_ZOO_TIMEOUT", "30"))
    except ValueError:
        return 30.0


PROBE_TIMEOUT_S = 3.0
GITHUB_ENV = "L2O_ZOO_GITHUB"  # a mirror of raw.githubusercontent.com's layout (http(s):// or file://)
GITHUB_RAW = "https://raw.githubusercontent.com"


class TransferError(UserError):
    """One source failed for one file; the resolver collects these into a single ZooError."""


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server of `url` answers an HTTP request within `timeout` seconds (any status counts;
    name resolution and TLS included, so a machine without network says no within `timeout`)."""
    import threading

    ok: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            ok.append(True)
        except urllib.error.HTTPError:  # an answer, even 401/404, means the server is there
            ok.append(True)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def github_file(src: dict, fname: str) -> str:
    """The URL of ``fname`` in a pinned ``github`` source: ``<root>/owner/name/<commit>/<path>/<fname>`` with
    root ``$L2O_ZOO_GITHUB`` or raw.githubusercontent.com. Raises TransferError, within a few seconds,
    when an http(s) root does not answer (no network)."""
    from urllib.parse import quote

    root = (os.environ.get(GITHUB_ENV) or GITHUB_RAW).rstrip("/")
    rel = "/".join(p for p in (src["repo"], src["commit"], src.get("path", ""), fname) if p)
    url = f"{root}/{quote(rel)}"
    if root.lower().startswith(("http://", "https://")) and not reachable(url):
        host = urllib.parse.urlparse(root).netloc
        raise TransferError(f"{host} gave no answer within {PROBE_TIMEOUT_S:.0f} s (no network?)")
    return url


def fetch_small(url: str, max_bytes: int, timeout: float | None = None) -> bytes:
    """GET a small document (a manifest); ZooError with one sentence on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout or timeout_s()) as resp:
            data = resp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ZooError(f"cannot reach {url} ({reason})") from None
    if len(data) > max_bytes:
        raise ZooError(f"{url} is larger than {max_bytes} bytes, refusing it")
    return data


def _show_progress(size: int) -> bool:
    if size < PROGRESS_MIN_BYTES:
        return False
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty or size >= PROGRESS_BIG_BYTES


def _open_source(src: str | Path):
    """A binary file object for a local path or a URL (http, https, file)."""
    s = os.fspath(src)
    if "://" not in s:
        try:
            return open(s, "rb")
        except OSError as err:
            raise TransferError(f"cannot read {s} ({err.strerror or err})") from None
    try:
        return urllib.request.urlopen(s, timeout=timeout_s())
    except urllib.error.HTTPError as err:
        raise TransferError(f"{s} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise TransferError(f"cannot reach {s} ({getattr(err, 'reason', err)})") from None


def copy_verified(src: str | Path, dest: Path, expected_sha256: str, expected_size: int, desc: str) -> None:
    """Stream ``src`` into ``dest`` (created/truncated) checking size and sha256 on the way.

    Raises TransferError (one clause) on unreachable source, interrupted stream, wrong size or
    wrong hash; ``dest`` is removed in every failure case.
    """
    h = hashlib.sha256()
    got = 0
    bar = None
    try:
        with _open_source(src) as fin, open(dest, "wb") as fout:
            if _show_progress(expected_size):
                from tqdm.auto import tqdm

                bar = tqdm(total=expected_size, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                           leave=False)
            while True:
                try:
                    chunk = fin.read(CHUNK)
                except Exception as err:  # http.client.IncompleteRead, ConnectionResetError, timeout...
                    raise TransferError(
                        f"transfer from {src} was interrupted after {got} of {expected_size} bytes "
                        f"({type(err).__name__})"
                    ) from None
                if not chunk:
                    break
                got += len(chunk)
                if got > expected_size:
                    raise TransferError(f"{src} is larger than the {expected_size} bytes the manifest lists")
                h.update(chunk)
                fout.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
            announced = getattr(fin, "headers", None)
            announced = announced.get("Content-Length") if announced is not None else None
            if announced is not None and announced.isdigit() and int(announced) > got:
                raise TransferError(
                    f"transfer from {src} was interrupted after {got} of {expected_size} bytes "
                    "(connection closed early)"
                )
        if got != expected_size:
            raise TransferError(f"{src} is truncated ({got} of {expected_size} bytes)")
        digest = h.hexdigest()
        if digest != expected_sha256:
            raise TransferError(
                f"{src} failed its sha256 check (expected {short_hash(expected_sha256)}, got {short_hash(digest)})"
            )
    except BaseException:
        try:
            os.unlink(dest)
        except OSError:
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
