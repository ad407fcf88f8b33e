"""Model cards: how an optimizer was made, how well it did, where it comes from (README.md + `zoo info`).

The facts live in the artefact's ``config.json`` (``training``, written by ``meta_train`` or by the
importer; ``arch``); the card only presents them, in three parts:

- **how it was made** (one table): kind, base and fingerprint, meta-training tasks and held-out tasks,
  meta-steps, estimator, unroll horizon, inner optimizer with its lr and eps, size rule, effective step,
  architecture, parameter count. A missing fact reads "not recorded";
- **evaluation**: ``training.evaluation`` = ``{"summary": str}`` and/or ``{"baseline": "MeZO", "metric":
  str, "seeds": [..], "rows": [{"task", "value", "baseline_value", "difference", "interval": [lo, hi]}]}``
  (a row without an interval says so), else the meta-validation record, else "Not evaluated.";
- **license and provenance**: the license, and ``training.provenance`` (source, commit, file, paper, ...).

``render_card`` writes them under YAML front matter that the Hugging Face Hub reads (``license``,
``base_model`` as a Hub id, ``tags``, ...); ``info_lines`` prints the same facts for ``zoo info``.
"""

from __future__ import annotations

import json
import math

from .manifest import KINDS

LIBRARY_NAME = "l2o-zo"
BASE_TAGS = ["learned-optimizer", "zeroth-order", "l2o-zo", "model_hub_mixin", "pytorch_model_hub_mixin"]
NOT_RECORDED = "not recorded"
_PROVENANCE_LABELS = {"source": "source", "repository": "repository", "commit": "commit", "file": "file",
                      "url": "file at that commit", "sha256": "sha256", "bytes": "bytes", "paper": "paper",
                      "license_note": "license note", "made_by": "made by", "converted_by": "converted by",
                      "checked": "what was checked"}


def _fmt(value) -> str:
    if value is None or value == "" or value == []:
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _training(config: dict) -> tuple[dict, dict]:
    training = config.get("training") or {}
    return training, training.get("hyperparameters") or {}


def parameter_count(config: dict, shapes: dict | None = None) -> int | None:
    """Parameters of the artefact: from a policy's arch, else from tensor shapes when given."""
    arch = config.get("arch") or {}
    if config.get("kind") == "zo-finetuner-policy":
        blocks = len(arch.get("block_names") or []) or (config.get("training") or {}).get("blocks")
        f, h = arch.get("in_features"), arch.get("hidden")
        if blocks and f and h:
            return int(blocks) * (h * f + h + h + 1)
    if shapes:
        return sum(math.prod(int(d) for d in info["shape"]) for info in shapes.values())
    return None


def _architecture(config: dict) -> str:
    arch, kind = config.get("arch") or {}, config.get("kind")
    if kind == "zo-finetuner-policy":
        f, h = arch.get("in_features", 5), arch.get("hidden", 64)
        blocks = len(arch.get("block_names") or []) or (config.get("training") or {}).get("blocks", "?")
        norm = "normalised" if arch.get("normalize", True) else "not normalised"
        return (f"one MLP per parameter block ({blocks} blocks): Linear({f},{h})-Tanh-Linear({h},1), "
                f"absolute value; {norm}")
    if kind == "bilevel-meta-init":
        return "backbone differences theta_meta - theta_base, one tensor per changed parameter"
    if kind == "zo-ledger":
        return f"seed ledger of {arch.get('updates', '?')} updates ({arch.get('dtype', '?')}, {arch.get('peft', '?')})"
    return NOT_RECORDED


def _optimizer(record, hp: dict | None = None) -> str:
    """"name, lr X, eps Y, ..." from a recorded {name, lr, eps, other hyperparameters such as pool_size} (or a
    sentence); for artefacts made before the field existed, the lr and eps from the hyperparameters (eta_meta:
    the look-ahead's ZO step)."""
    if isinstance(record, dict):
        parts = [str(record.get("name") or NOT_RECORDED)]
    elif record:
        return str(record)
    else:
        hp = hp or {}
        record, parts = {"lr": hp.get("eta_meta", hp.get("lower_lr")), "eps": hp.get("eps")}, []
    keys = ["lr", "eps", *(k for k in record if k not in ("name", "lr", "eps"))]
    parts += [f"{k} {_fmt(record[k])}" for k in keys if record.get(k) is not None]
    return ", ".join(parts) or NOT_RECORDED


def made_rows(config: dict, card: dict | None = None, shapes: dict | None = None) -> list[tuple[str, str]]:
    """The "how it was made" table: (field, value) rows, "not recorded" where a fact is missing."""
    card = card or {}
    training, hp = _training(config)
    kind = config["kind"]
    size_rule = (config.get("arch") or {}).get("size_rule") or training.get("size_rule") or hp.get("size_rule")
    params = parameter_count(config, shapes)
    rows = [
        ("kind", f"{kind} ({KINDS.get(kind, '?')})"),
        ("base", _fmt(config.get("base_model"))),
        ("base fingerprint", _fmt(config.get("base_fingerprint"))),
    ]
    if kind == "zo-ledger":  # a fine-tune, not a meta-trained optimizer
        arch = config.get("arch") or {}
        return rows + [("method", _fmt(arch.get("method"))),
                       ("tasks", _fmt(card.get("tasks") or training.get("tasks"))),
                       ("architecture", _architecture(config)), ("noise", _fmt(arch.get("noise")))]
    rows += [
        ("meta-training tasks", _fmt(card.get("tasks") or training.get("tasks"))),
        ("held-out tasks", _fmt(training.get("heldout_tasks"))),
        ("meta-steps", _fmt(card.get("steps", training.get("steps")))),
        ("estimator", _fmt(training.get("estimator") or hp.get("estimator"))),
        ("unroll horizon", _fmt(training.get("unroll", hp.get("unroll")))),
        ("inner optimizer", _optimizer(training.get("inner_optimizer"), hp)),
    ]
    if training.get("outer_optimizer"):
        rows.append(("outer optimizer", _optimizer(training["outer_optimizer"])))
    if training.get("trajectory"):
        rows.append(("LLM trajectory", _fmt(training["trajectory"])))
    if kind == "zo-finetuner-policy":
        rows.append(("size rule", _fmt(size_rule)))
    rows += [
        ("effective step E‖d‖²/d", _fmt(training.get("effective_step"))),
        ("architecture", _architecture(config)),
        ("parameters", f"{params:,}" if params is not None else NOT_RECORDED),
    ]
    return rows


def evaluation_lines(config: dict, card: dict | None = None) -> list[str]:
    """Markdown lines: the evaluation against a baseline (with intervals where there are any), else the
    meta-validation record, else "Not evaluated."."""
    card = card or {}
    training, _ = _training(config)
    ev = training.get("evaluation") or {}
    lines = [str(ev["summary"]), ""] if ev.get("summary") else []
    if ev.get("rows"):
        base = ev.get("baseline", "MeZO")
        seeds = ev.get("seeds") or []
        lines += [f"Metric: {ev.get('metric', NOT_RECORDED)}; seeds: {_fmt(seeds)} ({len(seeds)}); baseline: {base}.",
                  "", f"| task | this optimizer | {base} | difference | 95% interval |", "|---|---|---|---|---|"]
        for r in ev["rows"]:
            iv = r.get("interval")
            iv = f"[{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else "none (one seed)" if len(seeds) < 2 else NOT_RECORDED
            lines.append(f"| {r.get('task')} | {_fmt(r.get('value'))} | {_fmt(r.get('baseline_value'))} | "
                         f"{_fmt(r.get('difference'))} | {iv} |")
        lines.append("")
    mv = training.get("meta_validation")
    if not ev and isinstance(mv, dict) and mv.get("tasks"):
        method, base = mv.get("method", "zo-finetuner"), mv.get("baseline", "mezo")  # unnamed: the first rows' pair
        lines += [f"Meta-validation at step {mv.get('step', '?')} (one run, so no interval): loss after a short ZO "
                  f"fine-tuning of each held-out task from the pretrained weights, {method} with the policy against "
                  f"{base} (the same method without it) at equal forward passes.", "",
                  f"| task | this optimizer | {base} |", "|---|---|---|"]
        for task, v in mv["tasks"].items():
            policy = v.get(method, v.get("policy"))
            lines.append(f"| {task} | {_fmt(policy)} | {_fmt(v.get(base))} |")
        lines.append("")
    metrics = card.get("metrics") or training.get("metrics") or {}
    if metrics:
        lines += ["Recorded during training:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()] + [""]
    return lines or ["Not evaluated.", ""]


def provenance_rows(config: dict, card: dict | None = None) -> list[tuple[str, str]]:
    """License and provenance: (field, value) rows."""
    card = card or {}
    training, _ = _training(config)
    rows = [("license", _fmt(card.get("license_name") or card.get("license")))] if card.get("license") else []
    prov = training.get("provenance") or {}
    rows += [(_PROVENANCE_LABELS.get(k, k.replace("_", " ")), _fmt(v)) for k, v in prov.items()]
    if not prov and training.get("imported_from"):
        rows += [("source", _fmt(training.get("source"))), ("file", training["imported_from"]),
                 ("sha256", _fmt(training.get("imported_sha256")))]
    return rows or [("provenance", NOT_RECORDED)]


def hub_base_model(name: str) -> str | None:
    """The Hugging Face Hub id of a base for the card's ``base_model`` (None for a local folder)."""
    try:
        from l2o.models import ALIASES, DEFAULT_BASE

        key = str(name).strip().lower()
        if key == DEFAULT_BASE:
            return "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default: SmolLM2-135M-Instruct's GGUF
        if key in ALIASES:
            return ALIASES[key]
    except ImportError:
        pass
    text = str(name)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    return None


def _yaml_value(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON scalars/lists are valid YAML flow values


def _table(rows) -> list[str]:
    return ["| field | value |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]


def render_card(card: dict, config: dict, shapes: dict | None = None) -> str:
    """README.md: YAML front matter (license, base_model, tags, ...), then how it was made, evaluation,
    license and provenance, and how to use it."""
    kind = config["kind"]
    tags = list(dict.fromkeys(list(BASE_TAGS) + [kind] + [t for t in card.get("tags", []) if isinstance(t, str)]))
    front = {"license": card.get("license", "other")}
    for key in ("license_name", "license_link"):
        if card.get(key):
            front[key] = card[key]
    front["library_name"] = LIBRARY_NAME
    base = card.get("base_model") or hub_base_model(config["base_model"])
    if base:
        front["base_model"] = base
    front["tags"] = tags
    if card.get("datasets"):
        front["datasets"] = list(card["datasets"])
    lines = ["---"] + [f"{k}: {_yaml_value(v)}" for k, v in front.items()] + ["---", ""]
    lines += [f"# {card.get('title') or KINDS[kind].capitalize() + ' for ' + config['base_model']}", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    lines += ["## How it was made", ""] + _table(made_rows(config, card, shapes)) + [""]
    lines += ["## Evaluation", ""] + evaluation_lines(config, card)
    lines += ["## License and provenance", ""] + _table(provenance_rows(config, card)) + [""]
    how = card.get("how_to_use") or (
        "```bash\nzoo download <base>/<name>@<version>   # verified copy in the local cache\n```\n\n"
        "```python\nfrom zoo import load\ntensors, config = load(\"<base>/<name>@<version>\", "
        "expected_fingerprint=base_fingerprint, expected_kind=\"" + kind + "\")\n```"
    )
    lines += ["## How to use", "", how, ""]
    return "\n".join(lines)


def info_lines(config: dict, card: dict | None = None, shapes: dict | None = None) -> list[str]:
    """The card's facts as plain text for `zoo info`."""
    out = []
    for title, rows in (("How it was made", made_rows(config, card, shapes)),
                        ("License and provenance", provenance_rows(config, card))):
        width = max(len(k) for k, _ in rows)
        out += [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows] + [""]
    out += ["Evaluation"] + [f"  {ln}" if ln else "" for ln in evaluation_lines(config, card)]
    return out


def card_front_matter(text: str) -> dict:
    """The YAML front matter of a model card as a dict ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    block = text[3:end]
    try:
        import yaml

        doc = yaml.safe_load(block)
        return doc if isinstance(doc, dict) else {}
    except Exception:  # noqa: BLE001 - fall back to a line parser
        out = {}
        for line in block.splitlines():
            k, sep, v = line.partition(":")
            if sep and k.strip() and not k.startswith(" "):
                out[k.strip()] = v.strip().strip("\"'")
        return out
