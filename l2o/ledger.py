"""The seed ledger: a ZO run as its base plus one line of seeds and scalars per update.

Every update the engine makes is  theta_b <- theta_b - c * s_b * sum_j w_j z(seed_j, b) - d * theta_b,
with stochastic rounding keyed by r in bf16/fp16 (l2o/engine.py). So a whole fine-tune is

    header:  base fingerprint, sampled base-weights digest, dtype, PEFT mode, noise config, block names;
             version 2 adds the perturbation family and the update rule when they are not the defaults
    line t:  {"t": step, "s": seeds, "w": weights, "b": block scales (optional), "c": c, "d": d, "r": r,
              "k": the terms' second keys (optional, LOZO's V), "p": the update rule's parameters (optional)}
    seal:    {"seal": number of updates so far}          (appended at each flush, i.e. each checkpoint)

and `replay(model, ledger)` reproduces the weights bit-identically through `Engine.update` alone (no
forward pass, no optimizer, no policy: a learned policy's scales are in the lines), on any device: z and
the rounding bits are functions of (key, element index) only (l2o/noise.py), so the header's noise entry
(source and generator identity) is all that determines them.

Integrity: every line carries `h` = sha256(h of the previous line + the line's canonical JSON), cut to
16 hex digits, so an edited, reordered or dropped line breaks the chain; a file must end in a seal, so
a cut tail is refused; and whoever records the ledger elsewhere (a checkpoint, a zoo config) records
its update count and last `h`, which catches a cut that happens to end at an earlier seal. Everything
is checked before the first weight is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from pathlib import Path

from l2o.errors import UserError
from l2o.filelock import append_bytes, write_bytes_atomic

FORMAT = "l2o-seed-ledger"
VERSION = 1          # gaussian terms, plain steps
VERSIONS = (1, 2)    # 2: the header names a perturbation family and/or a stateful update rule (l2o/updates.py)
FILE_NAME = "ledger.jsonl"
_DIGEST_SAMPLES = 256
_DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float64": "fp64"}


class LedgerError(UserError):
    """A ledger that is damaged, or made for another base, dtype, block set or noise source."""


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def chain(prev: str, record: dict) -> str:
    """h = sha256(prev h + canonical record without h), 16 hex digits."""
    body = canonical({k: v for k, v in record.items() if k != "h"})
    return hashlib.sha256((prev + body).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- block scales
def encode_scales(scales) -> str | None:
    """Per-block scales as base64 little-endian float32 ("f4:") when exact in float32, else float64 ("f8:")."""
    if scales is None:
        return None
    vals = [float(x) for x in scales]
    f4 = struct.pack(f"<{len(vals)}f", *vals)
    if list(struct.unpack(f"<{len(vals)}f", f4)) == vals:
        return "f4:" + base64.b64encode(f4).decode()
    return "f8:" + base64.b64encode(struct.pack(f"<{len(vals)}d", *vals)).decode()


def decode_scales(text: str | None) -> list[float] | None:
    if text is None:
        return None
    kind, _, payload = text.partition(":")
    code, size = {"f4": ("f", 4), "f8": ("d", 8)}[kind]
    raw = base64.b64decode(payload, validate=True)
    return list(struct.unpack(f"<{len(raw) // size}{code}", raw))


# ---------------------------------------------------------------------------------- the header
def dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(str(dtype), str(dtype))


def block_dtype(blocks) -> str:
    names = {dtype_name(b.param.dtype) for b in blocks}
    return names.pop() if len(names) == 1 else "mixed:" + ",".join(dtype_name(b.param.dtype) for b in blocks)


def weights_digest(blocks) -> str:
    """sha256 over each block's name, shape, dtype and up to 256 evenly strided stored values (cheap on
    any size of model): a base with other weights, or the same weights in another dtype, differs."""
    import torch

    h = hashlib.sha256()
    for b in blocks:
        flat = b.param.detach().reshape(-1)
        stride = max(1, flat.numel() // _DIGEST_SAMPLES)
        sample = flat[::stride][:_DIGEST_SAMPLES].contiguous().cpu()
        h.update(canonical([b.name, list(b.param.shape), str(b.param.dtype)]).encode())
        h.update(sample.view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def make_header(engine, method: str = "zo", base_model: str | None = None, peft: str | None = None) -> dict:
    """What the ledger's lines are relative to: the engine's blocks at this moment (the base)."""
    from l2o.models import fingerprint
    from l2o.peft_modes import peft_mode

    header = {"format": FORMAT, "version": VERSION, "method": method, "base_model": base_model,
              "base_fingerprint": fingerprint(engine.model), "base_digest": weights_digest(engine.blocks),
              "dtype": block_dtype(engine.blocks), "peft": peft or peft_mode(engine.model),
              "noise": engine.noise.config(), "blocks": engine.block_names()}
    family, rule = engine.family.config(), engine.rule.config() if engine.rule is not None else None
    if family != {"name": "gaussian"} or rule is not None:
        header.update(version=2, family=family, rule=rule)
    return header


def engine_from_header(model, header: dict):
    """The engine a ledger's updates need (its noise source, family and rule), refused in one sentence when this
    l2o cannot make exactly them."""
    from l2o.engine import Engine
    from l2o.perturbations import make_family
    from l2o.updates import make_rule

    noise = noise_from_config(header["noise"])
    try:
        family, rule = make_family(header.get("family")), make_rule(header.get("rule"))
    except UserError as err:
        raise LedgerError(f"this ledger needs something this version of l2o cannot make ({err})") from None
    return Engine(model, noise, family=family, rule=rule)


def noise_from_config(config: dict):
    """The noise source a ledger names, refused in one sentence when this l2o cannot make exactly it."""
    import inspect

    from l2o.noise import SOURCES

    cls = SOURCES.get(config.get("name"))
    noise = None
    if cls is not None:  # the constructor's arguments; other keys ("generator", "levels") identify z
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        try:
            noise = cls(**{k: v for k, v in config.items() if k in accepted})
        except (TypeError, ValueError):
            noise = None
    if noise is None or noise.config() != config:
        why = ("; it predates the portable generator (its z and rounding bits depended on the device type), so no "
               "device can replay it exactly") if "generator" not in config else ""
        raise LedgerError(f"this ledger was written with the noise source {canonical(config)}, which this "
                          f"version of l2o cannot reproduce, so it cannot be replayed here{why}")
    return noise


# ---------------------------------------------------------------------------------- the ledger
class Ledger:
    """A header and chained lines (updates and seals). Build with `Ledger.start(engine)` (the optimizers
    do), read with `Ledger.read(path)` / `Ledger.parse(text)`; `append` one line per engine update."""

    def __init__(self, header: dict, records: list[dict] | None = None):
        self.header = dict(header)
        self.header["h"] = chain("", self.header)
        self.records: list[dict] = []
        self.num_updates = 0
        self._flushed = 0  # records already in the file last flushed to
        for rec in records or []:
            self._push(rec)

    @classmethod
    def start(cls, engine, method: str = "zo", base_model: str | None = None, peft: str | None = None) -> "Ledger":
        return cls(make_header(engine, method, base_model, peft))

    def _push(self, rec: dict) -> None:
        rec = {k: v for k, v in rec.items() if k != "h"}
        rec["h"] = chain(self.head, rec)
        self.records.append(rec)
        self.num_updates += "seal" not in rec

    @property
    def head(self) -> str:
        return self.records[-1]["h"] if self.records else self.header["h"]

    def append(self, t: int, d, step: float, decay: float, rounding_seed: int, params: dict | None = None) -> None:
        """One engine update: `engine.update(d, step, decay, rounding_seed, params)` at optimizer step t."""
        rec = {"t": int(t), "s": [int(s) for s in d.seeds], "w": [float(w) for w in d.weights],
               "c": float(step), "r": int(rounding_seed)}
        if any(d.keys):
            rec["k"] = [int(k) for k in d.keys]
        if params:
            rec["p"] = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in params.items()}
        scales = encode_scales(d.block_scales)
        if scales is not None:
            rec["b"] = scales
        if decay:
            rec["d"] = float(decay)
        self._push(rec)

    def seal(self) -> None:
        if not (self.records and self.records[-1].get("seal") == self.num_updates):
            self._push({"seal": self.num_updates})

    def unseal(self) -> None:
        """Drop a trailing seal: one that a checkpoint between the run's own checkpoints (Ctrl-C) added, so
        that the run resumed from it ends with the uninterrupted run's ledger, byte for byte."""
        if self.records and "seal" in self.records[-1]:
            self.records.pop()
            self._flushed = min(self._flushed, len(self.records))

    def updates(self):
        """(Direction, step, decay, rounding seed, rule parameters) per update, in order."""
        from l2o.engine import Direction

        for rec in self.records:
            if "seal" not in rec:
                yield (Direction(tuple(rec["s"]), tuple(rec["w"]), decode_scales(rec.get("b")),
                                 tuple(rec.get("k", ()))),
                       rec["c"], rec.get("d", 0.0), rec["r"], rec.get("p", {}))

    # ------------------------------------------------------------------ text and files
    def lines(self) -> list[str]:
        return [canonical(self.header)] + [canonical(r) for r in self.records]

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"

    def write(self, path) -> Path:
        """Seal, then write the whole ledger atomically (temp file + rename)."""
        self.seal()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, self.text().encode("utf-8"))
        self._flushed = len(self.records)
        return path

    def flush(self, path) -> Path:
        """Seal and append the lines written since the last flush (the whole file on the first flush)."""
        path = Path(path)
        if self._flushed == 0 or not path.is_file():
            return self.write(path)
        self.seal()
        append_bytes(path, "".join(canonical(r) + "\n" for r in self.records[self._flushed:]).encode("utf-8"))
        self._flushed = len(self.records)
        return path

    @property
    def nbytes(self) -> int:
        return len(self.text().encode())

    def summary(self) -> dict:
        """What a checkpoint or a zoo config records to pin this ledger: update count and last h."""
        return {"updates": self.num_updates, "head": self.head}

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, path, **expect) -> "Ledger":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LedgerError(f"cannot read the ledger {path} ({getattr(err, 'strerror', None) or err})") from None
        return cls.parse(text, source=str(path), **expect)

    @classmethod
    def parse(cls, text: str, source: str = "ledger", require_seal: bool = True, updates: int | None = None,
              head: str | None = None) -> "Ledger":
        """Parse and verify a ledger; with `updates`/`head` (a `summary()`), also that it is exactly that one."""
        rows = text.split("\n")
        if not text or rows[-1] != "":
            raise LedgerError(f"{source} is truncated: its last line is incomplete")
        recs = [_json_line(line, i + 1, source) for i, line in enumerate(rows[:-1])]
        header = recs[0]
        if header.get("format") != FORMAT or header.get("version") not in VERSIONS:
            raise LedgerError(f"{source} is not an {FORMAT} file of a version this l2o reads "
                              f"({', '.join(map(str, VERSIONS))})")
        if chain("", header) != header.get("h"):
            raise LedgerError(f"{source} has been edited: its header does not match its hash")
        ledger = cls(header)
        for i, rec in enumerate(recs[1:], start=2):
            _check_record(ledger, rec, i, source)
            ledger._push(rec)
        if require_seal and not (ledger.records and "seal" in ledger.records[-1]):
            raise LedgerError(f"{source} is truncated: it does not end in a seal line (cut after line {len(recs)})")
        if updates is not None and ledger.num_updates != updates or head is not None and ledger.head != head:
            raise LedgerError(f"{source} is not the ledger that was recorded: it holds {ledger.num_updates} updates "
                              f"ending in {ledger.head}, expected {updates} ending in {head}")
        return ledger


def _json_line(line: str, number: int, source: str) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        raise LedgerError(f"{source} is corrupt or truncated at line {number} (not a JSON object)") from None
    if not isinstance(rec, dict):
        raise LedgerError(f"{source} is corrupt at line {number} (not a JSON object)")
    return rec


def _check_record(ledger: Ledger, rec: dict, number: int, source: str) -> None:
    if chain(ledger.head, rec) != rec.get("h"):
        raise LedgerError(f"{source} has been edited, reordered or cut at line {number}: its hash chain breaks there")
    if "seal" in rec:
        if rec["seal"] != ledger.num_updates:
            raise LedgerError(f"{source} is corrupt at line {number}: a seal of {rec['seal']} updates after "
                              f"{ledger.num_updates}")
        return
    last = next((r["t"] for r in reversed(ledger.records) if "t" in r), -1)
    ok = (isinstance(rec.get("t"), int) and rec["t"] >= last and isinstance(rec.get("s"), list) and rec["s"]
          and isinstance(rec.get("w"), list) and len(rec["w"]) == len(rec["s"])
          and all(isinstance(v, (int, float)) for v in [*rec["w"], rec.get("c"), rec.get("d", 0.0)])
          and isinstance(rec.get("r"), int)
          and (rec.get("k") is None or (isinstance(rec["k"], list) and len(rec["k"]) == len(rec["s"])
                                        and all(isinstance(k, int) for k in rec["k"])))
          and isinstance(rec.get("p", {}), dict))
    if ok and rec.get("b") is not None:
        try:
            ok = len(decode_scales(rec["b"])) == len(ledger.header["blocks"])
        except (ValueError, KeyError, struct.error):
            ok = False
    if not ok:
        raise LedgerError(f"{source} is corrupt at line {number}: not a valid update line")


# ---------------------------------------------------------------------------------- replay
def check_header(ledger: Ledger, engine) -> None:
    """Refuse (one sentence) a model whose base, blocks, dtype or base weights are not the ledger's."""
    from l2o.models import fingerprint

    h = ledger.header
    fp = fingerprint(engine.model)
    if fp != h["base_fingerprint"]:
        raise LedgerError(f"this ledger was recorded on base {h.get('base_model') or '?'} "
                          f"({h['base_fingerprint'][:19]}…) but the model given is another base ({fp[:19]}…)")
    if engine.block_names() != h["blocks"]:
        raise LedgerError(f"this ledger moves {len(h['blocks'])} parameter blocks (PEFT mode {h['peft']!r}) but "
                          f"the model has {len(engine.blocks)} other trainable blocks; prepare it the same way")
    dtype = block_dtype(engine.blocks)
    if dtype != h["dtype"]:
        raise LedgerError(f"this ledger was recorded in {h['dtype']} but the model is {dtype}; load the base "
                          f"with --dtype {h['dtype']} (replay is bit-identical only in the recorded dtype)")
    if weights_digest(engine.blocks) != h["base_digest"]:
        raise LedgerError("the model has the ledger's architecture but not its starting weights (base digest "
                          "mismatch); load the exact base (and initialisation) the run started from")


def ledger_delta(engine, ledger: Ledger) -> dict:
    """theta - theta_base per block the ledger moves (float32, CPU, by block name): the sum over its lines of
    -c * s_b * sum_j w_j z_j, regenerated from the seeds (no copy of the base is kept). Equal to the stored
    change up to float rounding (stochastic rounding in bf16/fp16) and decay; refused for a ledger whose
    steps went through a stateful rule (momentum, Adam: the change is not a sum of its lines' directions)."""
    if ledger.header.get("rule") is not None or engine.rule is not None:
        raise LedgerError("the change a stateful rule's ledger made is not a sum of its lines; replay it instead")
    out = {}
    for b in engine.blocks:
        acc = None
        for d, step, _decay, _rounding, _params in ledger.updates():
            if step:
                t = engine.direction_tensor(d, b).mul_(-step)
                acc = t if acc is None else acc.add_(t)
        if acc is not None and bool(acc.any()):
            out[b.name] = acc.cpu()
    return out


def replay(model, ledger: Ledger, progress=None, every_s: float = 10.0) -> int:
    """Apply every update of `ledger` to `model` through the engine (update sweeps only, no forwards).

    All checks (the chain was verified when the ledger was parsed; base, blocks, dtype, base weights,
    noise source here) happen before the first weight is written. `progress(done, total)` is called
    about every `every_s` seconds. Returns the number of updates applied."""
    engine = engine_from_header(model, ledger.header)
    check_header(ledger, engine)
    return apply_updates(engine, ledger, progress=progress, every_s=every_s)


def apply_updates(engine, ledger: Ledger, write: bool = True, progress=None, every_s: float = 10.0) -> int:
    """Run every update line of `ledger` through `engine`, in order: theta <- theta - c * rule(d) per line, so the
    weights (and the rule's state) end where the run's did, bit-identically. `write=False` advances only the
    rule's state (rebuilding momentum/Adam/HiZOO buffers from the lines), weights untouched. The one replay
    loop: `replay`, a resumed optimizer and the meta-training unroller all come here; the caller checks the
    header. `progress(done, total)` about every `every_s` seconds. Returns the number of lines applied."""
    total, last = ledger.num_updates, time.monotonic()
    for i, (d, step, decay, rounding, params) in enumerate(ledger.updates(), start=1):
        engine.update(d, step, decay=decay, rounding_seed=rounding, params=params, write=write)
        if progress is not None and (time.monotonic() - last >= every_s or i == total):
            progress(i, total)
            last = time.monotonic()
    return total
