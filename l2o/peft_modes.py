"""Which parameters a zeroth-order method perturbs: full fine-tuning or a PEFT mode through `peft`.

    model = apply_peft(model, "lora")        # r 8, alpha 16 on the attention query/value projections
    model = apply_peft(model, "prefix")      # 5 virtual tokens per layer (MeZO: init from real key/values)
    model = apply_peft(model, "prompt")      # 10 virtual input embeddings (init from random vocabulary rows)
    blocks = trainable_blocks(model)         # what the optimizers index

After `apply_peft`, exactly the PEFT parameters have `requires_grad` (mode "full": every parameter).
Initialisation is seeded (`seed=`) and leaves the global RNG state untouched.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from l2o.blocks import named_blocks
from l2o.errors import UserError

MODES = ("full", "lora", "prefix", "prompt")
LORA_R = 8
LORA_ALPHA = 16
PREFIX_TOKENS = 5
PROMPT_TOKENS = 10

# attention query/value projection names per architecture (peft matches them as module-name suffixes)
LORA_TARGETS = {
    "opt": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"], "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "bloom": ["query_key_value"],
    "roberta": ["query", "value"], "bert": ["query", "value"], "xlm-roberta": ["query", "value"],
}


class PeftModeError(UserError):
    """An unknown PEFT mode or a model it cannot be applied to (one sentence)."""


def lora_targets(model: nn.Module) -> list[str]:
    """The attention query/value module names LoRA should wrap for this architecture."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for cand in (["q_proj", "v_proj"], ["query", "value"], ["c_attn"], ["query_key_value"], ["qkv_proj"]):
        if all(c in leaves for c in cand):
            return cand
    raise PeftModeError(f"cannot find attention query/value projections in {type(model).__name__}; "
                        "pass target_modules=[...] explicitly")


def _task_type(model: nn.Module):
    from peft import TaskType

    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return TaskType.CAUSAL_LM
    if name.endswith("ForSequenceClassification"):
        return TaskType.SEQ_CLS
    return None


@contextlib.contextmanager
def _seeded(seed: int, model: nn.Module):
    devices = []
    for p in model.parameters():
        if p.device.type == "cuda":
            devices = [p.device.index or 0]
        break
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def apply_peft(model: nn.Module, mode: str = "full", *, r: int = LORA_R, alpha: int = LORA_ALPHA,
               target_modules: list[str] | None = None, num_virtual_tokens: int | None = None,
               prefix_init: str = "real", seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """Return the model prepared for `mode` (full | lora | prefix | prompt)."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise PeftModeError(f"unknown PEFT mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    import peft

    if isinstance(model, peft.PeftModel):
        raise PeftModeError("the model already carries a PEFT adapter; apply_peft takes a plain base model")
    task_type = _task_type(model)
    with _seeded(seed, model):
        if mode == "lora":
            targets = target_modules or lora_targets(model)
            cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                  fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
                                  task_type=task_type)
            out = peft.get_peft_model(model, cfg)
        else:
            if task_type is None:
                raise PeftModeError(f"{mode} tuning needs a causal LM or a sequence classifier, "
                                    f"not {type(model).__name__}")
            if mode == "prefix":
                n = num_virtual_tokens or PREFIX_TOKENS
                cfg = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n, prefix_projection=False)
                out = peft.get_peft_model(model, cfg)
                if prefix_init == "real":
                    _init_prefix_from_activations(out, n, seed)
            else:
                n = num_virtual_tokens or PROMPT_TOKENS
                cfg = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=n)
                out = peft.get_peft_model(model, cfg)
                _init_prompt_from_vocab(out, n, seed)
    return out


def _prompt_encoder_weight(peft_model) -> torch.Tensor:
    enc = peft_model.prompt_encoder[peft_model.active_adapter]
    return enc.embedding.weight


def _init_prompt_from_vocab(peft_model, n: int, seed: int) -> None:
    """Prompt tuning init: embeddings of `n` random vocabulary tokens (seeded)."""
    emb = peft_model.get_base_model().get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, emb.shape[0], (n,), generator=g)
    w = _prompt_encoder_weight(peft_model)
    with torch.no_grad():
        w.copy_(emb.detach()[idx.to(emb.device)].to(w.dtype))


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def _init_prefix_from_activations(peft_model, n: int, seed: int) -> None:
    """MeZO's prefix init: the real per-layer key/value activations of `n` random vocabulary tokens.

    peft lays the prefix embedding out as [n, layers * 2 * heads * head_dim], read back as
    (layer, key|value, head, position, dim). If the model's cache does not match that layout the
    random peft init is kept.
    """
    base = peft_model.get_base_model()
    vocab = base.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    device = next(base.parameters()).device
    ids = torch.randint(0, vocab, (1, n), generator=g).to(device)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            out = base(input_ids=ids, use_cache=True)
        layers = _cache_layers(out.past_key_values)
    except Exception:  # noqa: BLE001 - an exotic cache: keep peft's random init
        return
    finally:
        base.train(was_training)
    w = _prompt_encoder_weight(peft_model)
    parts = []
    for k, v in layers:  # each [1, heads, n, head_dim]
        for t in (k, v):
            parts.append(t[0].permute(1, 0, 2).reshape(n, -1))  # [n, heads*head_dim]
    flat = torch.cat(parts, dim=1)
    if tuple(flat.shape) != tuple(w.shape):
        return
    with torch.no_grad():
        w.copy_(flat.to(w.dtype))


def trainable_blocks(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) blocks a zeroth-order method perturbs after `apply_peft`."""
    return named_blocks(model, trainable_only=True)


def peft_mode(model: nn.Module) -> str:
    """The mode a model was prepared with ("full" for a plain model)."""
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return "full"
    kind = next(iter(cfg.values())).peft_type
    kind = str(getattr(kind, "value", kind)).lower()
    return {"lora": "lora", "prefix_tuning": "prefix", "prompt_tuning": "prompt"}.get(kind, kind)
