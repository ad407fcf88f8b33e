"""The fine-tuning run's configuration: defaults, YAML, validation, and the resolved optimizer kwargs.

Kept free of torch/transformers/lightning imports so `fine_tune --help` and `--print-config` are fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

from l2o import catalog
from l2o.config_files import read_yaml_mapping
from l2o.errors import ConfigError

# the optimizers' declared hyperparameters (l2o/optim/catalog.json, made from the classes): one config field
# and one flag each, None meaning "the chosen method's paper default"; `noise` (the engine's source) beside them
HYPERPARAMETERS = catalog.flags()
OPTIMIZER_FLAGS = (*HYPERPARAMETERS, "noise")
PEFT_MODES = ("full", "lora", "prefix", "prompt")
DTYPES = ("auto", "fp32", "bf16", "fp16")
ACCELERATORS = ("auto", "cpu", "gpu")
STRATEGIES = ("auto", "ddp")
PARALLEL = ("auto", "data", "direction")
# the run's layout over processes: resuming with other values is allowed (the math does not depend on them)
# and over devices inside a process (l2o.placement: bit-identical wherever the weights are)
LAYOUT_FLAGS = ("devices", "num_nodes", "strategy", "accelerator", "parallel", "check_every", "device_map", "offload",
                "gpus", "gpu_memory")
DEVICE_MAPS = ("auto", "balanced", "sequential")
OFFLOADS = ("cpu",)
LR_FLAGS = tuple(n for n in HYPERPARAMETERS if n == "lr" or n.endswith("_lr"))
# Step sizes above MAX_LR are refused: every method here diverges there (the papers and this project use
# 1e-7 .. 1e-2), and a typo such as `--lr 1e30` would otherwise run and wreck the model.
MAX_LR = 1.0
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_IS_TYPE = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}
CHECKPOINT_KINDS = ("ledger", "weights")
# --checkpoint's default: "ledger" for full-parameter runs with at least this many trainable parameters
# (a 200 MB fp32 weights checkpoint), "weights" otherwise (PEFT adapters and small models are cheap to store)
LEDGER_THRESHOLD = 50_000_000
# the fields a run's data sample depends on (`RunOptions.sample`): runs that agree on them train and are evaluated
# on the same examples
SAMPLE_FIELDS = ("task", "source", "data_seed", "num_train", "num_dev", "num_eval", "eval_seed", "small_pool")


@dataclass
class RunOptions:
    """Everything of a run but the optimizer's hyperparameters (FineTuneConfig adds those)."""

    # what to fine-tune
    base: str = "smollm2-135m"
    task: str | None = None
    source: str | None = None
    peft: str = "full"
    dtype: str = "auto"   # auto: fp32 on the CPU, the checkpoint's dtype on an accelerator (l2o.models.resolve_dtype)
    device: str = "auto"
    # the optimizer; its hyperparameters are the fields FineTuneConfig adds (None -> the paper's default)
    optimizer: str = "mezo"
    policy: str | None = None    # zo-finetuner*: learned policy (zoo id, artefact folder or file:// URL)
    policy_size_rule: str | None = None  # zo-finetuner*: n_b of the normaliser, "numel" (E||d||^2/D = 1) or "authors";
    # None: the rule the policy was meta-trained under (its artefact's arch.size_rule)
    noise: str | None = None     # the engine's noise source (l2o.noise.SOURCES: gaussian | table); None: gaussian
    # the run
    steps: int = 1000
    batch_size: int = 16
    eval_every: int = 0          # 0: evaluate only before and after training
    save_every: int | None = None  # checkpoint cadence; default: eval_every, else steps // 10
    seed: int = 0
    data_seed: int = 0
    num_train: int = 1000
    num_dev: int = 500
    num_eval: int = 1000
    eval_seed: int | None = None  # None: the eval sample is drawn with data_seed (MeZO); an int fixes it
    small_pool: str = "mezo"      # train/dev cut of a pool < num_train + num_dev: "mezo" or "shrink"
    objective: str | None = None
    max_length: int = 2048        # MeZO's; --max-length 256 cuts long prompts for faster CPU runs
    eval_batch_size: int = 16
    out: str | None = None
    save_model: bool | str = True  # true (as --checkpoint), false, "weights" or "ledger"
    checkpoint: str | None = None  # "ledger" | "weights"; None -> ledger for full runs >= LEDGER_THRESHOLD params
    zero_shot: bool = True        # evaluate the base before training (benchmarks compute it once per task)
    resume: bool = False
    # processes (Lightning DDP; fine_tune/distributed.py): N devices per node x M nodes
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"        # "ddp" (or "auto": ddp when devices x num_nodes > 1)
    accelerator: str = "auto"     # cpu, gpu, or auto (gpu when CUDA is available)
    parallel: str = "auto"        # data | direction | auto (direction when the method's evaluations fill the ranks)
    check_every: int = 100        # steps between the ranks' weight-fingerprint comparisons (0: never)
    # a model larger than one device (l2o.placement), inside each process
    device_map: str | None = None  # auto | balanced | sequential: layers across the visible GPUs (accelerate)
    offload: str | None = None    # cpu: weights in CPU memory, each transformer block streamed to the GPU
    gpus: int | None = None       # GPUs a device map uses (default: all visible; --dry-run: the fewest that hold it)
    gpu_memory: float | None = None  # GiB per GPU the weights may take with the rest of the step (--dry-run: 80)
    # a zoo "bilevel-meta-init" backbone initialisation applied to the base before training (any optimizer)
    init: str | None = None

    def __post_init__(self):
        # `--optimizer zoo:<id>` is shorthand for `--optimizer zo-finetuner --policy <id>`
        if isinstance(self.optimizer, str) and self.optimizer.startswith("zoo:"):
            spec = self.optimizer[4:]
            if not spec:
                raise ConfigError("--optimizer zoo:<id> needs a zoo id or artefact folder after 'zoo:'")
            if self.policy not in (None, spec):
                raise ConfigError(f"--optimizer {self.optimizer} and --policy {self.policy} name different policies")
            self.optimizer, self.policy = "zo-finetuner", spec
        self._check_types()

    def _check_types(self) -> None:
        """Every value has its field's type (a YAML file can hold anything): `lr: [1, 2]`, `lr: abc` and
        `lr: true` are refused; a YAML string that reads as a number (`lr: 1e-6`) counts as that number."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = [k for k in (t.strip() for t in str(f.type).split("|")) if k in _TYPE_NAMES]
            if value is None or not kinds:
                continue
            if kinds[0] == "float" and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
                else:
                    setattr(self, f.name, value)
            if not any(_IS_TYPE[k](value) for k in kinds):  # a str allowed beside a number is checked by its user
                raise ConfigError(f"--{f.name.replace('_', '-')} must be {_TYPE_NAMES[kinds[0]]}, got {value!r}")

    def capability(self, name: str, default):
        """What the chosen method can do (l2o/optim/catalog.json: replayable, distributed, needs_adapter)."""
        known = catalog.method_names()
        return catalog.entry(self.optimizer)[name] if self.optimizer in known else default

    def sample(self, task=None):
        """The run's data sample (l2o.tasks.Splits) of `task` (a Task; default: --task by name), by MeZO's protocol
        from SAMPLE_FIELDS."""
        from l2o.tasks import sample_splits

        return sample_splits(self.task if task is None else task, seed=self.data_seed, num_train=self.num_train,
                             num_dev=self.num_dev, num_eval=self.num_eval, source=self.source,
                             eval_seed=self.eval_seed, small_pool=self.small_pool)

    def is_first_order(self) -> bool:
        from fine_tune.first_order import is_first_order

        return is_first_order(self.optimizer)

    def uses_policy(self) -> bool:
        return isinstance(self.optimizer, str) and self.optimizer.startswith("zo-finetuner")

    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def accelerator_name(self) -> str:
        """cpu or gpu: --accelerator, else from --device, else gpu when CUDA is available."""
        if self.accelerator != "auto":
            return self.accelerator
        if self.device != "auto":
            return "gpu" if self.device.startswith("cuda") else "cpu"
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"

    def _validate_layout(self) -> None:
        for name in ("devices", "num_nodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        for name, choices in (("strategy", STRATEGIES), ("parallel", PARALLEL)):  # --accelerator: _check_accelerator
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.check_every, int) or self.check_every < 0:
            raise ConfigError(f"--check-every must be an integer >= 0, got {self.check_every!r}")
        self._validate_placement()
        if self.gpu_memory is not None and not self.device_map:  # --dry-run plans any placement against it
            raise ConfigError(f"--gpu-memory {self.gpu_memory:g} budgets each GPU's layers under --device-map (and "
                              "--dry-run's plan); a run held on one device or with --offload cpu takes what the GPU "
                              "has, so drop --gpu-memory")
        if self.world_size() == 1:
            return
        if not self.capability("distributed", True):
            raise ConfigError(f"{self.optimizer} runs on one process (its steps do not split over processes); "
                              "use --devices 1")
        if self.is_first_order():
            raise ConfigError(f"{self.optimizer} (the first-order baseline) runs on one process; use --devices 1")
        if self.parallel == "data" and self.batch_size < self.world_size():
            raise ConfigError(f"--parallel data needs --batch-size >= the {self.world_size()} processes "
                              f"(one example per shard at least), got {self.batch_size}")

    def _validate_placement(self) -> None:
        if self.device_map not in (None, *DEVICE_MAPS):
            raise ConfigError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {self.device_map!r}")
        if self.offload not in (None, *OFFLOADS):
            raise ConfigError(f"--offload must be {' or '.join(OFFLOADS)}, got {self.offload!r}")
        if self.device_map and self.offload:
            raise ConfigError("choose one of --device-map (layers across GPUs) and --offload cpu (blocks streamed "
                              "from CPU memory), not both")
        if self.gpus is not None and (not isinstance(self.gpus, int) or self.gpus < 1):
            raise ConfigError(f"--gpus must be a positive integer, got {self.gpus!r}")
        if self.gpu_memory is not None and not self.gpu_memory > 0:
            raise ConfigError(f"--gpu-memory must be a positive number of GiB, got {self.gpu_memory!r}")
        if self.gpus is not None and not self.device_map:
            raise ConfigError(f"--gpus {self.gpus} is the number of GPUs --device-map spreads the layers over; add "
                              "--device-map auto, or drop --gpus")
        if self.placed() and (self.capability("needs_adapter", False) or self.is_first_order()):
            raise ConfigError(f"{self.optimizer} takes first-order steps and needs the model resident on one device; "
                              "--device-map and --offload apply to the zeroth-order optimizers")

    def _check_accelerator(self) -> None:
        """--accelerator is one of ACCELERATORS and usable here (gpu needs CUDA: it used to run on the CPU without a
        word) and agrees with --device."""
        from l2o.integrations.lightning.accelerators import check_accelerator

        check_accelerator(self.accelerator, "--accelerator", supported=ACCELERATORS)
        wants = {"gpu": ("cuda",), "cpu": ("cpu",)}.get(self.accelerator)
        if wants and self.device != "auto" and not self.device.startswith(wants):
            raise ConfigError(f"--accelerator {self.accelerator} and --device {self.device} disagree; drop one of them")

    def placed(self) -> bool:
        """The model is placed by l2o.placement (layers across devices, or offloaded)."""
        return bool(self.device_map or self.offload)

    def resolved_out(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.task}-{self.optimizer}-{self.peft}-s{self.seed}"

    def checkpoint_every(self) -> int:
        if self.save_every:
            return self.save_every
        return self.eval_every or max(1, self.steps // 10)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checkpoint_kind(self, trainable_params: int) -> str:
        """What checkpoints hold: the seed ledger (no tensors) or the trainable weights."""
        if self.checkpoint:
            return self.checkpoint
        if self.is_first_order():
            return "weights"  # a seed ledger records ZO updates only
        return "ledger" if self.peft == "full" and trainable_params >= LEDGER_THRESHOLD else "weights"

    def save_kind(self, trainable_params: int) -> str | None:
        """What --save-model writes: "weights", "ledger" or None (true follows the checkpoint kind)."""
        if self.save_model is True:
            return self.checkpoint_kind(trainable_params)
        return self.save_model or None

    def optimizer_kwargs(self) -> dict:
        """The chosen method's declared defaults (its own for --peft where it declares them), overridden by the flags
        given; refuses flags it does not take."""
        if self.is_first_order():
            from fine_tune.first_order import first_order_kwargs

            try:
                return first_order_kwargs(self.optimizer, {k: getattr(self, k) for k in OPTIMIZER_FLAGS})
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if self.optimizer not in catalog.method_names():
            from fine_tune.first_order import FIRST_ORDER

            known = sorted([*catalog.method_names(), *FIRST_ORDER])
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(known)}")
        kwargs = catalog.defaults(self.optimizer, self.peft)  # the method's own in this --peft mode, if it has them
        for name in HYPERPARAMETERS:
            value = getattr(self, name)
            if value is None:
                continue
            if name not in kwargs:
                takes = ", ".join(catalog.methods_taking(name))
                raise ConfigError(f"--{name.replace('_', '-')} does not apply to optimizer {self.optimizer!r} "
                                  f"(it applies to {takes})")
            kwargs[name] = value
        if self.noise is not None:
            kwargs["noise"] = self.noise
        return kwargs

    def validate_counts(self) -> None:
        """The step, batch, example and length counts (also what --dry-run plans with, which has no task)."""
        for name in ("steps", "batch_size", "num_train", "num_eval", "max_length", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("eval_every", "num_dev"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 0, got {getattr(self, name)!r}")

    def validate(self) -> "FineTuneConfig":
        if not self.task:
            raise ConfigError("choose a task with --task (e.g. --task boolq); `fine_tune --list-tasks` lists them")
        self.validate_counts()
        if self.eval_seed is not None and (not isinstance(self.eval_seed, int) or self.eval_seed < 0):
            raise ConfigError(f"--eval-seed must be an integer >= 0, got {self.eval_seed!r}")
        if self.small_pool not in ("mezo", "shrink"):
            raise ConfigError(f"--small-pool must be mezo or shrink, got {self.small_pool!r}")
        if self.save_every is not None and self.save_every < 1:
            raise ConfigError(f"--save-every must be a positive integer, got {self.save_every!r}")
        self._validate_layout()
        if self.peft not in PEFT_MODES:
            raise ConfigError(f"--peft must be one of {', '.join(PEFT_MODES)}, got {self.peft!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.noise not in (None, *catalog.noise_sources()):
            raise ConfigError(f"--noise must be one of {', '.join(catalog.noise_sources())}, got {self.noise!r}")
        if self.checkpoint not in (None, *CHECKPOINT_KINDS):
            raise ConfigError(f"--checkpoint must be ledger or weights, got {self.checkpoint!r}")
        if self.save_model not in (True, False, *CHECKPOINT_KINDS):
            raise ConfigError(f"--save-model must be true, false, weights or ledger, got {self.save_model!r}")
        if self.is_first_order() and "ledger" in (self.checkpoint, self.save_model):
            raise ConfigError(f"{self.optimizer} updates weights by backpropagation, which a seed ledger cannot "
                              "record; use --checkpoint weights")
        if not self.capability("replayable", True) and "ledger" in (self.checkpoint, self.save_model):
            raise ConfigError(f"{self.optimizer} takes steps that its seed ledger cannot replay; use --checkpoint "
                              "weights and --save-model weights")
        for name in (n for n, hp in HYPERPARAMETERS.items() if float in hp.types):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not math.isfinite(v):  # "auto" (bszo sigmas) is checked by the optimizer
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {v!r}")
        for name in LR_FLAGS:
            if (getattr(self, name) or 0) > MAX_LR:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is above {MAX_LR:g}, "
                                  "where every method here diverges (useful values are 1e-7 .. 1e-2)")
        from l2o.models import check_device  # zoo apply's check too

        check_device(self.device)
        self._check_accelerator()
        kwargs = self.optimizer_kwargs()
        if self.is_first_order():
            if self.policy:
                raise ConfigError(f"--policy applies to the zo-finetuner optimizers, not {self.optimizer!r}")
            return self
        if self.capability("needs_adapter", False) and self.peft == "full":
            raise ConfigError(f"{self.optimizer} needs --peft lora, prefix or prompt (it trains the adapter "
                              f"first-order and the backbone by zeroth order), not {self.peft!r}")
        if self.uses_policy() and not self.policy:
            raise ConfigError(f"--optimizer {self.optimizer} needs a learned policy: "
                              "--policy <zoo id or artefact folder>")
        if self.policy_size_rule not in (None, "numel", "authors"):
            raise ConfigError(f"--policy-size-rule must be numel or authors, got {self.policy_size_rule!r}")
        if self.policy and not self.uses_policy():
            raise ConfigError(f"--policy applies to the zo-finetuner optimizers, not {self.optimizer!r}")
        # let the optimizer's own checks speak (eps <= 0, lr < 0, pool size < 2, k < 1, ...) before any loading
        from l2o.optim import probe

        try:
            probe(self.optimizer, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
        return self


def _hyperparameter_field(hp) -> tuple:
    """(name, type, field) of FineTuneConfig for a declared hyperparameter: None means the method's default."""
    return hp.name, " | ".join([*hp.type_name.split("|"), "None"]), dataclasses.field(default=None)


FineTuneConfig = dataclasses.make_dataclass(
    "FineTuneConfig", [_hyperparameter_field(hp) for hp in HYPERPARAMETERS.values()], bases=(RunOptions,),
    namespace={"__doc__": "A fine-tuning run: `RunOptions` and one field per declared optimizer hyperparameter "
                          "(None: the chosen method's paper default).", "__module__": __name__})


def load_yaml(path: str) -> dict:
    data = read_yaml_mapping(path)
    known = {f.name for f in fields(FineTuneConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path} has unknown option(s): {', '.join(unknown)}")
    return data


def dump_yaml(cfg: FineTuneConfig) -> str:
    import yaml

    data = cfg.to_dict()
    data["resolved_optimizer_kwargs"] = cfg.optimizer_kwargs()
    return yaml.safe_dump(data, sort_keys=False)
