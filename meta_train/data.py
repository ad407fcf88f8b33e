"""The task-family DataModule: which task each meta-training step uses, and that task's batch.

Step t samples a training task from the `TaskFamily` (deterministic in (seed, t)); the batch is a pure
function of (data seed, task, t), so a resumed run sees the batches an uninterrupted one would.
`stream(key)` is the same as the estimators see it (`l2o.estimators.TaskStream`): the task of key `key`
(a meta-step for the look-ahead, an episode for ES and PES), its i-th train batch and its i-th held-out
batch (from the task's dev rows, which no inner step trains on). Held-out *tasks* are only used for
meta-validation (short ZO fine-tunings with the current policy).
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

import zlib

from l2o.noise import mix


class TaskFamilyData(L.LightningDataModule):
    """Tasks for meta-training.

    Args:
        tasks: task names (see `fine_tune --list-tasks`); default: every task tagged "offline".
        tags: add every task carrying one of these tags.
        holdout: task names held out for meta-validation (or a fraction, e.g. 0.25, as a string/float).
        batch_size: examples per meta-training step (also the policy's embedding-size rule uses it).
        num_train: training examples sampled per task.
        num_dev: held-out examples per training task: the meta-loss batches of the ES and PES estimators.
        num_eval: held-out examples per held-out task used to score meta-validation runs.
        max_length: prompt tokens kept (left-truncated); short sequences keep CPU runs fast.
        seed: seed of the task sampling and of the train/eval samples.
        objective: ce (candidates), lm (answer tokens); default per task.
    """

    def __init__(self, tasks: Optional[list[str]] = None, tags: Optional[list[str]] = None,
                 holdout: Optional[list[str]] = None, batch_size: int = 8, num_train: int = 200, num_dev: int = 32,
                 num_eval: int = 32, max_length: int = 128, seed: int = 0, objective: Optional[str] = None):
        super().__init__()
        from meta_train.plan import check_count  # as the --dry-run plan checks them

        self.task_names, self.tags, self.holdout = tasks, tags, holdout
        self.batch_size, self.max_length = check_count("--data.batch_size", batch_size), \
            check_count("--data.max_length", max_length)
        self.num_train, self.num_dev, self.num_eval = (check_count(f"--data.{name}", n, least=0) for name, n in (
            ("num_train", num_train), ("num_dev", num_dev), ("num_eval", num_eval)))
        self.seed, self.objective_kind = int(seed), objective
        self.family = None
        self.splits: dict = {}
        self.objectives: dict = {}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.family is not None:
            return
        from l2o.tasks import TaskFamily, sample_splits
        from l2o.tasks.objectives import objective_for

        holdout = self.holdout if self.holdout is not None else 0.0
        self.family = TaskFamily(names=self.task_names, tags=self.tags, seed=self.seed, holdout=holdout)
        from zoo.acquire import ensure_task

        for task in self.family.train_tasks + self.family.heldout_tasks:
            ensure_task(task.name)
        for task in self.family.train_tasks:
            self.splits[task.name] = sample_splits(task, seed=self.seed, num_train=self.num_train,
                                                   num_dev=self.num_dev, num_eval=self.num_eval)
        for task in self.family.heldout_tasks:
            self.splits[task.name] = sample_splits(task, seed=self.seed, num_train=self.num_train, num_dev=0,
                                                   num_eval=self.num_eval)
        for task in self.family.train_tasks + self.family.heldout_tasks:
            self.objectives[task.name] = objective_for(task, self.objective_kind, max_length=self.max_length)

    @property
    def train_task_names(self) -> list[str]:
        return [t.name for t in self.family.train_tasks]

    @property
    def heldout_task_names(self) -> list[str]:
        return [t.name for t in self.family.heldout_tasks]

    def task_for_step(self, step: int) -> str:
        return self.family.sample(int(step)).name

    def batch(self, task: str, step: int, split: str = "train", index: int = 0) -> list:
        """batch_size examples of `split`, drawn without replacement, a pure function of (seed, task, step,
        split, index)."""
        examples = getattr(self.splits[task], split)
        if not examples:
            from l2o.errors import ConfigError

            raise ConfigError(f"task {task} has no {split} examples (see --data.num_{split})")
        n = min(self.batch_size, len(examples))
        extra = () if (split, index) == ("train", 0) else (zlib.crc32(split.encode()), index)
        g = torch.Generator().manual_seed(mix(0xDA7A, self.seed, step, zlib.crc32(task.encode()), *extra))
        idx = torch.randperm(len(examples), generator=g)[:n].tolist()
        return [examples[i] for i in idx]

    def stream(self, key: int, tokenizer):
        """The task batch stream of key `key` (`l2o.estimators.TaskStream`), its loss with `tokenizer`."""
        from l2o.estimators import TaskStream

        task = self.task_for_step(key)
        objective = self.objectives[task]
        return TaskStream(task, lambda model, batch: objective.loss(model, tokenizer, batch),
                          lambda i: self.batch(task, key, "train", i), lambda i: self.batch(task, key, "dev", i))

    def eval_examples(self, task: str) -> list:
        s = self.splits[task]
        return s.eval or s.train[: self.num_eval]

    def train_dataloader(self):
        steps = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 10 ** 6
        return DataLoader(range(steps), batch_size=None, shuffle=False)
