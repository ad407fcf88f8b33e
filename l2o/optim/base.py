"""What every zeroth-order optimizer shares: hyperparameter checks, seeds, the engine, logging, resume.

A method subclasses `ZOOptimizer` and implements `_step(closure) -> StepResult`, choosing which
directions to evaluate (`self.evaluate_many` for a step's independent evaluations, `self.evaluate` for
one) and which update to take (`self._apply_update`), and `evaluation_batches()`, the sizes of those
batches. On several ranks (`collective`, l2o.distributed) the base splits each batch over the ranks
(direction-parallel) or reduces per-shard losses (data-parallel); the method's code is the same.

The closure returns the batch loss, or (total, weight), e.g. (sum of example losses, examples), whose
ratio is the loss; data-parallel ranks return their shard's pair so the reduced loss is the global
batch's example-weighted mean.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from l2o.distributed import Collective, LocalCollective, check_parallel_mode, check_replicas, gather_round_robin
from l2o.distributed import my_share, reduce_shards
from l2o.engine import Direction, Engine
from l2o.errors import ConfigError
from l2o.footprint import Buffer, buffer_bytes
from l2o.ledger import Ledger, LedgerError, apply_updates, weights_digest
from l2o.noise import NoiseSource, derive_seed
from l2o.perturbations import make_family
from l2o.streams import Stream
from l2o.hparams import HP, merge, resolve

Probe = tuple[Direction | None, float]  # (d, eps): the loss at theta + eps d; d None: at theta


class NonFiniteLoss(Exception):
    """Raised inside a step when a loss is NaN/inf; the base class skips the update."""


@dataclass
class StepResult:
    """What one step measured, for logging."""

    # the train loss to log: an estimate of L(theta) with the same meaning for every method, f0 = L(theta) where
    # the step evaluates it, else the mean of its two-point pair(s) [L(theta + eps d) + L(theta - eps d)] / 2
    # (L(theta) + O(eps^2)). The papers log L(theta + eps d); along a loss-guided d (GV, Greedy) that is
    # biased low by about eps * g, so it would flatter those methods in any comparison of train losses.
    loss: float
    projected_grads: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)   # every loss the step evaluated, in order
    forwards: int = 0
    skipped: bool = False
    # the lr multiplier of the expected update to first order, E[dtheta] ~ -lr * this * grad: E||d||^2 / D for a
    # direction that ignores the losses (MeZO: 1; with per-block scales s_b: sum n_b s_b^2 / D), E[(v . u)^2] for
    # GV's and Greedy's loss-guided v, tr of the Kalman gain for BSZO
    effective_step: float | None = None
    # (L(theta + eps d), L(theta - eps d)) along one direction d of the step, E||d||^2 = D for Gaussian z (the
    # family's or the preconditioner's otherwise: LOZO, Sparse-MeZO, HiZOO) (the learned policy's L+ / L- features,
    # which it was meta-trained on as MeZO's pair). A method that evaluates one side
    # only mirrors the other, 2 f0 - L(theta + eps d): L(theta - eps d) to first order, exact for a linear loss.
    pair: tuple[float, float] | None = None
    # a method's own measurements of this step, logged under these names (Bilevel-ZOFO's upper level, on its
    # upper steps)
    metrics: dict[str, float] = field(default_factory=dict)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


class ZOOptimizer(torch.optim.Optimizer):
    """Base class: a real `torch.optim.Optimizer` whose `step(closure)` uses forward passes only.

    A method declares its hyperparameters once, in `hyperparameters` (l2o/optim/hparams.py); the base
    merges them with its own (lr, eps, weight_decay) and its bases', fills in the defaults, checks every
    value and keeps them in `param_groups[0]` (`self.hp`), so LR schedulers and `state_dict` see them.
    Cross-field rules go in `validate(hp)`.

    Args:
        model: the module whose trainable (requires_grad) parameters are optimised.
        **hyperparameters: the method's declared hyperparameters (`cls.declared()`; unset: the default).
        seed: base seed; the seeds of step t are derived from (seed, t, j), so no RNG state exists.
        noise: "gaussian" (exact, default) or "table" (shared noise table), or a NoiseSource.
        block_scales: optional per-block perturbation scales s_b (e.g. a learned policy's output);
            a sequence/tensor of length `len(self.blocks)`, or a callable `(optimizer) -> scales`
            evaluated at the start of each step.
        collective: the ranks this optimizer runs on (l2o.distributed; default: one process).
        parallel: "direction" (split each step's evaluations over the ranks) or "data" (every rank's
            closure evaluates its shard of the batch).
        check_every: K > 0 compares the ranks' weight fingerprints after every K-th step.
    """

    method = "zo"
    paper = ""            # the method's paper, for --list-optimizers and the README's table
    summary = ""          # its update in one line, for the same
    hyperparameters = (
        HP("lr", float, 1e-6, "learning rate eta", "MeZO's full-parameter grid {1e-6, 1e-7}", low=0),
        HP("eps", float, 1e-3, "perturbation scale epsilon", "MeZO (full parameter)", low=0, open_low=True),
        HP("weight_decay", float, 0.0, "lambda, not on biases and norm weights (MeZO's rule)", "MeZO", low=0),
    )
    dropped: tuple[str, ...] = ()  # inherited hyperparameters this method does not take
    # per --peft mode, defaults that replace the declared ones there (the declared ones are the paper's, which may
    # hold for one mode only); a flag given still wins. {} : the declared defaults in every mode
    peft_defaults: dict[str, dict] = {}
    # what a method can do, for the apps and the contract tests (tests/test_methods.py):
    replayable = True     # its ledger alone rebuilds the weights (else `--checkpoint ledger` is refused)
    distributed = True    # its steps split over ranks (l2o.distributed; else one process only)
    needs_adapter = False  # it trains a PEFT adapter first-order and moves the frozen rest by ZO
    splits: tuple[str, ...] = ()  # the closure takes (split, task) for these splits; () -> closure()
    step_size = "lr"     # the hyperparameter a learning-rate search tunes (bench.harness's grid)
    # per-parameter state kept between steps (l2o/footprint.py), which the memory plans count: () holds none
    buffers: tuple[Buffer, ...] = ()
    buffer_args: dict = {}  # constructor arguments (not hyperparameters) a Buffer's `times` may name, their defaults

    def __init__(self, model: nn.Module, *, seed: int = 0, noise: str | NoiseSource | None = None, block_scales=None,
                 collective: Collective | None = None, parallel: str = "direction", check_every: int = 0,
                 **hyperparameters):
        hp = self.resolve(hyperparameters)
        self.engine = Engine(model, noise, named_params=self._engine_params(), family=self.make_family(hp),
                             rule=self.make_rule(hp))
        self.blocks = self.engine.blocks
        super().__init__([b.param for b in self.blocks], self._group_defaults(hp))
        self.seed = int(seed)
        self.block_scales = block_scales
        self.collective = collective if collective is not None else LocalCollective()
        self.parallel = check_parallel_mode(parallel)
        _check(isinstance(check_every, int) and check_every >= 0,
               f"{self.method}: check_every must be an integer >= 0, got {check_every!r}")
        self.check_every = check_every
        self._evaluations = 0
        self.state["zo"] = {"step": 0, "skipped": 0, "forwards": 0}
        self.last: StepResult | None = None
        # the seed ledger: one line per update, relative to the weights as they are now (l2o/ledger.py)
        self.ledger = Ledger.start(self.engine, method=self.method)

    # ------------------------------------------------------------------ the declaration
    @classmethod
    def declared(cls) -> dict[str, HP]:
        """Name -> declaration of every hyperparameter this method takes (its bases' first)."""
        chain = [k for k in reversed(cls.__mro__) if "hyperparameters" in vars(k)]
        return merge([hp for k in chain for hp in vars(k)["hyperparameters"]],
                     {name for k in cls.__mro__ for name in vars(k).get("dropped", ())})

    @classmethod
    def defaults(cls) -> dict:
        """The paper defaults of every declared hyperparameter."""
        return {name: hp.default for name, hp in cls.declared().items()}

    @classmethod
    def resolve(cls, given: dict) -> dict:
        """Defaults overridden by `given`, every value checked (ConfigError, a ValueError, in one sentence)."""
        hp = resolve(cls.method, cls.declared(), given)
        cls.validate(hp)
        return hp

    @classmethod
    def buffer_bytes(cls, shapes, weight_bytes: int = 4, **given) -> int:
        """Bytes of the state this method keeps between steps (its declared `buffers`) for trainable tensors of
        `shapes` (weights of `weight_bytes` each), at its defaults overridden by `given`."""
        args = {k: given.pop(k, v) for k, v in cls.buffer_args.items()}
        return buffer_bytes(cls.buffers, shapes, {**cls.resolve(given), **args}, weight_bytes)

    @classmethod
    def validate(cls, hp: dict) -> None:
        """Rules across hyperparameters (e.g. BSZO's m >= k); raise ConfigError via `_check`."""

    @classmethod
    def train_stream(cls, examples, batch_size: int, data_seed: int, hyperparameters: dict):
        """The training batches an app feeds this method, by step (l2o/streams.py): `closure(t, loss)` is step t's
        closure in the form `step` takes; `describe()` what the run's results record. One batch per step."""
        return Stream(examples, batch_size, data_seed, salt=0xDA7A)

    def _group_defaults(self, hp: dict) -> dict:
        """param_groups[0]: the hyperparameters (with "lr", which LR schedulers drive)."""
        return dict(hp)

    def _engine_params(self):
        """The (name, parameter) blocks the engine perturbs and updates; None: the trainable ones."""
        return None

    def make_family(self, hp: dict):
        """The perturbation family z comes from (l2o/perturbations.py); None: Gaussian."""
        return None

    def make_rule(self, hp: dict):
        """The engine's stateful update rule (l2o/updates.py: momentum, Adam, HiZOO); None: plain steps."""
        return None

    # ------------------------------------------------------------------ helpers for methods
    @property
    def hp(self) -> dict:
        return self.param_groups[0]

    @property
    def step_count(self) -> int:
        return self.state["zo"]["step"]

    def seeds(self, n: int, offset: int = 0) -> list[int]:
        """n fresh seeds for the current step (deterministic in (seed, step))."""
        t = self.step_count
        return [derive_seed(self.seed, t, offset + j) for j in range(n)]

    def current_scales(self):
        s = self.block_scales
        if callable(s):
            s = s(self)
        if s is not None and len(s) != len(self.blocks):
            raise ValueError(f"block_scales has {len(s)} entries but the model has {len(self.blocks)} blocks")
        return s

    def scales_second_moment(self, scales) -> float:
        """sum_b n_b s_b^2 m_b / sum_b n_b: E||d||^2 / D of a direction with one seed, per-block scales s_b and
        the family's E z_b^2 = m_b per element (1 for Gaussian z)."""
        family = self.engine.family
        if scales is None and family.name == "gaussian":
            return 1.0
        sizes = [b.param.numel() for b in self.blocks]
        scales = [1.0] * len(sizes) if scales is None else scales
        moments = family.second_moments(self.blocks)
        return sum(n * float(s) ** 2 * m for n, s, m in zip(sizes, scales, moments)) / sum(sizes)

    def direction(self, seeds, weights=None, scales=None, keys=None) -> Direction:
        return Direction(tuple(seeds), tuple(weights) if weights is not None else (), scales,
                         tuple(keys) if keys is not None else ())

    def evaluation_batches(self) -> list[int]:
        """Sizes of the batches of independent evaluations one step makes (the `evaluate_many` calls)."""
        raise NotImplementedError

    def forwards_per_step(self) -> int:
        """Forward passes one step takes (the budget unit of every comparison)."""
        return sum(self.evaluation_batches())

    def evaluate_many(self, closure, probes: list[Probe]) -> list[float]:
        """[L(theta + eps_i d_i)] for independent probes, the same list on every rank.

        One process evaluates them in turn. Direction-parallel: rank r evaluates probes r, r + N, ...
        and the losses are gathered. Data-parallel: every rank evaluates all of them on its shard and
        the (total, weight) pairs are reduced. Non-finite losses are raised after the exchange, on
        every rank alike."""
        probes, c = list(probes), self.collective
        self._evaluations += len(probes)
        if c.world_size == 1:
            losses = [t / w for t, w in (self._local(closure, p) for p in probes)]
        elif self.parallel == "direction":
            mine = [self._local(closure, probes[i]) for i in my_share(len(probes), c.world_size, c.rank)]
            losses = gather_round_robin(c, len(probes), [t / w for t, w in mine])
        else:
            pairs = [self._local(closure, p) for p in probes]
            losses = reduce_shards(c, [t for t, _ in pairs], pairs[0][1])
        for loss in losses:
            if not math.isfinite(loss):
                raise NonFiniteLoss(loss)
        return losses

    def _local(self, closure, probe: Probe) -> tuple[float, float]:
        """(total, weight) of one probe on this rank's batch."""
        weights = []

        def total():
            out = closure()
            t, w = out if isinstance(out, (tuple, list)) else (out, 1.0)
            weights.append(float(w))
            return t

        d, eps = probe
        t = self.engine.loss(total) if d is None else self.engine.evaluate(total, d, eps)
        return t, weights[0]

    def evaluate(self, closure, d: Direction, eps: float | None = None) -> float:
        return self.evaluate_many(closure, [(d, self.hp["eps"] if eps is None else eps)])[0]

    def plain_loss(self, closure) -> float:
        return self.evaluate_many(closure, [(None, 0.0)])[0]

    def _apply_update(self, d: Direction, coeff: float, params: dict | None = None) -> None:
        """theta <- theta - lr * (coeff * d + wd * theta) (d through the engine's rule, with its `params`, when it
        has one), recorded in the ledger exactly as applied."""
        lr = self.hp["lr"]
        step, decay = lr * coeff, lr * self.hp.get("weight_decay", 0.0)
        rounding = derive_seed(self.seed, self.step_count, 1 << 20)
        self.engine.update(d, step, decay=decay, rounding_seed=rounding, params=params)
        self.ledger.append(self.step_count, d, step, decay, rounding, params)

    # ------------------------------------------------------------------ torch.optim API
    def _step(self, closure) -> StepResult:
        raise NotImplementedError

    def step(self, closure: Callable[[], torch.Tensor | float] | None = None, *, loss: Callable | None = None):
        """One ZO step. `closure()` must return the loss of the current batch (called under no_grad). Under a
        wrapper that calls the closure without arguments (Lightning's), pass the method's closure as `loss`
        (e.g. one that takes (split, task)): the wrapper's closure is then called once, for its hooks."""
        if loss is not None:
            if closure is not None:
                closure()
            closure = loss
        if closure is None:
            raise ValueError(f"{self.method}: step() needs a closure that returns the batch loss")
        zo = self.state["zo"]
        before = self._evaluations
        try:
            result = self._step(closure)
        except NonFiniteLoss as err:
            zo["skipped"] += 1
            warnings.warn(f"{self.method}: non-finite loss ({err.args[0]}) at step {zo['step']}; "
                          f"update skipped, weights untouched ({zo['skipped']} skipped so far)", stacklevel=2)
            result = StepResult(loss=float("nan"), skipped=True)
        result.forwards = self._evaluations - before  # all ranks' evaluations: independent of N
        zo["forwards"] += result.forwards
        zo["step"] += 1
        self.last = result
        if self.check_every and zo["step"] % self.check_every == 0:
            check_replicas(self.collective, [b.param for b in self.blocks], zo["step"])
        return torch.tensor(result.loss)

    @property
    def forward_passes(self) -> int:
        return self.state["zo"]["forwards"]

    @property
    def skipped_steps(self) -> int:
        return self.state["zo"]["skipped"]

    def run_counters(self) -> dict:
        """What this method counts beyond forwards and skipped steps, for a run's results (e.g. backward passes)."""
        return {}

    def zero_grad(self, set_to_none: bool = True) -> None:  # nothing to zero: no gradients exist
        return None

    def state_dict(self):
        sd = super().state_dict()
        sd["zo_meta"] = {"method": self.method, "seed": self.seed, "block_names": self.engine.block_names(),
                         "noise": self.engine.noise.config()}
        sd["zo_ledger"] = self.ledger.text()
        if self.engine.rule is not None:  # its buffers (a checkpoint may drop them: the ledger rebuilds them)
            sd["zo_rule"] = self.engine.rule.state_dict()
        if self.moves_frozen():  # where those weights are: load_state_dict brings the base there
            sd["zo_digest"] = weights_digest(self.blocks)
        return sd

    def moves_frozen(self) -> bool:
        """Whether the engine moves weights that do not require grad (Bilevel-ZOFO's backbone under its adapter),
        which a checkpoint of the trainable tensors leaves out: the state then brings them back from the ledger."""
        return any(not b.param.requires_grad for b in self.blocks)

    def load_state_dict(self, state_dict):
        meta = state_dict.get("zo_meta")
        if meta is not None:
            if meta["method"] != self.method:
                raise ValueError(f"this state was saved by {meta['method']!r}, not {self.method!r}")
            if meta["block_names"] != self.engine.block_names():
                raise ValueError("this optimizer state was saved for a model with different parameter blocks")
            self.seed = int(meta["seed"])
        if "zo_ledger" in state_dict:
            self.ledger = self._saved_ledger(state_dict["zo_ledger"])
            self.adopt_family(self.ledger.header.get("family"))
        if self.engine.rule is not None:
            self._load_rule(state_dict.get("zo_rule"))
        if "zo_digest" in state_dict:
            self._bring_to(state_dict["zo_digest"])
        state_dict = {k: v for k, v in state_dict.items() if k not in ("zo_meta", "zo_ledger", "zo_rule", "zo_digest")}
        super().load_state_dict(state_dict)
        # torch may cast tensors in state; keep our plain-python scalars as they were saved
        self.state["zo"] = dict(state_dict["state"]["zo"])

    def adopt_family(self, config: dict | None) -> None:
        """Continue a saved run's perturbation family: `config` is its `engine.family.config()` (a ledger header's
        "family"; None keeps this optimizer's own). Needed because a family bound to the weights now is not the
        run's: Sparse-MeZO's thresholds come from the run's first weights, and an optimizer made on a checkpoint's
        weights (as a resumed run's or a truncated unroll's is) would compute others. `load_state_dict` calls it."""
        if config is not None and config != self.engine.family.config():
            self.engine.family = make_family(config)
            self.engine.family.bind(self.blocks)

    @torch.no_grad()
    def _bring_to(self, digest: str) -> None:
        """The engine's weights at the saved point: as they are, or the run's base plus the ledger (bit-identical)."""
        now = weights_digest(self.blocks)
        if now == digest:
            return
        if now != self.ledger.header["base_digest"]:
            raise LedgerError(f"cannot resume {self.method}: the model's weights are neither the run's base nor its "
                              "saved point")
        apply_updates(self.engine, self.ledger)

    def _load_rule(self, state: dict | None) -> None:
        """The rule's buffers as saved, or (a checkpoint without them) rebuilt by running the ledger's updates
        through the rule without writing weights: its state depends on the ledger's lines alone."""
        rule = self.engine.rule
        if state is not None:
            rule.load_state_dict(state)
            return
        rule.load_state_dict({})
        apply_updates(self.engine, self.ledger, write=False)

    def _saved_ledger(self, text: str) -> Ledger:
        """The saved run's ledger (verified), which this optimizer continues; its lines end at the saved
        step, so the weights must be at that point (the saved weights, or the base plus `replay`)."""
        ledger = Ledger.parse(text, source="the saved optimizer state's ledger", require_seal=False)
        if ledger.header["blocks"] != self.engine.block_names() or ledger.header["noise"] != self.engine.noise.config():
            raise LedgerError("this optimizer state's ledger was recorded for other parameter blocks or another "
                              "noise source")
        return ledger
