"""Deterministic example streams: the batch of step t is a pure function of (seed, t), so a resumed run
sees exactly the batches an uninterrupted one would; and Bilevel-ZOFO's two-split streams.

    stream = Stream(examples, batch_size=16, seed=0)             # stream.batch(t)
    opt.step(stream.closure(t, lambda batch: objective.loss(model, tokenizer, batch)))
    d_g, d_f = split_dg_df(task_examples, seed=0)                 # Bilevel-ZOFO's seeded 2:1 split
    streams = BilevelStreams([(d_g, d_f)], batch_size=8, t_low=30)
    opt.step(loss=streams.losses(t, lambda task, batch: objective.loss(model, tokenizer, batch)),
             task=streams.lower_task(t), upper_tasks=streams.upper_tasks(t))

Both have `closure(t, loss)`: step t's closure, in the form the method's `step` takes (`ZOOptimizer.train_stream`
says which stream a method reads), and `describe()`, what a run's results record of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from l2o.errors import ConfigError
from l2o.noise import mix

SPLITS = ("lower", "upper_f", "upper_g")  # the batches one Bilevel-ZOFO step asks its closure for


class Stream:
    """Batch i: epoch e = i // n_batches reads a permutation seeded by (salt, seed, e)."""

    def __init__(self, examples: Sequence, batch_size: int, seed: int, salt: int = 0xDA7B):
        if not len(examples):
            raise ConfigError("an example stream needs at least one example")
        self.examples, self.seed, self.salt = list(examples), int(seed), int(salt)
        self.batch_size = min(int(batch_size), len(self.examples))
        self.n_batches = max(1, len(self.examples) // self.batch_size)

    def batch(self, i: int) -> list:
        epoch, pos = divmod(int(i), self.n_batches)
        g = torch.Generator().manual_seed(mix(self.salt, self.seed, epoch))
        perm = torch.randperm(len(self.examples), generator=g)
        return [self.examples[j] for j in perm[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()]

    def closure(self, step: int, loss: Callable[[list], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Step t's closure: () -> loss(batch t)."""
        batch = self.batch(step)
        return lambda: loss(batch)

    def describe(self) -> dict:
        return {}


def split_dg_df(examples: Sequence, seed: int = 0) -> tuple[list, list]:
    """A seeded 2:1 split of a task's training sample into (D_g, D_f); both non-empty when len >= 2."""
    n = len(examples)
    if n < 2:
        raise ConfigError(f"bilevel-zofo needs at least 2 training examples per task (got {n}) to split into "
                          "D_g and D_f")
    g = torch.Generator().manual_seed(mix(0xB11E, seed))
    perm = torch.randperm(n, generator=g).tolist()
    n_g = min(n - 1, max(1, round(2 * n / 3)))
    return [examples[i] for i in perm[:n_g]], [examples[i] for i in perm[n_g:]]


class BilevelStreams:
    """Bilevel-ZOFO's batches by global step for one or many tasks.

    `tasks`: a list of (D_g, D_f) pairs. Cycle c = t // t_low uses the task subset S_c (all tasks when
    there are at most `tasks_per_step`, else a seeded sample without replacement); the lower steps of
    the cycle go round-robin over S_c, and step t with (t + 1) % t_low == 0 is also an upper step over S_c.
    Splits: "lower" (a D_g batch of the lower task), "upper_f" and "upper_g" (the cycle's D_f and D_g
    batches of each upper task).
    """

    def __init__(self, tasks: Sequence[tuple[Sequence, Sequence]], batch_size: int, t_low: int,
                 tasks_per_step: int = 1, seed: int = 0):
        if not tasks or t_low < 1 or tasks_per_step < 1:
            raise ConfigError("BilevelStreams needs at least one task, and t_low and tasks_per_step >= 1")
        self.t_low, self.seed = int(t_low), int(seed)
        self.sizes = [[len(g), len(f)] for g, f in tasks]
        self.tasks_per_step = min(int(tasks_per_step), len(tasks))
        self.lower = [Stream(g, batch_size, mix(seed, k, 1)) for k, (g, _) in enumerate(tasks)]
        self.upper_g = [Stream(g, batch_size, mix(seed, k, 2)) for k, (g, _) in enumerate(tasks)]
        self.upper_f = [Stream(f, batch_size, mix(seed, k, 3)) for k, (_, f) in enumerate(tasks)]

    def cycle_tasks(self, cycle: int) -> list[int]:
        n = len(self.lower)
        if self.tasks_per_step >= n:
            return list(range(n))
        g = torch.Generator().manual_seed(mix(0x7A5C, self.seed, cycle))
        return sorted(torch.randperm(n, generator=g)[:self.tasks_per_step].tolist())

    def is_upper(self, step: int) -> bool:
        return (int(step) + 1) % self.t_low == 0

    def lower_task(self, step: int) -> int:
        cycle, pos = divmod(int(step), self.t_low)
        tasks = self.cycle_tasks(cycle)
        return tasks[pos % len(tasks)]

    def upper_tasks(self, step: int) -> list[int] | None:
        """The tasks of step t's upper step, or None when t is a lower step only."""
        return self.cycle_tasks(int(step) // self.t_low) if self.is_upper(step) else None

    def batch(self, step: int, split: str, task: int) -> list:
        if split == "lower":
            return self.lower[task].batch(step)
        cycle = int(step) // self.t_low
        if split == "upper_f":
            return self.upper_f[task].batch(cycle)
        if split == "upper_g":
            return self.upper_g[task].batch(cycle)
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")

    def losses(self, step: int, loss_of: Callable[[int, list], torch.Tensor]) -> Callable[[str, int], torch.Tensor]:
        """Bilevel-ZOFO's closure for step t: (split, task) -> loss_of(task, that batch)."""
        return lambda split, task: loss_of(task, self.batch(step, split, task))

    def closure(self, step: int, loss: Callable[[list], torch.Tensor]) -> Callable[[str, int], torch.Tensor]:
        """Step t's closure for one objective over every task: (split, task) -> loss(that batch)."""
        return self.losses(step, lambda task, batch: loss(batch))

    def describe(self) -> dict:
        return {"splits_dg_df": self.sizes}  # (|D_g|, |D_f|) per task
