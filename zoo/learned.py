"""The learned optimizers `l2o` makes, saved to and loaded from the zoo.

`l2o` hands artefacts over as tensors + config (`ZOPolicy.tensors()/config()`, `l2o.meta_init`) and
never imports `zoo`; the apps (`fine_tune`, `meta_train`) save and load them through these functions.
"""

from __future__ import annotations

from pathlib import Path


_META_INIT_HOW_TO = (
    "```python\nfrom l2o.models import load_base\nfrom l2o.meta_init import apply_meta_init\n"
    "from zoo.learned import load_meta_init\n"
    "model, tok, info = load_base({base!r})\n"
    "apply_meta_init(model, load_meta_init(\"<base>/meta-init@<version>\", model))   # checks the base "
    "fingerprint\n```\n\nor `fine_tune --init zoo:<base>/meta-init@<version> ...`. The tensors are "
    "differences theta_meta - theta_base keyed by parameter name (names of the plain base model); "
    "apply them to the unmodified base, then attach a fresh PEFT adapter and adapt.")


def _spec(spec) -> str:
    spec = str(spec)
    return spec[4:] if spec.startswith("zoo:") else spec


def save_policy(policy, directory, card: dict | str | None = None, training: dict | None = None) -> Path:
    """Write a ZO Fine-tuner policy (`l2o.policy.ZOPolicy`) as a zoo artefact folder."""
    from .artefact import save_artefact

    return save_artefact(directory, policy.tensors(), policy.config(training), card or {})


def load_policy(spec, expected_fingerprint: str | None = None, model_name: str | None = None, registry=None):
    """A `ZOPolicy` from a zoo id (`smollm2-135m/zo-finetuner@1`), an artefact folder or a `file://` URL;
    with `expected_fingerprint` a policy made for another base is refused (`ZooError`, naming both)."""
    from l2o.policy import KIND, POLICY_TENSORS, ZOPolicy

    from .resolve import load

    tensors, config = load(_spec(spec), expected_fingerprint=expected_fingerprint, expected_kind=KIND,
                           expected_keys=list(POLICY_TENSORS), model_name=model_name, registry=registry)
    return ZOPolicy.from_tensors(tensors, config)


def save_meta_init(directory, delta: dict, base_model: str, base_fingerprint: str,
                   training: dict | None = None, license: str | None = None) -> Path:
    """Write a Bilevel-ZOFO meta-initialisation (the changed backbone tensors) as a zoo artefact folder."""
    from l2o.meta_init import meta_init_artefact

    from .artefact import save_artefact

    tensors, config = meta_init_artefact(delta, base_model, base_fingerprint, training)
    training = config["training"]
    card = {"tasks": training.get("tasks", []), "steps": training.get("steps"), "metrics": training.get("metrics", {}),
            "how_to_use": _META_INIT_HOW_TO.format(base=base_model),
            "description": "Bilevel-ZOFO meta-initialisation of the backbone, trained over a task family.",
            **({"license": license} if license else {})}
    return save_artefact(directory, tensors, config, card)


def load_meta_init(spec, model, model_name: str | None = None, registry=None) -> dict:
    """The tensors of a meta-initialisation made for `model`'s base (fingerprint checked; a PEFT wrapper
    is looked through), ready for `l2o.meta_init.apply_meta_init(model, tensors)`."""
    from l2o.meta_init import KIND
    from l2o.models import fingerprint

    from .resolve import load

    tensors, _ = load(_spec(spec), expected_fingerprint=fingerprint(model), expected_kind=KIND,
                      model_name=model_name, registry=registry)
    return tensors
