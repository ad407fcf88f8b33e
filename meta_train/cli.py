"""`meta_train`: learn an optimizer for a base LLM on a family of tasks, then publish it to the zoo.

    meta_train --base smollm2-135m --tasks sports_understanding strategyqa implicatures \\
               --holdout winowhy --max_steps 300 --out runs/meta-smollm2 --registry ./zoo-registry

A LightningCLI: every --model.*, --data.* and --trainer.* option can also come from YAML (--config run.yaml);
--print_config shows the resolved configuration; the run folder gets config.yaml, TensorBoard logs (tb/),
checkpoints (policy + its optimizer state) and the exported policy (policy/). --resume continues a run.
Heavy libraries are imported only after --help has been answered.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from l2o.integrations.lightning.folder import RunFolder, check_resume, share_folder
from l2o.integrations.lightning.interrupt import finish_fit, interrupt_callback
from l2o.stop import exit_code, stopped, terminate_as_interrupt

METHODS = ("zo-finetuner", "bilevel-zofo")

HELP = """usage: meta_train [--method {zo-finetuner,bilevel-zofo}] --base BASE [--tasks T [T ...]] [--holdout T [T ...]]
                  [--estimator {lookahead,es,pes}] [--device-map {auto,balanced,sequential} | --offload cpu]
                  [--max_steps N] [--out DIR] [--registry DIR]
                  [--publish_name NAME] [--publish_version V]
                  [--resume] [--config FILE] [--print_config] [--dry-run [--gpu-memory GB]]
                  [--model.* ...] [--data.* ...] [--trainer.* ...]

Meta-train a learned zeroth-order optimizer for a base LLM and publish it to the zoo.

  --method           zo-finetuner (default: a per-block perturbation policy, arXiv 2510.00419) or
                     bilevel-zofo (a meta-learned initialisation, arXiv 2502.03604; meta_train.bilevel)
  --base             base model: alias (smollm2-135m, opt-125m, ...), hub id or local folder
  --tasks            training tasks (default: every offline task); see `fine_tune --list-tasks`
  --holdout          tasks held out for meta-validation (the deployed method with the policy vs without, equal forwards)
  --estimator        the policy's meta-gradient (zo-finetuner): lookahead (default: the paper's one-step
                     look-ahead, backprop through the LLM), es (antithetic ES over K-step unrolls of the
                     deployed optimizer, forward passes only) or pes (Persistent ES over whole inner runs)
  --device-map       es/pes: auto, balanced or sequential: the LLM's layers spread over this process's GPUs
  --offload cpu      es/pes: the LLM's weights in CPU memory, each transformer block streamed to the device
  --max_steps        meta-training steps
  --out              run folder (default runs/meta-<method>-<base>)
  --registry         zoo registry folder to publish the result into (default $L2O_ZOO_REGISTRY;
                     without either the artefact stays in <out>/policy)
  --publish_name     zoo entry name (default zo-finetuner / meta-init); --publish_version (default: next)
  --resume           continue the run in --out from checkpoints/last.ckpt
  --config FILE      YAML with any of these options; --print_config prints the resolved configuration
  --dry-run          print the memory plan per device (weights, momentum, activations, policy, total) and
                     whether it fits --gpu-memory GB (default 80), offline from shipped shapes (options
                     from --config and the command line); exit 1 if not

zo-finetuner options (--model.*): lr_policy 0.1, eps 1e-3, unroll (look-ahead length T, default 1; ES/PES
  unroll K, default 4), reset_every 100, dtype auto|fp32|bf16 (auto: fp32 on the CPU, else the
  checkpoint's, fp16 as bf16), val_every 0, val_steps 20, val_lr 1e-5, val_tasks 2, seed 0; look-ahead:
  lr_llm 0.01, momentum 0.8, eta_meta 1e-6, gradient_checkpointing false; ES/PES: pairs 4, es_std 0.05,
  es_params bias|type|head|all, meta_loss final|mean, meta_batches 1, inner_lr 1e-5, scratch_dir;
  inner_method zo-finetuner (MeZO) or any zo-finetuner+<method> composition: +gv, +greedy, +bszo,
  +zo-sgd-sign, +zo-sgd-cons, +zo-sgd-mmt, +hizoo, +lozo, +lozo-m, +sparse-mezo, and inner_hparams.<name>
  (its declared hyperparameters, e.g. --model.inner_hparams.pool_size 8): what ES/PES unroll and what
  meta-validation compares with and without the policy (under the look-ahead: only the latter)
data options (--data.*): batch_size 8, num_train 200, num_dev 32, num_eval 32, max_length 128, seed 0, objective
trainer options (--trainer.*): Lightning's Trainer's; callbacks run before meta_train's own, loggers log beside
  <out>/tb, plugins join its checkpoint writer; a ModelCheckpoint, logger false and default_root_dir are refused

`meta_train --help-all` lists every option with its documentation (imports Lightning; a few seconds).
"""


def _fail(message: str, code: int = 2) -> int:
    print(f"meta_train: error: {message}", file=sys.stderr)
    return code


def _method_and_rest(argv: list[str]) -> tuple[str | None, list[str]]:
    method, rest, i = "zo-finetuner", [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--method":
            if i + 1 >= len(argv):
                return None, argv
            method, i = argv[i + 1], i + 2
            continue
        if a.startswith("--method="):
            method = a.split("=", 1)[1]
            i += 1
            continue
        if a in ("--tasks", "--holdout", "--data.tags"):  # space-separated names -> one JSON list
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            rest.append(f"{a}={json.dumps(argv[i + 1:j])}")
            i = j
            continue
        if a == "--device-map" or a.startswith("--device-map="):  # fine_tune's spelling of the flag
            a = a.replace("--device-map", "--device_map", 1)
        if a == "--resume" and (i + 1 >= len(argv) or argv[i + 1].lower() not in ("true", "false")):
            a = "--resume=true"
        rest.append(a)
        i += 1
    return method, rest


def _classes(method: str):
    if method == "zo-finetuner":
        from meta_train.data import TaskFamilyData
        from meta_train.module import ZOFineTunerMeta

        return ZOFineTunerMeta, TaskFamilyData
    from meta_train.bilevel import BilevelMetaInit, BilevelTaskData

    return BilevelMetaInit, BilevelTaskData


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause: l2o's `UserError` (the zoo's errors are UserErrors) and LightningCLI's parse errors."""
    from jsonargparse import ArgumentError

    from l2o.errors import UserError

    return UserError, ArgumentError


def default_out(method: str, base) -> str:
    return f"runs/meta-{method}-{Path(str(base)).name}"


def _trainer_defaults() -> dict:
    return {"accelerator": "auto", "devices": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "log_every_n_steps": 1, "enable_model_summary": False, "max_epochs": -1,
            "enable_progress_bar": sys.stderr.isatty() or os.environ.get("L2O_PROGRESS") == "1"}


def _add_run_arguments(parser) -> None:
    """meta_train's own top-level options (the model's and data's come from their signatures)."""
    parser.add_argument("--method", default="zo-finetuner", choices=list(METHODS),
                        help="which learned optimizer to meta-train")
    parser.add_argument("--base", default="smollm2-135m", help="base model: alias, hub id or local folder")
    parser.add_argument("--tasks", type=Optional[list[str]], default=None, help="training tasks")
    parser.add_argument("--holdout", type=Optional[list[str]], default=None, help="held-out tasks")
    parser.add_argument("--estimator", default="lookahead", help="meta-gradient estimator: lookahead, es or pes")
    parser.add_argument("--device_map", type=Optional[str], default=None,
                        help="ES/PES: auto, balanced or sequential: the LLM's layers over this process's GPUs")
    parser.add_argument("--offload", type=Optional[str], default=None,
                        help="ES/PES: cpu: the LLM's weights in CPU memory, blocks streamed to the device")
    parser.add_argument("--max_steps", type=int, default=100, help="meta-training steps")
    parser.add_argument("--out", type=str | None, default=None, help="run folder")
    parser.add_argument("--registry", type=str | None, default=None, help="zoo registry to publish into")
    parser.add_argument("--publish_name", type=str | None, default=None, help="zoo entry name")
    parser.add_argument("--publish_version", type=str | None, default=None, help="zoo entry version")
    parser.add_argument("--license", default="apache-2.0", help="license recorded in the model card")
    parser.add_argument("--save_every", type=int | None, default=None, help="steps between checkpoints")
    parser.add_argument("--resume", type=bool, default=False, help="continue the run in --out")


def _build_cli(model_cls, data_cls, method: str, args: list[str]):
    import inspect

    from lightning.pytorch.cli import LightningCLI

    from l2o.integrations.lightning.progress import show_progress_bar

    model_params = set(inspect.signature(model_cls.__init__).parameters)
    data_params = set(inspect.signature(data_cls.__init__).parameters)

    class MetaTrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            _add_run_arguments(parser)
            if "base" in model_params:
                parser.link_arguments("base", "model.base")
            if "tasks" in data_params:
                parser.link_arguments("tasks", "data.tasks")
            if "holdout" in data_params:
                parser.link_arguments("holdout", "data.holdout")
            for name in ("estimator", "device_map", "offload"):
                if name in model_params:
                    parser.link_arguments(name, f"model.{name}")
            parser.link_arguments("max_steps", "trainer.max_steps")

        def before_instantiate_classes(self):  # refuse bad step counts before the base model is loaded
            _check_steps(self.config)
            from l2o.errors import ConfigError

            if "estimator" not in model_params and self.config["estimator"] != "lookahead":
                raise ConfigError(f"--estimator is the zo-finetuner policy's; --method {method} has none")
            if "device_map" not in model_params and (self.config["device_map"] or self.config["offload"]):
                raise ConfigError(f"--device-map and --offload are the ES/PES estimators'; --method {method} has none")
            from l2o.integrations.lightning.accelerators import check_accelerator

            check_accelerator(self.config["trainer.accelerator"], "--trainer.accelerator", gpu_is_cuda=False)
            if "device" in model_params:
                check_accelerator(self.config["model.device"], "--model.device", device=True)

        def instantiate_trainer(self, **kwargs):
            from lightning.pytorch.loggers import TensorBoardLogger

            from l2o.errors import ConfigError
            from l2o.models import resolve_base

            # after the module's own checks (they come first), a mistyped --base is named before anything is
            # fetched: Lightning sets the data up before the model, and on a fresh machine that is the BIG-bench
            # download (358 MB)
            resolve_base(self.config["base"])

            from l2o.integrations.lightning.checkpoints import AtomicCheckpointIO, LastCheckpoint

            if not self.config["out"]:
                self.config["out"] = default_out(method, self.config["base"])
            out = Path(self.config["out"])
            every = self.config["save_every"] or max(1, self.config["max_steps"] // 10)
            logger = TensorBoardLogger(str(out), name="tb", version="", default_hp_metric=False)
            ckpt = LastCheckpoint(out / "checkpoints", every)  # written atomically (AtomicCheckpointIO)
            val_every = self.config.get("model.val_every") if method == "bilevel-zofo" else 0
            if val_every:  # held-out adaptation every val_every steps through Lightning's validation loop
                kwargs.update(val_check_interval=val_every, check_val_every_n_epoch=None, limit_val_batches=1)
            self.stop_cb = interrupt_callback(out / "checkpoints" / "last.ckpt")
            from l2o.integrations.lightning.progress import ProgressLines

            # LightningCLI lets the callbacks=, logger= and plugins= given here replace the configured ones: the user's
            # (--trainer.* or trainer: in --config) are passed on, callbacks first, loggers and plugins after ours
            user = _user_trainer_options(self._get(self.config_init, "trainer", default={}))
            callbacks = [*user["callbacks"], ckpt, self.stop_cb] + ([] if show_progress_bar() else [ProgressLines()])
            if val_every:  # a resumed run does the validation its checkpoint preceded
                from l2o.integrations.lightning.validation import owed_validation

                callbacks.append(owed_validation(val_every, out / "checkpoints"))
            from lightning.fabric.utilities.exceptions import MisconfigurationException

            try:
                return super().instantiate_trainer(logger=[logger, *user["logger"]], callbacks=callbacks,
                                                   default_root_dir=str(out),
                                                   plugins=[AtomicCheckpointIO(), *user["plugins"]], **kwargs)
            except MisconfigurationException as err:  # --trainer.* this machine cannot honour: one sentence
                raise ConfigError(f"--trainer options: {err}") from None

    return MetaTrainCLI(model_cls, data_cls, args=args, run=False, trainer_defaults=_trainer_defaults(),
                        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                        seed_everything_default=False,
                        parser_kwargs={"exit_on_error": False, "prog": "meta_train",
                                       "description": f"meta_train --method {method}"})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(HELP, end="")
        return 0
    if "--dry-run" in argv:  # the memory plan per device, offline, from shapes (meta_train.plan)
        from meta_train.plan import main as dry_run

        return dry_run(argv)
    method, rest = _method_and_rest(argv)
    if method not in METHODS:
        return _fail(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    rest = ["--help" if a == "--help-all" else a for a in rest]
    user_errors = _user_errors()
    terminate_as_interrupt()  # a scheduler's SIGTERM: finish the step, save, stop, as Ctrl-C does
    try:
        from l2o.integrations.lightning.progress import quiet_libraries

        quiet_libraries()
        from meta_train.plan import check_config_files

        check_config_files(rest)
        model_cls, data_cls = _classes(method)
        try:
            cli = _build_cli(model_cls, data_cls, method, rest + ["--method", method])
        except SystemExit as exit_:  # --help-all / --print_config exit 0 by design
            return int(exit_.code or 0)
        return _run(cli, method)
    except KeyboardInterrupt as err:  # RunInterrupted (l2o.integrations.lightning) says if --resume can continue
        print(f"meta_train: {str(err) or stopped(err) + '; continue with --resume'}", file=sys.stderr)
        return exit_code(err)
    except user_errors as err:  # one sentence; anything else is a bug and keeps its traceback
        text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
        if not isinstance(err, user_errors[0]):  # a parser's message may run long; ours are one sentence
            text = text[:400]
        return _fail(text or type(err).__name__, getattr(err, "exit_code", 2))


def _user_trainer_options(trainer: dict) -> dict:
    """The user's --trainer.callbacks, --trainer.logger and --trainer.plugins, each as a list (meta_train keeps its
    own besides). Refused in one line: a ModelCheckpoint (the run's checkpoint is meta_train's own), --trainer.logger
    false (meta_train always logs to <out>/tb) and --trainer.default_root_dir (that is --out)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from l2o.errors import ConfigError

    def listed(value) -> list:
        return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]

    if trainer.get("default_root_dir") is not None:
        raise ConfigError("--trainer.default_root_dir is not supported: the run's folder is --out")
    if trainer.get("logger") is False:
        raise ConfigError("--trainer.logger false is not supported: meta_train always logs to <out>/tb (TensorBoard)")
    for cb in listed(trainer.get("callbacks")):
        if isinstance(cb, ModelCheckpoint):
            raise ConfigError(f"--trainer.callbacks: {type(cb).__name__} is not supported: meta_train checkpoints "
                              "itself (<out>/checkpoints/last.ckpt every --save_every steps, which --resume reads)")
    return {"callbacks": listed(trainer.get("callbacks")),
            "logger": [] if trainer.get("logger") is True else listed(trainer.get("logger")),
            "plugins": listed(trainer.get("plugins"))}


def _check_steps(cfg) -> None:
    from l2o.errors import ConfigError

    steps, every = cfg["max_steps"], cfg["save_every"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--max_steps must be a positive integer, got {steps!r}")
    if every is not None and (isinstance(every, bool) or every < 1):
        raise ConfigError(f"--save_every must be a positive integer, got {every!r}")


# --model.* and --data.* options a resumed run may change: where the weights live or park, and the log cadence
RESUMABLE = ("model.device_map", "model.offload", "model.scratch_dir", "model.log_every")
LINKED = {"model.base": "--base", "model.estimator": "--estimator", "data.tasks": "--tasks",
          "data.holdout": "--holdout"}


def _check_same_run(saved: Path, options: str) -> None:
    """--resume continues the run in --out only with its --model.* and --data.* options (its method, base, tasks and
    hyperparameters), as fine_tune's does: a resume with another --model.lr_policy, say, ran on and overwrote the
    saved config.yaml, neither the run it continued nor a new one. --max_steps (a longer run), --save_every,
    --trainer.* (the process layout), the registry and publish options may change, and the `RESUMABLE` ones.
    Options the saved file lacks (a run from before they existed) are not compared."""
    import yaml

    from l2o.config_files import read_saved_run
    from l2o.errors import ConfigError

    old = read_saved_run(saved)

    def flat(tree, prefix=""):
        items = tree.items() if isinstance(tree, dict) else ()
        return {k: v for key, value in items
                for k, v in (flat(value, f"{prefix}{key}.").items() if isinstance(value, dict)
                             else [(f"{prefix}{key}", value)])}

    before, now = flat(old), flat(yaml.safe_load(options))
    diff = sorted(k for k in before.keys() & now.keys()
                  if k.split(".")[0] in ("model", "data") and k not in RESUMABLE and before[k] != now[k])
    if diff:
        flags = ", ".join(LINKED.get(k, f"--{k}") for k in diff)  # as the command line names them
        raise ConfigError(f"--resume with a different configuration ({flags}); use the "
                          f"original options (saved in {saved})")


def _run(cli, method: str) -> int:
    """Meta-train in --out, held for this run alone (l2o.integrations.lightning.folder), then export and publish."""
    # rank 0 holds the folder for the whole multi-device run (its other ranks are part of the same run)
    folder = RunFolder(cli.config["out"], holder=cli.trainer.global_rank == 0,
                       log=lambda msg: print(f"meta_train: {msg}", file=sys.stderr, flush=True))
    cli.trainer.callbacks.append(share_folder(folder))
    with folder:
        return _run_in(cli)


def _run_in(cli) -> int:
    from l2o.config_files import save_run
    from l2o.errors import ConfigError

    cfg = cli.config
    out = Path(cfg["out"])
    last = out / "checkpoints" / "last.ckpt"
    check_resume(out, cfg["resume"])
    trainer = cli.trainer
    options = cli.parser.dump(cfg, skip_none=False, skip_link_targets=False)
    if cfg["resume"]:
        _check_same_run(out / "config.yaml", options)
        from l2o.integrations.lightning.checkpoints import LastCheckpoint, cadence_change

        saver = next(cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint))
        changed = cadence_change(saver, last, "--save_every")
        if changed and trainer.global_rank == 0:
            print(f"meta_train: {changed}", file=sys.stderr, flush=True)
    # rank 0 (the holder, which made --out) writes it; another rank of a multi-device run may get here before rank 0
    # has claimed --out, and whatever it wrote would count as there before the run: left behind by a failed run
    if trainer.global_rank == 0:
        save_run(out / "config.yaml", options)
    finish_fit(lambda: trainer.fit(cli.model, datamodule=cli.datamodule,
                                   ckpt_path=str(last) if cfg["resume"] else None),
               trainer, cli.stop_cb)
    if trainer.global_rank != 0:  # multi-device runs: rank 0 writes the outputs
        return 0
    if trainer.global_step < 1:  # never export or publish an untrained optimizer
        raise ConfigError(f"meta-training in {out} ran no step, so nothing was exported or published")
    summary, registry = _publish(cli.model, out, cfg)
    history = getattr(cli.model, "run_history", dict)()  # per-step rows and every meta-validation
    (out / "results.json").write_text(json.dumps({**summary, **history}, indent=1, default=str))
    for line in cli.model.report(summary):
        print(line)
    print(f"  artefact:    {summary['artefact']}")
    if summary["published"]:
        print(f"  published:   {summary['published']} in {registry}")
    print(f"  TensorBoard: tensorboard --logdir {out / 'tb'}")
    return 0


def _publish(module, out: Path, cfg) -> tuple[dict, str | None]:
    """The one place a meta-trained artefact is written and published: the module writes its artefact
    folder (policy/ or meta-init/), and it goes into the registry (--registry or $L2O_ZOO_REGISTRY)."""
    artefact = module.export_artefact(out / module.artefact_dir, license=cfg["license"])
    registry = cfg["registry"] or os.environ.get("L2O_ZOO_REGISTRY")
    entry = None
    if registry and artefact is not None:
        from zoo import publish

        entry = publish(artefact, registry, name=cfg["publish_name"], version=cfg["publish_version"],
                        license=cfg["license"])
    summary = module.training_summary()
    summary["artefact"] = str(artefact) if artefact is not None else None
    summary["published"] = entry["id"] if entry else None
    return summary, registry


if __name__ == "__main__":
    raise SystemExit(main())
