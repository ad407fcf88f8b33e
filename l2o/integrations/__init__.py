"""Integrations with other training frameworks (optional; each module imports its framework itself).

- `l2o.integrations.hf`: `ZOTrainer`, a drop-in for `transformers.Trainer` (the only place that imports it).
- `l2o.integrations.trl`: `ZOSFTTrainer`, the same for TRL's `SFTTrainer` (needs the `trl` extra).
"""
