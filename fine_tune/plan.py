"""`fine_tune --base <alias> --dry-run [--dtype D] [--peft P] [--device-map auto | --offload cpu] [--gpus N]
[--gpu-memory GB]`: the memory plan of zeroth-order fine-tuning per device, offline, from shapes alone
(l2o.memory_plan: the base built on the meta device from l2o/base_shapes.json or a local folder's config).

A ZO step holds inference memory plus one block's temporaries, no gradient, and the optimizer state of a
stateful method only (momentum, Adam's moments, HiZOO's preconditioner: none for MeZO and most others):

    weights        N x bytes(dtype) (+ the PEFT adapter)  where they live: one GPU, spread over GPUs by
                                                          accelerate's device map, or (offload) in CPU
                                                          memory with the embeddings and head on the GPU
    optimizer      the method's declared buffers over the  only for a stateful method (--optimizer zo-adam:
    state          trainable tensors (l2o/footprint.py)    m and v, 2 fp32 copies; zo-sgd-mmt, hizoo: 1;
                                                          lozo-m: rows x rank per matrix), beside the weights
                                                          they belong to (a device map's or offload's share)
    streamed       2 transformer blocks                    --offload: the block running and the next one,
                                                          prefetched
    perturbation   largest trainable tensor x (4 + b + 2)  theta_b + eps z_b: fp32 accumulator, the result in
                   (x 4 in fp32)                           the weights' dtype, 16 stochastic-rounding bits;
                   + a tied embedding's copy (x b)         kept for the head, which reuses it
    update         largest trainable tensor x (4 + 2)      fp32 accumulator, rounding bits (fp32: in place);
                                                           on the device where that tensor lives
    activations    one layer at a time, no backward        batch x length tokens, plus the logits
    runtime        fixed reserve                           CUDA context, allocator slack

A first-order baseline (`--optimizer fo-sgd|fo-adamw`, fine_tune/first_order.py) backpropagates, on one device:

    weights        N x bytes(dtype) (+ the PEFT adapter)
    gradients      trainable tensors x b                  one per trainable weight, in its dtype
    optimizer      fo-adamw: 2 x trainable tensors x b    AdamW's moments, which torch keeps in the weights'
    state                                                 dtype; fo-sgd none (fine_tune passes no momentum)
    activations    layers x batch x tokens x what a       saved for the backward, as transformers' layers
                   layer keeps per token: about            keep them (l2o.memory_plan.layer_bytes_per_token;
                   (10h + 4f + L) b gated (Llama),         less with the base frozen), plus the logits as a
                   (8h + f + L) b OPT                      forward leaves them; or, if larger, the
                                                          step's temporary (fo-adamw: 1 x trainable x b, the
                                                          foreach sqrt(v) made after the backward freed them)
    runtime        fixed reserve

Bilevel-ZOFO (l2o/optim/bilevel_zofo.py) trains the adapter by backprop and perturbs the frozen backbone: its
perturbation/update row is the largest backbone tensor's (and a tied embedding's copy), and it adds the adapter's
gradient and the activations saved for a backward (its ZO forwards and backward passes alternate: the sum bounds
them). `--noise table` adds a "noise table" row: on a GPU the table's copy and its signed windows (3 x size x 4 B,
size 2^22 by default: 48 MiB) and the block path's float32 z of the largest perturbed tensor (x 4; x 8 with its
float32 copy when the weights are bf16/fp16); under --offload cpu the table itself in CPU memory.

`--device-map` places the layers with accelerate's own `infer_auto_device_map` on the meta model, each GPU's
weight budget being --gpu-memory less the rest of its rows: the plan is the placement a run makes. An
over-budget plan names the options that fit. Everything here is a plan (an estimate), not a measurement.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from l2o.memory_plan import (BYTES, RUNTIME_RESERVE, Device, GiB, activation_bytes, base_config, block_bytes, count,
                             device_map_weights, fewest_gpus, format_devices, forward_activation_bytes, meta_model,
                             method_buffers, temporaries, tied_copy_bytes, weight_budget)

CARDS_GB = (16, 24, 32, 40, 48, 80, 94, 141)  # common accelerator memory sizes, for "fits GPUs of"


@dataclass
class FineTunePlan:
    base: str
    setting: str
    params: int
    trainable: int
    devices: list = field(default_factory=list)
    spilled: int = 0  # bytes of weights a device map could not place on the GPUs
    options: list = field(default_factory=list)  # flags that make an over-budget plan fit

    @property
    def fits(self) -> bool:
        return not self.spilled and all(d.fits for d in self.devices)


@dataclass(frozen=True)
class Shape:
    """What the plan needs from the base and the run, computed once."""

    config: object
    dtype: str
    peft: str
    batch: int
    length: int
    eager: bool
    long_answers: bool = False  # an lm objective scores every answer token (float32 logits), ce one per example
    optimizer: str = "mezo"     # its declared buffers are the "optimizer state" row
    hparams: dict = field(default_factory=dict)  # the optimizer's hyperparameters given (unset: its defaults)
    noise: str | None = None    # --noise: "table" adds the noise table's row

    @property
    def nbytes(self) -> int:
        return BYTES[self.dtype]

    @property
    def kind(self) -> str:
        """"first-order" (fo-*: backprop over the trainable tensors), "bilevel" (a method that trains a PEFT
        adapter by backprop and moves the frozen backbone by ZO: bilevel-zofo) or "zo"."""
        from fine_tune.first_order import is_first_order
        from l2o import catalog

        if is_first_order(self.optimizer):
            return "first-order"
        known = self.optimizer in catalog.method_names()
        return "bilevel" if known and catalog.entry(self.optimizer)["needs_adapter"] else "zo"

    @property
    def scored(self) -> int | None:
        """Logit positions kept in float32: every one (None) for an lm objective, one per example otherwise."""
        return None if self.long_answers else self.batch


def peft_tensors(model, config, peft: str) -> list[tuple[int, ...]]:
    """Shapes of the tensors a PEFT mode adds (LoRA r 8 on the query/value projections: A r x in, B out x r; 5
    prefix tokens per layer; 10 prompt embeddings: l2o.peft_modes' defaults)."""
    from torch import nn

    from l2o.peft_modes import LORA_R, PREFIX_TOKENS, PROMPT_TOKENS, lora_targets

    if peft == "lora":
        targets = tuple(lora_targets(model))
        return [shape for name, m in model.named_modules() if isinstance(m, nn.Linear)
                and name.rsplit(".", 1)[-1] in targets
                for shape in ((LORA_R, m.in_features), (m.out_features, LORA_R))]
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if peft == "prefix":
        return [(PREFIX_TOKENS, config.num_hidden_layers * 2 * kv * head_dim)]
    if peft == "prompt":
        return [(PROMPT_TOKENS, config.hidden_size)]
    return []


def _virtual_tokens(peft: str) -> int:
    from l2o.peft_modes import PREFIX_TOKENS, PROMPT_TOKENS

    return {"prefix": PREFIX_TOKENS, "prompt": PROMPT_TOKENS}.get(peft, 0)


def _tied_copy(s: Shape) -> int:
    return tied_copy_bytes(s.config, s.nbytes) if s.peft == "full" else 0


def _logits_how(s: Shape) -> str:
    return "logits, float32 " + ("for every token (lm objective)" if s.long_answers else
                                 "for one per example (classification)")


def noise_table_rows(s: Shape, largest: int, where: str = "GPU") -> list:
    """`--noise table`'s memory (l2o.noise.NoiseTable at its default options, l2o.catalog.noise_options): on a GPU
    its copy of the table and the signed windows [table, -table] the block path gathers from (3 x size float32),
    and the block path's float32 z of the largest perturbed tensor, with that tensor's float32 copy when the weights
    are not float32 (the Gaussian source's fused kernel needs neither); in CPU memory (`where` "host") the table
    itself. None for the Gaussian source."""
    if s.noise != "table":
        return []
    from l2o import catalog

    size = catalog.noise_options("table")["size"]
    if where == "host":
        return [("noise table", size * 4, f"--noise table: its {size:,} float32 values")]
    extra = largest * (8 if s.nbytes < 4 else 4)
    return [("noise table", 3 * size * 4 + extra,
             f"--noise table: {size:,} float32 values and the signed windows (3 x size x 4 B), the gathered z"
             + (" and the weights' float32 copy" if s.nbytes < 4 else "") + " of the largest perturbed tensor")]


def _gpu_rows(s: Shape, largest: int, weights: list) -> list:
    perturb, update = temporaries(largest, s.nbytes)
    tokens = s.length + _virtual_tokens(s.peft)
    tied = _tied_copy(s)
    return [*weights,
            ("perturbation/update", max(perturb, update) + tied, f"one tensor at a time: the largest trainable one, "
             f"{largest / 1e6:.0f}M elements" + (", and the tied embedding's perturbed copy" if tied else "")),
            *noise_table_rows(s, largest),
            ("activations", forward_activation_bytes(s.config, s.batch, tokens, s.nbytes, s.eager, s.scored),
             f"one layer at a time, batch {s.batch} x {tokens} tokens; {_logits_how(s)}"),
            ("runtime", RUNTIME_RESERVE, "CUDA context, allocator slack (reserve)")]


def backward_activation_bytes(s: Shape) -> int:
    """Saved for one backward pass at the run's batch and length, the PEFT mode's virtual tokens included (a bound
    for prefix tuning, whose 5 only widen k and v): l2o.memory_plan.activation_bytes, per layer and token what
    transformers' layers keep (norms, q k v and the attention output, SDPA's mask copy, the MLP's 4f gated or f for
    OPT's ReLU; less with the base frozen under PEFT), times layers x batch x tokens, plus the logits as the forward
    leaves them."""
    tokens = s.length + _virtual_tokens(s.peft)
    return activation_bytes(s.config, s.batch, tokens, s.nbytes, False, s.eager, s.scored, s.peft)


def _first_order_rows(s: Shape, model, weights: list) -> list:
    """A backprop step (fo-sgd, fo-adamw): no ZO temporaries; a gradient per trainable weight, the torch
    optimizer's state (fine_tune.first_order.FO_BUFFERS) and the activations saved for the backward. The rows are
    added although the gradients grow as the activations are freed: a bound."""
    from fine_tune.first_order import FO_BUFFERS, FO_STEP_TEMPORARY, GRADIENTS
    from l2o.footprint import buffer_bytes, describe

    shapes, tokens = trainable_shapes(s, model), s.length + _virtual_tokens(s.peft)
    state, grads = FO_BUFFERS[s.optimizer], buffer_bytes((GRADIENTS,), shapes, {}, s.nbytes)
    saved = backward_activation_bytes(s)
    # the optimizer step runs after the backward has freed the saved activations, beside the gradients and the
    # state: its temporary (AdamW's foreach sqrt(v), one trainable copy) and the activations never coexist, so the
    # larger of the two is counted (small batches and short sequences: the step's)
    step = FO_STEP_TEMPORARY[s.optimizer] * grads
    last = (("activations", saved, f"saved for the backward, every layer, batch {s.batch} x {tokens} tokens; "
                                   f"{_logits_how(s)}") if saved >= step else
            ("optimizer step temporary", step, f"{s.optimizer}'s foreach step: one copy of the trainable tensors "
             f"(sqrt of exp_avg_sq), more than the activations the backward saved and freed ({saved / 2**30:.2f} GiB)"))
    return [*weights,
            ("gradients", grads, "one per trainable weight, in its dtype"),
            *([("optimizer state", buffer_bytes(state, shapes, {}, s.nbytes), f"{s.optimizer}: {describe(state)}")]
              if state else []),
            last,
            ("runtime", RUNTIME_RESERVE, "CUDA context, allocator slack (reserve)")]


def _bilevel_rows(s: Shape, model, weights: list, backbone_largest: int) -> list:
    """Bilevel-ZOFO (l2o/optim/bilevel_zofo.py): its engine perturbs and moves the frozen backbone, so the
    temporaries are the largest backbone tensor's (and a tied embedding's copy); its lower and p-gradient steps
    backprop through the backbone into the adapter: the adapter's gradient and the activations saved for a backward
    (larger than a no-grad forward's working set, which the ZO evaluations need). The ZO forwards and the backward
    passes alternate: adding their rows is a bound, by at most the perturbation row."""
    perturb, update = temporaries(backbone_largest, s.nbytes)
    tied = tied_copy_bytes(s.config, s.nbytes)
    tokens = s.length + _virtual_tokens(s.peft)
    adapter = sum(math.prod(shape) for shape in trainable_shapes(s, model))
    forward = forward_activation_bytes(s.config, s.batch, tokens, s.nbytes, s.eager, s.scored)
    return [*weights,
            ("perturbation/update", max(perturb, update) + tied, f"one backbone tensor at a time (the engine perturbs "
             f"the frozen backbone): the largest, {backbone_largest / 1e6:.0f}M elements"
             + (", and the tied embedding's perturbed copy" if tied else "")),
            *noise_table_rows(s, backbone_largest),
            ("adapter gradient", adapter * s.nbytes, "the copy being trained's gradient (backprop into the adapter)"),
            ("activations", max(backward_activation_bytes(s), forward),
             f"saved for a backward through the backbone, batch {s.batch} x {tokens} tokens; {_logits_how(s)}"),
            ("runtime", RUNTIME_RESERVE, "CUDA context, allocator slack (reserve)")]


def _trainable(base: str, s: Shape, model) -> tuple[int, int, int]:
    """(parameters, trainable parameters, largest trainable tensor)."""
    n, sizes = count(base)
    if s.peft == "full":
        return n, n, max(sizes)
    added = [math.prod(shape) for shape in peft_tensors(model, s.config, s.peft)]
    return n, sum(added), max(added)


def trainable_shapes(s: Shape, model) -> list[tuple[int, ...]]:
    """The shapes of the tensors the method trains: every block of the base, or the PEFT adapter's."""
    if s.peft == "full":
        from l2o.models import block_shapes

        return [shape for _, shape in block_shapes(model)]
    return peft_tensors(model, s.config, s.peft)


def state_bytes(s: Shape, model) -> tuple[int, str]:
    """(bytes, what) of the optimizer's declared buffers over the trainable tensors (l2o.memory_plan.method_buffers)."""
    return method_buffers(s.optimizer, trainable_shapes(s, model), s.nbytes, s.hparams)


def state_rows(s: Shape, model, share: float = 1.0) -> list:
    """The "optimizer state" row of a device holding `share` of the weights (its buffers sit beside them), or none."""
    nbytes, what = state_bytes(s, model)
    if not nbytes or not share:
        return []
    return [("optimizer state", int(nbytes * share), f"{s.optimizer}: {what}"
             + (f"; {share:.0%} of it, beside this device's weights" if share < 1 else ""))]


def plan_single(base: str, s: Shape, gpu_bytes: float, model) -> FineTunePlan:
    n, trainable, largest = _trainable(base, s, model)
    adapter = 0 if s.peft == "full" else trainable * s.nbytes
    weights = [("weights", n * s.nbytes + adapter, f"{n / 1e9:.2f}B params x {s.nbytes} B ({s.dtype})"
                + (f" + {s.peft} adapter" if adapter else ""))]
    if s.kind == "first-order":
        rows = _first_order_rows(s, model, weights)
    elif s.kind == "bilevel":
        rows = _bilevel_rows(s, model, [*weights, *state_rows(s, model)], max(count(base)[1]))
    else:
        rows = _gpu_rows(s, largest, [*weights, *state_rows(s, model)])
    return FineTunePlan(base, "one device", n, trainable, [Device("GPU", rows, gpu_bytes)])


def plan_offload(base: str, s: Shape, gpu_bytes: float, model, where: str) -> FineTunePlan:
    n, trainable, largest = _trainable(base, s, model)
    per, resident, in_block = block_bytes(model, s.nbytes)
    on_gpu = resident / (resident + sum(per))
    weights = [("resident weights", resident, "embeddings, positions, final norm, head: stay on the GPU"),
               ("streamed blocks", 2 * max(per), f"2 of {len(per)} transformer blocks in flight (the one running, "
                                                 "the next prefetched)"), *state_rows(s, model, on_gpu)]
    update = temporaries(in_block if s.peft == "full" else largest, s.nbytes)[1]
    store = "CPU memory" if where == "cpu" else "disk"
    host = Device(store, [("offloaded weights", sum(per), f"{len(per)} blocks{', pinned' if where == 'cpu' else ''};"
                           " updates are written here"),
                          ("update", update if where == "cpu" else 0,
                           "one tensor's fp32 accumulator and noise" if where == "cpu" else "in the page cache"),
                          *state_rows(s, model, 1 - on_gpu), *noise_table_rows(s, 0, "host")])
    return FineTunePlan(base, f"--offload {where}", n, trainable,
                        [Device("GPU", _gpu_rows(s, largest, weights), gpu_bytes), host])


def plan_device_map(base: str, s: Shape, gpu_bytes: float, model, kind: str, gpus: int) -> FineTunePlan:
    """accelerate's placement of the meta model over `gpus` GPUs whose weight budgets leave room for the rest."""
    n, trainable, largest = _trainable(base, s, model)
    overhead = sum(r[1] for r in _gpu_rows(s, largest, []))
    weight_total = n * s.nbytes
    budget = weight_budget(gpu_bytes, overhead, state_bytes(s, model)[0] / weight_total)
    on, what = device_map_weights(model, kind, gpus, budget, s.dtype)
    devices = [Device(f"GPU {i}", _gpu_rows(s, largest, [("weights", on.get(i, 0), what[i]),
                                                          *state_rows(s, model, on.get(i, 0) / weight_total)]),
                      gpu_bytes) for i in range(gpus)]
    spilled = on.get("cpu", 0) + on.get("disk", 0)
    if spilled:
        devices.append(Device("CPU memory", [("spilled weights", spilled, "offloaded: copied in for each forward"),
                                             *state_rows(s, model, spilled / weight_total)]))
    return FineTunePlan(base, f"--device-map {kind} on {gpus} GPU(s)", n, trainable, devices, spilled=spilled)


def make_plan(base: str, dtype: str = "fp32", peft: str = "full", batch: int = 16, length: int = 2048,
              device_map: str | None = None, offload: str | None = None, gpus: int | None = None,
              gpu_gb: float = 80.0, eager: bool = False, long_answers: bool = False, optimizer: str = "mezo",
              hparams: dict | None = None, advise: bool = True, noise: str | None = None) -> FineTunePlan:
    """The plan per device; `gpus` None with a device map: the fewest GPUs that hold the model. `optimizer` and its
    `hparams` (unset: its defaults) size the optimizer state row (none for a method that keeps no buffers); a
    first-order baseline (fo-*) or bilevel-zofo backpropagates: gradients and saved activations, one device only.
    `noise` "table" adds the noise table's row."""
    if dtype not in BYTES:
        raise ValueError(f"--dtype must be one of {', '.join(BYTES)}, got {dtype!r}")
    config = base_config(base)
    length = min(length, getattr(config, "max_position_embeddings", length) - _virtual_tokens(peft))
    s = Shape(config, dtype, peft, batch, length, eager, long_answers, optimizer, dict(hparams or {}), noise)
    if s.kind != "zo" and (offload is not None or device_map is not None):
        raise ValueError(f"{optimizer} takes first-order steps and needs the model resident on one device; "
                         "--device-map and --offload apply to the zeroth-order optimizers")
    model, gpu_bytes = meta_model(base), gpu_gb * GiB
    if offload is not None:
        plan = plan_offload(base, s, gpu_bytes, model, offload)
    elif device_map is not None:
        def plan_on(n: int) -> FineTunePlan:
            return plan_device_map(base, s, gpu_bytes, model, device_map, n)

        plan = fewest_gpus(plan_on) if gpus is None else plan_on(gpus)
    else:
        plan = plan_single(base, s, gpu_bytes, model)
    plan.setting = f"{dtype}, peft {peft}, {plan.setting}, {gpu_gb:g} GiB per GPU"
    if advise and not plan.fits:
        plan.options = options(base, dtype, peft, batch, length, device_map, offload, gpu_gb, eager, long_answers,
                               optimizer, hparams, noise, placeable=s.kind == "zo")
    return plan


def options(base, dtype, peft, batch, length, device_map, offload, gpu_gb, eager, long_answers,
            optimizer="mezo", hparams=None, noise=None, placeable=True) -> list[str]:
    """Flags that make the run fit: offloading, more GPUs (a zeroth-order method only: `placeable`), a smaller
    batch, bf16 (first-found of each)."""
    found = []

    def fits(**kw) -> FineTunePlan | None:
        args = dict(dtype=dtype, peft=peft, batch=batch, length=length, device_map=device_map, offload=offload,
                    gpus=None, gpu_gb=gpu_gb, eager=eager, long_answers=long_answers, optimizer=optimizer,
                    hparams=hparams, advise=False, noise=noise)
        args.update(kw)
        plan = make_plan(base, **args)
        return plan if plan.fits else None

    if offload is None and placeable:
        plan = fits(offload="cpu", device_map=None)
        if plan:
            found.append(f"--offload cpu ({plan.devices[0].total / GiB:.1f} GiB on the GPU)")
        plan = fits(device_map=device_map or "auto", offload=None)
        if plan:
            found.append(f"--device-map {device_map or 'auto'} --gpus {len([d for d in plan.devices if d.budget])}")
    smaller = batch // 2
    while smaller >= 1 and not fits(batch=smaller):
        smaller //= 2
    if smaller >= 1:
        found.append(f"--batch-size {smaller}")
    if dtype == "fp32" and fits(dtype="bf16"):
        found.append("--dtype bf16")
    return found


def format_plan(plan: FineTunePlan) -> str:
    trainable = "all trainable" if plan.trainable == plan.params else f"{plan.trainable / 1e6:,.2f}M trainable"
    lines = [f"memory plan per device: fine_tune --base {plan.base} ({plan.params / 1e9:.2f}B parameters, "
             f"{trainable}), {plan.setting}"]
    lines += format_devices(plan.devices)
    if plan.devices[0].name == "GPU":  # one GPU (held or offloaded; not a device map): its need, any --gpu-memory
        need = plan.devices[0].total
        cards = [c for c in CARDS_GB if need <= c * GiB]
        lines.append(f"one GPU needs {need / GiB:.1f} GiB: " + (
            f"fits GPUs of {', '.join(map(str, cards))} GB" if cards else f"more than any one GPU ({CARDS_GB[-1]} GB)"))
    if plan.spilled:
        lines.append(f"the GPUs hold all but {plan.spilled / GiB:.1f} GiB of weights, which live in CPU memory "
                     "(it runs, slowly)")
    lines.append("fits" if plan.fits else "does NOT fit" + (
        f"; options that fit: {'; '.join(plan.options)}" if plan.options else "; no option found"))
    lines.append("(a plan from shapes, not a measurement: docs/distributed.md)")
    return "\n".join(lines)


def overhead_bytes(cfg, model) -> int:
    """What a GPU holds besides weights during a step of the run `cfg` on `model` (the plan's other rows):
    the budget a real placement leaves for each GPU's weights."""
    import torch

    from l2o.blocks import named_blocks
    from l2o.wrappers import unwrap_peft

    config = unwrap_peft(model).config
    tensors = [p for _, p in named_blocks(model, trainable_only=False)]
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[tensors[0].dtype]
    s = Shape(config, dtype, cfg.peft, cfg.batch_size, cfg.max_length, False, scores_every_answer_token(cfg),
              noise=cfg.noise)
    largest = max(p.numel() for _, p in named_blocks(model))
    return sum(r[1] for r in _gpu_rows(s, largest, []))


def state_ratio(cfg, model) -> float:
    """Bytes of the run's optimizer state per byte of weights (its buffers sit beside the weights they belong to):
    a device map gives each GPU weights W that need W (1 + this)."""
    from l2o.blocks import named_blocks

    tensors = [p for _, p in named_blocks(model, trainable_only=False)]
    trainable = [tuple(p.shape) for _, p in named_blocks(model)]
    nbytes, _ = method_buffers(cfg.optimizer, trainable, tensors[0].element_size(), _hparams(cfg))
    return nbytes / sum(p.numel() * p.element_size() for p in tensors)


def scores_every_answer_token(cfg) -> bool:
    """Whether the run's objective keeps float32 logits for every answer token (lm, nondiff-f1: the default
    of generation tasks) rather than one position per example (ce, the default of classification tasks)."""
    if cfg.objective is not None:
        return cfg.objective.lower() not in ("ce", "classification", "cls", "candidate-ce")
    if not cfg.task:
        return False
    from l2o.tasks import get_task

    task = get_task(cfg.task)
    return (task.train_objective or ("lm" if task.kind == "gen" else "ce")) != "ce"


def _hparams(cfg) -> dict:
    """The hyperparameters given for a zeroth-order optimizer (what sizes its buffers, e.g. lozo-m's --rank)."""
    from fine_tune.config import HYPERPARAMETERS

    return {k: getattr(cfg, k) for k in HYPERPARAMETERS if getattr(cfg, k, None) is not None}


def main(cfg) -> int:
    """`fine_tune --dry-run`: print the plan of the run `cfg` describes; exit 0 if it fits, 1 if not."""
    from fine_tune.config import DTYPES, PEFT_MODES, ConfigError
    from l2o.models import resolve_dtype

    try:
        if cfg.dtype not in DTYPES or cfg.peft not in PEFT_MODES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} and --peft one of {', '.join(PEFT_MODES)}")
        cfg.validate_counts()
        cfg._validate_placement()
        dtype = resolve_dtype(cfg.dtype, cfg.base, "cuda")  # as a run on a GPU resolves "auto"
        plan = make_plan(cfg.base, dtype=dtype, peft=cfg.peft, batch=cfg.batch_size, length=cfg.max_length,
                         device_map=cfg.device_map, offload=cfg.offload, gpus=cfg.gpus, gpu_gb=cfg.gpu_memory or 80.0,
                         long_answers=scores_every_answer_token(cfg), optimizer=cfg.optimizer,
                         hparams=_hparams(cfg), noise=cfg.noise)
    except ValueError as err:
        print(f"fine_tune: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    return 0 if plan.fits else 1
