"""zoo: publish, list, download and verify pretrained optimizers (files, manifests, hashes).

Knows files, manifests and hashes; never imports training code. torch, safetensors and
huggingface_hub are imported lazily, so ``import zoo`` and ``zoo --help`` stay fast.

Public API (attributes load on first use)::

    from zoo import (ZooError, save_artefact, load_artefact, load, verify,
                     publish, mirror, import_zo_finetuner, parse_id,
                     save_ledger, load_ledger, apply_ledger)   # fine-tunes as seed ledgers
    from zoo.resolve import resolve   # the module zoo.resolve holds the resolver
"""

from .errors import ZooError

_LAZY = {
    "save_artefact": "artefact",
    "load_artefact": "artefact",
    "read_config": "artefact",
    "render_card": "card",
    "load": "resolve",
    "verify": "resolve",
    "cache_root": "resolve",
    "publish": "registry",
    "mirror": "registry",
    "import_zo_finetuner": "convert",
    "read_zo_finetuner": "convert",
    "parse_id": "ids",
    "sha256_file": "ids",
    "save_ledger": "ledger",
    "load_ledger": "ledger",
    "apply_ledger": "ledger",
}

__all__ = ["ZooError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
