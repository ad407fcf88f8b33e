"""The LightningModule: one ZO step per training step, through the optimizer's `step(closure)`.

Manual optimization: `self.optimizers().step(closure)` goes through Lightning's wrapper, so
`global_step`, `max_steps`, checkpoint and validation intervals all work. The HF model stays in eval
mode throughout (dropout off during ZO forwards). The batches of step t are a pure function of
(data seed, t), so a resumed run sees exactly the batches an uninterrupted one would. Every registered
method runs here, Bilevel-ZOFO too: what differs is declared by the method (its stream of batches, the
form of its closure, its counters and per-step metrics, whether it moves weights the adapter does not hold).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from l2o.blocks import named_blocks
from l2o.distributed import LocalCollective, TorchCollective, check_replicas
from l2o.errors import UserError
from l2o.integrations.lightning.checkpoints import UNSCHEDULED
from l2o.integrations.lightning.placed import KeepsPlacement
from l2o.optim import build_optimizer, optimizer_class


def _replay_progress(done: int, total: int) -> None:
    print(f"replaying the checkpoint's seed ledger: {done}/{total} updates", file=sys.stderr, flush=True)


def _as_list(batch):
    return batch


class FineTuneModuleBase(KeepsPlacement, L.LightningModule):
    """What every fine-tuning LightningModule here shares: manual optimization with the HF model kept in
    eval mode, text batches, step-indexed training, dev/eval evaluation, and checkpoints that hold only
    the trainable tensors. Subclasses add `configure_optimizers` and `training_step`."""

    checkpoint_method = "zo"  # recorded in checkpoints; a checkpoint of another method is refused
    selects_best_on_dev = True  # a checkpoint holds the whole trained state, so the best one can be reloaded

    def __init__(self, model, tokenizer, objective, splits, seed: int, data_seed: int, eval_batch_size: int,
                 steps: int, fingerprint: str):
        super().__init__()
        self.model, self.tokenizer, self.objective, self.splits = model, tokenizer, objective, splits
        self.seed, self.data_seed = seed, data_seed
        self.eval_batch_size, self.steps, self.fingerprint = eval_batch_size, steps, fingerprint
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable tensors
        self.history: list[dict] = []
        self._val: dict[str, list[float]] = {}
        self.metric = "accuracy" if splits.train and splits.train[0].candidates else "f1"

    # dropout stays off: Lightning calls .train() around validation; the HF model stays in eval mode
    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # examples are text; the objective tokenizes onto the model's device itself

    def trainable_names(self) -> list[str]:
        return ["model." + n for n, p in self.model.named_parameters() if p.requires_grad]

    def train_dataloader(self):
        return DataLoader(range(self.steps), batch_size=None, shuffle=False)

    # ------------------------------------------------------------------ evaluation (dev, eval)
    @property
    def val_splits(self) -> list[str]:
        """The evaluated splits that have examples; with no dev split there is no dev metric (and no
        best-on-dev selection), never a silent fallback to the eval split."""
        return [name for name in ("dev", "eval") if getattr(self.splits, name)]

    def val_dataloader(self):
        return [DataLoader(getattr(self.splits, name), batch_size=self.eval_batch_size, collate_fn=_as_list)
                for name in self.val_splits]

    def on_validation_epoch_start(self):
        self._val = {name: [0.0, 0] for name in self.val_splits}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        split = self.val_splits[dataloader_idx]
        value = self.objective.evaluate(self.model, self.tokenizer, batch, batch_size=len(batch))[self.metric]
        self._val[split][0] += value * len(batch)
        self._val[split][1] += len(batch)

    def on_validation_epoch_end(self):
        for split, (total, n) in self._val.items():
            if n:
                self.log(f"{split}/{self.metric}", total / n, prog_bar=(split == "dev"))

    # ------------------------------------------------------------------ checkpoints: what resuming needs
    def on_save_checkpoint(self, checkpoint):
        keep = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["l2o"] = {"fingerprint": self.fingerprint, "history": self.history,
                             "method": self.checkpoint_method}

    def _check_checkpoint(self, checkpoint) -> None:
        meta = checkpoint.get("l2o", {})
        if meta.get("fingerprint") != self.fingerprint:
            raise UserError("this checkpoint was made for a different base model (fingerprint mismatch)")
        if meta.get("method", "zo") != self.checkpoint_method:
            raise UserError(f"this checkpoint was made by {meta.get('method')!r}, not {self.checkpoint_method!r}")
        if meta.get("checkpoint") == "ledger":
            return  # no tensors: the weights are the base plus the checkpoint's ledger
        missing = set(self.trainable_names()) - set(checkpoint["state_dict"])
        if missing:
            raise UserError(f"checkpoint lacks {len(missing)} trainable tensor(s), e.g. {sorted(missing)[:2]}")

    def on_load_checkpoint(self, checkpoint):
        self._check_checkpoint(checkpoint)
        self.history = list(checkpoint["l2o"].get("history", []))

    def load_trainable(self, path: str) -> None:
        """Load only the trainable tensors of a checkpoint (best-on-dev selection); history is kept."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self._check_checkpoint(ckpt)
        self.load_state_dict(ckpt["state_dict"], strict=False)


    def run_counters(self) -> dict:
        """The optimizer's counters for results.json (forward passes, skipped steps, ...)."""
        raise NotImplementedError

    def export(self, path: Path, tokenizer=None, base: dict | None = None) -> Path:
        """The fine-tuned model in `path`: `save_pretrained` (PEFT: only the adapter), the tokenizer and
        `base.json` (the base's identity and fingerprint)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        (path / "base.json").write_text(json.dumps({**(base or {}), "fingerprint": self.fingerprint}, indent=1))
        return path


class ZOFineTuneModule(FineTuneModuleBase):
    """One ZO step per training step, through the optimizer's `step(closure)`.

    On several processes (`parallel` "data" or "direction", l2o.distributed) the optimizer exchanges
    the step's losses through a `TorchCollective` over Lightning's process group; a data-parallel
    rank's closure evaluates its shard rows[rank::N] of the global batch as (total, weight).

    The optimizer's seed ledger is flushed to `ledger_path` at every checkpoint and travels in the
    checkpoint's optimizer state. With `checkpoint_kind = "ledger"` a checkpoint holds no tensors:
    resuming (and best-on-dev selection) replays its ledger onto `fresh_model()`, a freshly loaded base.
    """

    checkpoint_kind = "weights"
    ledger_path = None
    fresh_model = None  # () -> the model as training started from it (ledger checkpoints: best-on-dev)

    def __init__(self, model, tokenizer, objective, splits, optimizer: str, optimizer_kwargs: dict, seed: int,
                 data_seed: int, batch_size: int, eval_batch_size: int, steps: int, fingerprint: str,
                 parallel: str = "direction", check_every: int = 0):
        super().__init__(model, tokenizer, objective, splits, seed, data_seed, eval_batch_size, steps, fingerprint)
        self.optimizer_name, self.optimizer_kwargs = optimizer, dict(optimizer_kwargs)
        method = optimizer_class(optimizer)
        self.stream = method.train_stream(splits.train, batch_size, data_seed, self.optimizer_kwargs)
        self.takes_splits = bool(method.splits)  # its closure takes (split, task): given as step(loss=...)
        # a method that moves the frozen backbone (Bilevel-ZOFO) keeps it in the ledger, not in the checkpoint's
        # tensors, so a best checkpoint's tensors alone are not its model
        self.selects_best_on_dev = not method.needs_adapter
        self.parallel, self.check_every = parallel, check_every
        self.collective = LocalCollective()
        self.first_step = 0

    def setup(self, stage):
        if self.trainer.world_size > 1:  # Lightning's strategy has initialised the process group
            self.collective = TorchCollective()

    def configure_optimizers(self):
        return build_optimizer(self.optimizer_name, self.model, seed=self.seed, collective=self.collective,
                               parallel=self.parallel, check_every=self.check_every, **self.optimizer_kwargs)

    def on_train_start(self):
        self.first_step = self.global_step  # > 0 after a resume
        # the ranks loaded the same base and adapter from the same seeds; make sure before step 1
        check_replicas(self.collective, [p for _, p in named_blocks(self.model)], self.global_step)

    def _loss(self, batch):
        """The loss of a batch; a data-parallel rank's (total, weight) over its shard rows[rank::N]."""
        if self.parallel == "data" and self.collective.world_size > 1:
            shard = batch[self.collective.rank::self.collective.world_size]
            return self.objective.weighted_loss(self.model, self.tokenizer, shard)
        return self.objective.loss(self.model, self.tokenizer, batch)

    # ------------------------------------------------------------------ the seed ledger in checkpoints
    @property
    def ledger(self):
        """The ledger that led to the weights the model holds now (the optimizer's, or a loaded checkpoint's)."""
        loaded = getattr(self, "_loaded_ledger", None)
        return loaded if loaded is not None else self.optimizers().optimizer.ledger

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        ledger = self.optimizers().optimizer.ledger
        if self.ledger_path is not None:
            ledger.flush(self.ledger_path)  # seals, then appends
        ledger.seal()
        checkpoint["optimizer_states"][0]["zo_ledger"] = ledger.text()
        checkpoint["l2o"].update(checkpoint=self.checkpoint_kind, ledger=ledger.summary())
        if self.checkpoint_kind == "ledger":  # no tensors: the weights and a stateful rule's buffers replay from it
            checkpoint["state_dict"] = {}
            checkpoint["optimizer_states"][0].pop("zo_rule", None)

    @staticmethod
    def checkpoint_ledger(checkpoint):
        """The verified ledger a checkpoint holds, pinned to the update count and head it recorded."""
        from l2o.ledger import Ledger

        return Ledger.parse(checkpoint["optimizer_states"][0]["zo_ledger"], source="the checkpoint's ledger",
                            **checkpoint["l2o"]["ledger"])

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if checkpoint["l2o"].get("checkpoint") == "ledger":
            from l2o.ledger import replay

            replay(self.model, self.checkpoint_ledger(checkpoint), progress=_replay_progress)  # onto the fresh base
        if checkpoint.get(UNSCHEDULED):  # Ctrl-C's checkpoint: the uninterrupted run has no seal here
            ledger = self.checkpoint_ledger(checkpoint)
            ledger.unseal()
            checkpoint["optimizer_states"][0]["zo_ledger"] = ledger.text()  # what the optimizer continues

    def load_trainable(self, path: str) -> None:
        """Best-on-dev: the checkpoint's tensors, or (ledger checkpoints) a fresh base plus its ledger."""
        from l2o.ledger import replay

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self._check_checkpoint(ckpt)
        ledger = self.checkpoint_ledger(ckpt) if "ledger" in ckpt["l2o"] else None
        if ckpt["l2o"].get("checkpoint") == "ledger":
            self.model = self.fresh_model()
            replay(self.model, ledger, progress=_replay_progress)
        else:
            self.load_state_dict(ckpt["state_dict"], strict=False)
        self._loaded_ledger = ledger

    def ledger_results(self) -> dict:
        """For results.json: what checkpoints held and the whole run's ledger."""
        ledger = self.optimizers().optimizer.ledger
        return {"checkpoint": self.checkpoint_kind,
                "ledger": {**ledger.summary(), "bytes": ledger.nbytes, "path": str(self.ledger_path)}}

    def training_step(self, _, batch_idx):
        closure = self.stream.closure(self.global_step, self._loss)
        opt = self.optimizers()
        t0 = time.perf_counter()
        if self.takes_splits:
            opt.step(loss=closure)
        else:
            opt.step(closure=closure)
        dt = time.perf_counter() - t0
        raw = opt.optimizer
        last = raw.last
        counters = raw.run_counters()
        row = {"step": self.global_step, "loss": last.loss, "forwards": raw.forward_passes, "step_time_s": dt,
               "skipped": last.skipped, "effective_step": last.effective_step, **counters, **last.metrics}
        self.history.append(row)
        logs = {"train/forward_passes": float(raw.forward_passes), "train/step_time_s": dt,
                "train/lr": raw.param_groups[0]["lr"], "train/skipped_steps": float(raw.skipped_steps),
                **{f"train/{k}": float(v) for k, v in counters.items()}}
        # a method's own per-step metrics go straight to the logger (on the steps that have them): Lightning's
        # on_step cache would repeat them every step
        if last.metrics and self.logger is not None:
            self.logger.log_metrics(last.metrics, step=self.global_step)
        if math.isfinite(last.loss):
            logs["train/loss"] = last.loss
        if last.effective_step is not None:  # E||d||^2 / D: the lr multiplier of the expected update
            logs["train/effective_step"] = last.effective_step
        if last.projected_grads:
            logs["train/projected_grad"] = last.projected_grads[0]
            logs["train/projected_grad_norm"] = math.sqrt(sum(g * g for g in last.projected_grads))
        self.log_dict(logs, on_step=True, prog_bar=False)
        self.log("loss", last.loss if math.isfinite(last.loss) else float("nan"), prog_bar=True, logger=False)

    def run_counters(self) -> dict:
        opt = self.optimizers().optimizer if self.trainer.optimizers else None
        steps = max(1, self.global_step - self.first_step)  # the steps this process ran (after a resume)
        eff = [r["effective_step"] for r in self.history if r.get("effective_step") is not None]
        return {"forward_passes": opt.forward_passes if opt else 0, "skipped_steps": opt.skipped_steps if opt else 0,
                **(opt.run_counters() if opt else {}), **self.stream.describe(),
                "processes": {"world_size": self.collective.world_size, "parallel": self.parallel,
                              "bytes_sent_per_step": self.collective.bytes_sent / steps},
                # mean E||d||^2 / D over the run (1 for MeZO), and the prior BSZO's default rule chose
                "effective_step": sum(eff) / len(eff) if eff else None,
                "bszo_prior": getattr(opt, "prior_mode", None),
                # the policy's normaliser rule this run deployed with (--policy-size-rule, else the artefact's)
                "policy_size_rule": getattr(getattr(opt, "policy_scales", None), "size_rule", None)}

    def export(self, path: Path, tokenizer=None, base: dict | None = None) -> Path:
        """The fine-tuned model (`save_pretrained`: with PEFT only the adapter) and `base.json`; for a method that
        moves weights the adapter does not hold (Bilevel-ZOFO's backbone), also their change from the base,
        `backbone_delta.safetensors` (float32, regenerated from the seed ledger)."""
        from safetensors.torch import save_file

        from l2o.ledger import ledger_delta

        opt = self.optimizers().optimizer
        delta = ledger_delta(opt.engine, opt.ledger) if opt.moves_frozen() else {}
        extra = {"backbone_delta": "backbone_delta.safetensors"} if delta else {}
        path = super().export(path, tokenizer, {**(base or {}), "method": self.optimizer_name, **extra})
        if delta:
            save_file({k: v.contiguous() for k, v in delta.items()}, str(path / "backbone_delta.safetensors"),
                      metadata={"base_fingerprint": self.fingerprint})
        return path
