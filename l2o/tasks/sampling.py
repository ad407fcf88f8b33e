"""MeZO's data protocol (train/dev/eval sampling) and a seeded sampler over tasks for meta-training."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from l2o.tasks.base import Rendered, Task, TaskError


@dataclass
class Splits:
    """Rendered train/dev/eval examples plus what was asked for and what the pools allowed."""

    train: list[Rendered]
    dev: list[Rendered]
    eval: list[Rendered]
    seed: int
    eval_seed: int = 0
    counts: dict = field(default_factory=dict)  # {"train": n, "dev": n, "eval": n}
    requested: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict)  # {"train": pool size, "validation": pool size}
    task: str = ""
    rule: str = "mezo"  # how train/dev were cut from a small pool: "mezo" or "shrink"

    def to_dict(self) -> dict:
        return {"task": self.task, "seed": self.seed, "eval_seed": self.eval_seed, "counts": dict(self.counts),
                "requested": dict(self.requested), "pools": dict(self.pools), "rule": self.rule}

    def fingerprint(self) -> str:
        """sha256 of the examples in their order, split by split (prompt, candidates, gold, answers): two runs with
        one data configuration but another copy of the task's files (another BIG-bench source, another package
        version) differ here, where their configurations agree."""
        import hashlib
        import json
        from dataclasses import asdict

        h = hashlib.sha256()
        for name in ("train", "dev", "eval"):
            h.update(f"{name}:{len(getattr(self, name))}\n".encode())
            for r in getattr(self, name):
                h.update(json.dumps(asdict(r), sort_keys=True, default=str).encode() + b"\n")
        return "sha256:" + h.hexdigest()


SMALL_POOL_RULES = ("mezo", "shrink")


def _resolve(task) -> Task:
    if isinstance(task, Task):
        return task
    from l2o.tasks.registry import get_task

    return get_task(task)


def split_sizes(n: int, num_train: int, num_dev: int, small_num_dev: int | None = None,
                small_pool: str = "mezo") -> tuple[int, int, str]:
    """(n_train, n_dev, rule) for a train pool of n rows.

    MeZO (`Dataset.sample_train_sets`): take the first num_train + num_dev rows of the permutation; the
    LAST num_dev of them are dev, the rest train. On a pool smaller than num_train + num_dev, dev keeps
    its size and train gets what is left (WSC, 554 rows: 54 train / 500 dev); MeZO's script passes
    num_dev = 100 for CB and COPA, which `small_num_dev` stands for.
    "shrink" (ours, also the fallback when MeZO's rule would leave no training row): dev shrinks to
    small_num_dev or a fifth of the pool (never more than half), train takes the rest.
    """
    if small_pool not in SMALL_POOL_RULES:
        raise TaskError(f"small_pool must be one of {', '.join(SMALL_POOL_RULES)}, not {small_pool!r}")
    if n >= num_train + num_dev:
        return num_train, num_dev, "mezo"
    if small_pool == "mezo":
        n_dev = min(num_dev if small_num_dev is None else min(num_dev, small_num_dev), n)
        if n - n_dev >= 1 or num_train == 0:
            return min(num_train, n - n_dev), n_dev, "mezo"
    small = small_num_dev if small_num_dev is not None else n // 5
    n_dev = min(num_dev, small, n // 2)
    return min(num_train, n - n_dev), n_dev, "shrink"


def sample_splits(task: Task | str, seed: int = 0, num_train: int = 1000, num_dev: int = 500,
                  num_eval: int = 1000, source=None, eval_seed: int | None = None,
                  small_pool: str = "mezo") -> Splits:
    """MeZO's protocol (`large_models/tasks.py` and `run.py`).

    Train/dev: a NumPy permutation (RandomState(seed)) of the train pool; its first num_train rows are
    train and the next num_dev dev (sizes on small pools: `split_sizes`). Eval: a permutation of the
    validation pool under `eval_seed`, first num_eval rows. eval_seed=None draws it with the training
    seed, as MeZO does (`sample_subset("valid", seed=train_set_seed)`); an int fixes it, e.g. 0 to score
    every training seed on the same examples (our former default, kept as an option).
    The counts actually used are in `Splits.counts`.
    """
    task = _resolve(task)
    for nm, v in (("num_train", num_train), ("num_dev", num_dev), ("num_eval", num_eval)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise TaskError(f"{nm} must be a non-negative integer, not {v!r}")
    eval_seed = int(seed) if eval_seed is None else int(eval_seed)
    train_pool = task.rows("train", source)
    valid_pool = task.rows("validation", source)
    n = len(train_pool)
    n_train, n_dev, rule = split_sizes(n, num_train, num_dev, task.small_num_dev, small_pool)
    perm = np.random.RandomState(seed).permutation(n)
    train_idx = perm[:n_train]
    dev_idx = perm[n_train:n_train + n_dev]
    eval_perm = np.random.RandomState(eval_seed).permutation(len(valid_pool))
    eval_idx = eval_perm[:num_eval]
    train = task.render_all([train_pool[i] for i in train_idx], [f"{i} (train)" for i in train_idx])
    dev = task.render_all([train_pool[i] for i in dev_idx], [f"{i} (train)" for i in dev_idx])
    ev = task.render_all([valid_pool[i] for i in eval_idx], [f"{i} (validation)" for i in eval_idx])
    return Splits(train=train, dev=dev, eval=ev, seed=int(seed), eval_seed=eval_seed,
                  counts={"train": len(train), "dev": len(dev), "eval": len(ev)},
                  requested={"train": num_train, "dev": num_dev, "eval": num_eval},
                  pools={"train": n, "validation": len(valid_pool)}, task=task.name, rule=rule)


class TaskFamily:
    """A seeded distribution over tasks with a train/held-out split of the tasks themselves.

    names: explicit task names; tags: any task carrying one of these tags (both may be given: union).
    holdout: a fraction of the tasks (seeded choice) or an explicit list of names to hold out for
    meta-testing. `sample(step)` draws a training task deterministically from (seed, step);
    `sample(rng)` draws with a numpy Generator/RandomState.
    """

    def __init__(self, names=None, tags=None, seed: int = 0, holdout: float | list[str] | tuple = 0.25):
        from l2o.tasks.registry import REGISTRY, get_task, list_tasks

        chosen: list[str] = []
        if names:
            chosen += [get_task(n).name for n in names]
        if tags:
            tags = {tags} if isinstance(tags, str) else set(tags)
            known = {t for task in REGISTRY.values() for t in task.tags}
            bad = sorted(tags - known)
            if bad:
                raise TaskError(f"unknown task tag {bad[0]!r}; known tags: {', '.join(sorted(known))}")
            chosen += [n for n in list_tasks() if REGISTRY[n].tags & tags]
        if not names and not tags:
            chosen = [n for n in list_tasks() if "offline" in REGISTRY[n].tags]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise TaskError("the task family is empty: no task matches the given names/tags")
        self.seed = int(seed)
        if isinstance(holdout, (list, tuple, set)):
            held = [get_task(n).name for n in holdout]
            missing = [h for h in held if h not in chosen]
            if missing:
                raise TaskError(f"held-out task {missing[0]!r} is not in the family ({', '.join(chosen)})")
        else:
            frac = float(holdout)
            if not 0.0 <= frac < 1.0:
                raise TaskError(f"holdout must be a fraction in [0, 1) or a list of task names, not {holdout!r}")
            k = int(round(len(chosen) * frac))
            k = min(k, len(chosen) - 1)
            perm = np.random.RandomState(self.seed).permutation(len(chosen))
            held = [chosen[i] for i in sorted(perm[:k])]
        self.train_tasks: list[Task] = [get_task(n) for n in chosen if n not in held]
        self.heldout_tasks: list[Task] = [get_task(n) for n in chosen if n in held]
        if not self.train_tasks:
            raise TaskError("the task family has no training task left after the hold-out")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.train_tasks + self.heldout_tasks]

    def sample(self, rng_or_step=0) -> Task:
        if isinstance(rng_or_step, (int, np.integer)):
            key = zlib.crc32(f"{self.seed}:{int(rng_or_step)}".encode())
            i = np.random.RandomState(key).randint(len(self.train_tasks))
        elif isinstance(rng_or_step, np.random.Generator):
            i = int(rng_or_step.integers(len(self.train_tasks)))
        elif isinstance(rng_or_step, np.random.RandomState):
            i = int(rng_or_step.randint(len(self.train_tasks)))
        else:
            raise TypeError("sample() takes a step number or a numpy Generator/RandomState")
        return self.train_tasks[i]

    def to_dict(self) -> dict:
        return {"seed": self.seed, "train_tasks": [t.name for t in self.train_tasks],
                "heldout_tasks": [t.name for t in self.heldout_tasks]}

    def __repr__(self) -> str:
        return f"TaskFamily(train={[t.name for t in self.train_tasks]}, heldout={[t.name for t in self.heldout_tasks]})"
