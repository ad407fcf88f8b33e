"""Meta-gradient estimators for the learned policy (learned_optimization's GradientEstimator, in torch).

| name | what it differentiates | memory | module |
|---|---|---|---|
| `lookahead` | L(theta - eta c s z) one (or T) step(s) ahead, autograd through the LLM (the ZO Fine-tuner paper) \
| first-order: weights, momentum, one backward | `lookahead.py` |
| `es` | a K-step unroll of the deployed optimizer, antithetic ES with common random numbers \
| inference + the policy | `es.py` |
| `pes` | whole H-step inner runs, truncated into K-step unrolls, Persistent ES (unbiased) \
| inference + the policy | `pes.py` |

Each is a `GradientEstimator` (`base.py`): `estimate(policy, streams, step) -> EstimatorOut` (meta-gradient
and diagnostics) and `state_dict()` (the unroll state). The Lightning module in `meta_train` is only the
outer loop (task sampling, the policy's Adam step, checkpoints, meta-validation).
"""

from __future__ import annotations

from l2o.estimators.base import (PARAMETRISATIONS, Coordinates, EstimatorOut, GradientEstimator, TaskStream,
                                 antithetic_gradient)
from l2o.estimators.es import ES
from l2o.estimators.lookahead import Lookahead, LookaheadEstimator, TaskState
from l2o.estimators.pes import PES
from l2o.estimators.unroll import INNER_METHODS, META_LOSSES, InnerState, Unroller

ESTIMATORS = ("lookahead", "es", "pes")

__all__ = ["ES", "ESTIMATORS", "INNER_METHODS", "META_LOSSES", "PARAMETRISATIONS", "PES", "Coordinates",
           "EstimatorOut", "GradientEstimator", "InnerState", "Lookahead", "LookaheadEstimator", "TaskState",
           "TaskStream", "Unroller", "antithetic_gradient"]
