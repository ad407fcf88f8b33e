"""`meta_train --base <alias> --dry-run [--gpu-memory GB]`: the per-device memory plan of ZO Fine-tuner
meta-training, offline, from shapes alone (l2o/base_shapes.json: public config.json fields of every alias).

One meta-training step on one device (every DDP rank holds the same; DDP all-reduces only the policy's
gradients) with the lean one-step meta-gradient (unroll 1):

    weights      N x bytes(dtype)                          the LLM, the only resident copy
    momentum     N x bytes(dtype)                          SGD momentum of the first-order trajectory
                                                           (fp32 arithmetic, stochastic rounding in bf16)
    gradient     largest block x bytes(dtype)              consumed block by block in the backward
    look-ahead   3 x largest block x 4                     theta'_b, z_b, fp32 accumulator (regenerated)
    activations  at batch x length                         saved for one backward (estimate below)
    policy       B x 449 x 4 x 4                           parameters, gradient, Adam's two moments
    runtime      fixed reserve                             CUDA context, allocator slack, kernels' workspace

Pretrained weights for resets are re-read from the model files; meta-validation fine-tunes the LLM
itself and parks the trajectory's weights on disk meanwhile (one model size in --model.scratch_dir), so neither
adds device memory.
unroll > 1 takes the functional path, which also holds theta_t and z_t of every unrolled step.

--model.dtype auto (the default) is planned as meta_train resolves it on an accelerator: the checkpoint's
dtype (l2o/base_shapes.json's torch_dtype for an alias), with fp16 trained in bf16 (OPT-13B: bf16). A plan that
does not fit names the first of --model.dtype bf16, --model.gradient_checkpointing true, both, that does.

With the forward-only estimators (`--estimator es|pes`) a step is ZO fine-tuning plus the policy:

    weights       N x bytes(dtype)                   the LLM, the only resident copy
    perturbation  largest block x (4 + b + 2)        the engine's temporaries as fine_tune --dry-run plans them
    / update      (x 4 in fp32), + a tied            (l2o.memory_plan.temporaries): one block at a time
                  embedding's perturbed copy
    activations   at batch x length, no grad         one layer's working set and the logits
                                                     (l2o.memory_plan.forward_activation_bytes)
    inner-method  its declared buffers x copies      only for a stateful --model.inner_method (l2o/footprint.py:
    state                                            +zo-sgd-mmt, +hizoo 1 fp32 copy, +lozo-m rows x rank per
                                                     matrix), kept in memory across unrolls: ES 2 copies (the
                                                     trajectory's and the running unroll's), PES 2N + 1 (each
                                                     particle's two runs' and the running one's)
    policy        B x 449 x 4 x 5                    parameters, gradient, Adam's moments, a perturbed copy
    runtime       fixed reserve
    on disk       N x bytes x (files + 1)            parked weights: ES 1 file (theta_t), PES 2 per particle,
                                                     and the trajectory while a meta-validation runs

Under the look-ahead the inner method runs only in meta-validation (one copy of its buffers, beside the momentum).

`--device-map auto|balanced|sequential` or `--offload cpu` (ES/PES: the LLM placed by l2o.placement) plans each
device as the run places it (`place`): a device map over the fewest GPUs that hold the weights, each GPU's weight
budget its memory less the step's other rows (accelerate's placement of the meta model, as fine_tune --dry-run
plans it); an offload keeps the embeddings, final norm and head and two transformer blocks in flight on the GPU
and the other blocks in CPU memory. The inner method's state sits beside the weights it belongs to, in their share.
A forward-only plan that does not fit one device names the placement that fits.

Activations are what transformers' layers save for a backward, per layer and token
(l2o.memory_plan.layer_bytes_per_token: norms, q k v and the attention output, SDPA's mask copy, the MLP's
4f gated or f for OPT's ReLU, eager attention's float32 softmax); logits tokens x vocab x (bytes + 8) for
the float32 cross-entropy. With gradient checkpointing: one hidden state per layer plus one layer's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from l2o.errors import ConfigError
from l2o.memory_plan import (RUNTIME_RESERVE, Device, GiB, Plan, activation_bytes, base_config, block_bytes, count,
                             device_map_weights, fewest_gpus, format_devices, forward_activation_bytes, format_rows,
                             meta_model, method_buffers, shapes, temporaries, tied_copy_bytes, weight_budget)

__all__ = ["base_config", "format_plan", "main", "make_plan", "shapes", "table"]
ESTIMATORS = ("lookahead", "es", "pes")  # l2o.estimators.ESTIMATORS (not imported: --dry-run stays light)
BYTES = {"fp32": 4, "bf16": 2}  # meta-training's dtypes (fp16 overflows without loss scaling)
POLICY_FLOATS_PER_BLOCK = 449


PARKED_BY_METAVAL = 1  # model sizes meta-validation parks on disk: the trajectory, while it fine-tunes the LLM


@dataclass
class MetaPlan(Plan):
    estimator: str = "lookahead"
    disk: int = 0  # parked weights at the peak (host disk, not device memory): ES/PES's files and meta-validation's
    devices: list = field(default_factory=list)  # --device-map / --offload: each device's rows (else `rows`)
    placement: str = ""  # e.g. "--device-map auto on 2 GPU(s)"
    spilled: int = 0  # bytes of weights a device map could not place on the GPUs

    @property
    def fits(self) -> bool:
        if self.devices:
            return not self.spilled and all(d.fits for d in self.devices)
        return self.total <= self.gpu_bytes


def plan_dtype(base: str, dtype: str) -> tuple[str, str]:
    """(dtype, how): --model.dtype, with "auto" resolved as meta_train does on an accelerator."""
    from l2o.models import checkpoint_dtype, resolve_dtype

    if dtype != "auto":
        return dtype, ""
    found = checkpoint_dtype(base)
    how = f"auto: the checkpoint's {found}" + (", trained in bf16" if found == "fp16" else "") if found else \
        "auto: checkpoint dtype unknown"
    return resolve_dtype("auto", base, "cuda", first_order=True), how


def forward_only_rows(config, n: int, sizes, dtype: str, batch: int, length: int, eager: bool, how: str) -> list:
    b, big = BYTES[dtype], max(sizes)
    tied = tied_copy_bytes(config, b)
    return [
        ("weights", n * b, f"{n / 1e9:.2f}B params x {b} B ({dtype}{'; ' + how if how else ''}); no momentum, "
         "no gradient"),
        ("perturbation/update", max(temporaries(big, b)) + tied,
         f"one block at a time: the largest, {big / 1e6:.0f}M elements"
         + (", and the tied embedding's perturbed copy" if tied else "")),
        ("activations", forward_activation_bytes(config, batch, length, b, eager),
         f"batch {batch} x {length} tokens, forward only (one layer + logits)"),
        ("policy", len(sizes) * POLICY_FLOATS_PER_BLOCK * 4 * 5,
         f"{len(sizes)} MLPs: params, grad, Adam m and v, a perturbed copy"),
        ("runtime", RUNTIME_RESERVE, "CUDA context, allocator slack (reserve)"),
    ]


def state_copies(estimator: str, pairs: int) -> tuple[int, str]:
    """How many copies of the inner method's buffers (l2o/estimators/unroll.py) a step holds at its peak, and
    why: ES the trajectory's and the running unroll's; PES each particle's two runs' and the running unroll's; the
    look-ahead only meta-validation's deployed run."""
    if estimator == "es":
        return 2, "the trajectory's and the running unroll's"
    if estimator == "pes":
        return 2 * pairs + 1, f"the {2 * pairs} runs' ({pairs} particles) and the running unroll's"
    return 1, "meta-validation's deployed run"


def inner_state_rows(base: str, b: int, estimator: str, pairs: int, inner_method: str, inner_hparams) -> list:
    """The inner method's declared buffers (l2o.memory_plan.method_buffers) times the copies the estimator keeps;
    none for a method that keeps no buffers (zo-finetuner, +gv, ...)."""
    from l2o.models import block_shapes

    trainable = [shape for _, shape in block_shapes(meta_model(base))]
    one, what = method_buffers(inner_method, trainable, b, inner_hparams)
    if not one:
        return []
    copies, why = state_copies(estimator, pairs)
    return [("inner-method state", copies * one, f"{inner_method}: {what}, x {copies} ({why})")]


def forward_only_overhead(config, sizes, dtype: str, batch: int, length: int) -> int:
    """What an ES/PES step holds on a device besides the weights (the plan's other rows): what a device map
    leaves free of weights on each GPU."""
    rows = forward_only_rows(config, sum(sizes), sizes, dtype, batch, length, False, "")
    return sum(r[1] for r in rows if r[0] != "weights")


def inner_state_bytes(base: str, dtype: str, estimator: str, pairs: int, inner_method: str,
                      inner_hparams: dict | None) -> int:
    """The inner method's buffers times the copies the estimator keeps (0 for a method without buffers)."""
    return sum(r[1] for r in inner_state_rows(base, BYTES[dtype], estimator, pairs, inner_method, inner_hparams))


def check_count(flag: str, value, least: int = 1) -> int:
    """An integer option of meta_train (`--data.batch_size`, `--model.unroll`, ...) as the run and its --dry-run
    plan take it: the integer, or a ConfigError naming `flag` (a batch of -2 was planned as negative memory, and a
    run with `--data.max_length -4` ran)."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{flag} must be an integer >= {least}, got {value!r}")
    return value


def check_config_files(argv: list[str]) -> list[dict]:
    """The mappings the --config files of `argv` hold, in order (`l2o.config_files.read_yaml_mapping`): one that is
    not UTF-8 text (a checkpoint given by mistake), not YAML or no mapping is refused in one line, where the run's
    LightningCLI parser raised a UnicodeDecodeError traceback. A --config that names no file is left to that parser
    (it also takes YAML text, and names a missing file); the dry-run's `_options` refuses it."""
    from l2o.config_files import read_yaml_mapping

    return [read_yaml_mapping(path) for path in config_paths(argv) if Path(path).is_file()]


def config_paths(argv: list[str]) -> list[str]:
    """The --config values of `argv`, in order (`--config x` or `--config=x`)."""
    return [a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]


def check_placement(estimator: str, device_map, offload) -> None:
    """--device-map / --offload as meta_train takes them (the run and its --dry-run plan): ES and PES only."""
    from l2o.placement import DEVICE_MAPS

    if device_map not in (None, *DEVICE_MAPS):
        raise ConfigError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    if offload not in (None, "cpu"):
        raise ConfigError(f"--offload must be cpu, got {offload!r}")
    if device_map and offload:
        raise ConfigError("choose one of --device-map (layers across GPUs) and --offload cpu (blocks streamed from "
                          "CPU memory), not both")
    if (device_map or offload) and estimator == "lookahead":
        raise ConfigError("--device-map and --offload need a forward-only estimator (--estimator es or pes): the "
                          "look-ahead backpropagates through the LLM on one device")


def place(plan: MetaPlan, model, device_map: str | None, offload: str | None) -> MetaPlan:
    """A forward-only plan's rows spread as `--device-map` or `--offload cpu` places the LLM (l2o.placement). Each
    GPU holds its weights, the inner method's state in their proportion (it sits beside them), and the step's other
    rows whole (perturbation, activations, policy, runtime), as a run places it: a GPU's weight budget is its memory
    less those rows (meta_train.module._place). A device map takes the fewest GPUs that hold the model."""
    b = BYTES[plan.dtype]
    weights = plan.rows[0][1]
    state = sum(r[1] for r in plan.rows if r[0] == "inner-method state")
    rest = [r for r in plan.rows[1:] if r[0] != "inner-method state"]

    def share(part: float) -> list:
        return [("inner-method state", int(state * part), f"{part:.0%} of it, beside these weights")] if state else []

    if offload is not None:
        per, resident, _ = block_bytes(model, b)
        on_gpu = resident / (resident + sum(per))
        gpu = Device("GPU", [("resident weights", resident, "embeddings, positions, final norm, head"),
                             ("streamed blocks", 2 * max(per), f"2 of {len(per)} transformer blocks in flight"),
                             *share(on_gpu), *rest], plan.gpu_bytes)
        host = Device("CPU memory", [("offloaded weights", sum(per), f"{len(per)} blocks, pinned"),
                                     *share(1 - on_gpu)])
        plan.devices, plan.placement = [gpu, host], f"--offload {offload}"
        return plan
    budget = weight_budget(plan.gpu_bytes, sum(r[1] for r in rest), state / weights)

    def plan_on(gpus: int) -> MetaPlan:
        on, what = device_map_weights(model, device_map, gpus, budget, plan.dtype)
        plan.devices = [Device(f"GPU {i}", [("weights", on.get(i, 0), what[i]), *share(on.get(i, 0) / weights),
                                            *rest], plan.gpu_bytes) for i in range(gpus)]
        plan.spilled = on.get("cpu", 0) + on.get("disk", 0)
        if plan.spilled:
            plan.devices.append(Device("CPU memory", [("spilled weights", plan.spilled, "copied in for each "
                                                       "forward"), *share(plan.spilled / weights)]))
        plan.placement = f"--device-map {device_map} on {gpus} GPU(s)"
        return plan

    return fewest_gpus(plan_on)


def make_plan(base: str, dtype: str = "auto", batch: int = 8, length: int = 128, checkpointing: bool = False,
              unroll: int = 1, eager: bool = False, gpu_gb: float = 80.0, estimator: str = "lookahead",
              pairs: int = 4, inner_method: str = "zo-finetuner", inner_hparams: dict | None = None,
              device_map: str | None = None, offload: str | None = None) -> MetaPlan:
    if estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    check_placement(estimator, device_map, offload)
    config = base_config(base)
    dtype, how = plan_dtype(base, dtype)
    if dtype not in BYTES:
        raise ValueError(f"--model.dtype must be auto, fp32 or bf16, got {dtype!r}")
    n, sizes = count(base)
    b, big = BYTES[dtype], max(sizes)
    plan = MetaPlan(base, n, len(sizes), gpu_bytes=gpu_gb * GiB, dtype=dtype, estimator=estimator)
    state = inner_state_rows(base, b, estimator, pairs, inner_method, inner_hparams)
    if estimator != "lookahead":
        plan.rows = forward_only_rows(config, n, sizes, dtype, batch, length, eager, how)
        plan.rows[1:1] = state
        plan.disk = n * b * ((1 if estimator == "es" else 2 * pairs) + PARKED_BY_METAVAL)
        return place(plan, meta_model(base), device_map, offload) if device_map or offload else plan
    plan.rows = [
        ("weights", n * b, f"{n / 1e9:.2f}B params x {b} B ({dtype}{'; ' + how if how else ''})"),
        ("momentum", n * b, f"SGD momentum in {dtype}" + (", fp32 arithmetic + stochastic rounding" if b < 4 else "")),
        ("gradient", big * b, "one block at a time (consumed in the backward)"),
        ("look-ahead", 3 * big * 4, "theta'_b, z_b, fp32 accumulator: one block"),
        ("activations", activation_bytes(config, batch, length, b, checkpointing, eager or unroll > 1),
         f"batch {batch} x {length} tokens" + (", checkpointed" if checkpointing else "")
         + (", eager attention" if eager or unroll > 1 else "")),
        ("policy", len(sizes) * POLICY_FLOATS_PER_BLOCK * 4 * 4, f"{len(sizes)} MLPs: params, grad, Adam m and v"),
        ("runtime", RUNTIME_RESERVE, "CUDA context, allocator slack (reserve)"),
    ]
    if unroll > 1:
        plan.rows.insert(4, ("unrolled theta_t, z_t", 2 * unroll * n * 4,
                             f"functional path, T = {unroll}: small models only"))
    plan.rows[2:2] = state
    plan.disk = n * b * PARKED_BY_METAVAL
    return plan


def format_plan(plan: MetaPlan) -> str:
    lines = [f"memory plan per device: meta_train --base {plan.base} --estimator {plan.estimator} "
             f"({plan.params / 1e9:.2f}B parameters, {plan.blocks} blocks)" + (f", {plan.placement}, "
                                                                               f"{plan.gpu_bytes / GiB:.0f} GiB per GPU"
                                                                               if plan.devices else "")]
    resets = "pretrained weights for resets are re-read from the model files"
    if plan.devices:
        lines += format_devices(plan.devices)
        if plan.spilled:
            lines.append(f"  the GPUs hold all but {plan.spilled / GiB:.1f} GiB of weights (CPU memory: it runs, "
                         "slowly)")
        lines.append(f"  {'fits' if plan.fits else 'does NOT fit'}; {resets}")
    else:
        lines += format_rows(plan.rows)
        room = plan.gpu_bytes - plan.total
        lines.append(f"  {'total':<22} {plan.total / GiB:8.2f} GiB")
        lines.append(f"  {'fits' if plan.fits else 'does NOT fit'} in {plan.gpu_bytes / GiB:.0f} GiB "
                     f"({abs(room) / GiB:.1f} GiB {'to spare' if plan.fits else 'short'}); {resets}")
    if plan.disk:
        files = {"es": "theta_t, ", "pes": "2 runs per particle, "}.get(plan.estimator, "")
        lines.append(f"  {'on disk (not device)':<22} {plan.disk / GiB:8.2f} GiB   parked weights ({files}the "
                     "trajectory during meta-validation; --model.scratch_dir)")
    return "\n".join(lines)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"--{prefix}{key}"] = value
    return out


def _options(argv: list[str]) -> dict:
    """The options the plan reads: each --config YAML in order, then the command line (which wins), as the
    LightningCLI resolves them."""
    from l2o.config_files import read_yaml_mapping

    found = {}
    for path in config_paths(argv):
        found.update(_flatten(read_yaml_mapping(path)))
    for i, a in enumerate(argv):
        if a.startswith("--") and "=" in a:
            found[a.split("=", 1)[0]] = a.split("=", 1)[1]
        elif a.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            found[a] = argv[i + 1]
    return found


def fitting_flags(kw: dict) -> str | None:
    """The first change of the plan `kw` (make_plan's arguments) under which it fits, or None: --model.dtype bf16,
    --model.gradient_checkpointing true (the look-ahead's backward), both; for the forward-only estimators, the LLM
    spread over GPUs (--device-map auto, on the fewest that hold it) or streamed from CPU memory (--offload cpu), in
    the dtype given, then in bf16."""
    tries = [{"dtype": "bf16"}, {"checkpointing": True}, {"dtype": "bf16", "checkpointing": True}]
    if kw.get("estimator", "lookahead") != "lookahead":
        tries = [{"dtype": "bf16"}, *({**d, "device_map": "auto", "offload": None} for d in ({}, {"dtype": "bf16"})),
                 *({**d, "offload": "cpu", "device_map": None} for d in ({}, {"dtype": "bf16"}))]
    for change in tries:
        plan = make_plan(**{**kw, **change})
        if plan.fits:
            flags = {"dtype": "--model.dtype bf16", "checkpointing": "--model.gradient_checkpointing true",
                     "device_map": f"--device-map auto ({plan.placement.split(' on ')[-1]})",
                     "offload": "--offload cpu"}
            return " ".join(flags[k] for k, v in change.items() if v)
    return None


def main(argv: list[str]) -> int:
    """The --dry-run entry point of meta_train (options from --config files and the same command line)."""
    try:
        opt = _options(argv)
        count = {flag: check_count(flag, default if opt.get(flag) is None else opt[flag]) for flag, default in (
            ("--data.batch_size", 8), ("--data.max_length", 128), ("--model.unroll", 1), ("--model.pairs", 4))}
        try:
            gpu_gb = float(opt.get("--gpu-memory", 80))
        except ValueError:
            gpu_gb = None
        if gpu_gb is None or not gpu_gb > 0:
            raise ConfigError(f"--gpu-memory must be a positive number of GiB, got {opt.get('--gpu-memory')!r}")
        kw = dict(base=opt.get("--base", "smollm2-135m"), dtype=opt.get("--model.dtype", "auto"),
                  batch=count["--data.batch_size"], length=count["--data.max_length"],
                  checkpointing=str(opt.get("--model.gradient_checkpointing", "false")).lower() == "true",
                  unroll=count["--model.unroll"],
                  eager=opt.get("--model.attn_implementation", "") == "eager",
                  gpu_gb=gpu_gb, estimator=opt.get("--estimator", "lookahead"),
                  pairs=count["--model.pairs"],
                  inner_method=opt.get("--model.inner_method", "zo-finetuner"),
                  inner_hparams={k.split(".", 2)[2]: v for k, v in opt.items()
                                 if k.startswith("--model.inner_hparams.")},
                  device_map=opt.get("--device-map", opt.get("--device_map")), offload=opt.get("--offload"))
        plan = make_plan(**kw)
        hint = None if plan.fits else fitting_flags(kw)
    except (ValueError, OSError) as err:
        print(f"meta_train: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if not plan.fits:
        print(f"  fits with {hint}" if hint else "  no flag makes it fit: a device with more memory "
              "(--gpu-memory) or a smaller base or batch")
    return 0 if plan.fits else 1


def table(dtypes=("bf16", "fp32"), batch: int = 8, length: int = 128) -> str:
    """The markdown table of docs/meta_train.md: every shipped base under every estimator (GiB per device)."""
    head = ("| base | params | dtype | lookahead | es | pes (4 particles) | disk: es / pes | fits 80 GiB | "
            "fits 139 GiB (H200) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for base in shapes():
        for dtype in dtypes:
            plans = {e: make_plan(base, dtype, batch, length, estimator=e) for e in ESTIMATORS}
            total = {e: p.total / GiB for e, p in plans.items()}

            def fits(gib):
                return ", ".join(e for e in ESTIMATORS if total[e] <= gib) or "none"

            lines.append(f"| {base} | {plans['es'].params / 1e9:.2f}B | {dtype} | {total['lookahead']:.1f} | "
                         f"{total['es']:.1f} | {total['pes']:.1f} | {plans['es'].disk / GiB:.1f} / "
                         f"{plans['pes'].disk / GiB:.1f} | {fits(80)} | {fits(139)} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m meta_train.plan: the table of every base under every estimator
    print(table())
