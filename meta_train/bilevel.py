"""Meta-training a backbone initialisation with Bilevel-ZOFO over a task family (`meta_train --method bilevel-zofo`).

    BilevelTaskData   LightningDataModule: a TaskFamily, each training task's sample split 2:1 into (D_g, D_f),
                      and per held-out task a handful of adaptation examples plus an evaluation set.
    BilevelMetaInit   LightningModule: one PEFT copy pair (p, w) per training task; every global step a lower
                      FO step on one task of the current cycle; every t_low steps an upper step over
                      `tasks_per_step` sampled tasks whose ZO backbone estimates are all combined. Validation
                      is quick adaptation on the held-out tasks (fresh adapter, a few FO steps), against the
                      same adaptation from the original base (computed once, before training) and zero-shot:
                      the task metric and the mean eval loss (which moves where a few steps flip no answer).
                      At the end the backbone's change from the base is written as a `bilevel-meta-init` zoo
                      artefact (`export_artefact`; `meta_train` publishes it, as it does a policy).

Both classes take only type-annotated scalars/lists, so LightningCLI can build them from flags.
TensorBoard tags: lower/loss, upper/loss, upper/lower_g_loss, upper/penalty, upper/objective,
upper/projected_grad (mean over the step's tasks), upper/projected_grad_norm, heldout/<task>/<f> and
heldout/<task>/base_<f> for f in HELD_OUT_FIELDS, heldout/mean_adapted(_loss), heldout/mean_base_adapted(_loss).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from l2o.errors import ConfigError, UserError
from l2o.ledger import ledger_delta
from l2o.meta_init import quick_adapt
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.streams import BilevelStreams, split_dg_df

HELD_OUT_FIELDS = ("zero_shot", "adapted", "zero_shot_loss", "adapted_loss")  # quick_adapt's, kept per held-out task


def _adapted_text(metric: float, loss: float | None) -> str:
    return f"{metric:.4f}" + ("" if loss is None else f" (eval loss {loss:.4f})")


class BilevelTaskData(L.LightningDataModule):
    """Tasks for Bilevel-ZOFO meta-training.

    Args:
        tasks: task names of the family (None with no tags: every offline task).
        tags: task tags to include (union with `tasks`).
        holdout: held-out task names, or a fraction of the family (seeded by `family_seed`; None: 0.25).
        family_seed: the task split's seed. data_seed: each task's sample and its D_g/D_f split.
        num_train: training examples per training task (split 2:1 into D_g and D_f).
        adapt_examples: examples per held-out task for quick adaptation. num_eval: evaluation examples per
            held-out task. max_length: tokens per example. source_root: a folder holding `<task>/` data files
            for hub-only tasks (e.g. tests/fixtures/hub).
    """

    def __init__(self, tasks: list[str] | None = None, tags: list[str] | None = None,
                 holdout: list[str] | float | None = 0.25, family_seed: int = 0, data_seed: int = 0,
                 num_train: int = 300, adapt_examples: int = 5, num_eval: int = 100, max_length: int = 256,
                 source_root: str | None = None):
        super().__init__()
        from meta_train.plan import check_count  # --data.max_length -3 ran

        check_count("--data.max_length", max_length)
        for name, n in (("num_train", num_train), ("adapt_examples", adapt_examples), ("num_eval", num_eval)):
            check_count(f"--data.{name}", n, least=0)
        self.task_names, self.tags = tasks, tags
        self.holdout = 0.25 if holdout is None else holdout
        self.family_seed, self.data_seed = family_seed, data_seed
        self.num_train, self.adapt_examples, self.num_eval = num_train, adapt_examples, num_eval
        self.max_length, self.source_root = max_length, source_root
        self.train_tasks: list[dict] = []
        self.heldout_tasks: list[dict] = []
        self.family = None

    def _source(self, name: str):
        if self.source_root and (Path(self.source_root) / name).is_dir():
            return str(Path(self.source_root) / name)
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_tasks:
            return
        from l2o.tasks import TaskFamily, sample_splits
        from l2o.tasks.objectives import objective_for

        self.family = TaskFamily(self.task_names, self.tags, seed=self.family_seed, holdout=self.holdout)
        from zoo.acquire import ensure_task

        for task in self.family.train_tasks + self.family.heldout_tasks:
            ensure_task(task.name, self._source(task.name))
        for task in self.family.train_tasks:
            s = sample_splits(task, seed=self.data_seed, num_train=self.num_train, num_dev=0, num_eval=0,
                              source=self._source(task.name))
            d_g, d_f = split_dg_df(s.train, self.data_seed)
            self.train_tasks.append({"name": task.name, "d_g": d_g, "d_f": d_f,
                                     "objective": objective_for(task, max_length=self.max_length)})
        for task in self.family.heldout_tasks:
            s = sample_splits(task, seed=self.data_seed, num_train=self.adapt_examples, num_dev=0,
                              num_eval=self.num_eval, source=self._source(task.name))
            self.heldout_tasks.append({"name": task.name, "train": s.train, "eval": s.eval,
                                       "objective": objective_for(task, max_length=self.max_length)})

    def train_dataloader(self):
        n = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 1_000_000
        return DataLoader(range(n), batch_size=None, shuffle=False)

    def val_dataloader(self):
        return DataLoader([0], batch_size=None)  # one token batch: validation is held-out adaptation


class BilevelMetaInit(L.LightningModule):
    """Bilevel-ZOFO meta-training of a backbone initialisation (defaults: the official multi-task sweep,
    lam 1e4, lower/upper lr 1e-4, T_low 10; theta_lr is the ZO-SGD step on the backbone).

    Args:
        base: base model (alias, hub id or local folder). peft: lora | prefix | prompt.
        dtype: auto | fp32 | bf16 | fp16 (auto: fp32 on the CPU, else the checkpoint's, with fp16 as bf16).
        lam, lower_lr, upper_lr, theta_lr, eps, t_low, one_sided, num_directions, theta_clip: see
            `l2o.optim.bilevel_zofo.BilevelZOFO`. tasks_per_step: tasks per upper step (their estimates are combined).
        batch_size: examples per lower/upper batch. seed: directions and adapter init. device: auto | cpu | cuda.
        adapt_steps, adapt_lr, adapt_batch_size: quick adaptation on held-out tasks (fresh adapter, AdamW).
        eval_batch_size: evaluation batch size.
        val_every: steps between held-out adaptations during training (0: only before and after training).
    """

    artefact_dir = "meta-init"  # the folder under --out that meta_train publishes

    def __init__(self, base: str = "smollm2-135m", peft: str = "lora", dtype: str = "auto", lam: float = 1e4,
                 lower_lr: float = 1e-4, upper_lr: float = 1e-4, theta_lr: float = 1e-7, eps: float = 1e-3,
                 t_low: int = 10, one_sided: bool = True, num_directions: int = 1, theta_clip: float | None = None,
                 tasks_per_step: int = 5, batch_size: int = 8, seed: int = 0, device: str = "auto",
                 adapt_steps: int = 5, adapt_lr: float = 2e-4, adapt_batch_size: int = 1, eval_batch_size: int = 16,
                 val_every: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if peft not in ("lora", "prefix", "prompt"):
            raise ConfigError(f"bilevel-zofo needs --model.peft lora, prefix or prompt, not {peft!r}")
        BilevelZOFO.resolve(dict(lam=lam, lower_lr=lower_lr, upper_lr=upper_lr, theta_lr=theta_lr, eps=eps, t_low=t_low,
                                 one_sided=one_sided, num_directions=num_directions, theta_clip=theta_clip))
        from meta_train.plan import check_count  # batch_size 0 was a ZeroDivisionError in l2o.streams

        for name in ("tasks_per_step", "batch_size", "adapt_batch_size", "eval_batch_size"):
            check_count(f"--model.{name}", locals()[name])
        check_count("--model.adapt_steps", adapt_steps, least=0)
        check_count("--model.val_every", val_every, least=0)
        self.automatic_optimization = False
        self.strict_loading = False
        self.model = None
        self.tokenizer = None
        self.info = None
        self.method: BilevelZOFO | None = None
        self.streams: BilevelStreams | None = None
        self.baseline: dict = {}
        self.adaptation: list[dict] = []
        self.results: dict = {}

    # ------------------------------------------------------------------ building
    def _data(self) -> BilevelTaskData:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not isinstance(dm, BilevelTaskData):
            raise ConfigError("BilevelMetaInit needs a BilevelTaskData datamodule")
        return dm

    def setup(self, stage: str | None = None) -> None:
        if self.model is not None:
            return
        from l2o.models import load_base
        from l2o.peft_modes import apply_peft

        hp = self.hparams
        dm = self._data()
        dm.setup(stage)
        device = hp.device if hp.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        from zoo.acquire import ensure_base

        ensure_base(hp.base)
        from l2o.models import resolve_dtype

        dtype = resolve_dtype(hp.dtype, hp.base, device, first_order=True)   # its inner steps backpropagate
        model, self.tokenizer, self.info = load_base(hp.base, dtype=dtype, device=device)
        self.model = apply_peft(model, hp.peft, seed=hp.seed)
        self.method = BilevelZOFO(self.model, num_tasks=len(dm.train_tasks), lam=hp.lam, lower_lr=hp.lower_lr,
                                  upper_lr=hp.upper_lr, theta_lr=hp.theta_lr, eps=hp.eps, t_low=hp.t_low,
                                  one_sided=hp.one_sided, num_directions=hp.num_directions,
                                  theta_clip=hp.theta_clip, seed=hp.seed)
        self.streams = BilevelStreams([(t["d_g"], t["d_f"]) for t in dm.train_tasks], hp.batch_size, hp.t_low,
                                      hp.tasks_per_step, seed=dm.data_seed)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.model is not None:
            self.model.eval()
        return self

    def configure_optimizers(self):
        return self.method

    # ------------------------------------------------------------------ held-out adaptation
    def adapt_all(self) -> dict:
        hp, out = self.hparams, {}
        for t in self._data().heldout_tasks:
            out[t["name"]] = quick_adapt(self.method, t["objective"], self.tokenizer, t["train"], t["eval"],
                                         steps=hp.adapt_steps, lr=hp.adapt_lr, batch_size=hp.adapt_batch_size,
                                         eval_batch_size=hp.eval_batch_size, seed=hp.seed)
        return out

    def on_fit_start(self):
        if not self.baseline and self.method.ledger.num_updates == 0 and self._data().heldout_tasks:
            self.baseline = {k: {f: v[f] for f in HELD_OUT_FIELDS} for k, v in self.adapt_all().items()}
            for name, v in self.baseline.items():
                for f in HELD_OUT_FIELDS:
                    self.logger_scalar(f"heldout/{name}/base_{f}", v[f], 0)

    def logger_scalar(self, tag: str, value: float, step: int) -> None:
        exp = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if exp is not None and hasattr(exp, "add_scalar"):
            exp.add_scalar(tag, value, step)

    # ------------------------------------------------------------------ training
    def train_dataloader(self):
        return self._data().train_dataloader()

    def training_step(self, _, batch_idx):
        step = self.global_step
        opt = self.optimizers()
        t0 = time.perf_counter()
        tasks = self._data().train_tasks
        losses = self.streams.losses(step,
                                     lambda k, batch: tasks[k]["objective"].loss(self.model, self.tokenizer, batch))
        opt.step(loss=losses, task=self.streams.lower_task(step), upper_tasks=self.streams.upper_tasks(step))
        dt = time.perf_counter() - t0
        m: BilevelZOFO = opt.optimizer
        logs = {"train/step_time_s": dt, "train/forward_passes": float(m.forward_passes),
                "train/backward_passes": float(m.backward_passes)}
        if math.isfinite(m.last_lower):
            logs["lower/loss"] = m.last_lower
        # the upper step's tags (upper/*, on upper steps only) go straight to the logger: Lightning's on_step
        # cache would repeat them every step
        if m.last.metrics and self.logger is not None:
            self.logger.log_metrics(m.last.metrics, step=self.global_step)
        self.log_dict(logs, on_step=True, prog_bar=False)

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self._data().heldout_tasks:
            return
        res = self.adapt_all()
        row = {"step": self.global_step}
        for name, v in res.items():
            for f in HELD_OUT_FIELDS:
                self.log(f"heldout/{name}/{f}", v[f])
            row[name] = {f: v[f] for f in HELD_OUT_FIELDS}
        for f in ("adapted", "adapted_loss"):
            self.log(f"heldout/mean_{f}", sum(v[f] for v in res.values()) / len(res))
            if self.baseline and all(f in v for v in self.baseline.values()):  # a checkpoint from before losses
                self.log(f"heldout/mean_base_{f}", sum(v[f] for v in self.baseline.values()) / len(self.baseline))
        self.adaptation.append(row)

    def validation_record(self) -> dict:
        """What checkpoints/validated.json keeps of the validation just done (l2o.integrations.lightning.validation):
        its row, which a checkpoint saved at its step (before it) lacks."""
        return {"adaptation": self.adaptation[-1] if self.adaptation else None}

    def restore_validation_record(self, record: dict) -> None:
        """The interrupted run validated after the checkpoint this run resumed from: its row, not a second one."""
        row = record.get("adaptation")
        if row is not None and not any(r["step"] == row["step"] for r in self.adaptation):
            self.adaptation.append(row)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {}  # everything lives in the optimizer state (copies, Adam, backbone log)
        checkpoint["l2o"] = {"fingerprint": self.info.fingerprint, "baseline": self.baseline,
                             "adaptation": self.adaptation, "method": "bilevel-zofo-meta"}

    def on_load_checkpoint(self, checkpoint):
        meta = checkpoint.get("l2o", {})
        if self.info is not None and meta.get("fingerprint") != self.info.fingerprint:
            raise UserError("this checkpoint was made for a different base model (fingerprint mismatch)")
        self.baseline = dict(meta.get("baseline", {}))
        self.adaptation = list(meta.get("adaptation", []))

    # ------------------------------------------------------------------ the artefact
    def training_summary(self) -> dict:
        """What `meta_train` writes to results.json (filled at the end of fit)."""
        return dict(self.results)

    def on_fit_end(self):
        if self.global_step >= self.trainer.max_steps:  # not when Ctrl-C stopped it early: nothing half-trained leaves
            self.results = self.final_results()

    def final_results(self) -> dict:
        """Final held-out adaptation against the base's, the training record and the counters."""
        dm, hp = self._data(), self.hparams
        final = self.adapt_all() if dm.heldout_tasks else {}
        summary = {name: {**{f"meta_{f}": v[f] for f in HELD_OUT_FIELDS},
                          **{f"base_{f}": self.baseline.get(name, {}).get(f) for f in HELD_OUT_FIELDS}}
                   for name, v in final.items()}
        metrics = {}
        for name, v in summary.items():
            for f in ("adapted", "adapted_loss"):
                metrics[f"{name}_{f}"] = round(v[f"meta_{f}"], 4)
                if v[f"base_{f}"] is not None:
                    metrics[f"{name}_base_{f}"] = round(v[f"base_{f}"], 4)
        training = {"method": "bilevel-zofo", "tasks": [t["name"] for t in dm.train_tasks],
                    "heldout_tasks": [t["name"] for t in dm.heldout_tasks], "steps": self.global_step,
                    "upper_steps": self.method.counters["upper_steps"], "peft": hp.peft,
                    "hyperparameters": {k: hp[k] for k in ("lam", "lower_lr", "upper_lr", "theta_lr", "eps", "t_low",
                                                           "one_sided", "num_directions", "tasks_per_step",
                                                           "batch_size", "seed")},
                    "metrics": metrics, **self._card_fields(final, summary)}
        return {"heldout": summary, "training": training, "adaptation": list(self.adaptation),
                "forward_passes": self.method.forward_passes, "backward_passes": self.method.backward_passes}

    def _card_fields(self, final: dict, summary: dict) -> dict:
        """What the zoo's model card shows (zoo/card.py): how the meta-init was made and its held-out result."""
        hp = self.hparams
        rows = [{"task": name, "value": v["meta_adapted"], "baseline_value": v["base_adapted"],
                 "difference": None if v["base_adapted"] is None else v["meta_adapted"] - v["base_adapted"]}
                for name, v in summary.items()]
        metric = next(iter(final.values()))["metric"] if final else None
        evaluation = {"summary": f"Quick adaptation of each held-out task ({hp.adapt_steps} AdamW steps, lr "
                                 f"{hp.adapt_lr}, fresh {hp.peft} adapter) from the meta-initialisation and from the "
                                 "base. One seed, so no interval.",
                      "baseline": "the same adaptation from the base", "metric": metric, "seeds": [hp.seed],
                      "rows": rows} if rows else {}
        return {"estimator": "Bilevel-ZOFO: first-order PEFT steps inside, ZO steps on the backbone outside "
                             "(arXiv 2502.03604)",
                "unroll": hp.t_low,
                "inner_optimizer": {"name": f"first-order {hp.peft} steps", "lr": hp.lower_lr},
                "outer_optimizer": {"name": "ZO-SGD on the backbone", "lr": hp.theta_lr, "eps": hp.eps},
                "evaluation": evaluation,
                "provenance": {"made_by": f"meta_train --method bilevel-zofo --base {hp.base} (this project)"}}

    def export_artefact(self, directory, license: str = "apache-2.0") -> Path | None:
        """The meta-init artefact (the backbone's change from the base) in `directory`; None when the
        backbone did not change (e.g. theta_lr 0)."""
        from zoo.learned import save_meta_init

        delta = ledger_delta(self.method.engine, self.method.ledger)  # theta - theta_base, from the seed ledger
        if not delta:
            return None
        return save_meta_init(directory, delta, self.hparams.base, self.info.fingerprint,
                              self.results.get("training", {}), license=license)

    def report(self, summary: dict) -> list[str]:
        """The lines `meta_train` prints at the end."""
        lines = [f"meta-trained a bilevel-zofo meta-initialisation for {self.hparams.base}: "
                 f"{summary['training']['steps']} steps on {', '.join(summary['training']['tasks'])}"]
        for name, v in summary["heldout"].items():
            base = "n/a" if v["base_adapted"] is None else _adapted_text(v["base_adapted"], v.get("base_adapted_loss"))
            lines.append(f"  held-out {name}: adapted {_adapted_text(v['meta_adapted'], v.get('meta_adapted_loss'))} "
                         f"from the meta-init vs {base} from the base")
        return lines
