"""Sparse-MeZO (Liu et al. 2024, arXiv 2402.15751): MeZO on the small-magnitude weights only.

    h_b = the (1 - sparsity) quantile of |theta_b| (each block, from the weights when the optimizer is made)
    m_b = 1{|theta_b| <= h_b}       read from the weights each time z is made (the mask is never stored)
    g = [L(theta + eps m z) - L(theta - eps m z)] / (2 eps)
    theta <- theta - lr ( g m z + wd theta )                        (2 forwards per step)

The mask is the `masked` perturbation family (l2o/perturbations.py): the engine multiplies z_b by it as it
makes z_b, so memory stays at inference level (one boolean temporary of a block's size while z_b is made).
The thresholds are recorded in the ledger's header, so replay uses the same ones. The paper's idea is that
large weights amplify the estimate's error; the sparsity default 0.75 (a quarter of each block perturbed) is
our reading of the paper's ablation, not verified against its code (the authors' repository could not be
read here). Effective step: the perturbed share (E z^2 under the mask made at the step's weights).
"""

from __future__ import annotations

from l2o.hparams import HP
from l2o.optim.base import _check
from l2o.optim.mezo import MeZO
from l2o.perturbations import Masked


class SparseMeZO(MeZO):
    method = "sparse-mezo"
    paper = "Liu et al. 2024, arXiv 2402.15751"
    summary = "g m⊙z, m = 1{|θ| ≤ h_b}: only each block's smallest weights move"
    hyperparameters = (
        HP("sparsity", float, 0.75, "share of each block's weights (the largest in magnitude) never perturbed",
           "Sparse-MeZO's ablation, read as 0.75 (not verified against its code)", low=0, high=1),
    )

    @classmethod
    def validate(cls, hp):
        _check(hp["sparsity"] < 1, f"{cls.method}: sparsity must be < 1 (1 perturbs nothing), got {hp['sparsity']!r}")

    def make_family(self, hp):
        return Masked(hp["sparsity"])
