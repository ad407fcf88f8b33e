"""`zoo:` optimizer names for the Hugging Face Trainer integration (`l2o.integrations.hf.ZOTrainer`).

`l2o` never imports the `zoo` package (imports run apps -> zoo -> l2o), so the Trainer takes the resolver
from the application layer:

    from fine_tune.hf import zoo_policy
    trainer = ZOTrainer(..., optimizer="zoo:smollm2-135m/zo-finetuner", policy_resolver=zoo_policy)
"""

from __future__ import annotations


def zoo_policy(spec: str, model):
    """The ZO Fine-tuner policy `spec` (zoo id, artefact folder or file:// URL), checked to be for `model`'s base.

    A policy made for another base is refused by its fingerprint (`zoo.ZooError`, one sentence)."""
    from l2o.models import fingerprint
    from zoo.learned import load_policy

    return load_policy(spec, expected_fingerprint=fingerprint(model))
