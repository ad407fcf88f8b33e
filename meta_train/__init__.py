"""meta_train: meta-training learned zeroth-order optimizers (Lightning; see docs/meta_train.md).

`meta_train.cli` (the `meta_train` command), `meta_train.module.ZOFineTunerMeta` (ZO Fine-tuner policy),
`meta_train.data.TaskFamilyData` (task-family DataModule; the estimators' task streams), the meta-gradients
in `l2o.estimators` (look-ahead, ES, PES) and the LLM's weights in `l2o.weights`,
`meta_train.plan` (`--dry-run` memory plans), `meta_train.bilevel` (Bilevel-ZOFO meta-initialisation).
Nothing heavy is imported here.
"""
