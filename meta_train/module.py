"""The ZO Fine-tuner meta-training LightningModule (arXiv 2510.00419, `trainer_l2l*.py`): the outer loop.

One training step (manual optimization; the policy's Adam is stepped through Lightning's wrapper so
`global_step`, `max_steps` and checkpoints work):

1. the meta-gradient of the policy from its estimator (`l2o.estimators`, `--estimator`):
   - `lookahead` (the paper's): sigma with autograd, L+/L- by the Engine, theta' = theta - eta_meta c nf sigma z,
     meta-loss L(theta') through the LLM; the LLM then moves one first-order SGD-momentum step (lr linearly
     decayed within each restart period) and every `reset_every` steps is reset to the pretrained weights;
   - `es`: antithetic ES over K-step unrolls of the deployed optimizer (`--model.inner_method`) from
     the current point of a ZO trajectory, meta-loss on held-out batches; forward passes only;
   - `pes`: Persistent ES over whole inner runs truncated into K-step unrolls (unbiased over the horizon);
2. Adam step on the policy;
3. every `val_every` steps (and at the end): meta-validation on held-out tasks, i.e. short ZO
   fine-tunings from the pretrained weights with the deployed inner method (`--model.inner_method`, its
   `--model.inner_hparams`) with the current policy vs the same method without it (zo-finetuner: MeZO;
   zo-finetuner+gv: MeZO-GV) at equal forward passes, run on the LLM itself while the trajectory's weights
   are parked on disk.

Checkpoints hold the policy, its optimizer state and the estimator's state (the look-ahead: the LLM's
weights and momentum; ES and PES: the ledger records of their ZO runs, kilobytes), so a resumed run
continues bit-identically. Ctrl-C stops after the current step (no meta-validation after it), or during a
meta-validation before its next ZO step (the resumed run does it).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from typing import Optional, Union

import lightning as L
import torch

from l2o.engine import Engine
from l2o.errors import ConfigError, UserError
from l2o.estimators import ESTIMATORS, META_LOSSES, PARAMETRISATIONS
from l2o.integrations.lightning.interrupt import interrupt_requested, stop_if_interrupted
from l2o.integrations.lightning.placed import KeepsPlacement
from l2o.policy import ZOPolicy
from l2o.weights import PretrainedFiles, model_folder, park, unpark
from meta_train.plan import check_placement

DEFAULT_UNROLL = {"lookahead": 1, "es": 4, "pes": 4}
DIVERGED, DIVERGED_GAP = 5.0, 2.0  # a meta-loss above both 5x and 2 nats over its task's first one: diverged


def _check_inner_method(method: str) -> None:
    """--model.inner_method: a policy composition ES/PES can unroll (l2o.estimators.INNER_METHODS, derived from
    the registry); any other registered method is refused with the reason."""
    from l2o.estimators.unroll import inner_method_problem

    problem = inner_method_problem(method)
    if problem:
        raise ConfigError(f"--model.inner_method {problem}")


def _check_scratch_dir(scratch_dir: Optional[str]) -> None:
    """--model.scratch_dir must be a folder this process can write to, found before the run: a mistyped one was a
    FileNotFoundError traceback as ES/PES set up, or under the look-ahead at the first meta-validation, after the
    steps before it had run."""
    if scratch_dir is None:
        return
    try:
        tempfile.TemporaryFile(dir=scratch_dir).close()
    except OSError as err:
        raise ConfigError(f"--model.scratch_dir {scratch_dir}: cannot write the parked weights there "
                          f"({err.strerror or err})") from None


def _check_inner_hparams(method: str, hparams: dict) -> None:
    """--model.inner_hparams.*: hyperparameters `method` declares, each within its declaration (the optimizer's
    own check, on a two-weight probe: before the base is loaded). Under every estimator: meta-validation runs the
    inner method with them (the look-ahead deploys nothing else)."""
    if not hparams:
        return
    from l2o import catalog
    from l2o.optim import probe

    own = {"lr": "--model.inner_lr", "eps": "--model.eps"}
    declared = [n for n in catalog.entry(method)["hyperparameters"] if n not in own]
    for name in sorted(hparams):
        if name in own:
            raise ConfigError(f"--model.inner_hparams.{name}: set it with {own[name]}")
        if name not in declared:
            raise ConfigError(f"--model.inner_hparams.{name}: {method} does not declare {name}; it declares "
                              f"{', '.join(declared)}")

    try:
        probe(method, **hparams)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--model.inner_hparams: {err}") from None


class ZOFineTunerMeta(KeepsPlacement, L.LightningModule):
    """Meta-trains a ZO Fine-tuner policy for one base model.

    Args:
        base: base model (alias such as smollm2-135m, hub id, or local folder).
        estimator: the meta-gradient: lookahead (the paper's, first-order memory), es or pes (forward only).
        lr_policy: Adam learning rate of the policy MLPs.
        lr_llm: look-ahead: first-order SGD learning rate of the LLM trajectory (linearly decayed in each
            restart period).
        momentum: look-ahead: SGD momentum of the LLM trajectory.
        eta_meta: look-ahead: step size of the look-ahead ZO step theta' = theta - eta_meta c nf sigma z.
        eps: ZO perturbation scale (the look-ahead's, the inner runs' and meta-validation's).
        unroll: look-ahead length T (default 1, the paper's greedy estimator), or ES/PES's unroll K (default 4).
        reset_every: meta-steps between resets of the LLM to its pretrained weights (0: never); for ES and PES
            the episode length in unrolls: an inner fine-tuning run of reset_every x unroll steps.
        pairs: ES/PES: antithetic pairs per meta-step (PES: particles).
        es_std: ES/PES: standard deviation of the perturbations of the policy's coordinates.
        es_params: ES/PES: the coordinates perturbed: all (every policy parameter), head (output layer), bias
            (the output bias: one per block, sigma's level) or type (the output bias tied within each kind of
            block, e.g. every layer's q_proj: 11 coordinates for SmolLM2).
        meta_loss: ES/PES: final (held-out loss after the unroll) or mean (over the unroll's steps).
        meta_batches: ES/PES: held-out batches per meta-loss evaluation.
        inner_method: the deployed optimizer the policy drives: zo-finetuner (MeZO) or any registered
            composition zo-finetuner+<method> (+gv, +greedy, +bszo, +zo-sgd-sign, +zo-sgd-cons, +zo-sgd-mmt, +hizoo,
            +lozo, +lozo-m, +sparse-mezo: l2o.estimators.INNER_METHODS). ES/PES unroll it; meta-validation (under
            every estimator, the look-ahead too, where it is all this option changes) compares it with and
            without the policy.
        inner_lr: ES/PES: the inner runs' learning rate (what the policy is meta-trained for).
        inner_hparams: the inner method's other declared hyperparameters (`fine_tune --list-optimizers`),
            one by one as `--model.inner_hparams.pool_size 8` (zo-finetuner+gv's M; its default 4); unset ones take
            the method's defaults; for the ES/PES inner runs and meta-validation (under the look-ahead: only
            meta-validation). Its lr and eps are inner_lr (val_lr in meta-validation) and eps.
        scratch_dir: folder for the parked weights: ES/PES's, and the trajectory's during meta-validation
            (default: the system's temporary folder).
        device_map: ES/PES: auto, balanced or sequential: the LLM's layers spread over this process's GPUs
            (l2o.placement, accelerate's dispatch; `meta_train --device-map`).
        offload: ES/PES: cpu: the LLM's weights in CPU memory, each transformer block streamed to the device
            for its forward (`meta_train --offload cpu`).
        seed: seed of directions and policy initialisation.
        dtype: auto, fp32 or bf16 (bf16 halves the LLM's memory; the policy stays fp32). auto: fp32 on the CPU;
            on an accelerator the checkpoint's dtype, with fp16 (OPT) trained in bf16 (l2o.models.resolve_dtype).
        gradient_checkpointing: look-ahead: recompute activations in the backward passes (less memory).
        attn_implementation: eager or sdpa (default: the model's); unroll > 1 (second-order) needs eager,
            the lean one-step path does not.
        detach_nf: look-ahead: treat the normaliser nf as a constant in the meta-gradient (the authors' code).
        size_rule: block sizes n_b in nf: "numel" (true sizes: E||d||^2/D = 1, MeZO's step size) or "authors"
            (embedding = hidden x 15 x batch, a bigger step than MeZO's).
        fixed_step: look-ahead: hold the effective step E||d||^2/D at 1 in the meta-gradient too: true sizes in
            nf and nf differentiated (overrides detach_nf), so sigma -> c sigma has zero meta-gradient and only
            the allocation across blocks is learned.
        init_policy: start from this policy (zoo id or artefact folder) instead of a fresh one.
        val_every: steps between meta-validations (0: only at the end).
        val_steps: ZO steps of each meta-validation fine-tuning.
        val_lr: learning rate of the meta-validation fine-tunings (with and without the policy alike).
        val_tasks: at most this many held-out tasks are meta-validated.
        log_every: steps between sigma histograms / images in TensorBoard.
    """

    artefact_dir = "policy"  # the folder under --out that meta_train publishes

    def __init__(self, base: str = "smollm2-135m", estimator: str = "lookahead", lr_policy: float = 0.1,
                 lr_llm: float = 0.01, momentum: float = 0.8, eta_meta: float = 1e-6, eps: float = 1e-3,
                 unroll: Optional[int] = None, reset_every: int = 100, pairs: int = 4, es_std: float = 0.05,
                 es_params: str = "bias", meta_loss: str = "final", meta_batches: int = 1,
                 inner_method: str = "zo-finetuner", inner_lr: float = 1e-5,
                 inner_hparams: Optional[dict[str, Union[bool, int, float, str]]] = None,
                 scratch_dir: Optional[str] = None, device_map: Optional[str] = None, offload: Optional[str] = None,
                 seed: int = 0, dtype: str = "auto", gradient_checkpointing: bool = False,
                 attn_implementation: Optional[str] = None, detach_nf: bool = True, size_rule: str = "numel",
                 fixed_step: bool = False,
                 init_policy: Optional[str] = None, val_every: int = 0, val_steps: int = 20,
                 val_lr: float = 1e-5, val_tasks: int = 2, log_every: int = 10):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        for name, v in (("lr_policy", lr_policy), ("lr_llm", lr_llm), ("eta_meta", eta_meta), ("eps", eps),
                        ("es_std", es_std), ("inner_lr", inner_lr)):
            positive = name in ("eps", "es_std")
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) or (positive and v <= 0):
                raise ConfigError(f"--model.{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                                  f"got {v!r}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"--model.momentum must be in [0, 1), got {momentum!r}")
        unroll = DEFAULT_UNROLL[estimator] if unroll is None else unroll
        if unroll < 1 or reset_every < 0 or val_steps < 1 or pairs < 1 or meta_batches < 1:
            raise ConfigError("--model.unroll, pairs, meta_batches and val_steps must be >= 1 and reset_every >= 0")
        if estimator == "pes" and reset_every < 1:
            raise ConfigError("--estimator pes needs --model.reset_every >= 1 (unrolls per inner run)")
        for name, v, choices in (("es_params", es_params, PARAMETRISATIONS), ("meta_loss", meta_loss, META_LOSSES)):
            if v not in choices:
                raise ConfigError(f"--model.{name} must be one of {', '.join(choices)}, got {v!r}")
        _check_inner_method(inner_method)
        _check_inner_hparams(inner_method, inner_hparams or {})
        if size_rule not in ("numel", "authors") or (fixed_step and size_rule != "numel"):
            raise ConfigError(f"--model.size_rule must be numel or authors (numel with fixed_step), got {size_rule!r}")
        if dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--model.dtype must be auto, fp32 or bf16, got {dtype!r}")
        check_placement(estimator, device_map, offload)
        _check_scratch_dir(scratch_dir)
        self.save_hyperparameters()
        self.hparams.unroll = unroll
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the policy (and the estimator's own state)
        self.model = None
        self.policy: ZOPolicy | None = None
        self.estimator = None
        self.metaval_history: list[dict] = []
        self.meta_history: list[dict] = []
        self.meta_forwards = 0
        self._pending_state: dict | None = None
        self._resumed_step: int | None = None  # the step of the checkpoint a resumed run continues from

    # ------------------------------------------------------------------ setup
    @property
    def dm(self):
        return self.trainer.datamodule

    def setup(self, stage: Optional[str] = None) -> None:
        if self.model is not None:
            return
        from l2o.models import load_base

        hp = self.hparams
        from zoo.acquire import ensure_base

        ensure_base(hp.base)
        from l2o.models import resolve_dtype

        device = self._trainer.strategy.root_device if self._trainer is not None else self.device  # the run's
        dtype = resolve_dtype(hp.dtype, hp.base, device, first_order=True)
        model, tok, info = load_base(hp.base, dtype=dtype, attn_implementation=hp.attn_implementation)
        for p in model.parameters():
            p.requires_grad_(True)  # the engine's blocks; forward-only estimators never run a backward
        if hp.device_map or hp.offload:
            self._place(model, device, dtype)
        if hp.gradient_checkpointing and hp.estimator == "lookahead":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.model, self.tokenizer, self.info = model, tok, info
        if hp.init_policy:
            from zoo.learned import load_policy

            self.policy = load_policy(hp.init_policy, expected_fingerprint=info.fingerprint, model_name=hp.base)
        else:
            self.policy = ZOPolicy.for_model(model, base_model=hp.base, seed=hp.seed)
        self.policy.base_model = hp.base
        self.policy.base_fingerprint = info.fingerprint
        self.policy.size_rule = hp.size_rule  # recorded in the artefact: fine_tune deploys with it
        self.engine = Engine(model)
        self.files = PretrainedFiles(model_folder(info.path), self.engine)
        self.estimator = self._build_estimator()
        # DDP leaves the LLM alone (every rank moves its own); the policy's gradients are averaged per step
        self._ddp_params_and_buffers_to_ignore = [f"model.{n}" for n, _ in model.named_parameters()] + [
            f"model.{n}" for n, _ in model.named_buffers()]

    def _place(self, model, device, dtype: str) -> None:
        """--device-map / --offload (ES and PES): the LLM placed by l2o.placement, each of this process's GPUs
        given its memory less the step's other rows of the plan for weights, shared with the inner method's state
        (l2o.memory_plan.weight_budget, as --dry-run plans it)."""
        from l2o.placement import place

        device = torch.device(device)
        budgets = None
        if device.type == "cuda" and self.hparams.device_map:
            from l2o.memory_plan import weight_budget
            from meta_train.plan import BYTES, forward_only_overhead, inner_state_bytes

            hp, sizes = self.hparams, [b.param.numel() for b in Engine(model).blocks]
            rest = forward_only_overhead(model.config, sizes, dtype, self.dm.batch_size, self.dm.max_length)
            ratio = inner_state_bytes(hp.base, dtype, hp.estimator, hp.pairs, hp.inner_method,
                                      hp.inner_hparams) / (sum(sizes) * BYTES[dtype])
            budgets = {i: weight_budget(torch.cuda.get_device_properties(i).total_memory, rest, ratio)
                       for i in _rank_gpus(self)}
        place(model, device_map=self.hparams.device_map, offload=self.hparams.offload, execution_device=device,
              max_memory=budgets)
        where = ", ".join(f"{n / 1e6:,.1f}M on {k}" for k, n in model._l2o_placement["parameters"].items())
        flag = ("--offload " + self.hparams.offload if self.hparams.offload
                else "--device-map " + self.hparams.device_map)
        print(f"meta_train: placement {flag}: {where}", file=sys.stderr, flush=True)

    def _build_estimator(self):
        from l2o.estimators import ES, PES, LookaheadEstimator, Unroller

        hp, trainer = self.hparams, self._trainer  # None: the module driven by hand (tests)
        world, max_steps = (trainer.world_size, trainer.max_steps) if trainer is not None else (1, 1)
        if hp.estimator == "lookahead":
            return LookaheadEstimator(self.model, self.policy, self.files, batch_size=self.dm.batch_size, eps=hp.eps,
                                      eta_meta=hp.eta_meta, unroll=hp.unroll,
                                      detach_nf=hp.detach_nf and not hp.fixed_step, size_rule=hp.size_rule,
                                      lr_llm=hp.lr_llm, momentum=hp.momentum, reset_every=hp.reset_every,
                                      max_steps=max_steps, seed=hp.seed, rank=self.global_rank,
                                      world=world)
        if hp.estimator == "pes" and world > 1:
            raise ConfigError("--estimator pes runs on one process; use --estimator es on several devices")
        if self.dm.num_dev < 1:
            raise ConfigError(f"--estimator {hp.estimator} takes its meta-loss on held-out batches: "
                              "--data.num_dev must be >= 1")
        from l2o.distributed import LocalCollective, TorchCollective

        unroller = Unroller(self.model, hp.inner_method, lr=hp.inner_lr, eps=hp.eps, size_rule=hp.size_rule,
                            batch_size=self.dm.batch_size, meta_loss=hp.meta_loss, meta_batches=hp.meta_batches,
                            seed=hp.seed, **(hp.inner_hparams or {}))
        cls = ES if hp.estimator == "es" else PES
        return cls(self.model, self.policy, self.files, unroller, unroll=hp.unroll, pairs=hp.pairs, std=hp.es_std,
                   params=hp.es_params, reset_every=hp.reset_every, seed=hp.seed, scratch_dir=hp.scratch_dir,
                   collective=TorchCollective() if world > 1 else LocalCollective())

    def teardown(self, stage: str) -> None:
        """The estimator's files (parked weights) go with the fit; the policy stays for the export."""
        if self.estimator is not None:
            self.estimator.close()

    def train(self, mode: bool = True):  # dropout off; training mode only for activation checkpointing
        super().train(mode)
        if self.model is not None:
            self.model.train(bool(self.hparams.gradient_checkpointing) and mode
                             and self.hparams.estimator == "lookahead")
        return self

    def configure_optimizers(self):
        return torch.optim.Adam(self.policy.parameters(), lr=self.hparams.lr_policy)

    # ------------------------------------------------------------------ one meta-training step
    def _loss_fn(self, task: str):
        objective = self.dm.objectives[task]
        return lambda model, batch: objective.loss(model, self.tokenizer, batch)

    def _streams(self, key: int):
        return self.dm.stream(key, self.tokenizer)

    def on_fit_start(self) -> None:
        """A run resumed from a checkpoint at its last step (Ctrl-C at the last step or during the final
        meta-validation): Lightning skips the training loop, so the final meta-validation it owes runs here,
        after the model is placed (``global_step`` is not restored yet, so the checkpoint's step is passed)."""
        step = self._resumed_step
        if step is not None and step >= self.trainer.max_steps and not self._validated(step):
            self.meta_validate(step)

    def on_train_start(self) -> None:
        if self._pending_state is not None:  # a resumed run: the estimator's state from the checkpoint
            self.estimator.load_state_dict(self._pending_state)
            self._pending_state = None
        if self._validation_due():
            self.meta_validate()
            stop_if_interrupted(self.trainer)  # Ctrl-C during it: stop before the next step

    def training_step(self, _, batch_idx):
        step = self.global_step
        t0 = time.perf_counter()
        opt = self.optimizers()
        opt.zero_grad()
        out = self.estimator.estimate(self.policy, self._streams, step)
        self._stop_if_diverged(out.task, out.meta_loss, step)
        out.assign_grad(self.policy)
        if self.trainer.world_size > 1 and self.hparams.estimator == "lookahead":
            self._average_policy_gradients()  # ES: every rank already holds the same gradient
        gnorm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in self.policy.parameters())))
        opt.step()
        self.meta_forwards += out.forwards
        sigma = out.sigma.float() if out.sigma is not None else torch.ones(1)
        row = {"step": step, "task": out.task, "meta_loss": out.meta_loss, **out.metrics,
               "sigma_mean": float(sigma.mean()), "sigma_std": float(sigma.std()) if sigma.numel() > 1 else 0.0,
               "policy_grad_norm": gnorm, "meta_forwards": self.meta_forwards,
               "step_time_s": time.perf_counter() - t0}
        self.meta_history.append(row)
        self.log_dict({f"meta/{k}": float(v) for k, v in row.items() if k not in ("step", "task")}, on_step=True)
        self.log(f"meta/loss_{out.task}", out.meta_loss, on_step=True)
        self.log("meta_loss", out.meta_loss, prog_bar=True, logger=False)
        if self.hparams.log_every and step % self.hparams.log_every == 0 and out.sigma is not None:
            self._log_sigma(sigma, step)

    def _stop_if_diverged(self, task: str, loss: float, step: int) -> None:
        """Stop in one line, rather than train the policy on noise, once an LLM trajectory has diverged: its
        meta-loss is not finite, or above DIVERGED x and DIVERGED_GAP over the task's first in the run. The
        paper's lr_llm 0.01 does that on SmolLM2-135M (0.73 -> 9.9 in three steps). The ranks decide together
        (a one-scalar all-reduce under DDP), so none is left waiting in the next collective."""
        first = next((r["meta_loss"] for r in self.meta_history if r["task"] == task), loss)
        bad = not math.isfinite(loss) or loss > max(DIVERGED * first, first + DIVERGED_GAP)
        if self.trainer.world_size > 1:
            bad_anywhere = float(self.trainer.strategy.reduce(torch.tensor(float(bad)), reduce_op="sum")) > 0
            if bad_anywhere and not bad:
                raise UserError(f"another rank's LLM trajectory diverged at meta-step {step} (its rank says how)")
        if bad:
            knob = ("--model.lr_llm", self.hparams.lr_llm) if self.hparams.estimator == "lookahead" else (
                "--model.inner_lr", self.hparams.inner_lr)
            raise UserError(f"the LLM trajectory diverged on {task} at meta-step {step}: meta-loss {first:.4g} -> "
                            f"{loss:.4g}; lower {knob[0]} (now {knob[1]:g}; 1e-4 works for SmolLM2-135M's look-ahead)")

    def _average_policy_gradients(self) -> None:
        """The mean of the ranks' meta-gradients, one all-reduce of the policy's flat gradient through the
        strategy's process group (the meta-backward runs inside training_step, where DDP's reducer is off)."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    def _validation_due(self) -> bool:
        """A meta-validation is due after this step and not yet done (a resumed run does the one its
        checkpoint was saved before: checkpoints are written before the module's batch-end hook)."""
        ve, step = self.hparams.val_every, self.global_step
        return bool(ve) and step % ve == 0 and 0 < step < self.trainer.max_steps and not self._validated(step)

    def _validated(self, step: int) -> bool:
        return bool(self.metaval_history) and self.metaval_history[-1]["step"] == step

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._validation_due():  # the same on every rank: each reaches stop_if_interrupted here
            if not interrupt_requested(self.trainer):
                self.meta_validate()
            stop_if_interrupted(self.trainer)  # Ctrl-C during the meta-validation: stop now, not after a step

    def on_train_end(self):
        if not self._validated(self.global_step) and not interrupt_requested(self.trainer):
            self.meta_validate()
        stop_if_interrupted(self.trainer)  # Ctrl-C: last.ckpt at this step; the resumed run does the meta-validation

    # ------------------------------------------------------------------ TensorBoard extras
    def _tb(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        for lg in self.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        return None

    def _log_sigma(self, sigma: torch.Tensor, step: int) -> None:
        tb = self._tb()
        if tb is None:
            return
        tb.add_histogram("sigma/all_blocks", sigma, step)
        names = [b.name for b in self.engine.blocks]
        for kind in ("weight", "bias"):
            sel = [i for i, n in enumerate(names) if n.endswith(kind)]
            if sel:
                tb.add_histogram(f"sigma/{kind}", sigma[sel], step)
        tb.add_figure("sigma/by_layer", sigma_figure(names, sigma.tolist(), f"step {step}"), step)

    # ------------------------------------------------------------------ meta-validation
    def _eval_loss(self, model, task: str) -> float:
        """The task's objective over its meta-validation eval examples (Objective.mean_loss: eval mode, no grad)."""
        return self.dm.objectives[task].mean_loss(model, self.tokenizer, self.dm.eval_examples(task),
                                                  self.dm.batch_size)

    def _metaval_methods(self) -> tuple[str, str]:
        """The deployed inner method (with the policy) and its base method (the same without it: its composition,
        l2o.optim.zo_finetuner.compose), which meta-validation compares."""
        from l2o.optim import optimizer_class

        method = self.hparams.inner_method
        return method, optimizer_class(method).base_method

    def _baseline_name(self) -> str:
        """The baseline as the card and the report name it: the base method and the inner hparams it ran with."""
        extra = ", ".join(f"{k} {v}" for k, v in sorted((self.hparams.inner_hparams or {}).items()))
        return self._metaval_methods()[1] + (f" ({extra})" if extra else "")

    def meta_validate(self, step: int | None = None) -> dict | None:
        """Short ZO fine-tunings from the pretrained weights: the deployed inner method with the current policy vs
        the same method (same hyperparameters) without it, equal forward passes.

        They run on the LLM itself: the trajectory's weights are parked in a file meanwhile, every
        fine-tuning starts from the model files, and the trajectory comes back bit-identical. Ctrl-C abandons
        a meta-validation before its next ZO step (None, nothing recorded; the resumed run does it)."""
        hp = self.hparams
        tasks = (self.dm.heldout_task_names or self.dm.train_task_names)[: max(1, hp.val_tasks)]
        policy = ZOPolicy.from_tensors(self.policy.tensors(), self.policy.config())
        method, baseline = self._metaval_methods()
        row = {"step": int(self.global_step if step is None else step), "method": method, "baseline": baseline,
               "tasks": {}}
        # no name: its space is freed however the process ends; in --model.scratch_dir, beside ES/PES's files
        parked = tempfile.TemporaryFile(prefix="l2o-trajectory-", suffix=".bin", dir=hp.scratch_dir)
        training = self.model.training
        try:
            park(self.engine, parked)
            self.model.eval()
            for task in tasks:
                row["tasks"][task] = {}
                for name in (method, baseline):
                    self.files.restore()
                    result = self._short_fine_tune(name, task, policy if name == method else None)
                    if result is None:
                        return None
                    row["tasks"][task].update(result)
        finally:
            unpark(self.engine, parked)
            parked.close()
            self.model.train(training)
        pol = [r[method] for r in row["tasks"].values()]
        bas = [r[baseline] for r in row["tasks"].values()]
        row["policy_loss"], row["baseline_loss"] = sum(pol) / len(pol), sum(bas) / len(bas)
        row["improvement"] = row["baseline_loss"] - row["policy_loss"]
        self.metaval_history.append(row)
        tb = self._tb()
        if tb is not None:
            for task, r in row["tasks"].items():  # one tag per curve (add_scalars wrote one tag in two runs)
                tb.add_scalar(f"metaval/{task}/policy_loss", r[method], row["step"])
                tb.add_scalar(f"metaval/{task}/{baseline}_loss", r[baseline], row["step"])
            tb.add_scalar("metaval/policy_loss", row["policy_loss"], row["step"])
            tb.add_scalar(f"metaval/{baseline}_loss", row["baseline_loss"], row["step"])
            tb.add_scalar("metaval/improvement", row["improvement"], row["step"])
            tb.flush()
        return row

    def _short_fine_tune(self, method: str, task: str, policy: ZOPolicy | None) -> dict | None:
        """`val_steps` ZO steps of `method` (with `policy` if given; the inner hparams either way) on `task`, then
        its eval loss; None as soon as Ctrl-C asks to stop."""
        from l2o.optim import build_optimizer

        hp, fn = self.hparams, self._loss_fn(task)
        kw = dict(hp.inner_hparams or {}, lr=hp.val_lr, eps=hp.eps, seed=hp.seed)
        if policy is not None:
            kw.update(policy=policy, policy_batch_size=self.dm.batch_size, policy_size_rule=hp.size_rule)
        opt = build_optimizer(method, self.model, **kw)
        try:
            for k in range(hp.val_steps):
                if interrupt_requested(self._trainer):
                    return None
                batch = self.dm.batch(task, 10 ** 7 + k)
                opt.step(lambda: fn(self.model, batch))
        finally:
            opt.engine.remove_hooks()
        if interrupt_requested(self._trainer):
            return None
        return {method: self._eval_loss(self.model, task), f"{method}_forwards": opt.forward_passes}

    # ------------------------------------------------------------------ checkpoints: policy + estimator state
    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
        checkpoint["l2o"] = {"fingerprint": self.info.fingerprint, "base": self.hparams.base,
                             "estimator": self.hparams.estimator, "estimator_state": self.estimator.state_dict(),
                             "meta_forwards": self.meta_forwards,
                             "metaval": self.metaval_history, "history": self.meta_history}

    def on_load_checkpoint(self, checkpoint):
        extra = checkpoint.get("l2o", {})
        if self.model is not None and extra.get("fingerprint") != self.info.fingerprint:
            raise UserError(f"this checkpoint was made for base {extra.get('base')!r}, not {self.hparams.base!r}")
        if extra.get("estimator", "lookahead") != self.hparams.estimator:
            raise UserError(f"this checkpoint was made with --estimator {extra.get('estimator', 'lookahead')}, "
                            f"not {self.hparams.estimator}")
        self._pending_state = extra.get("estimator_state")  # loaded in on_train_start, after setup
        self._resumed_step = int(checkpoint.get("global_step", 0))
        self.meta_forwards = int(extra.get("meta_forwards", 0))
        self.metaval_history = [_named_baseline(r) for r in extra.get("metaval", [])]
        self.meta_history = list(extra.get("history", []))

    # ------------------------------------------------------------------ export
    def training_summary(self) -> dict:
        """The run's record (results.json) and the facts the zoo's model card shows (zoo/card.py)."""
        hp = self.hparams
        last = self.metaval_history[-1] if self.metaval_history else None
        return {"method": "zo-finetuner", "base": hp.base, "steps": int(self.global_step),
                "tasks": self.dm.train_task_names, "heldout_tasks": self.dm.heldout_task_names,
                "estimator": self._estimator_card(), "unroll": self._horizon(), "size_rule": hp.size_rule,
                "meta_forwards": self.meta_forwards, **self._inner_and_trajectory(),
                "hyperparameters": {k: v for k, v in dict(hp).items()},
                "effective_step": _mean(r.get("effective_step") for r in self.meta_history),
                "meta_validation": last, "evaluation": self._evaluation(last),
                "provenance": {"made_by": f"meta_train --base {hp.base} --estimator {hp.estimator} (this project)"}}

    def _evaluation(self, mv: dict | None) -> dict:
        """The last meta-validation as the card's evaluation: held-out tasks, the seed, policy vs the base method."""
        if not mv:
            return {}
        hp = self.hparams
        method, baseline = mv["method"], mv["baseline"]
        return {"summary": f"Meta-validation at meta-step {mv['step']}: {hp.val_steps} ZO steps of {method} with the "
                           f"policy (lr {hp.val_lr}, eps {hp.eps}) from the pretrained weights on each held-out task, "
                           f"then its eval loss; {self._baseline_name()} (the same method without the policy) with "
                           "the same forward passes. One seed, so no interval.",
                "baseline": self._baseline_name(),
                "metric": f"eval loss after {hp.val_steps} ZO steps (lower is better)",
                "seeds": [hp.seed],
                "rows": [{"task": t, "value": r[method], "baseline_value": r[baseline],
                          "difference": r[method] - r[baseline]} for t, r in mv["tasks"].items()]}

    def _estimator_card(self) -> str:
        hp = self.hparams
        if hp.estimator == "lookahead":
            return "lookahead (meta-gradient through the unrolled policy-scaled ZO steps, arXiv 2510.00419)"
        what = (f"antithetic ES over {hp.unroll}-step unrolls of the deployed {hp.inner_method}, {hp.pairs} pairs"
                if hp.estimator == "es" else
                f"Persistent ES (Vicol et al. 2021) over {hp.reset_every * hp.unroll}-step inner runs of the deployed "
                f"{hp.inner_method} in "
                f"{hp.unroll}-step truncations, {hp.pairs} particles")
        return (f"{hp.estimator} ({what}, coordinates {hp.es_params}, std {hp.es_std}, {hp.meta_loss} held-out "
                "loss; forward passes only)")

    def _horizon(self) -> str:
        """The card's unroll horizon: how many inner steps one meta-loss looks through."""
        hp = self.hparams
        if hp.estimator == "lookahead":
            return f"{hp.unroll} look-ahead step{'s' if hp.unroll > 1 else ''}"
        if hp.estimator == "es":
            return (f"{hp.unroll} inner steps (truncated ES from the trajectory's state; episodes of "
                    f"{hp.reset_every * hp.unroll if hp.reset_every else 'unbounded'} steps)")
        return f"{hp.reset_every * hp.unroll} inner steps (the whole inner run, in {hp.unroll}-step truncations)"

    def _inner_and_trajectory(self) -> dict:
        hp = self.hparams
        if hp.estimator == "lookahead":
            return {"inner_optimizer": {"name": "ZO two-point step along the policy-scaled direction",
                                        "lr": hp.eta_meta, "eps": hp.eps},
                    "trajectory": {"optimizer": "SGD", "lr": hp.lr_llm, "momentum": hp.momentum,
                                   "reset_every": hp.reset_every}}
        return {"inner_optimizer": {"name": f"{hp.inner_method} with the policy's scales", "lr": hp.inner_lr,
                                    "eps": hp.eps, **(hp.inner_hparams or {})},
                "trajectory": {"optimizer": f"{hp.inner_method} with the current policy (zeroth order)",
                               "lr": hp.inner_lr, "reset_every": f"{hp.reset_every * hp.unroll} inner steps"}}

    def run_history(self) -> dict:
        """What results.json holds beyond the summary: every meta-step's row and every meta-validation."""
        return {"history": self.meta_history, "meta_validations": self.metaval_history}

    def export_artefact(self, directory, license: str = "apache-2.0"):
        """The policy as a zoo artefact folder in `directory` (`meta_train` publishes it)."""
        from zoo.learned import save_policy

        s = self.training_summary()  # the card's facts (zoo/card.py): tasks, estimator, evaluation, ...
        card = {"license": license,
                "description": (f"ZO Fine-tuner policy meta-trained with the {self.hparams.estimator} estimator on "
                                f"{', '.join(s['tasks'])} for {s['steps']} steps, {s['meta_forwards']} forward passes "
                                f"(held out: {', '.join(s['heldout_tasks']) or 'none'}).")}
        return save_policy(self.policy, directory, card=card, training=s)

    def report(self, summary: dict) -> list[str]:
        """The lines `meta_train` prints at the end."""
        lines = [f"meta-trained a zo-finetuner policy for {self.hparams.base}: {summary['steps']} steps on "
                 f"{', '.join(summary['tasks'])} ({self.hparams.estimator} estimator, {summary['meta_forwards']} "
                 "forward passes)"]
        mv = summary["meta_validation"]
        if mv:
            lines.append(f"  meta-validation ({', '.join(mv['tasks'])}): policy loss {mv['policy_loss']:.4f} vs "
                         f"{self._baseline_name()} {mv['baseline_loss']:.4f} ({mv['method']} without the policy) at "
                         "equal forward passes")
        return lines


def _rank_gpus(module) -> list[int]:
    """This process's GPUs: the visible ones shared out over the processes of a node, from its local rank's share."""
    visible = torch.cuda.device_count()
    trainer = module._trainer
    procs = trainer.num_devices if trainer is not None else 1
    per = max(1, visible // procs)
    first = (module.local_rank if trainer is not None else 0) * per
    return list(range(first, min(visible, first + per)))


def _named_baseline(row: dict) -> dict:
    """A meta-validation row of a checkpoint written before rows named their methods: zo-finetuner vs mezo."""
    row = {"method": "zo-finetuner", "baseline": "mezo", **row}
    if "mezo_loss" in row:
        row.setdefault("baseline_loss", row.pop("mezo_loss"))
    return row


def _mean(values):
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def sigma_figure(names: list[str], sigma: list[float], title: str = ""):
    """Bar chart of sigma by block, coloured by block type (the sigma-by-layer image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"attn": "tab:blue", "mlp": "tab:orange", "norm": "tab:green", "embed": "tab:red"}

    def colour(n: str) -> str:
        low = n.lower()
        for key, c in colours.items():
            if key in low or (key == "attn" and ("proj" in low and "mlp" not in low)):
                return c
        return "tab:gray"

    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.06), 3))
    ax.bar(range(len(sigma)), sigma, color=[colour(n) for n in names], width=1.0)
    ax.set_xlabel("parameter block (model order)")
    ax.set_ylabel("sigma")
    ax.set_title(f"sigma by block {title}", fontsize=9)
    fig.tight_layout()
    return fig
