"""ZO Fine-tuner deployment (arXiv 2510.00419): an existing ZO method with learned per-block scales.

Composition, not a new update rule: a `PolicyScales` (l2o.policy) is passed as `block_scales` to MeZO,
MeZO-GV, MeZO-Greedy or BSZO, so each step perturbs and updates along nf * sigma_b * z_b. The mixin only
feeds each step's losses back to the policy's features and carries its state through `state_dict()`.

    opt = build_optimizer("zo-finetuner", model, policy=zoo.learned.load_policy("smollm2-135m/zo-finetuner"), lr=1e-6)

`policy=None` runs with sigma_b = 1 for every block (the base method).
"""

from __future__ import annotations

from l2o.optim.bszo import BSZO
from l2o.optim.mezo import MeZO
from l2o.optim.mezo_gv import MeZOGreedy, MeZOGV


class _PolicyMixin:
    """Adds `policy` (a ZOPolicy, or None), `policy_size_rule` ("numel": E||d||^2/D = 1; "authors": the
    authors' embedding estimate; None: the rule the policy was meta-trained under) and `policy_batch_size`
    (used by the "authors" rule)."""

    def __init__(self, model, *args, policy=None, policy_batch_size: int = 16, policy_size_rule: str | None = None,
                 **kw):
        from l2o.policy import PolicyScales

        if kw.get("block_scales") is not None:
            raise ValueError(f"{self.method}: pass a policy, not block_scales")
        self.policy_scales = PolicyScales(policy, batch_size=policy_batch_size,
                                         size_rule=policy_size_rule) if policy is not None else None
        super().__init__(model, *args, block_scales=self.policy_scales, **kw)
        if self.policy_scales is not None:
            self.policy_scales.bind(model, self.blocks)  # fail at construction on a block mismatch

    def step(self, closure=None):
        out = super().step(closure)
        if self.policy_scales is not None:
            self.policy_scales.observe(self.last)
        return out

    def state_dict(self):
        sd = super().state_dict()
        if self.policy_scales is not None:
            sd["zo_policy"] = self.policy_scales.state_dict()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        pol = state_dict.pop("zo_policy", None)
        super().load_state_dict(state_dict)
        if pol is not None and self.policy_scales is not None:
            self.policy_scales.load_state_dict(pol)

    @property
    def sigma(self):
        """The per-block sigma of the last step (None before the first step or without a policy)."""
        return None if self.policy_scales is None else self.policy_scales.last_sigma


PAPER = "ZO Fine-tuner, arXiv 2510.00419"
SCALED = ", each block b scaled by the learned policy's s_b"


class ZOFineTuner(_PolicyMixin, MeZO):
    method, paper, summary = "zo-finetuner", PAPER, MeZO.summary + SCALED


class ZOFineTunerGV(_PolicyMixin, MeZOGV):
    method, paper, summary = "zo-finetuner+gv", PAPER, MeZOGV.summary + SCALED


class ZOFineTunerGreedy(_PolicyMixin, MeZOGreedy):
    method, paper, summary = "zo-finetuner+greedy", PAPER, MeZOGreedy.summary + SCALED


class ZOFineTunerBSZO(_PolicyMixin, BSZO):
    method, paper, summary = "zo-finetuner+bszo", PAPER, BSZO.summary + SCALED
