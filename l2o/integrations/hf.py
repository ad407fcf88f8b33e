"""A drop-in for Hugging Face `transformers.Trainer`: train with our zeroth-order optimizers, forwards only.

    from l2o.integrations.hf import ZOTrainer
    args = TrainingArguments("out", learning_rate=1e-6, max_grad_norm=0, max_steps=100)
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, optimizer="mezo", optimizer_kwargs={"eps": 1e-3})
    trainer.train()                                         # then evaluate(), save_model(), train(resume_...)

This module is the only place that imports `transformers.Trainer`. How one Trainer update step maps to ZO:

    training_step(micro-batch 1..k-1)  collects the micro-batch (no forward, returns 0 to the loss log)
    training_step(micro-batch k)       opt.step(closure), closure() = loss over all k micro-batches,
                                       weighted exactly as Trainer weights them for a backward pass
    optimizer.step()  (Trainer's call)  nothing left to do: the ZO step already ran (`TrainerOptimizer`)

So `gradient_accumulation_steps` k means "more examples per step": each of the step's forward passes sees
all k micro-batches (one forward pass as counted by `opt.forward_passes` is one loss over the step's examples).
The forwards run in eval mode (dropout off, as MeZO's code does): the two points of a difference must see
the same function. No backward pass runs, so `p.grad` stays None and no optimizer state exists besides the
seeds and step counters in the optimizer's `state_dict()`.

What still works, unchanged: LR schedulers (`lr_scheduler_type`, warm-up; they set our `lr`), evaluation,
checkpoints (`optimizer.pt` is our optimizer's `state_dict()`, so `train(resume_from_checkpoint=...)`
continues bit-identically), `save_model`, logging (TensorBoard with `report_to="tensorboard"`): every
training log adds `zo_forward_passes` (cumulative), `zo_projected_grad` (the last step's projected
gradient, the mean over its directions) and `zo_skipped_steps`, and drops `grad_norm` (no gradient exists).
Ctrl-C or SIGTERM during `train()` finishes the step, saves it as a checkpoint and raises KeyboardInterrupt
(`StopOnSignal`), so a preempted job resumes from the step it was in, not from its last periodic checkpoint.
A resume skips (or, named, refuses) a checkpoint whose save was cut short (`resume_point`).

Where the hyperparameters come from: `learning_rate`, `weight_decay` and `seed` of `TrainingArguments`
(one source of truth, as for any Trainer optimizer); the method's own ones (`eps`, `pool_size`, `k`, ...)
from `optimizer_kwargs`, over the paper defaults of `l2o.optim.REGISTRY`. `args.optim` and the Adam
settings are not used: `optimizer=` names the optimizer. A ready optimizer passed the Trainer way,
`optimizers=(build_optimizer(...), None)`, keeps its own hyperparameters.

What does not apply to ZO is refused with one `TrainerConfigError` line, never silently ignored:
gradient clipping (`max_grad_norm` > 0; Trainer's default is 1.0, so set `max_grad_norm=0`), fp16/bf16
mixed precision (autocast and its gradient scaler; load the model in bf16/fp16 instead, our engine updates
low-precision weights exactly), DeepSpeed, FSDP, several devices, and NEFTune's training-mode noise.

A model larger than one device: `device_map="auto"|"balanced"|"sequential"` (layers across the visible GPUs)
or `offload="cpu"` (weights in CPU memory, each transformer block streamed to `args.device` for its forward)
places the model with `l2o.placement.place` before Trainer sees it; Trainer and accelerate then leave its
devices alone (it carries an `hf_device_map`), and the steps are bit-identical to the model held normally.
A model already dispatched by `from_pretrained(device_map=...)` also works as it is.

Learned policies (`optimizer="zoo:<id>"`, the ZO Fine-tuner). `l2o` never imports the `zoo` package
(imports run apps -> zoo -> l2o), so a `zoo:` name is resolved by a callable the caller passes,
`policy_resolver(spec, model) -> ZOPolicy`; `fine_tune.hf.zoo_policy` is the ready one (it loads the
policy from the zoo and checks it was made for this base). An already-loaded policy also works:
`optimizer="zo-finetuner", optimizer_kwargs={"policy": policy}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Callable

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from l2o.errors import UserError
from l2o.optim import REGISTRY, ZOOptimizer, build_optimizer, optimizer_names
from l2o.stop import StopRequest, interrupt, stopped

log = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
FROM_TRAINING_ARGS = {"lr": "learning_rate", "weight_decay": "weight_decay"}


class TrainerConfigError(UserError):
    """A Trainer setting that does not apply to zeroth-order training, or a bad optimizer choice (one sentence)."""


def check_training_args(args) -> None:
    """Refuse, in one sentence, the Trainer features that need gradients or a backward pass."""
    if args.max_grad_norm is not None and args.max_grad_norm > 0:
        raise TrainerConfigError(
            f"max_grad_norm={args.max_grad_norm}: gradient clipping does not apply to zeroth-order steps (there is "
            "no gradient to clip); set max_grad_norm=0 in TrainingArguments (its default is 1.0)")
    if args.fp16 or args.bf16:
        raise TrainerConfigError(
            "fp16/bf16 mixed precision (autocast with a gradient scaler) does not apply to zeroth-order steps; "
            "drop fp16/bf16 from TrainingArguments and load the model in that dtype instead (dtype=torch.bfloat16)")
    if args.deepspeed:
        raise TrainerConfigError("DeepSpeed shards optimizer state and gradients, which zeroth-order steps do not "
                                 "have; drop deepspeed from TrainingArguments")
    if args.fsdp:
        raise TrainerConfigError("FSDP is not supported by the zeroth-order Trainer; drop fsdp from TrainingArguments")
    if args.world_size > 1 or args.n_gpu > 1:
        raise TrainerConfigError("the zeroth-order Trainer runs on one device; for several use fine_tune "
                                 "(Lightning strategies)")
    if args.neftune_noise_alpha:
        raise TrainerConfigError("NEFTune adds training-mode noise that would differ between the forwards of one "
                                 "zeroth-order step; drop neftune_noise_alpha from TrainingArguments")


class TrainerOptimizer(torch.optim.Optimizer):
    """What Trainer holds as `self.optimizer`: our ZO optimizer, whose step already ran in `training_step`.

    Trainer calls `optimizer.step()` without a closure after the last micro-batch; a ZO step needs the batch
    as a closure, so `ZOTrainer.training_step` takes it and this `step()` only checks that it did. Everything
    else (param groups for the LR scheduler, `state_dict` for checkpoints) is the ZO optimizer's own, delegated
    as accelerate's `AcceleratedOptimizer` delegates (so no `Optimizer.__init__`: no state of its own).
    """

    def __init__(self, zo: ZOOptimizer):
        self.zo = zo
        self.pending = False     # a ZO step ran since Trainer's last optimizer.step()

    param_groups = property(lambda self: self.zo.param_groups,
                            lambda self, groups: setattr(self.zo, "param_groups", groups))
    state = property(lambda self: self.zo.state, lambda self, state: setattr(self.zo, "state", state))
    defaults = property(lambda self: self.zo.defaults, lambda self, d: setattr(self.zo, "defaults", d))

    def step(self, closure=None):
        if closure is not None:
            return self.zo.step(closure)
        if not self.pending:
            raise RuntimeError("optimizer.step() without a closure: the ZO step runs in ZOTrainer.training_step")
        self.pending = False
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:  # no gradients exist
        return None

    def state_dict(self):
        return self.zo.state_dict()

    def load_state_dict(self, state_dict):
        self.zo.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        raise TrainerConfigError("a zeroth-order optimizer takes the model's trainable parameters as one group")

    def __repr__(self):
        return f"TrainerOptimizer({self.zo.method})"


def resolve_optimizer_name(name: str, kwargs: dict, model, policy_resolver: Callable | None):
    """`zoo:<id>` -> ("zo-finetuner", kwargs + the resolved policy); any registry name as it is."""
    if not isinstance(name, str) or not name.startswith(ZOO_PREFIX):
        return name, kwargs
    spec = name[len(ZOO_PREFIX):]
    if not spec:
        raise TrainerConfigError("optimizer 'zoo:<id>' needs a zoo id or artefact folder after 'zoo:'")
    if policy_resolver is None:
        raise TrainerConfigError(f"optimizer {name!r} needs policy_resolver= (l2o does not import the zoo); pass "
                                 "fine_tune.hf.zoo_policy, or pass a loaded policy as optimizer_kwargs={'policy': ...}")
    return "zo-finetuner", {**kwargs, "policy": policy_resolver(spec, model)}


class StopOnSignal(TrainerCallback):
    """Ctrl-C or SIGTERM (a scheduler's preemption) during `train()`: the step under way (or the evaluation after it)
    finishes, a checkpoint of that step is saved (Trainer's own: `optimizer.pt` is our `state_dict()`, so it resumes
    bit-identically), and `train()` raises the KeyboardInterrupt the signal means (`.signum`, l2o/stop.py). A second
    signal stops at once. Plain Trainer loses the steps since its last periodic checkpoint to either signal."""

    def __init__(self):
        self.note = StopRequest()  # the first signal noted, a second raising at once (l2o/stop.py)
        self.saved_step: int | None = None

    signum = property(lambda self: self.note.signum)

    def on_step_end(self, args, state, control, **kwargs):
        if self.note.requested:
            control.should_save = control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        """A signal during the evaluation after step N: stop after it (its metrics go into checkpoint N), not after
        step N+1. An evaluation is not abandoned half-way: the resumed run starts at step N+1 and would lose it."""
        return self.on_step_end(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        """A stop inside an epoch breaks Trainer's loop into its epoch-end hooks: no epoch-end evaluation or save
        there (the epoch has not ended; the resumed run does both when it does)."""
        inside = state.epoch is not None and state.epoch != int(state.epoch) and state.global_step < state.max_steps
        if self.note.requested and inside:
            control.should_evaluate = control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step
        return control

    @contextlib.contextmanager
    def installed(self, trainer):
        """Takes the stop signals for the length of a `train()` (only the main thread can take a signal)."""
        if not self.note.install():
            yield
            return
        trainer.add_callback(self)
        try:
            yield
        finally:
            trainer.remove_callback(self)
            self.note.restore()

    def stop(self, trainer) -> KeyboardInterrupt:
        """After a signal: the checkpoint of the last step taken (saved here when Trainer did not save one after
        the signal: it came after the last step, or `save_strategy="best"` declined), and the interrupt to raise."""
        step = trainer.state.global_step
        if self.saved_step != step:
            trainer._save_checkpoint(trainer.model, trial=None)
        err = interrupt(self.signum)
        folder = os.path.join(trainer.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")  # as Trainer names it
        log.warning(f"{stopped(err)} after step {step}: checkpoint {folder}; continue with "
                    "trainer.train(resume_from_checkpoint=True)")
        return err


def checkpoint_complete(folder: str) -> bool:
    """Trainer writes a checkpoint's `trainer_state.json` last, after the weights, optimizer and RNG state: a folder
    without a readable one was cut short (the process killed, or the disk full, during the save)."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders Trainer saved in `output_dir`, newest (largest N) first."""
    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [folder for _, folder in sorted(found, reverse=True)]


def resume_point(output_dir: str, resume: str | bool | None) -> str | bool | None:
    """`train(resume_from_checkpoint=...)` made safe against a save that was cut short. True: the newest complete
    `checkpoint-N` (an incomplete newer one is skipped with one line; Trainer would take it and fail, or load
    half-written weights). A folder: refused in one line when incomplete, naming the newest complete one."""
    if not resume:
        return resume
    cut_short = f"no readable {TRAINER_STATE_NAME}: its save was cut short"
    if isinstance(resume, str):
        if os.path.isdir(resume) and not checkpoint_complete(resume):
            good = next(filter(checkpoint_complete, checkpoints(os.path.dirname(os.path.abspath(resume)))), None)
            raise TrainerConfigError(f"checkpoint {resume} is incomplete ({cut_short}); " + (
                f"resume from {good}, the newest complete one" if good else
                "no complete checkpoint is beside it, so start afresh"))
        return resume
    found = checkpoints(output_dir)
    good = next(filter(checkpoint_complete, found), None)
    if found and good is None:
        names = ", ".join(map(os.path.basename, found))
        raise TrainerConfigError(f"no complete checkpoint in {output_dir}: none of {names} has a readable "
                                 f"{TRAINER_STATE_NAME} (their saves were cut short); start afresh without "
                                 "resume_from_checkpoint")
    for cut in found[:found.index(good)] if good else []:
        log.warning(f"skipping {cut}: incomplete ({cut_short}); resuming from {good}")
    return good or resume  # none at all: Trainer says so


class ZOTrainerMixin:
    """The zeroth-order training step for `transformers.Trainer` and its subclasses (e.g. TRL's `SFTTrainer`).

    Extra keyword arguments: `optimizer` (a name of `l2o.optim.REGISTRY` or `zoo:<id>`; default "mezo"),
    `optimizer_kwargs` (the method's hyperparameters), `policy_resolver` (for `zoo:` names). A ready
    `ZOOptimizer` can instead be passed the Trainer way, as `optimizers=(zo_optimizer, None)`.
    """

    def __init__(self, *args, optimizer: str = "mezo", optimizer_kwargs: dict | None = None,
                 policy_resolver: Callable | None = None, device_map: str | None = None, offload: str | None = None,
                 **kwargs):
        if device_map is not None or offload is not None:
            _place_for_trainer(args, kwargs, device_map, offload)
        given = kwargs.get("optimizers", (None, None))[0]
        if given is not None and not isinstance(given, ZOOptimizer):
            raise TrainerConfigError(f"optimizers=({type(given).__name__}, ...) is not a zeroth-order optimizer; "
                                     "pass a name as optimizer= or an l2o.optim optimizer")
        super().__init__(*args, **kwargs)
        check_training_args(self.args)
        _tensorboard_in_output_dir(self)
        self.zo_name, self.zo_kwargs = optimizer, dict(optimizer_kwargs or {})
        self.policy_resolver = policy_resolver
        self._zo_batches: list = []
        self.zo_optimizer: ZOOptimizer | None = given
        if given is None:   # fail now, not after the dataloader is built, on a bad name or hyperparameter
            self.zo_optimizer = self._build_zo_optimizer()

    # ------------------------------------------------------------------ the optimizer
    def _build_zo_optimizer(self) -> ZOOptimizer:
        for ours, theirs in FROM_TRAINING_ARGS.items():
            if ours in self.zo_kwargs:
                raise TrainerConfigError(f"set {theirs} in TrainingArguments, not {ours!r} in optimizer_kwargs")
        name, kwargs = resolve_optimizer_name(self.zo_name, self.zo_kwargs, self.model, self.policy_resolver)
        if name not in REGISTRY:
            raise TrainerConfigError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}, "
                                     "or zoo:<policy id>")
        if name.startswith("zo-finetuner"):   # the policy's embedding-size rule counts the step's examples
            kwargs.setdefault("policy_batch_size", self.args.per_device_train_batch_size
                              * self.args.gradient_accumulation_steps)
        kwargs.setdefault("seed", self.args.seed)
        try:
            return build_optimizer(name, self.model, lr=self.args.learning_rate,
                                   weight_decay=self.args.weight_decay, **kwargs)
        except (ValueError, TypeError) as err:
            raise TrainerConfigError(f"optimizer {self.zo_name!r}: {err}") from None

    def create_optimizer(self, model=None):
        """Trainer's hook: hand Trainer our optimizer (wrapped so its closure-less step() is a no-op)."""
        self._zo_batches = []   # a new train() starts a new step
        if getattr(self, "_trainer_optimizer", None) is None:
            self._trainer_optimizer = TrainerOptimizer(self.zo_optimizer)
        self.optimizer = self._trainer_optimizer   # accelerate then wraps it
        return self.optimizer

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Trainer's `train()`; Ctrl-C or SIGTERM finishes the step, saves it and raises KeyboardInterrupt
        (`StopOnSignal`); a resume skips or refuses a checkpoint whose save was cut short (`resume_point`)."""
        resume_from_checkpoint = resume_point(self.args.output_dir, resume_from_checkpoint)
        stop = StopOnSignal()
        with stop.installed(self):
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        if stop.note.requested:
            raise stop.stop(self)
        return output

    # ------------------------------------------------------------------ the step
    def _zo_closure(self, model, batches: list, num_items_in_batch) -> Callable[[], torch.Tensor]:
        """closure() = the loss over all micro-batches of the step, weighted as Trainer.training_step weighs them."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                or self.compute_loss_func is not None

        def closure():
            total = 0.0
            for inputs in batches:
                with self.compute_loss_context_manager():   # compute_loss may pop labels: give it a copy
                    loss = self.compute_loss(model, dict(inputs), num_items_in_batch=num_items_in_batch)
                total = total + (loss if scaled else loss / len(batches))
            return total

        return closure

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Collect the micro-batch; after the step's last one, take the ZO step (see the module docstring)."""
        self._zo_batches.append(self._prepare_inputs(inputs))
        if len(self._zo_batches) < self.current_gradient_accumulation_steps:
            return torch.zeros((), device=self.args.device)
        batches, self._zo_batches = self._zo_batches, []
        model.eval()   # dropout off: both points of a two-point difference must see the same function
        self.zo_optimizer.step(self._zo_closure(model, batches, num_items_in_batch))
        model.train()  # the mode Trainer's own training_step leaves (callbacks and loggers read it)
        self._trainer_optimizer.pending = True
        return torch.tensor(self.zo_optimizer.last.loss, device=self.args.device)

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer logs a gradient norm after each step; no gradient exists, so none is logged."""
        return None

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Training logs also get the optimizer's forward-pass count and projected gradient."""
        last = self.zo_optimizer.last if self.zo_optimizer is not None else None
        if "loss" in logs and last is not None:
            logs["zo_forward_passes"] = self.zo_optimizer.forward_passes
            grads = last.projected_grads
            logs["zo_projected_grad"] = sum(grads) / len(grads) if grads else float("nan")
            logs["zo_skipped_steps"] = self.zo_optimizer.skipped_steps
        super().log(logs, start_time)


def _place_for_trainer(args: tuple, kwargs: dict, device_map, offload) -> None:
    """Place the Trainer's model (its first positional or `model=` argument) on `args.device`'s side."""
    from l2o.placement import place

    model = kwargs.get("model", args[0] if args else None)
    training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
    if model is None or training_args is None:
        raise TrainerConfigError("device_map= and offload= need model= and args= (TrainingArguments)")
    place(model, device_map=device_map, offload=offload, execution_device=training_args.device)


def _tensorboard_in_output_dir(trainer) -> None:
    """Trainer's TensorBoard callback names its folder (`<output_dir>/runs/<date>_<host>`) when `train()` starts. An
    `evaluate()` before that (the usual zero-shot score) opened a writer with no folder, in `./runs` of the working
    directory, and every later log of the run went there too (transformers 5.23). The folder is named here instead,
    as `train()` would name it ($TENSORBOARD_LOGGING_DIR, where set, still wins)."""
    from transformers.integrations.integration_utils import TensorBoardCallback, default_logdir

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None and cb.tb_writer is None:
            cb.logging_dir = os.path.join(trainer.args.output_dir, default_logdir())


class ZOTrainer(ZOTrainerMixin, Trainer):
    """`transformers.Trainer` with a zeroth-order optimizer of ours (see the module docstring)."""


__all__ = ["StopOnSignal", "TrainerConfigError", "TrainerOptimizer", "ZOTrainer", "ZOTrainerMixin",
           "check_training_args", "resolve_optimizer_name"]
