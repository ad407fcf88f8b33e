"""Integrations with other training frameworks (optional; each module imports its framework itself).

- `l2o.integrations.hf`: `ZOTrainer`, a drop-in for `transformers.Trainer` (the only place that imports it).
- `l2o.integrations.lightning`: the run infrastructure of the apps' Lightning runs (`--out` lock and
  clean-up, Ctrl-C, progress lines).
- `l2o.integrations.trl`: `ZOSFTTrainer`, the same for TRL's `SFTTrainer` (needs the `trl` extra).
"""
