"""meta_train: meta-training learned zeroth-order optimizers (Lightning; see docs/meta_train.md).

`meta_train.cli` (the `meta_train` command), `meta_train.module.ZOFineTunerMeta` (ZO Fine-tuner policy),
`meta_train.data.TaskFamilyData` (task-family DataModule), `meta_train.lookahead` (the meta-gradient, plain
torch), `meta_train.weights` (the LLM's trajectory, resets from the model files, parking),
`meta_train.plan` (`--dry-run` memory plans), `meta_train.bilevel` (Bilevel-ZOFO meta-initialisation).
Nothing heavy is imported here.
"""
