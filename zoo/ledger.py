"""Fine-tunes as seed ledgers (kind ``zo-ledger``): ``config.json`` + ``ledger.jsonl`` + ``README.md``.

A ledger artefact holds no tensors: it is a base (named and fingerprinted) plus the seeds and scalars
of every update (``l2o/ledger.py``), so a full-parameter fine-tune of any size is kilobytes to megabytes.
It is published, listed, downloaded and sha256-verified like every other artefact; on top of that its
hash chain is verified and must end exactly at the update count and head hash the config records.

- ``save_ledger(folder, ledger, base_model)`` writes one;
- ``load_ledger(id_or_folder, expected_fingerprint=, expected_dtype=, expected_noise=)`` resolves,
  verifies and returns ``(Ledger, config)``, refusing a wrong base, dtype or noise source in one line;
- ``apply_ledger(id, base, out)`` (``zoo apply``) materialises the weights: loads the base in the
  recorded dtype, replays the ledger through the engine and writes a ``save_pretrained`` folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from l2o.filelock import remove_dead_writers, staged_files

from .artefact import CARD_NAME, CONFIG_NAME, LEDGER_HEADER_KEYS, LEDGER_NAME, check_config, check_layout
from .artefact import fingerprint_mismatch, read_ledger
from .card import render_card
from .errors import ZooError
from .ids import check_fingerprint
from .manifest import LEDGER_KIND, first_missing_ancestor, write_json_atomic

WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
APPLY_STAGING = ".tmp-apply-"  # `zoo apply` writes the weights into <out>/.tmp-apply-<8 characters>, then moves them



def ledger_config(ledger, base_model: str | None = None, training: dict | None = None) -> dict:
    """The artefact config of a ledger: its header (less the block names) and its length and head."""
    h = ledger.header
    return {"kind": LEDGER_KIND, "schema_version": 1, "base_model": base_model or h.get("base_model") or "unknown",
            "base_fingerprint": h["base_fingerprint"],
            "arch": {**{k: h[k] for k in LEDGER_HEADER_KEYS}, "updates": ledger.num_updates, "head": ledger.head},
            "training": dict(training or {})}


def save_ledger(directory, ledger, base_model: str | None = None, card: dict | str | None = None,
                training: dict | None = None) -> Path:
    """Write a ledger artefact folder (the ledger is sealed first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ledger.write(directory / LEDGER_NAME)
    config = check_config(ledger_config(ledger, base_model, training), "ledger config")
    check_layout(config, {}, "ledger config")
    write_json_atomic(directory / CONFIG_NAME, config)
    how = (f"```bash\nzoo apply <base>/<name>@<version> --base {config['base_model']} --out finetuned/\n"
           f"fine_tune --base {config['base_model']} --dtype {config['arch']['dtype']} --init zoo:<id> ...\n```")
    card = card if isinstance(card, str) else render_card({"how_to_use": how, **dict(card or {})}, config)
    (directory / CARD_NAME).write_text(card, encoding="utf-8")
    return directory


def check_expected(config: dict, expected_fingerprint=None, expected_dtype=None, expected_noise=None,
                   model_name: str | None = None) -> None:
    """Refuse, in one sentence, a ledger made for another base, dtype or noise source."""
    from l2o.ledger import noise_from_config

    arch = config["arch"]
    if expected_fingerprint is not None and config["base_fingerprint"] != check_fingerprint(expected_fingerprint):
        raise ZooError(fingerprint_mismatch(config, expected_fingerprint, model_name))
    if expected_dtype is not None and arch["dtype"] != expected_dtype:
        raise ZooError(f"ledger for base '{config['base_model']}' was recorded in {arch['dtype']}, not "
                       f"{expected_dtype}; replay is bit-identical only in the recorded dtype "
                       f"(use --dtype {arch['dtype']})")
    if expected_noise is not None and arch["noise"] != expected_noise:
        raise ZooError(f"ledger for base '{config['base_model']}' was recorded with noise {json.dumps(arch['noise'])}, "
                       f"not {json.dumps(expected_noise)}")
    noise_from_config(arch["noise"])   # a LedgerError (a UserError) when this l2o cannot make that noise


def load_ledger(spec, expected_fingerprint=None, expected_dtype=None, expected_noise=None, *,
                model_name: str | None = None, registry=None, cache_dir=None):
    """Resolve an id / folder / file:// URL to a verified ledger: ``(Ledger, config)``."""
    from .artefact import read_config
    from .resolve import resolve

    spec = os.fspath(spec)
    r = resolve(spec[4:] if spec.startswith("zoo:") else spec, registry=registry, cache_dir=cache_dir)
    config = read_config(r.path)
    if config["kind"] != LEDGER_KIND:
        raise ZooError(f"'{spec}' is a {config['kind']}, not a ledger")
    if r.entry is not None and config.get("base_fingerprint") != r.entry["base_fingerprint"]:
        raise ZooError(f"'{r.id}' is inconsistent: its config.json and the manifest name different base fingerprints")
    check_expected(config, expected_fingerprint, expected_dtype, expected_noise, model_name)
    return read_ledger(r.path, config), config


def apply_ledger(spec, base: str, out, *, dtype: str | None = None, device: str = "cpu", registry=None,
                 cache_dir=None, log=print, overwrite: bool = False) -> Path:
    """Materialise a full-parameter ledger: the base in the recorded dtype, replayed, `save_pretrained` to `out`
    (a new or empty folder, or with `overwrite` one whose files the new weights replace)."""
    from l2o.ledger import replay
    from l2o.models import base_fingerprint, check_device, load_base

    ledger, config = load_ledger(spec, base_fingerprint(base), dtype, model_name=base, registry=registry,
                                 cache_dir=cache_dir)
    if config["arch"]["peft"] != "full":
        raise ZooError(f"zoo apply materialises full-parameter ledgers; this one moved a {config['arch']['peft']} "
                       "adapter (replay it onto the adapted model with l2o.ledger.replay)")
    check_device(device, auto=False)  # before the base loads: torch's errors come after it, or an AssertionError
    out = Path(out)
    if out.exists() and not out.is_dir():  # found only after the replay, as "Not a directory (<out>/.tmp-...)"
        raise ZooError(f"--out {out} is a file; give the folder to write the weights to")
    if out.is_dir() and remove_dead_writers(out, APPLY_STAGING):  # not the user's files: an apply killed mid-write
        log(f"removed the unfinished weights a stopped zoo apply left in {out}")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() and not overwrite else []
    if held:  # save_pretrained overwrote another model's weights there without a word
        names = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ZooError(f"--out {out} already holds files ({names}); give a new or empty folder, or --overwrite to "
                       "replace them")
    created = first_missing_ancestor(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ZooError(f"cannot write the weights to --out {out}: {err.strerror or err}") from None
    try:
        model, tokenizer, info = load_base(base, dtype=config["arch"]["dtype"], device=device)
        log(f"replaying {ledger.num_updates} updates onto {info.model_id} ({config['arch']['dtype']}, {device})")
        replay(model, ledger, progress=lambda i, n: log(f"  {i}/{n} updates"))
        # into a staging folder held by this process, moved into --out once whole: Ctrl-C, SIGTERM or a full disk
        # mid-write left a half-written model of the base's size there, which the next apply refused as files
        # already there; a kill -9 leaves the staging folder, which the next apply removes (above)
        with staged_files(out, APPLY_STAGING) as staging:
            model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
            write_json_atomic(staging / "ledger.json",
                              {"ledger": str(spec), "base": base, "base_fingerprint": info.fingerprint,
                               **{k: config["arch"][k] for k in ("dtype", "updates", "head")}})
            written = {f.name for f in staging.iterdir()}
        # --overwrite: the weight files of the model there that the new ones did not replace (its other shards, its
        # index) go too, as save_pretrained removes them when it writes into a folder itself; other files stay
        for old in out.iterdir():
            if WEIGHT_FILE.match(old.name) and old.name not in written:
                old.unlink()
    except BaseException:
        if created is not None:  # --out as it was: no folder this apply made
            shutil.rmtree(created, ignore_errors=True)
        raise
    return out
