"""ZO Fine-tuner deployment (arXiv 2510.00419): an existing ZO method with learned per-block scales.

Composition, not a new update rule: a `PolicyScales` (l2o.policy) is passed as `block_scales` to the base
method, so each step perturbs and updates along nf * sigma_b * d_b, d_b the base method's direction in block b.
The mixin only feeds each step's L+/L- pair back to the policy's features and carries its state through
`state_dict()`. `compose(Base, suffix)` builds the variant `zo-finetuner+<base>`; each is one line below and one
registry line in l2o/optim/__init__.py. A variant's `base_method` names the method it composes (zo-finetuner+gv:
mezo-gv): the same method without the policy, the baseline meta_train's meta-validation compares it with.

    opt = build_optimizer("zo-finetuner", model, policy=zoo.learned.load_policy("smollm2-135m/zo-finetuner"), lr=1e-6)

`policy=None` runs with sigma_b = 1 for every block (the base method).

Where a per-block scale s_b makes sense: the base's update must move block b along s_b times the direction it
perturbed, by an amount that follows s_b. It does for
  MeZO, GV, Greedy, BSZO   g s_b z_b (GV/Greedy/BSZO: a weighted sum of such terms);
  zo-sgd-sign              sign(g) s_b z_b: the sign is of the scalar g, so s_b still sets block b's step length;
  zo-sgd-cons              the candidates theta -+ lr g s_b z_b and the kept step;
  zo-sgd-mmt               m_b <- beta m_b + g s_b z_b: the scale enters the momentum like a per-block lr;
  hizoo                    g s_b P_b z_b: s_b multiplies HiZOO's preconditioner; P's EMA reads the unscaled z
                           (l2o.updates.Hessian), so the policy does not enter the curvature estimate;
  lozo, lozo-m             g s_b U V^T (LOZO-M: N_b <- beta N_b + (1 - beta) g s_b U);
  sparse-mezo              g s_b (m_b * z_b): the mask picks the coordinates, s_b scales them.
It does not for zo-adam: Adam divides each coordinate of x = g s_b z_b by sqrt(v); m and sqrt(v) are both
proportional to a steady s_b, so s_b cancels out of block b's step (only the probe direction keeps it).
zo-sgd is MeZO under ZO-Bench's name, so its composition is `zo-finetuner`. Bilevel-ZOFO is not composed: its
ZO step moves a frozen backbone under a PEFT adapter and takes a closure(split, task), outside what a policy
deployed on the trainable blocks was meta-trained for.
"""

from __future__ import annotations

from l2o.optim.base import ZOOptimizer
from l2o.optim.bszo import BSZO
from l2o.optim.hizoo import HiZOO
from l2o.optim.lozo import LOZO, LOZOM
from l2o.optim.mezo import MeZO
from l2o.optim.mezo_gv import MeZOGreedy, MeZOGV
from l2o.optim.sparse_mezo import SparseMeZO
from l2o.optim.zo_sgd_cons import ZOSGDCons
from l2o.optim.zo_sgd_mmt import ZOSGDMMT
from l2o.optim.zo_sgd_sign import ZOSGDSign


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


def compose(base: type[ZOOptimizer], suffix: str, method: str | None = None) -> type[ZOOptimizer]:
    """The ZO Fine-tuner on `base`: class `ZOFineTuner<suffix>` of this module, registered as `method`
    (default `zo-finetuner+<base.method>`), with the base's hyperparameters, capabilities and update."""
    name = f"ZOFineTuner{suffix}"
    return type(name, (_PolicyMixin, base), {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"{base.__name__} with a learned policy's per-block scales (see the module docstring).",
        "method": method or f"zo-finetuner+{base.method}", "base_method": base.method, "paper": PAPER,
        "summary": base.summary + SCALED})


ZOFineTuner = compose(MeZO, "", "zo-finetuner")
ZOFineTunerGV = compose(MeZOGV, "GV", "zo-finetuner+gv")
ZOFineTunerGreedy = compose(MeZOGreedy, "Greedy", "zo-finetuner+greedy")
ZOFineTunerBSZO = compose(BSZO, "BSZO", "zo-finetuner+bszo")
ZOFineTunerSign = compose(ZOSGDSign, "Sign")
ZOFineTunerCons = compose(ZOSGDCons, "Cons")
ZOFineTunerMMT = compose(ZOSGDMMT, "MMT")
ZOFineTunerHiZOO = compose(HiZOO, "HiZOO")
ZOFineTunerLOZO = compose(LOZO, "LOZO")
ZOFineTunerLOZOM = compose(LOZOM, "LOZOM")
ZOFineTunerSparseMeZO = compose(SparseMeZO, "SparseMeZO")
