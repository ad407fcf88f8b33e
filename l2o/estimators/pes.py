"""Persistent ES (Vicol, Metz, Sohl-Dickstein, ICML 2021) over truncated unrolls of the deployed optimizer.

An episode is a whole inner fine-tuning run of H = n K steps from the pretrained weights on one task. ES on
one truncation of it ignores how psi shaped the state the truncation starts from (truncation bias); PES
removes that bias by keeping, per particle i, an antithetic pair of runs that live through the whole
episode and the sum of every perturbation they were given:

    at truncation j of particle i's episode:   epsilon_ij ~ N(0, I_P),  xi_ij = sum_{l <= j} epsilon_il
    run+  continues its own state K steps with psi + std epsilon_ij,  run- with psi - std epsilon_ij
    L_ij+-  = their meta-loss over the truncation (same seeds, same batches: common random numbers)
    g_j     = (1/N) sum_i (L_ij+ - L_ij-) / (2 std) xi_ij

Summed over an episode's truncations, g is unbiased for the gradient of the (smoothed) total meta-loss
sum_j L_j of the whole H-step run (tests: it agrees with full-unroll ES within its interval). The particles'
episodes are staggered (particle i's first episode is cut to n - floor(i n / N) truncations), so every
meta-step mixes early and late phases of fine-tuning.

Memory: the model and the policy. Each run's weights wait in a file between truncations (2N files on disk;
`l2o.weights.Snapshot`); its state for a checkpoint is its ledger records, from which a resumed run replays
the weights bit-identically. One process: the particles' states live where they run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from l2o.estimators.base import Coordinates, EstimatorOut, GradientEstimator, antithetic_gradient
from l2o.estimators.unroll import InnerState, Unroller
from l2o.noise import mix
from l2o.policy import ZOPolicy
from l2o.weights import Snapshot


@dataclass
class Particle:
    """One antithetic pair of inner runs through an episode."""

    episode: int = -1                      # global episode number (its task and inner seeds)
    truncation: int = 0                    # next truncation of the episode (0: the episode starts)
    length: int = 0                        # truncations in this episode
    runs: list[InnerState] = field(default_factory=lambda: [InnerState(), InnerState()])   # +, -
    xi: torch.Tensor | None = None         # the accumulated perturbation of the episode so far

    def to_dict(self) -> dict:
        return {"episode": self.episode, "truncation": self.truncation, "length": self.length,
                "runs": [r.to_dict() for r in self.runs], "xi": None if self.xi is None else self.xi.clone()}

    @classmethod
    def from_dict(cls, d: dict) -> "Particle":
        xi = d.get("xi")
        return cls(int(d["episode"]), int(d["truncation"]), int(d["length"]),
                   [InnerState.from_dict(r) for r in d["runs"]], None if xi is None else torch.as_tensor(xi))


class PES(GradientEstimator):
    """Args as `ES` (pairs N = particles); `reset_every` = truncations per episode (n >= 1); `persistent=False`
    drops the accumulation (truncated ES: the same runs, each truncation weighted by its own epsilon only)."""

    name = "pes"

    def __init__(self, model, policy: ZOPolicy, files, unroller: Unroller, unroll: int = 4, pairs: int = 4,
                 std: float = 0.05, params: str = "bias", reset_every: int = 25, seed: int = 0, collective=None,
                 scratch_dir=None, stagger: bool = True, persistent: bool = True):
        if unroll < 1 or pairs < 1 or not (std > 0 and math.isfinite(std)) or reset_every < 1:
            raise ValueError("PES needs unroll >= 1, pairs >= 1, std > 0 and reset_every >= 1 truncations")
        if collective is not None and collective.world_size > 1:
            raise ValueError("PES runs on one process (its runs' states live where they run); use ES on several")
        self.model, self.files, self.unroller = model, files, unroller
        self.coords = Coordinates(policy, params)
        self.unroll, self.pairs, self.std = int(unroll), int(pairs), float(std)
        self.reset_every, self.seed, self.stagger = int(reset_every), int(seed), bool(stagger)
        self.persistent = bool(persistent)  # False: truncated ES (each truncation's own epsilon; biased)
        self.engine = files.engine
        self.particles = [Particle() for _ in range(self.pairs)]
        self.episodes_started = 0
        self.snapshots = [[Snapshot(self.engine, scratch_dir, prefix="l2o-pes-") for _ in range(2)]
                          for _ in range(self.pairs)]

    def _start(self, i: int, p: Particle, first: bool) -> None:
        n = self.reset_every
        p.episode, self.episodes_started = self.episodes_started, self.episodes_started + 1
        p.truncation, p.runs = 0, [InnerState(), InnerState()]
        p.length = max(1, n - (i * n) // self.pairs) if (first and self.stagger) else n
        p.xi = torch.zeros(self.coords.dim, dtype=torch.float64)
        for snap in self.snapshots[i]:
            snap.saved = False

    def _place(self, run: InnerState, snap: Snapshot) -> None:
        """theta <- the run's weights: parked after its last truncation, else (a new run, or after a resume)
        the pretrained weights plus its recorded updates."""
        if snap.saved:
            snap.restore()
        else:
            self.files.restore()
            self.unroller.rebuild(run)

    def estimate(self, policy: ZOPolicy, streams, step: int) -> EstimatorOut:
        deltas, metas, forwards, sigma, task, eff = [], [], 0, None, "", []
        for i, p in enumerate(self.particles):
            if p.truncation == 0:
                self._start(i, p, first=p.episode < 0)
            eps = self.coords.noise(mix(self.seed, step, i))
            p.xi = p.xi + eps if self.persistent else eps
            stream = streams(p.episode)
            losses = []
            for r, sign in enumerate((1.0, -1.0)):
                self._place(p.runs[r], self.snapshots[i][r])
                pol = self.coords.perturbed(policy, sign * self.std * eps)
                res, p.runs[r] = self.unroller.run(pol, p.runs[r], stream, p.episode, self.unroll)
                self.snapshots[i][r].save()
                losses.append(res.meta_loss)
                forwards += res.forwards
                eff.append(res.effective_step)
                sigma, task = sigma if sigma is not None else res.sigma, task or stream.name
            deltas.append(losses[0] - losses[1])
            metas.append(sum(losses) / 2)
        ok = [i for i, d in enumerate(deltas) if math.isfinite(d)]
        if ok:
            g, metrics = antithetic_gradient([deltas[i] for i in ok], [self.particles[i].xi for i in ok], self.std)
        else:
            g, metrics = torch.zeros(self.coords.dim, dtype=torch.float64), {"snr": math.nan}
        metrics["pairs_dropped"] = float(self.pairs - len(ok))
        metrics["episode_step_mean"] = sum(p.runs[0].step for p in self.particles) / self.pairs
        metrics["effective_step"] = sum(eff) / len(eff)
        for p in self.particles:
            p.truncation += 1
            if p.truncation == p.length:
                p.truncation = 0  # the episode is over: the next estimate starts a new one
        meta = [metas[i] for i in ok]
        return EstimatorOut(sum(meta) / len(meta) if meta else math.nan, self.coords.grads(policy, g), metrics,
                            sigma, task, forwards)

    def state_dict(self) -> dict:
        return {"episodes_started": self.episodes_started, "particles": [p.to_dict() for p in self.particles]}

    def load_state_dict(self, state: dict) -> None:
        self.episodes_started = int(state["episodes_started"])
        self.particles = [Particle.from_dict(d) for d in state["particles"]]
        if len(self.particles) != self.pairs:
            raise ValueError(f"this PES state has {len(self.particles)} particles, not {self.pairs}")
        for snaps in self.snapshots:
            for snap in snaps:
                snap.saved = False  # rebuilt from the records when next needed

    def close(self) -> None:
        for snaps in self.snapshots:
            for snap in snaps:
                snap.close()
