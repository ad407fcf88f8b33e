"""Antithetic ES over truncated unrolls of the deployed optimizer (forward passes only).

At meta-step t the LLM sits at theta_t on a ZO trajectory (an episode: a fine-tuning run from the
pretrained weights on one task, moved by the deployed optimizer with the current policy psi):

    epsilon_i ~ N(0, I_P)                    i < N pairs, in the policy's coordinates (all | head | bias)
    L_i+-   = meta-loss of a K-step unroll from theta_t with psi +- std epsilon_i   (same seeds, same batches)
    g       = (1/N) sum_i (L_i+ - L_i-) / (2 std) epsilon_i          (unbiased for the smoothed meta-loss)
    then theta_t -> theta_{t+K}: the unroll with psi itself (the trajectory); every `reset_every` meta-steps
    the episode ends and the next starts from the pretrained weights (re-read from the model files).

Memory: the model and the policy. theta_t waits in a file (`l2o.weights.Snapshot`) while the samples
unroll, and is read back bit-identically after each; there is no backward and no momentum. The
trajectory's state is its ledger records, so a checkpoint is kilobytes and resume replays them.

Distribution: the pairs are dealt round-robin over the ranks (`collective`); each rank unrolls its own
from the same theta_t, and only the 2N meta-losses cross the wire. Every rank then forms the same g from
the same seeds, and the trajectory's step is split over the ranks as the optimizer's direction-parallel
mode does, so N ranks give one process's meta-gradient, bit for bit.
"""

from __future__ import annotations

import math

import torch

from l2o.distributed import LocalCollective, my_share
from l2o.estimators.base import Coordinates, EstimatorOut, GradientEstimator, antithetic_gradient
from l2o.estimators.unroll import InnerState, Unroller
from l2o.noise import mix
from l2o.policy import ZOPolicy
from l2o.weights import Snapshot


class ES(GradientEstimator):
    """Args: model; policy (for the coordinates); files (`PretrainedFiles`: resets); unroller (the inner run);
    unroll K; pairs N; std; params (the parametrisation); reset_every (meta-steps per episode, 0: one
    episode); seed; collective (ranks); scratch_dir (where theta_t is parked)."""

    name = "es"

    def __init__(self, model, policy: ZOPolicy, files, unroller: Unroller, unroll: int = 4, pairs: int = 4,
                 std: float = 0.05, params: str = "bias", reset_every: int = 25, seed: int = 0, collective=None,
                 scratch_dir=None):
        if unroll < 1 or pairs < 1 or not (std > 0 and math.isfinite(std)) or reset_every < 0:
            raise ValueError("ES needs unroll >= 1, pairs >= 1, std > 0 and reset_every >= 0")
        self.model, self.files, self.unroller = model, files, unroller
        self.coords = Coordinates(policy, params)
        self.unroll, self.pairs, self.std = int(unroll), int(pairs), float(std)
        self.reset_every, self.seed = int(reset_every), int(seed)
        self.collective = collective or LocalCollective()
        self.engine = files.engine
        self.snapshot = Snapshot(self.engine, scratch_dir, prefix="l2o-es-")
        self.episode, self.center = -1, InnerState()
        self._placed = True  # the model holds the center's weights (False after load_state_dict)

    def episode_of(self, step: int) -> int:
        return step // self.reset_every if self.reset_every else 0

    def _place_center(self, episode: int) -> None:
        """theta <- the center of `episode`: the pretrained weights at its start, else (after a resume) the
        pretrained weights plus the trajectory's recorded updates."""
        if episode != self.episode:
            self.episode, self.center = episode, InnerState()
            self.files.restore()
        elif not self._placed:
            self.files.restore()
            self.unroller.rebuild(self.center)
        self._placed = True

    def estimate(self, policy: ZOPolicy, streams, step: int) -> EstimatorOut:
        self._place_center(self.episode_of(step))
        stream = streams(self.episode)
        c = self.collective
        eps = [self.coords.noise(mix(self.seed, step, i)) for i in range(self.pairs)]
        self.snapshot.save()
        mine, forwards = [], 0
        for i in my_share(self.pairs, c.world_size, c.rank):
            for sign in (1.0, -1.0):
                pol = self.coords.perturbed(policy, sign * self.std * eps[i])
                res = self.unroller.run(pol, self.center, stream, self.episode, self.unroll)[0]  # its after-state
                # (and its rule's buffers) dropped now, not held through the next unroll: 2 copies at most, not 3
                self.snapshot.restore()
                mine.append(res.meta_loss)
                forwards += res.forwards
        losses, forwards = exchange(c, self.pairs, mine, forwards)
        plus, minus = losses[0::2], losses[1::2]
        ok = [i for i in range(self.pairs) if math.isfinite(plus[i]) and math.isfinite(minus[i])]
        if ok:
            g, metrics = antithetic_gradient([plus[i] - minus[i] for i in ok], [eps[i] for i in ok], self.std)
        else:
            g, metrics = torch.zeros(self.coords.dim, dtype=torch.float64), {"snr": math.nan}
        metrics["pairs_dropped"] = float(self.pairs - len(ok))
        center, self.center = self.unroller.run(self.coords.perturbed(policy, None), self.center, stream,
                                                self.episode, self.unroll, collective=c if c.world_size > 1 else None)
        metrics.update(trajectory_loss=center.meta_loss, trajectory_train_loss=center.train_losses[-1],
                       effective_step=center.effective_step, episode_step=float(self.center.step))
        meta = [(plus[i] + minus[i]) / 2 for i in ok]
        return EstimatorOut(sum(meta) / len(meta) if meta else math.nan, self.coords.grads(policy, g), metrics,
                            center.sigma, stream.name, forwards + center.forwards)

    def state_dict(self) -> dict:
        return {"episode": self.episode, "center": self.center.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.episode = int(state["episode"])
        self.center = InnerState.from_dict(state["center"])
        self._placed = False

    def close(self) -> None:
        self.snapshot.close()


def exchange(c, pairs: int, mine: list[float], forwards: int) -> tuple[list[float], int]:
    """[L_0+, L_0-, L_1+, ...] from every rank's pairs (dealt round-robin), and the forwards of all ranks: one
    all-gather of 2 ceil(N / ranks) + 1 floats per rank, nothing else on the wire."""
    if c.world_size == 1:
        return list(mine), forwards
    w = c.world_size
    width = -(-pairs // w)
    rows = c.all_gather(list(mine) + [math.nan] * (2 * width - len(mine)) + [float(forwards)])
    out = []
    for i in range(pairs):
        row, j = rows[i % w], i // w
        out += [row[2 * j], row[2 * j + 1]]
    return out, int(sum(row[-1] for row in rows))
