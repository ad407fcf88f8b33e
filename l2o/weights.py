"""The LLM's weights during meta-training, with no resident copy besides the LLM itself.

(Used by the meta-gradient estimators, `l2o.estimators`, and `meta_train`.)

- `Trajectory`: the first-order SGD-momentum trajectory theta moves on. The step is fused into the
  backward: a post-accumulate-grad hook updates block b (`Engine.momentum_step`: fp32 arithmetic,
  stochastic rounding in bf16) as soon as its gradient exists and frees that gradient, so the whole
  gradient is never held. m_b (the momentum) is kept in the weights' dtype.
- `PretrainedFiles`: a periodic reset re-reads the pretrained weights from the model's safetensors files
  (memory-mapped, one tensor at a time) instead of keeping a pretrained copy in memory.
- `park` / `unpark` / `Snapshot`: the weights wait in a file on disk (written and read one block at a
  time; read back bit-identically): while meta-validation fine-tunes the LLM itself, and as the state an
  ES unroll starts from and returns to.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from l2o.engine import Engine


class Trajectory:
    """theta <- theta - lr * m, m <- momentum * m + grad L(theta): torch.optim.SGD's rule, fused in the backward."""

    def __init__(self, engine: Engine, lr: float, momentum: float):
        self.engine, self.lr, self.momentum = engine, float(lr), float(momentum)
        self.buf: dict[int, torch.Tensor] = {}
        self.steps = 0
        self._active = False
        self._by_param = {id(b.param): b for b in engine.blocks}
        self._hooks = [b.param.register_post_accumulate_grad_hook(self._hook) for b in engine.blocks]

    def _hook(self, p: torch.Tensor) -> None:
        if not self._active or p.grad is None:
            return
        b = self._by_param[id(p)]
        grad, p.grad = p.grad, None  # the gradient is consumed here: it may become the momentum buffer
        self.buf[b.index] = self.engine.momentum_step(b, grad, self.buf.get(b.index), self.lr, self.momentum,
                                                      rounding_seed=self.steps, consume=True)

    def step(self, loss_fn, model, batch) -> float:
        """One first-order step on `batch`; returns the loss before the step."""
        self._active = True
        try:
            loss = loss_fn(model, batch)
            loss.backward()
        finally:
            self._active = False
        self.steps += 1
        return float(loss.detach())

    def reset(self) -> None:
        self.buf = {}

    def state_dict(self) -> dict:
        """The momentum buffers (by block index) and the step count (the rounding seeds): with the weights,
        everything a resumed trajectory needs to continue bit-identically. The live buffers, not copies (a
        checkpoint serialises them before the next step)."""
        return {"steps": self.steps, "momentum": {i: m.detach() for i, m in self.buf.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.buf = {}
        for i, m in state["momentum"].items():
            p = self.engine.blocks[int(i)].param
            self.buf[int(i)] = m.to(device=p.device, dtype=p.dtype).clone()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def model_folder(path: str) -> Path:
    """The local folder holding a base's files: the folder itself, or a hub id's snapshot in the local cache."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class PretrainedFiles:
    """Block b's pretrained tensor, read from the model folder's safetensors files on demand.

    Each tensor is memory-mapped on its own (the file's header gives its byte range) and unmapped once
    copied in, so a reset holds one block, not the whole file's pages. Names are matched as saved, or
    with / without the model's base prefix (`model.`); a block whose tensor is not in the files (or has
    another shape or dtype) is kept as a resident copy, with a warning."""

    def __init__(self, folder: str | Path, engine: Engine, prefix: str = "model"):
        self.folder, self.engine = Path(folder), engine
        self.where: dict[int, tuple[Path, int, str, tuple]] = {}
        self.resident: dict[int, torch.Tensor] = {}
        entries: dict[str, tuple] = {}
        for file in self._files():
            for key, (start, dtype, shape) in _header(file).items():
                entries[key] = (file, start, dtype, shape)
        for b in engine.blocks:
            found = self._match(b.name, entries, prefix)
            if found is not None and found[3] == tuple(b.param.shape) and found[2] in _DTYPES:
                self.where[b.index] = found
            else:
                self.resident[b.index] = b.param.detach().clone()
        if self.resident:
            warnings.warn(f"{len(self.resident)} block(s) are not in the safetensors files of {self.folder} "
                          f"(e.g. {engine.blocks[next(iter(self.resident))].name}); kept as resident copies for "
                          "resets", stacklevel=2)

    def _files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            return sorted({self.folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        return sorted(self.folder.glob("*.safetensors"))

    @staticmethod
    def _match(name: str, entries: dict, prefix: str):
        stripped = name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
        for cand in (name, stripped, f"{prefix}.{name}"):
            if cand and cand in entries:
                return entries[cand]
        return None

    @torch.no_grad()
    def restore(self) -> None:
        """theta <- the pretrained weights, block by block (each read through its own memory map)."""
        for i, (file, start, dtype, shape) in self.where.items():
            dt = _DTYPES[dtype]
            n = math.prod(shape) * torch.empty((), dtype=dt).element_size()
            raw = np.memmap(file, dtype=np.uint8, mode="c", offset=start, shape=(n,))  # copy-on-write: never written
            self.engine.assign(self.engine.blocks[i], torch.from_numpy(np.asarray(raw)).view(dt).reshape(shape))
            del raw
        for i, t in self.resident.items():
            self.engine.assign(self.engine.blocks[i], t)


def _header(file: Path) -> dict[str, tuple[int, str, tuple]]:
    """{name: (absolute byte offset, dtype, shape)} from a safetensors file's JSON header."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: (8 + n + v["data_offsets"][0], v["dtype"], tuple(v["shape"]))
            for k, v in header.items() if k != "__metadata__"}


@torch.no_grad()
def park(engine: Engine, where) -> None:
    """Write every block's weights to `where`, a path or an open binary file (raw bytes, block order), one block in
    host memory at a time."""
    with _opened(where, "wb") as f:
        for b in engine.blocks:
            f.write(memoryview(b.param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()))
        f.flush()


def unpark(engine: Engine, where) -> None:
    """Read back what `park` wrote to `where`: the weights are bit-identical to what they were (on the CPU the bytes
    are read straight into the weights, so restoring needs no memory beyond them)."""
    with _opened(where, "rb") as f:
        for b in engine.blocks:
            engine.assign_bytes(b, f.readinto)


def _opened(where, mode: str):
    """`where` opened in `mode`, or, an open file, rewound (and emptied for writing) and left open."""
    import contextlib

    if isinstance(where, (str, Path)):
        return open(where, mode)
    where.seek(0)
    if "w" in mode:
        where.truncate()
    return contextlib.nullcontext(where)


class Snapshot:
    """The weights at one moment, parked in a file (in `directory`, default the system's temporary folder) and
    restorable any number of times, bit-identically, in any dtype: what an estimator unrolls from.
    `save()` (re)writes it, `restore()` reads it back, `close()` frees it. The file has no name (it is unlinked
    as it is made), so the system frees its space when the process ends however it ends: a named one stayed
    behind after Ctrl-C, SIGTERM or a lost rank, one base-sized file per stop."""

    def __init__(self, engine: Engine, directory: str | Path | None = None, prefix: str = "l2o-snapshot-"):
        import tempfile

        self.engine = engine
        self.file = tempfile.TemporaryFile(prefix=prefix, suffix=".bin", dir=directory)
        self.saved = False

    def save(self) -> "Snapshot":
        park(self.engine, self.file)
        self.saved = True
        return self

    def restore(self) -> None:
        if not self.saved:
            raise RuntimeError("nothing saved in this snapshot yet")
        unpark(self.engine, self.file)

    def close(self) -> None:
        self.file.close()
        self.saved = False
