"""l2o: the core library (no Lightning, no CLI, no network).

- `l2o.engine`  — seeded directions and the only code that perturbs or updates weights.
- `l2o.optim`   — one module per zeroth-order method, each a `torch.optim.Optimizer`.
- `l2o.blocks`  — the fixed, tie-deduplicated parameter-block order every method indexes.
"""

__version__ = "0.1.0"
