"""Single-task Bilevel-ZOFO fine-tuning under Lightning (`fine_tune --optimizer bilevel-zofo`).

Mirrors `fine_tune.module.ZOFineTuneModule`: manual optimization, one global step per training step
through Lightning's optimizer wrapper (so `global_step`, `max_steps`, checkpoint and validation
intervals work), the HF model in eval mode throughout, and the batches of step t a pure function of
(data seed, t). The task's training sample is split 2:1 (seeded by the data seed) into D_g (lower
level and penalty) and D_f (upper objective).

Checkpoints hold the installed upper adapter (p) as the module's state_dict, and in the optimizer
state every copy (p and w), both Adam states, the counters and the log of backbone updates (seeds and
coefficients, a few numbers per upper step): resuming replays that log onto the freshly loaded base,
which gives the backbone bit-identically, without ever storing a backbone-sized tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path


from fine_tune.module import FineTuneModuleBase
from l2o.bilevel import DEFAULTS, BilevelStreams, BilevelZOFO, check_hyperparameters, split_dg_df

BILEVEL_FLAGS = ("lam", "lower_lr", "upper_lr", "theta_lr", "eps", "t_low", "one_sided", "num_directions",
                 "theta_clip", "noise")


class BilevelFineTuneModule(FineTuneModuleBase):
    """Args: model (PEFT-wrapped: lora | prefix | prompt), tokenizer, objective, splits (train/dev/eval),
    bilevel_kwargs (BilevelZOFO's: lam, lower_lr, upper_lr, theta_lr, eps, t_low, one_sided,
    num_directions, theta_clip, noise), seed (directions), data_seed (D_g/D_f split and batches),
    batch_size, eval_batch_size, steps, fingerprint (of the base; checked on resume)."""

    checkpoint_method = "bilevel-zofo"

    def __init__(self, model, tokenizer, objective, splits, bilevel_kwargs: dict | None = None, seed: int = 0,
                 data_seed: int = 0, batch_size: int = 16, eval_batch_size: int = 16, steps: int = 1000,
                 fingerprint: str = ""):
        super().__init__(model, tokenizer, objective, splits, seed, data_seed, eval_batch_size, steps, fingerprint)
        self.bilevel_kwargs = {**DEFAULTS, **(bilevel_kwargs or {})}
        self.d_g, self.d_f = split_dg_df(splits.train, data_seed)
        self.stream = BilevelStreams([(self.d_g, self.d_f)], batch_size, self.bilevel_kwargs["t_low"], 1, data_seed)
        self._method: BilevelZOFO | None = None

    @property
    def method(self) -> BilevelZOFO:
        if self._method is None:
            self._method = BilevelZOFO(self.model, self.tokenizer, self.objective, num_tasks=1, seed=self.seed,
                                       **self.bilevel_kwargs)
        return self._method

    def configure_optimizers(self):
        return self.method

    def training_step(self, _, batch_idx):
        step = self.global_step
        opt = self.optimizers()
        t0 = time.perf_counter()
        opt.step(closure=lambda: self.stream.batch(step))
        dt = time.perf_counter() - t0
        raw: BilevelZOFO = opt.optimizer
        up = raw.last_upper
        row = {"step": step, "loss": raw.last_lower, "forwards": raw.forward_passes,
               "backwards": raw.backward_passes, "step_time_s": dt}
        logs = {"train/forward_passes": float(raw.forward_passes), "train/backward_passes": float(raw.backward_passes),
                "train/step_time_s": dt, "train/skipped_steps": float(raw.counters["skipped"])}
        if math.isfinite(raw.last_lower):
            logs["lower/loss"] = raw.last_lower
        if up is not None and not up.skipped:
            row.update(upper_loss=up.upper_loss[0], penalty=up.penalty[0], objective=up.objective[0],
                       projected_grad=up.projected_grads[0])
            # sparse metrics go straight to the logger: Lightning's on_step cache would repeat them every step
            if self.logger is not None:
                self.logger.log_metrics({"upper/loss": up.upper_loss[0], "upper/lower_g_loss": up.lower_g_loss[0],
                                         "upper/upper_g_loss": up.upper_g_loss[0], "upper/penalty": up.penalty[0],
                                         "upper/objective": up.objective[0],
                                         "upper/projected_grad": up.projected_grads[0]}, step=self.global_step)
        self.history.append(row)
        self.log_dict(logs, on_step=True, prog_bar=False)
        self.log("loss", raw.last_lower if math.isfinite(raw.last_lower) else float("nan"), prog_bar=True,
                 logger=False)

    def export(self, path: Path, tokenizer=None, base: dict | None = None) -> Path:
        """The fine-tuned model: the adapter (`save_pretrained`), the backbone's change from the base
        (`backbone_delta.safetensors`, float32, regenerated from the update log) and `base.json`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        delta = self.method.backbone_delta()
        if delta:
            save_file({k: v.contiguous() for k, v in delta.items()}, str(path / "backbone_delta.safetensors"),
                      metadata={"base_fingerprint": self.fingerprint})
        (path / "base.json").write_text(json.dumps({**(base or {}), "fingerprint": self.fingerprint,
                                                    "method": "bilevel-zofo",
                                                    "backbone_delta": "backbone_delta.safetensors" if delta else None},
                                                   indent=1))
        return path


def check_bilevel_kwargs(kwargs: dict) -> dict:
    """Defaults filled in, unknown names and bad values refused (ValueError, one sentence)."""
    unknown = sorted(set(kwargs) - set(BILEVEL_FLAGS))
    if unknown:
        raise ValueError(f"bilevel-zofo does not take {', '.join(unknown)}; it takes {', '.join(BILEVEL_FLAGS)}")
    out = {**DEFAULTS, **{k: v for k, v in kwargs.items() if v is not None}}
    check_hyperparameters(**{k: v for k, v in out.items() if k != "noise"})
    return out


def run_bilevel(cfg, bilevel: dict | None = None, init: str | None = None, log=print) -> dict:
    """One Bilevel-ZOFO fine-tuning run described by a `fine_tune.config.FineTuneConfig` (its optimizer
    fields are ignored; `cfg.eps` is used when set) plus `bilevel` (BILEVEL_FLAGS) and an optional zoo
    meta-initialisation `init` applied to the base before the adapter is attached. Writes the same
    artefacts as `fine_tune.run.run` (results.json, history.json, loss.png, tb/, checkpoints/, model/)."""
    from fine_tune.config import ConfigError
    from fine_tune.run import (_check_out_dir, _peak_memory_bytes, _quiet_libraries, evaluate_splits, make_trainer,
                               plot_history, prepare)

    if init is not None and cfg.init != init:
        cfg = dataclasses.replace(cfg, init=init)
    bilevel = dict(bilevel or {})
    if cfg.eps is not None and "eps" not in bilevel:
        bilevel["eps"] = cfg.eps
    try:
        kwargs = check_bilevel_kwargs(bilevel)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not cfg.task:
        raise ConfigError("choose a task with --task (e.g. --task boolq); `fine_tune --list-tasks` lists them")
    if cfg.peft not in ("lora", "prefix", "prompt"):
        raise ConfigError(f"bilevel-zofo needs --peft lora, prefix or prompt (the inner first-order level), "
                          f"not {cfg.peft!r}")
    from l2o.models import resolve_base
    from l2o.tasks import get_task

    resolve_base(cfg.base)
    task = get_task(cfg.task)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{task.name}-bilevel-zofo-{cfg.peft}-s{cfg.seed}"
    _check_out_dir(out, cfg.resume)
    now = {"config": {k: v for k, v in cfg.to_dict().items() if k != "resume"}, "bilevel": kwargs, "init": init}
    if cfg.resume and (out / "bilevel.json").exists():
        before = json.loads((out / "bilevel.json").read_text())
        if before != json.loads(json.dumps(now)):
            raise ConfigError("--resume with a different configuration; use the original flags")

    t_start = time.perf_counter()
    _quiet_libraries()


    device, objective, splits, model, tokenizer, info, zero_shot = prepare(cfg, task, out, log)
    module = BilevelFineTuneModule(model, tokenizer, objective, splits, kwargs, cfg.seed, cfg.data_seed,
                                   cfg.batch_size, cfg.eval_batch_size, cfg.steps, info.fingerprint)
    log(f"task {task.name}: {len(module.d_g)} D_g / {len(module.d_f)} D_f / {len(splits.dev)} dev / "
        f"{len(splits.eval)} eval; base {info.model_id}; peft {cfg.peft}; bilevel-zofo {kwargs}")
    (out / "bilevel.json").write_text(json.dumps(now, indent=1))
    ckpt_dir = out / "checkpoints"
    trainer, tb = make_trainer(cfg, out, device)
    t_fit = time.perf_counter()
    trainer.fit(module, ckpt_path=str(ckpt_dir / "last.ckpt") if cfg.resume else None)
    fit_s = time.perf_counter() - t_fit
    final = evaluate_splits(module, splits)
    for split, v in final.items():
        tb.experiment.add_scalar(f"final/{split}_{module.metric}", v, trainer.global_step)
    tb.experiment.flush()
    method = module.method
    losses = [r["loss"] for r in module.history if r["loss"] == r["loss"]]
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    results = {
        "config": cfg.to_dict(), "optimizer": "bilevel-zofo", "bilevel": kwargs, "init": init,
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed}, "base": info.to_dict(), "task": task.name,
        "metric": module.metric, "splits": {"d_g": len(module.d_g), "d_f": len(module.d_f), "dev": len(splits.dev),
                                            "eval": len(splits.eval)},
        "zero_shot": zero_shot, "final": final, "steps": trainer.global_step,
        "upper_steps": method.counters["upper_steps"], "forward_passes": method.forward_passes,
        "backward_passes": method.backward_passes, "skipped_steps": method.counters["skipped"],
        "final_train_loss": sum(tail) / len(tail) if tail else None, "fit_time_s": fit_s,
        "wall_time_s": time.perf_counter() - t_start, "peak_memory_bytes": _peak_memory_bytes(device),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "paths": {"tensorboard": str(out / "tb"), "plot": str(out / "loss.png"), "history": str(out / "history.json"),
                  "model": str(out / "model") if cfg.save_model else None},
    }
    (out / "history.json").write_text(json.dumps(module.history))
    plot_history(module.history, out / "loss.png", f"bilevel-zofo on {task.name} ({info.model_id}, {cfg.peft})")
    if cfg.save_model:
        module.export(out / "model", tokenizer, {"base": cfg.base, "model_id": info.model_id, "peft": cfg.peft})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results
