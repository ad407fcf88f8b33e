"""``zoo``: publish, list, download and verify pretrained optimizers.

Every failure prints one line ``zoo: error: <sentence>``. Exit codes: 0 success, 2 a user error (bad or
unknown id, bad path, refused publish, usage), 1 an integrity failure (hash or size mismatch, corrupt or
inconsistent copy, damaged manifest, no verified copy obtainable) or an unexpected error.
Heavy modules (torch, safetensors, huggingface_hub) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from l2o.errors import OneLineParser, UserError
from l2o.stop import exit_code, stopped, terminate_as_interrupt

from .errors import IntegrityError, ZooError

EPILOG = (
    "Ids are base/name[@version] (latest version when omitted). Lookup order: explicit path or "
    "file:// URL, --registry or $L2O_ZOO_REGISTRY, the cache ($L2O_CACHE/zoo or ~/.cache/l2o/zoo), "
    "http(s) sources, the Hugging Face Hub at a pinned commit (skipped when HF_HUB_OFFLINE=1), "
    "built-in defaults. Every file is sha256-checked before use."
)


def _parser() -> argparse.ArgumentParser:
    common = OneLineParser(add_help=False)
    common.add_argument("--registry", metavar="DIR|URL",
                        help="registry directory, file:// or http(s):// URL holding zoo.json "
                             "(default: $L2O_ZOO_REGISTRY)")
    common.add_argument("--cache-dir", metavar="DIR",
                        help="cache directory (default: $L2O_CACHE/zoo or ~/.cache/l2o/zoo)")

    p = OneLineParser(prog="zoo", description="Publish, list, download and verify pretrained optimizers.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", parents=[common], help="list known entries (remote ones too; nothing is fetched)")
    s.add_argument("--base", metavar="BASE",
                   help="only entries for this base (an alias such as llama-3.1-8b, or a hub id)")
    s.add_argument("--json", action="store_true", help="print the entries as JSON")

    s = sub.add_parser("info", parents=[common], help="show one entry: where it comes from and its card")
    s.add_argument("id", metavar="ID[@VERSION]")
    s.add_argument("--json", action="store_true", help="print the manifest record as JSON")

    s = sub.add_parser("download", parents=[common], help="fetch and verify an entry into the cache; print its folder")
    s.add_argument("id", metavar="ID[@VERSION]")

    s = sub.add_parser("verify", parents=[common], help="re-check every file of an entry (or an artefact folder)")
    s.add_argument("id", metavar="ID[@VERSION]|PATH")

    s = sub.add_parser("publish", help="add an artefact folder to a registry directory")
    s.add_argument("artefact_dir", metavar="ARTEFACT_DIR")
    s.add_argument("--registry", metavar="DIR",
                   help="registry directory to write, created if missing (default: $L2O_ZOO_REGISTRY)")
    s.add_argument("--name", help="entry name (default: zo-finetuner or meta-init by kind)")
    s.add_argument("--base", help="id base (default: last part of config.base_model, lower-cased)")
    s.add_argument("--version", help="positive integer or semver-like (default: next integer)")
    s.add_argument("--license", help="license (default: the model card's)")
    s.add_argument("--push-to-hub", metavar="REPO",
                   help="also upload to this Hugging Face Hub model repo and pin its commit")
    s.add_argument("--shadow-builtin", action="store_true",
                   help="allow an id that a built-in default already has with different content (it then hides it)")

    s = sub.add_parser("mirror", parents=[common], help="copy entries into a registry directory for offline machines")
    s.add_argument("--to", required=True, metavar="DIR", help="target registry directory")
    s.add_argument("ids", nargs="*", metavar="ID", help="entries to copy (default: all known)")

    s = sub.add_parser("apply", parents=[common], help="materialise a ledger's fine-tuned weights onto its base")
    s.add_argument("id", metavar="ID[@VERSION]|PATH")
    s.add_argument("--base", required=True, metavar="BASE",
                   help="the base the ledger was recorded on (alias, hub id, folder)")
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write the weights to (save_pretrained)")
    s.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="refuse unless the ledger was recorded in this dtype")
    s.add_argument("--device", default="cpu", help="where to replay (cpu, cuda, ...)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into an --out that already holds files (a model there is replaced)")

    s = sub.add_parser("import-zo-finetuner", help="convert a released ZO Fine-tuner .pth (no pickle is executed)")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--base", required=True, metavar="ID", help="base model id or alias the policy was trained for")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--fingerprint", metavar="FP",
                   help="base fingerprint sha256:<hex> (default: computed by l2o.models)")
    g.add_argument("--no-fingerprint", action="store_true",
                   help="record no fingerprint (the result cannot be published)")
    s.add_argument("--out", required=True, metavar="DIR", help="artefact folder to write")
    s.add_argument("--license", help="license for the model card (default: other)")
    return p


def _source(entry: dict, manifest) -> str:
    """Where an entry comes from, in one word: built-in, remote (fetched from its authors), registry, cache."""
    from .manifest import is_remote

    if manifest.origin == "builtin":
        return "remote" if is_remote(entry) else "built-in"
    return manifest.origin


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.0f} KiB"


def _for_base(entry: dict, base: str) -> bool:
    from .card import hub_base_model

    names = {entry["id"].split("/")[0], entry["base_model"], hub_base_model(entry["base_model"]) or ""}
    wanted = {base, hub_base_model(base) or ""} - {""}
    return bool({n.lower() for n in names} & {w.lower() for w in wanted})


def _cmd_list(a) -> int:
    from .resolve import catalog, entry_folder

    cat = catalog(a.registry, a.cache_dir)
    rows = []
    for entry, m in sorted(cat.all_entries(), key=lambda em: em[0]["id"]):
        if a.base and not _for_base(entry, a.base):
            continue
        rows.append({**entry, "origin": m.origin, "source": _source(entry, m),
                     "cached": entry_folder(entry, cat.cache).is_dir(),
                     "size": sum(f["size"] for f in entry["files"].values())})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for note in cat.notes:
        print(f"zoo: warning: {note}", file=sys.stderr)
    if not rows:
        if a.base:
            print(f"no entries for base {a.base!r}; `zoo list` shows every base")
            return 0
        where = ("no registry configured (set $L2O_ZOO_REGISTRY or pass --registry)"
                 if not (a.registry or os.environ.get("L2O_ZOO_REGISTRY"))
                 else "the registry, the cache and the built-in defaults are empty")
        print(f"no entries: {where}")
        return 0
    header = ("ID", "KIND", "BASE", "SIZE", "SOURCE", "CACHED", "LICENSE")
    table = [header] + [(r["id"], r["kind"], r["base_model"], _size(r["size"]), r["source"],
                         "yes" if r["cached"] else "no", r["license"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _describe_source(src: dict, entry: dict, manifest) -> str:
    t = src["type"]
    if t == "registry":
        return f"registry {manifest.root}/{src['path']}" if manifest.origin != "builtin" else "the package (built-in)"
    if t == "github":
        return f"GitHub {src['repo']} at commit {src['commit']}, {src.get('path', '')}/{next(iter(entry['files']))}"
    if t == "hf":
        return f"Hugging Face Hub {src['repo_id']} at commit {src['revision']}"
    return src["url"]


def _card_facts(entry: dict, manifest, folder):
    """(config, card, tensor shapes) for an entry's card: from its copy in the cache or a local registry,
    or, for a remote entry not yet fetched, from its catalogue record; None when neither is at hand."""
    from .artefact import CARD_NAME, WEIGHTS_NAME, read_config, read_safetensors_header
    from .card import card_front_matter
    from .manifest import entry_layout, is_remote

    places = [folder]
    if not is_remote(entry) and manifest.root is not None and manifest.root.is_local:
        places.append(manifest.root.path / entry_layout(entry["id"]))
    for place in places:
        if (place / "config.json").is_file():
            readme = place / CARD_NAME
            card = card_front_matter(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
            shapes = read_safetensors_header(place / WEIGHTS_NAME)[0] if (place / WEIGHTS_NAME).is_file() else None
            return read_config(place), card, shapes
    if is_remote(entry):
        from .convert import preview_config

        return preview_config(entry), {"license": entry["license"], **entry["convert"].get("card", {})}, None
    return None


def _cmd_info(a) -> int:
    from .card import info_lines
    from .resolve import catalog, entry_folder

    cat = catalog(a.registry, a.cache_dir)
    entry, m = cat.find(a.id)
    folder = entry_folder(entry, cat.cache)
    if a.json:
        cached = str(folder) if folder.is_dir() else None
        print(json.dumps({**entry, "origin": f"{m.origin} {m.root}", "cached": cached}, indent=2))
        return 0
    size = sum(f["size"] for f in entry["files"].values())
    head = [("id", entry["id"]), ("kind", entry["kind"]),
            ("base", f"{entry['base_model']} ({entry['base_fingerprint']})"),
            ("size", f"{_size(size)} ({size} bytes{', downloaded and converted here' if 'convert' in entry else ''})"),
            ("source", _source(entry, m)), ("cached", str(folder) if folder.is_dir() else "no"),
            ("license", entry["license"]), ("created", entry["created"])]
    head += [("from", _describe_source(src, entry, m)) for src in entry.get("sources", [])]
    width = max(len(k) for k, _ in head)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in head) + "\n")
    facts = _card_facts(entry, m, folder)
    if facts is None:
        print(f"Card: not downloaded yet; `zoo download {entry['id']}` fetches it")
    else:
        print("\n".join(info_lines(*facts)).rstrip())
    return 0


def _cmd_download(a) -> int:
    from .ids import parse_id
    from .resolve import resolve

    parse_id(a.id)  # ids only: never a path here
    print(resolve(a.id, registry=a.registry, cache_dir=a.cache_dir).path)
    return 0


def _cmd_verify(a) -> int:
    from .resolve import is_explicit_path, resolve, verify, verify_artefact_folder

    if is_explicit_path(a.id):
        folder = resolve(a.id).path
        against = verify_artefact_folder(folder)
        if against is None:
            print(f"structure ok: {folder}; no manifest, so hashes were not checked")
        else:
            print(f"ok: {folder} verified (structure, and every sha256 against {against})")
        return 0
    checked = verify(a.id, registry=a.registry, cache_dir=a.cache_dir)
    print(f"ok: {a.id} verified ({'; '.join(checked)})")
    return 0


def _cmd_publish(a) -> int:
    from .registry import publish

    registry = a.registry or os.environ.get("L2O_ZOO_REGISTRY")
    if not registry:
        raise ZooError("publish needs a registry directory: pass --registry DIR or set $L2O_ZOO_REGISTRY")
    entry = publish(a.artefact_dir, registry, name=a.name, version=a.version, license=a.license, base=a.base,
                    push_to_hub=a.push_to_hub, shadow_builtin=a.shadow_builtin)
    print(f"published {entry['id']} to {registry}")
    return 0


def _cmd_mirror(a) -> int:
    from .registry import mirror

    done = mirror(a.to, a.ids, registry=a.registry, cache_dir=a.cache_dir,
                  warn=lambda message: print(f"zoo: warning: {message}", file=sys.stderr))
    print(f"mirrored {len(done)} entr{'y' if len(done) == 1 else 'ies'} to {a.to}"
          + (f": {', '.join(done)}" if done else ""))
    return 0


def _cmd_import(a) -> int:
    from .convert import import_zo_finetuner

    out = import_zo_finetuner(a.file, a.base, a.out, fingerprint=a.fingerprint,
                              compute_fingerprint=not a.no_fingerprint, license=a.license)
    print(f"wrote {out}")
    return 0


_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EEXIST,
                errno.ENAMETOOLONG}  # a bad path the user gave, not a failing machine

def _cmd_apply(a) -> int:
    from .ledger import apply_ledger

    out = apply_ledger(a.id, a.base, a.out, dtype=a.dtype, device=a.device, registry=a.registry,
                       cache_dir=a.cache_dir, log=lambda m: print(m, file=sys.stderr, flush=True),
                       overwrite=a.overwrite)
    print(f"wrote {out}")
    return 0


COMMANDS = {"apply": _cmd_apply, "list": _cmd_list, "info": _cmd_info, "download": _cmd_download, "verify": _cmd_verify,
            "publish": _cmd_publish, "mirror": _cmd_mirror, "import-zo-finetuner": _cmd_import}


def main(argv=None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed by argparse)
        return int(exc.code or 0)
    terminate_as_interrupt()  # SIGTERM: the staged download or copy is removed, as after Ctrl-C
    try:
        return COMMANDS[args.cmd](args)
    except UserError as err:  # the zoo's errors, and l2o's (a damaged ledger, a read-only or full cache)
        print(f"zoo: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, IntegrityError) else 2
    except KeyboardInterrupt as err:
        print(f"zoo: error: {stopped(err)}", file=sys.stderr)
        return exit_code(err)
    except OSError as err:
        print(f"zoo: error: {err.strerror or err}{f' ({err.filename})' if err.filename else ''}", file=sys.stderr)
        return 2 if err.errno in _PATH_ERRNOS else 1
    except Exception as err:  # noqa: BLE001 - never a traceback for users; ZOO_DEBUG=1 shows it
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo: error: unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
              "(set ZOO_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
