"""One fine-tuning run: load base + task, zero-shot eval, ZO training under Lightning, best-on-dev
selection, final eval, and the run's artefacts (results.json, loss.png, TensorBoard logs, model)."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from fine_tune.config import ConfigError, FineTuneConfig, dump_yaml
from fine_tune.placement import base_only, place_model
from l2o.filelock import write_png_atomic


def _check_out_dir(out: Path, resume: bool, writer: bool = True) -> None:
    """Refuse an unwritable --out, a second run into one, a resume of nothing or of a damaged checkpoint;
    returns the saved configuration of a run to resume. `writer`: this process writes the outputs (rank 0)."""
    try:
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to --out {out}: {err.strerror or err}") from None
    from l2o.integrations.lightning.folder import check_resume

    check_resume(out, resume)
    if resume:
        from l2o.config_files import read_saved_run

        old = read_saved_run(out / "config.yaml")
        old.pop("resume", None)
        old.pop("resolved_optimizer_kwargs", None)
        return old


def _peak_memory_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if r["loss"] == r["loss"]]  # drop NaN (skipped) steps
    if not rows:
        return
    x = [r["forwards"] for r in rows]
    y = [r["loss"] for r in rows]
    w = max(1, len(y) // 20)
    smooth = [sum(y[max(0, i - w + 1):i + 1]) / len(y[max(0, i - w + 1):i + 1]) for i in range(len(y))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, alpha=0.3, label="train loss (per step)")
    ax.plot(x, smooth, label=f"moving mean ({w} steps)")
    ax.set_xlabel("forward passes")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    write_png_atomic(path, fig)


def _check_run(cfg: FineTuneConfig):
    """What can fail before Lightning, data or weights are loaded: the config, the base's name, the task.
    Returns the task. (The run folder is checked once the process knows its rank: `_check_folder`.)"""
    cfg.validate()
    from l2o.models import resolve_base
    from l2o.tasks import get_task

    resolve_base(cfg.base)
    task = get_task(cfg.task)
    from zoo.acquire import ensure_base, ensure_task

    from zoo.resolve import resolve

    for spec in (cfg.policy, cfg.init):  # maybe remote: fetched (and verified) before the base and the task data,
        if spec:  # so that a mistyped id or version fails first, not after them
            resolve(spec[4:] if spec.startswith("zoo:") else spec)
    ensure_base(cfg.base)  # the one place that downloads or converts (l2o itself does no network I/O)
    ensure_task(task.name, cfg.source)
    return task


def _check_folder(cfg: FineTuneConfig, writer: bool, log) -> Path:
    """The run folder, and (on --resume) that the flags are the original ones; `writer`: rank 0."""
    out = cfg.resolved_out()
    old = _check_out_dir(out, cfg.resume, writer)
    if old is not None:
        _check_resume(cfg, old, log)
    return out


def _check_resume(cfg: FineTuneConfig, old: dict, log) -> None:
    """Resume only the same run. The process layout may change: the seeds and each step's global batch do
    not depend on it (direction-parallel is bit-identical at any N; data-parallel differs only in the
    float32 rounding of the loss sums). So may --save-every, the checkpoints' cadence (the run says so:
    `_note_cadence`)."""
    from fine_tune.config import LAYOUT_FLAGS

    now = {k: v for k, v in cfg.to_dict().items() if k != "resume"}
    diff = sorted(k for k in now if k not in (*LAYOUT_FLAGS, "save_every") and old.get(k) != now[k])
    if diff:
        raise ConfigError(f"--resume with a different configuration ({', '.join(diff)}); use the original flags")
    was = old.get("devices", 1) * old.get("num_nodes", 1)
    if was != cfg.world_size():
        log(f"resuming a run made on {was} process(es) on {cfg.world_size()}: the seeds and the global batches "
            f"are the same; data-parallel losses may differ in float32 rounding only")


def _note_cadence(trainer, out: Path, log) -> None:
    """A resume with another --save-every than the run's: one line of ours, not Lightning's warning."""
    from l2o.integrations.lightning.checkpoints import LastCheckpoint, cadence_change

    saver = next(cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
    changed = cadence_change(saver, out / "checkpoints" / "last.ckpt", "--save-every")
    if changed:
        log(changed)


def _silent(msg: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the run."""


def build_module(cfg: FineTuneConfig, model, tokenizer, objective, splits, info, parallel: str = "direction"):
    """The LightningModule of `cfg.optimizer`: the first-order baselines', or the ZO one for every registered
    method."""
    common = dict(seed=cfg.seed, data_seed=cfg.data_seed, batch_size=cfg.batch_size,
                  eval_batch_size=cfg.eval_batch_size, steps=cfg.steps, fingerprint=info.fingerprint)
    if cfg.is_first_order():
        from fine_tune.first_order import FOFineTuneModule

        return FOFineTuneModule(model, tokenizer, objective, splits, cfg.optimizer, cfg.optimizer_kwargs(), **common)
    from fine_tune.module import ZOFineTuneModule

    kwargs = cfg.optimizer_kwargs()
    if cfg.uses_policy():
        kwargs.update(policy=load_policy(cfg, model, info), policy_batch_size=cfg.batch_size,
                      policy_size_rule=cfg.policy_size_rule)
    return ZOFineTuneModule(model, tokenizer, objective, splits, cfg.optimizer, kwargs, parallel=parallel,
                            check_every=cfg.check_every, **common)


def run(cfg: FineTuneConfig, log=print, callbacks=()) -> dict:
    """Run a fine-tuning described by `cfg` with any optimizer (the registered ZO methods, the learned
    policy, Bilevel-ZOFO); returns the results dict (also written to results.json). `callbacks` are
    extra Lightning callbacks for the Trainer. On several processes (--devices/--num-nodes) every process
    runs this; rank 0 returns the results and writes every output, the others return None."""
    task = _check_run(cfg)
    t_start = time.perf_counter()
    from l2o.integrations.lightning.progress import quiet_libraries

    quiet_libraries()
    from fine_tune.distributed import launch_rank
    from l2o.integrations.lightning.folder import RunFolder, share_folder
    from l2o.integrations.lightning.interrupt import interrupt_callback

    stop_cb = interrupt_callback(cfg.resolved_out() / "checkpoints" / "last.ckpt")  # Ctrl-C: save, stop, exit 130
    trainer, tb = make_trainer(cfg, cfg.resolved_out(), resolve_device(cfg), [*callbacks, stop_cb])
    rank = launch_rank(trainer)  # before fit launches the other processes: rank 0 writes every output
    # rank 0 holds --out for the whole run (l2o.integrations.lightning.folder): a second run into it is refused
    # naming this pid, a killed holder's lock is taken over, and a run failing before its first checkpoint cleans
    # up (after a lost rank 0, a surviving rank does)
    folder = RunFolder(cfg.resolved_out(), holder=rank == 0, log=log)
    trainer.callbacks.append(share_folder(folder))
    with folder:
        return _run_ranked(cfg, task, trainer, tb, rank, stop_cb, _silent if rank else log, t_start)


def _run_ranked(cfg: FineTuneConfig, task, trainer, tb, rank: int, stop_cb, log, t_start: float) -> dict | None:
    """`run` once the process knows its rank (and rank 0 holds --out)."""
    from fine_tune.distributed import parallel_mode
    from l2o.integrations.lightning.interrupt import finish_fit

    out = _check_folder(cfg, rank == 0, log)
    if cfg.resume:
        _note_cadence(trainer, out, log)
    device = str(trainer.strategy.root_device) if cfg.world_size() > 1 else resolve_device(cfg)
    device, objective, splits, model, tokenizer, info, zero_shot = prepare(cfg, task, out, log, device, rank)
    parallel = parallel_mode(cfg)
    module = build_module(cfg, model, tokenizer, objective, splits, info, parallel)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"base {info.model_id} ({info.num_parameters:,} params, {info.dtype}"
        f"{' (--dtype auto)' if cfg.dtype == 'auto' else ''}, {device}); peft {cfg.peft}: "
        f"{n_train:,} trainable; optimizer {cfg.optimizer} {cfg.optimizer_kwargs()}"
        + (f"; {cfg.world_size()} processes, {parallel}-parallel" if cfg.world_size() > 1 else ""))
    configure_checkpoints(module, cfg, n_train, out, device, log, rank)
    best_cb = _best_on_dev_callback(cfg, module, out)
    if best_cb is not None:
        trainer.callbacks.append(best_cb)
    _record_start(cfg, out, tb, rank, module.metric, zero_shot, log)
    t_fit = time.perf_counter()
    finish_fit(lambda: trainer.fit(module, ckpt_path=str(out / "checkpoints" / "last.ckpt") if cfg.resume else None),
               trainer, stop_cb)
    fit_s = time.perf_counter() - t_fit
    if rank:
        return None  # rank 0 evaluates and writes the results
    best_step = _load_best(module, best_cb, log)
    final_examples: dict = {}
    final = evaluate_splits(module, splits, final_examples)
    for split, v in final.items():
        tb.experiment.add_scalar(f"final/{split}_{module.metric}", v, trainer.global_step)
    tb.experiment.flush()
    if hasattr(module, "ledger_results"):
        module.optimizers().optimizer.ledger.flush(module.ledger_path)  # the whole run's ledger

    losses = [r["loss"] for r in module.history if r["loss"] == r["loss"]]
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    results = {
        "config": cfg.to_dict(), "optimizer_kwargs": cfg.optimizer_kwargs(),
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed},
        "base": info.to_dict(), "task": task.name, "metric": module.metric,
        "splits": {"train": len(splits.train), "dev": len(splits.dev), "eval": len(splits.eval),
                   "eval_seed": splits.eval_seed, "rule": splits.rule, "fingerprint": splits.fingerprint()},
        "zero_shot": zero_shot, "final": final, "best_step": best_step, "steps": trainer.global_step,
        "per_example": {"zero_shot": _zero_shot_examples(out), "final": final_examples},
        **module.run_counters(),
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "fit_time_s": fit_s, "wall_time_s": time.perf_counter() - t_start,
        "peak_memory_bytes": _peak_memory_bytes(device), "trainable_params": n_train,
        "placement": getattr(model, "_l2o_placement", None),  # parameters per place (--device-map, --offload)
        "saved_model": cfg.save_kind(n_train),
        **(module.ledger_results() if hasattr(module, "ledger_results") else {}),
        "paths": {"tensorboard": str(out / "tb"), "plot": str(out / "loss.png"), "history": str(out / "history.json"),
                  "model": str(out / "model") if cfg.save_kind(n_train) else None},
    }
    _write_artefacts(cfg, module, results, out, tokenizer, info)
    return results


def _record_start(cfg: FineTuneConfig, out: Path, tb, rank: int, metric: str, zero_shot: dict, log) -> None:
    """The resolved config (rank 0) and the zero-shot metrics, before training starts."""
    if rank == 0:
        from l2o.config_files import save_run

        save_run(out / "config.yaml", dump_yaml(cfg))
        (out / "tb").mkdir(parents=True, exist_ok=True)
        save_run(out / "tb" / "config.yaml", dump_yaml(cfg))
    for split, v in zero_shot.items():
        if not cfg.resume:  # the run being resumed logged them (a resumed run reads them back, not again)
            tb.experiment.add_scalar(f"{split}/{metric}", v, 0)
    if zero_shot:
        log("zero-shot: " + ", ".join(f"{k} {metric} {v:.4f}" for k, v in zero_shot.items()))


def _best_on_dev_callback(cfg: FineTuneConfig, module, out: Path):
    """MeZO's best-on-dev selection, for runs with dev data, evaluations, and a module whose checkpoints
    hold its whole trained state (not Bilevel-ZOFO's: its backbone lives in the seed ledger, not in the tensors)."""
    if not (cfg.eval_every and module.splits.dev and module.selects_best_on_dev):
        return None
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=f"dev/{module.metric}",
                           mode="max", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=False)


def _load_best(module, best_cb, log) -> int | None:
    if best_cb is None or not best_cb.best_model_path:
        return None
    import torch

    module.load_trainable(best_cb.best_model_path)
    best_step = int(torch.load(best_cb.best_model_path, map_location="cpu", weights_only=True)["global_step"])
    log(f"best-on-dev checkpoint: step {best_step}")
    return best_step


def _write_artefacts(cfg: FineTuneConfig, module, results: dict, out: Path, tokenizer, info) -> None:
    """history.json, loss.png, the model (if --save-model) and results.json (last: it marks a finished run)."""
    zs, fin = results["zero_shot"], results["final"]
    (out / "history.json").write_text(json.dumps(module.history))
    plot_history(module.history, out / "loss.png",
                 f"{cfg.optimizer} on {results['task']} ({info.model_id}, {cfg.peft}); {module.metric}: zero-shot "
                 f"{zs.get('eval', float('nan')):.3f} -> {fin.get('eval', float('nan')):.3f}")
    if results["saved_model"] == "ledger":
        from zoo import save_ledger

        _write_model(out, lambda folder: save_ledger(
            folder, module.ledger, base_model=cfg.base,
            card={"tasks": [results["task"]], "steps": results["steps"],
                  "metrics": {f"{k} {results['metric']}": v for k, v in fin.items()}},
            training={"task": results["task"], "optimizer": cfg.optimizer, "steps": results["steps"]}))
    elif results["saved_model"]:
        _write_model(out, lambda folder: module.export(folder, tokenizer, {
            "base": cfg.base, "model_id": info.model_id, "fingerprint": info.fingerprint, "peft": cfg.peft}))
    (out / "results.json").write_text(json.dumps(results, indent=1))


MODEL_STAGING = ".tmp-model-"  # the model is written into <out>/.tmp-model-<8 characters>, then renamed to <out>/model


def _write_model(out: Path, write) -> None:
    """`write(folder)` the model into a staging folder this process holds, renamed to `<out>/model` once whole (a
    model/ from an earlier attempt of this run goes first). Ctrl-C, SIGTERM or a full disk mid-export left a
    half-written model/ that loads as a broken model; now they leave none, and a staging folder that a `kill -9`
    left is removed by the next attempt (`l2o.filelock.writer_folder`)."""
    import os
    import shutil

    from l2o.filelock import writer_folder

    with writer_folder(out, MODEL_STAGING, what="model export") as staging:
        write(staging)
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(staging, out / "model")


def configure_checkpoints(module, cfg: FineTuneConfig, n_train: int, out: Path, device: str, log,
                          rank: int = 0) -> None:
    """ZO runs: what checkpoints hold (--checkpoint), where the seed ledger is flushed (by rank 0 only), and
    how a ledger checkpoint gets its starting model back for best-on-dev selection."""
    if not hasattr(module, "ledger_results"):
        return
    module.checkpoint_kind = cfg.checkpoint_kind(n_train)
    module.ledger_path = out / "ledger.jsonl" if rank == 0 else None
    module.fresh_model = lambda: fresh_model(cfg, device)
    log("checkpoints hold the "
        f"{'seed ledger (no weights)' if module.checkpoint_kind == 'ledger' else 'trainable weights'}"
        f"; the ledger is flushed to {module.ledger_path}")


def make_trainer(cfg: FineTuneConfig, out: Path, device: str, extra_callbacks=()):
    """The Lightning Trainer every fine-tuning run uses: TensorBoard in <out>/tb, `last.ckpt` every
    `cfg.checkpoint_every()` steps, validation every `--eval-every` steps (none when 0), `max_steps`."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from l2o.integrations.lightning.checkpoints import AtomicCheckpointIO, LastCheckpoint
    from l2o.integrations.lightning.progress import ProgressLines, show_progress_bar
    from l2o.integrations.lightning.validation import owed_validation

    tb = TensorBoardLogger(str(out), name="tb", version="", default_hp_metric=False)
    last_cb = LastCheckpoint(out / "checkpoints", cfg.checkpoint_every())
    bar = show_progress_bar()
    owed = [owed_validation(cfg.eval_every, out / "checkpoints")] if cfg.eval_every else []
    callbacks = [last_cb, *([] if bar else [ProgressLines()]), *owed, *extra_callbacks]
    from fine_tune.distributed import strategy_for

    accelerator = cfg.accelerator_name() if cfg.world_size() > 1 else "gpu" if device.startswith("cuda") else "cpu"
    trainer = L.Trainer(accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                        strategy=strategy_for(cfg), use_distributed_sampler=False, max_steps=cfg.steps,
                        logger=tb, callbacks=callbacks, val_check_interval=cfg.eval_every or None,
                        check_val_every_n_epoch=None if cfg.eval_every else 1, num_sanity_val_steps=0,
                        log_every_n_steps=1, enable_model_summary=False, limit_val_batches=1.0 if cfg.eval_every else 0,
                        enable_progress_bar=bar, plugins=[AtomicCheckpointIO()])
    return trainer, tb


def resolve_device(cfg: FineTuneConfig) -> str:
    """--device, with "auto" -> cpu under --accelerator cpu, else cuda when available, else cpu (one process; ranks
    use their own device)."""
    import torch

    if cfg.device != "auto":
        return cfg.device
    return "cuda" if cfg.accelerator != "cpu" and torch.cuda.is_available() else "cpu"


def run_dtype(cfg: FineTuneConfig, device: str) -> str:
    """--dtype, with "auto" resolved for this device and base (fp32 on the CPU; the checkpoint's dtype on an
    accelerator, bf16 for an fp16 checkpoint where the run backpropagates: the first-order baselines and
    Bilevel-ZOFO's inner steps, the methods that need an adapter)."""
    from l2o.models import resolve_dtype

    backprop = cfg.is_first_order() or cfg.capability("needs_adapter", False)
    return resolve_dtype(cfg.dtype, cfg.base, device, first_order=backprop)


def prepare(cfg: FineTuneConfig, task, out: Path, log, device: str | None = None, rank: int = 0):
    """What every fine-tuning run does before training: the data sample and objective, the base (with an
    optional zoo meta-initialisation), its zero-shot metrics (before any PEFT module: a fresh prefix or
    prompt already changes the outputs; read back on --resume; rank 0 only), then the PEFT mode.
    Returns (device, objective, splits, model, tokenizer, base info, zero-shot metrics)."""
    from l2o.models import load_base
    from l2o.peft_modes import apply_peft
    from l2o.tasks.objectives import objective_for

    device = device or resolve_device(cfg)
    objective = objective_for(task, cfg.objective, max_length=cfg.max_length)
    splits = cfg.sample(task)
    log(f"task {task.name}: {len(splits.train)} train / {len(splits.dev)} dev / {len(splits.eval)} eval examples "
        f"(data seed {cfg.data_seed}); objective {objective.name}")
    model, tokenizer, info = load_base(cfg.base, dtype=run_dtype(cfg, device),
                                       device="cpu" if cfg.placed() else device)
    cap_max_length(objective, model, cfg.peft, log)
    apply_init(model, cfg, info, log)
    if cfg.placed():  # the adapter first, where the base's weights are; zero-shot looks through it
        model = place_model(cfg, apply_peft(model, cfg.peft, seed=cfg.seed), device, log)
    zero_path = out / "zero_shot.json"
    if cfg.resume and zero_path.exists():
        zero_shot = json.loads(zero_path.read_text())
    elif not cfg.zero_shot or rank:
        zero_shot = {}
    else:
        log("zero-shot evaluation of the base model ...")
        examples: dict = {}
        with base_only(model):
            zero_shot = evaluate_model(objective, model, tokenizer, splits, cfg.eval_batch_size, examples)
        (out / ZERO_SHOT_EXAMPLES).write_text(json.dumps(examples))
        zero_path.write_text(json.dumps(zero_shot))
    if not cfg.placed():
        model = apply_peft(model, cfg.peft, seed=cfg.seed)
    return device, objective, splits, model, tokenizer, info, zero_shot


ZERO_SHOT_EXAMPLES = "zero_shot_examples.json"  # per-example zero-shot scores, beside zero_shot.json


def _zero_shot_examples(out: Path) -> dict:
    """The per-example zero-shot scores `prepare` wrote ({} when the run skipped zero-shot)."""
    path = out / ZERO_SHOT_EXAMPLES
    return json.loads(path.read_text()) if path.exists() else {}


def cap_max_length(objective, model, peft: str, log) -> None:
    """--max-length (MeZO's 2048 by default) beyond the base's positions, less the virtual tokens of prefix or
    prompt tuning, would index past its position table: cut it there and say so."""
    from l2o.models import position_limit
    from l2o.peft_modes import PREFIX_TOKENS, PROMPT_TOKENS

    limit = position_limit(model)
    if limit is None:
        return
    limit -= {"prefix": PREFIX_TOKENS, "prompt": PROMPT_TOKENS}.get(peft, 0)
    if objective.max_length > limit:
        log(f"max length {objective.max_length} is beyond what the base attends over; using {limit} tokens")
        objective.max_length = limit


def apply_init(model, cfg: FineTuneConfig, info, log) -> None:
    """--init: a zoo ledger (a published full-parameter fine-tune, replayed onto the base) or a Bilevel-ZOFO
    meta-initialisation, both checked against the loaded base (and the ledger against --dtype)."""
    if not cfg.init:
        return
    from zoo.artefact import read_config
    from zoo.manifest import LEDGER_KIND
    from zoo.resolve import resolve

    spec = cfg.init[4:] if cfg.init.startswith("zoo:") else cfg.init
    if read_config(resolve(spec).path)["kind"] == LEDGER_KIND:
        from l2o.ledger import replay
        from zoo import load_ledger

        ledger, config = load_ledger(spec, info.fingerprint, info.dtype, model_name=cfg.base)
        if config["arch"]["peft"] != "full":
            raise ConfigError(f"--init {cfg.init} is a ledger of a {config['arch']['peft']} run; --init takes "
                              "full-parameter ledgers")
        replay(model, ledger)
        log(f"initialised from ledger {cfg.init}: {ledger.num_updates} updates replayed onto the base")
        return
    from l2o.meta_init import apply_meta_init
    from zoo.learned import load_meta_init

    changed = apply_meta_init(model, load_meta_init(cfg.init, model, model_name=cfg.base))
    log(f"meta-initialisation {cfg.init}: {len(changed)} backbone tensors changed")


def fresh_model(cfg: FineTuneConfig, device: str):
    """The model as training started from it (base, --init, PEFT mode): what a ledger checkpoint replays onto."""
    from l2o.models import load_base
    from l2o.peft_modes import apply_peft

    model, _, info = load_base(cfg.base, dtype=run_dtype(cfg, device), device="cpu" if cfg.placed() else device)
    apply_init(model, cfg, info, lambda msg: None)
    model = apply_peft(model, cfg.peft, seed=cfg.seed)
    return place_model(cfg, model, device, lambda msg: None) if cfg.placed() else model


def load_policy(cfg: FineTuneConfig, model, info):
    """The learned policy named by --policy, checked against the loaded base (fingerprint) and its blocks."""
    from l2o.blocks import as_blocks
    from l2o.policy import PolicyScales
    from zoo.learned import load_policy

    policy = load_policy(cfg.policy, expected_fingerprint=info.fingerprint, model_name=cfg.base)
    try:
        PolicyScales(policy, batch_size=cfg.batch_size, size_rule=cfg.policy_size_rule).bind(model, as_blocks(model))
    except ValueError as err:
        raise ConfigError(f"policy {cfg.policy}: {err}") from None
    return policy


def evaluate_splits(module, splits, per_example: dict | None = None) -> dict:
    """`evaluate_model` for a fine-tuning LightningModule's model, objective and batch size."""
    return evaluate_model(module.objective, module.model, module.tokenizer, splits, module.eval_batch_size,
                          per_example)


def evaluate_model(objective, model, tokenizer, splits, batch_size: int, per_example: dict | None = None) -> dict:
    """{"dev": metric, "eval": metric} (accuracy or F1) for the splits that have examples; `per_example`, when
    given, receives each split's per-example scores (1/0 or F1, in the split's order) for paired comparisons."""
    res = {}
    for split in ("dev", "eval"):
        examples = getattr(splits, split)
        if examples:
            scores = objective.example_scores(model, tokenizer, examples, batch_size=batch_size)
            res[split] = sum(scores) / len(scores)
            if per_example is not None:
                per_example[split] = scores
    return res
