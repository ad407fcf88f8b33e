"""Memory plans from shapes alone, offline: the pieces `meta_train --dry-run` and `fine_tune --dry-run` share.

A plan is built from `l2o/base_shapes.json` (public config.json fields of every alias) or a local model
folder's config: the model is built on the meta device, so parameter and block counts are exact, and no
weight is read. Activations: per layer and token, what transformers' decoder layers save for a backward
(`layer_bytes_per_token`: norms, q k v and the attention output, SDPA's mask copy, the MLP's 4f gated or f for
OPT's ReLU, measured in tests/test_memory_plan.py), and the logits tokens x vocab (`activation_bytes`: a
backward's; `forward_activation_bytes`: the working set of a forward without gradient, one layer at a time).
"runtime" is a fixed reserve for the CUDA context and allocator slack.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1024 ** 3
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
RUNTIME_RESERVE = 2 * GiB
MAX_GPUS = 16  # the most GPUs a --device-map plan tries


def shapes() -> dict:
    from l2o.models import shipped_shapes

    return shipped_shapes()


def base_config(base: str):
    """A transformers config for an alias (from the shipped shapes) or a local model folder."""
    from transformers import AutoConfig

    from l2o.models import BaseModelError, shipped_config

    config = shipped_config(base)
    if config is not None:
        return config
    path = Path(base).expanduser()
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path))
    raise BaseModelError(f"--dry-run knows the shapes of the aliases {', '.join(sorted(shapes()))} and of local "
                         f"model folders; {base!r} is neither")


@dataclass
class Plan:
    base: str
    params: int
    blocks: int
    rows: list = field(default_factory=list)  # (what, bytes, how)
    gpu_bytes: float = 80 * GiB
    dtype: str = "fp32"   # the weights', "auto" resolved

    @property
    def total(self) -> int:
        return sum(r[1] for r in self.rows)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes


@dataclass
class Device:
    """One device of a placed plan (a GPU of a device map, the host memory of an offload)."""
    name: str
    rows: list = field(default_factory=list)  # (what, bytes, how)
    budget: float | None = None  # None: no budget (CPU memory, disk)

    @property
    def total(self) -> int:
        return sum(r[1] for r in self.rows)

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


@functools.lru_cache(maxsize=4)
def meta_model(base: str):
    """The base built from its config on the meta device (names and shapes, no weights), in float32 whatever
    the checkpoint's dtype: accelerate sizes a tensor at the smaller of its own dtype and the one asked for."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(base_config(base), dtype=torch.float32)


@functools.lru_cache(maxsize=8)
def count(base: str) -> tuple[int, tuple[int, ...]]:
    """Parameter count (tied weights once) and block sizes, from a model built on the meta device."""
    from l2o.models import block_shapes

    sizes = tuple(math.prod(shape) for _, shape in block_shapes(meta_model(base)))
    return sum(sizes), sizes


def _norm_bytes(config, nbytes: int, frozen: bool = False) -> int:
    """Bytes one norm saves per token: LayerNorm (OPT) its input and float32 mean and rstd; RMSNorm (Llama,
    Mistral, Qwen2) its input in float32 (it upcasts) and a float32 rsqrt, and with a trained weight the normalised
    input in the weights' dtype. With trained weights the next linear also keeps its input, the norm's output."""
    h = config.hidden_size
    if config.model_type == "opt":
        return h * nbytes + 2 * 4 + (0 if frozen else h * nbytes)
    return 4 * h + 4 + (0 if frozen else 2 * h * nbytes)


def layer_bytes_per_token(config, length: int, nbytes: int, eager: bool, peft: str = "full") -> int:
    """Bytes one decoder layer saves for the backward, per token, as transformers' layers save them (counted from
    the tensors autograd keeps: tests/test_memory_plan.py measures them on both families), for a padded batch:

    - two norms (`_norm_bytes`);
    - SDPA attention: q, k and v (k and v repeated to every query head: transformers repeats them whenever there is a
      padding mask) and the output (o_proj's input is a view of it), the float32 log-sum-exp per head, and SDPA's own
      copy of the mask in the weights' dtype (batch x L x L: L per token); eager attention instead the same four
      tensors (o_proj's input a copy), the float32 softmax (heads x L) and, below float32, its copy in the weights'
      dtype; neither keeps the L x L scores of both steps;
    - the MLP: gated (SiLU) 4f: the gate, its activation, the up projection and their product (down_proj's input);
      OPT's ReLU f, its output (fc2's input; fc1's output is not kept); another ungated activation 2f.

    `peft` other than "full": the base weights are frozen, and autograd keeps no linear's input for a weight
    gradient (the norms' outputs, the gated MLP's product, RMSNorm's normalised input, eager attention's output
    copy); "lora" adds what its
    adapters on q and v read: the attention norm's output and their two rank-r projections. An unpadded batch keeps
    less (k and v at the key/value heads' width, no mask) on the SDPA path."""
    h = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    f = getattr(config, "ffn_dim", None) or config.intermediate_size
    q, frozen = heads * head_dim, peft != "full"
    if eager:
        attention = (3 if frozen else 4) * q * nbytes + heads * length * (4 + (nbytes if nbytes < 4 else 0))
    else:
        attention = 4 * q * nbytes + heads * 4 + length * nbytes
    if config.model_type != "opt":
        mlp = 3 * f if frozen else 4 * f
    else:
        mlp = f if getattr(config, "activation_function", "relu") == "relu" else 2 * f
    if peft == "lora":
        from l2o.peft_modes import LORA_R

        attention += (h + 2 * LORA_R) * nbytes
    return 2 * _norm_bytes(config, nbytes, frozen) + attention + mlp * nbytes


def activation_bytes(config, batch: int, length: int, nbytes: int, checkpointing: bool, eager: bool,
                     scored: int | None = None, peft: str = "full") -> int:
    """Saved for one backward: every layer's (`layer_bytes_per_token`; or, checkpointed, one hidden state per layer
    plus one layer's) and the final norm's; and at the forward's end the logits, which the backward does not keep
    but which coexist with all of it: every position's in the weights' dtype (a bound: the objectives keep the
    positions from the shortest prompt's or answer's start on, `logits_to_keep`), and the float32 copy (or the
    gathered rows) and log-softmax of the `scored` positions (default: every one; a classification objective scores
    one per example). `peft`: the trained tensors (`layer_bytes_per_token`)."""
    per_layer = layer_bytes_per_token(config, length, nbytes, eager, peft)
    tokens = batch * length
    h, layers = config.hidden_size, config.num_hidden_layers
    logits = (tokens * nbytes + (tokens if scored is None else scored) * 8) * config.vocab_size
    final = tokens * _norm_bytes(config, nbytes, peft != "full")
    if checkpointing:
        return int(layers * tokens * h * nbytes + tokens * per_layer + final + logits)
    return int(layers * tokens * per_layer + final + logits)


def forward_activation_bytes(config, batch: int, length: int, nbytes: int, eager: bool,
                             scored: int | None = None) -> int:
    """A forward without gradient: one layer's working set alive at a time (the residual stream, the norm's
    output and the larger of the attention phase, q k v and its output, and the MLP phase, its 2 (OPT) or 3
    (gated) intermediate tensors; eager attention adds scores and probabilities), plus the logits of every
    position in the weights' dtype and, for the `scored` positions (default: every one), their float32
    copy and log-softmax. A classification objective scores one position per example (scored = batch)."""
    h = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    f = getattr(config, "ffn_dim", None) or config.intermediate_size
    mlp = (2 if config.model_type == "opt" else 3) * f
    per_token = 2 * h + max(2 * h + 2 * kv * head_dim, mlp) + (2 * heads * length if eager else 0)
    tokens = batch * length
    scored = tokens if scored is None else scored
    return int(tokens * per_token * nbytes + (tokens * nbytes + scored * 8) * config.vocab_size)


def temporaries(largest: int, nbytes: int) -> tuple[int, int]:
    """(perturbation, update) bytes of the engine for its largest trainable tensor (l2o/engine.py), for a
    direction of several seeds (GV, BSZO; MeZO's one seed needs less): the perturbed copy is accumulated in
    float32 then rounded into the weights' dtype with 16 random bits per element; the update accumulates in
    float32 and rounds back in place (fp32 weights: perturbed copy in fp32, update in place)."""
    if nbytes < 4:
        return largest * (4 + nbytes + 2), largest * (4 + 2)
    return largest * 4, 0


def tied_copy_bytes(config, nbytes: int) -> int:
    """A tied embedding/head is perturbed once per forward and its perturbed copy kept for the second module."""
    if not getattr(config, "tie_word_embeddings", False):
        return 0
    return config.vocab_size * (getattr(config, "word_embed_proj_dim", None) or config.hidden_size) * nbytes


def method_buffers(method: str, shapes, weight_bytes: int, hparams: dict | None = None) -> tuple[int, str]:
    """(bytes, what) of the state `method` keeps between steps over trainable tensors of `shapes` (weights of
    `weight_bytes` each): its declared buffers (l2o.footprint, read from the catalog: no optimizer is imported), at
    its defaults overridden by `hparams` (a command line's strings read as numbers). (0, "") for a method that keeps
    none, or one the catalog does not know (a first-order baseline)."""
    from l2o import catalog
    from l2o.footprint import buffer_bytes, describe

    if method not in catalog.method_names():
        return 0, ""
    declared, args = catalog.buffers(method)
    if not declared:
        return 0, ""
    hp = {**catalog.defaults(method), **args, **{k: v for k, v in (hparams or {}).items() if v is not None}}
    for name in {b.rank for b in declared} | {b.times for b in declared}:
        if name is not None:
            hp[name] = float(hp[name])
    return buffer_bytes(declared, shapes, hp, weight_bytes), describe(declared)


def format_rows(rows, indent: str = "  ") -> list[str]:
    return [f"{indent}{what:<22} {nbytes / GiB:8.2f} GiB   {how}" for what, nbytes, how in rows]


def format_devices(devices) -> list[str]:
    """Each device's rows and its total against its budget."""
    lines = []
    for device in devices:
        lines.append(f"{device.name}:")
        lines += format_rows(device.rows)
        total = f"  {'total':<22} {device.total / GiB:8.2f} GiB"
        if device.budget is not None:
            room = device.budget - device.total
            total += f"   {'fits in' if device.fits else 'does NOT fit in'} {device.budget / GiB:.0f} GiB " \
                     f"({abs(room) / GiB:.1f} GiB {'to spare' if device.fits else 'short'})"
        lines.append(total)
    return lines


def block_bytes(model, nbytes: int) -> tuple[list[int], int, int]:
    """Bytes of each transformer block, of everything else (embeddings, final norm, head), and the largest
    tensor inside a block (in elements): what `--offload` streams and what stays resident."""
    from l2o.blocks import named_blocks
    from l2o.streaming import transformer_blocks

    blocks = transformer_blocks(model)
    per = [sum(p.numel() for p in m.parameters()) * nbytes for _, m in blocks]
    total = sum(p.numel() for _, p in named_blocks(model, trainable_only=False)) * nbytes
    return per, total - sum(per), max(p.numel() for _, m in blocks for p in m.parameters())


@contextlib.contextmanager
def _quiet_accelerate():
    """accelerate warns that the planned GPUs are not on this machine: that is the point of a plan."""
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def weight_budget(gpu_bytes: float, rest: int, state_ratio: float = 0.0) -> int:
    """Bytes of weights one GPU of a device map may hold: its memory less the step's other rows (`rest`), shared
    with a stateful method's buffers (`state_ratio` bytes per byte of weights), which sit beside the weights they
    belong to. The plans and the runs of fine_tune and meta_train place by it."""
    return max(0, int((gpu_bytes - rest) / (1 + state_ratio)))


def fewest_gpus(plan_on):
    """`plan_on(gpus)` for 1, 2, ... up to MAX_GPUS GPUs: the first plan that fits, or the first in which a GPU holds
    no weights at all (the step's other rows fill it: more GPUs will not help); the last tried otherwise."""
    for gpus in range(1, MAX_GPUS + 1):
        plan = plan_on(gpus)
        if plan.fits or any(not d.rows[0][1] for d in plan.devices if d.budget):
            break
    return plan


def device_map_weights(model, kind: str, gpus: int, budget: int, dtype: str) -> tuple[dict, dict]:
    """accelerate's placement (l2o.placement.infer_device_map, as a run places) of the meta `model` over `gpus` GPUs
    of `budget` bytes of weights each, the rest to CPU memory: ({device: bytes of weights}, {GPU index: what it
    holds, e.g. "layers 0-19 + 2 other modules"})."""
    import torch
    from accelerate.utils import compute_module_sizes

    from l2o.placement import infer_device_map

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with _quiet_accelerate():
        dmap = infer_device_map(model, kind, {**{i: budget for i in range(gpus)}, "cpu": 1 << 60}, dtype=dt)
        sizes = compute_module_sizes(model, dtype=dt)
    on, what = {}, {}
    for module, device in dmap.items():
        on[device] = on.get(device, 0) + sizes[module]
    for i in range(gpus):
        held = [m for m, d in dmap.items() if d == i]
        layers = [m.rsplit(".", 1)[-1] for m in held if m.rsplit(".", 1)[-1].isdigit()]
        what[i] = (f"layers {layers[0]}-{layers[-1]}" if layers else "no layers") + \
            (f" + {len(held) - len(layers)} other modules" if len(held) > len(layers) else "")
    return on, what
