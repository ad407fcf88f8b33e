"""A restricted reader for ``torch.save`` zip archives that never executes arbitrary pickles.

Why our own unpickler rather than ``torch.load(weights_only=True)`` + ``add_safe_globals``:
both work for the ZO Fine-tuner files on torch 2.13 (the tests check they agree), but the
torch route (a) really instantiates ``nn.Module`` objects and runs their ``__setstate__``,
(b) needs the allow-list installed in torch's process-wide state (``safe_globals`` is a context
manager over a global list, so another thread loading a checkpoint at the same time sees it), and
(c) ties the security boundary to torch-internal behaviour that changes between releases.
Here, ``find_class`` maps the handful of allowed globals to inert stand-ins (modules become
plain records of their pickled state; ``_rebuild_tensor_v2`` is re-implemented over storages we
read ourselves from ``<archive>/data/<key>``), and every other global raises
``ZooError("refusing to load FILE: disallowed global X")`` before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

from .errors import ZooError

# storage class name -> torch dtype name, element size
_STORAGES = {
    "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "DoubleStorage": ("float64", 8),
}
_MODULES = {
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.activation", "Tanh"),
}
_MAX_STORAGE_BYTES = 2 << 30


class ModuleRecord:
    """Inert stand-in for a pickled ``nn.Module``: keeps the class name and the pickled state."""

    def __init__(self, *args, **kwargs):  # REDUCE/NEWOBJ may pass anything; ignore it
        self.state = {}

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<{self.cls_name} record>"


def _record_class(name: str) -> type:
    return type(name, (ModuleRecord,), {"cls_name": name})


_RECORD_CLASSES = {key: _record_class(key[1]) for key in _MODULES}


class StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype_name, self.itemsize = _STORAGES[name]


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, label: str):
        super().__init__(io.BytesIO(data))
        self._zip = archive
        self._prefix = prefix
        self._label = label
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) in _RECORD_CLASSES:
            return _RECORD_CLASSES[(module, name)]
        if module == "torch" and name in _STORAGES:
            return StorageType(name)
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name == "set":
            return set
        shown = "builtins" if module == "__builtin__" else module  # protocol-2 spelling of builtins
        raise ZooError(f"refusing to load {self._label}: disallowed global {shown}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
            raise ZooError(f"refusing to load {self._label}: unexpected persistent id {str(pid)[:80]}")
        import torch

        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self._storages:
            if not key.isalnum():
                raise ZooError(f"refusing to load {self._label}: bad storage key {key!r}")
            try:
                info = self._zip.getinfo(f"{self._prefix}data/{key}")
            except KeyError:
                raise ZooError(f"cannot load {self._label}: storage {key} is missing from the archive") from None
            if info.file_size > _MAX_STORAGE_BYTES or info.file_size != numel * stype.itemsize:
                raise ZooError(f"cannot load {self._label}: storage {key} has an unexpected size")
            raw = bytearray(self._zip.read(info))
            self._storages[key] = torch.frombuffer(raw, dtype=getattr(torch, stype.dtype_name)) if raw else \
                torch.empty(0, dtype=getattr(torch, stype.dtype_name))
        return self._storages[key]

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        import torch

        if not isinstance(storage, torch.Tensor):
            raise ZooError(f"refusing to load {self._label}: tensor without a storage")
        try:
            return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset)).clone()
        except (RuntimeError, TypeError, ValueError) as err:
            raise ZooError(f"cannot load {self._label}: a tensor does not fit its storage ({err})") from None


def restricted_load(path: str | Path):
    """Unpickle a torch zip checkpoint allowing only Sequential/Linear/Tanh, tensors and OrderedDict."""
    path = Path(path)
    label = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        raise ZooError(
            f"cannot load {label}: not a torch zip checkpoint (legacy or foreign pickle files are refused)"
        ) from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ZooError(f"cannot load {label}: expected one <archive>/data.pkl in the checkpoint")
        prefix = pkls[0][: -len("data.pkl")]
        try:
            order = archive.read(prefix + "byteorder").decode().strip()
        except KeyError:
            order = "little"
        if order != "little":
            raise ZooError(f"cannot load {label}: byte order {order!r} is not supported")
        data = archive.read(pkls[0])
        try:
            return RestrictedUnpickler(data, archive, prefix, label).load()
        except ZooError:
            raise
        except Exception as err:  # noqa: BLE001 - malformed pickles
            raise ZooError(f"cannot load {label}: malformed checkpoint ({type(err).__name__}: {err})") from None
