"""l2o.memory_plan's activation count against the tensors autograd keeps: what a backward needs, measured by
saved-tensor hooks on random-initialised models of the real aliases' shapes (two or three layers, no download)."""

from __future__ import annotations

import pytest
import torch

FAMILIES = ["opt-125m", "smollm2-135m"]  # LayerNorm + ReLU MHA; RMSNorm + SiLU-gated GQA (Llama)


def _model(alias: str, layers: int, dtype, attn: str, vocab: int | None = None):
    from transformers import AutoModelForCausalLM

    from l2o.models import shipped_config

    config = shipped_config(alias)
    config.num_hidden_layers = layers
    if vocab:
        config.vocab_size = vocab
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).eval(), config


def _padded_batch(batch: int, length: int):
    ids = torch.randint(3, 100, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # one shorter example: the batch is padded, as a classification batch usually is
    return ids, mask


class _Saved:
    """Bytes of the tensors autograd saves while active (storages once, parameters and buffers left out), per
    decoder layer (key: its index) and outside the layers (key None)."""

    def __init__(self, model, wrapped=None):
        held = [*(wrapped or model).parameters(), *(wrapped or model).buffers()]  # a PEFT wrapper's adapter too
        self.known = {t.untyped_storage().data_ptr() for t in held}
        self.bytes, self.where = {}, None
        inner = model.model.decoder if hasattr(model.model, "decoder") else model.model
        for i, layer in enumerate(inner.layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "where", i))
            layer.register_forward_hook(lambda m, a, o: setattr(self, "where", None))

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key not in self.known:
            self.known.add(key)
            self.bytes[self.where] = self.bytes.get(self.where, 0) + t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_a_layers_saved_activations_are_what_the_plan_counts(alias, dtype, attn, one_thread):
    """One decoder layer of a padded batch (4 x 32 tokens) saves exactly layer_bytes_per_token x tokens: k and v
    repeated to every head and SDPA's mask copy, RMSNorm's float32 input, the gated MLP's 4f and OPT's ReLU's f.
    (OPT's LayerNorm statistics are the weights' dtype on the CPU, float32 in the plan: up to 8 B per token apart.)"""
    from l2o.memory_plan import layer_bytes_per_token

    model, config = _model(alias, 3, dtype, attn, vocab=128)
    ids, mask = _padded_batch(4, 32)
    with _Saved(model) as saved:
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    planned = layer_bytes_per_token(config, 32, dtype.itemsize, attn == "eager") * ids.numel()
    assert saved.bytes[1] == saved.bytes[2]  # a middle layer and the last one: the same count
    assert planned - 8 * ids.numel() <= saved.bytes[1] <= planned, (saved.bytes[1], planned)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("peft", ["lora", "prompt", "prefix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_with_the_base_frozen_a_layer_saves_what_the_plan_counts_for_its_peft_mode(alias, dtype, peft, attn,
                                                                                    one_thread):
    """Under PEFT the base is frozen and no linear keeps its input for a weight gradient: LoRA (r 8 on q and v) and
    prompt tuning (its 10 virtual tokens are real positions) save exactly what the plan counts; prefix tuning's 5
    virtual tokens only widen k, v and the mask, so the plan, counting them as positions, is a bound (about
    length + 5 over length: 1.16 at 32 tokens, 1.003 at the plans' 2048)."""
    from fine_tune.plan import _virtual_tokens
    from l2o.memory_plan import layer_bytes_per_token
    from l2o.peft_modes import apply_peft

    model, config = _model(alias, 3, dtype, attn, vocab=128)
    wrapped = apply_peft(model, peft).to(dtype)
    ids, mask = _padded_batch(4, 32)
    with _Saved(model, wrapped) as saved:
        wrapped(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    length = 32 + _virtual_tokens(peft)
    planned = layer_bytes_per_token(config, length, dtype.itemsize, attn == "eager", peft) * 4 * length
    if peft == "prefix":
        assert saved.bytes[2] < planned <= 1.2 * saved.bytes[2], (saved.bytes[2], planned)
    else:
        assert planned - 8 * 4 * length <= saved.bytes[2] <= planned, (saved.bytes[2], planned)


@pytest.mark.parametrize("alias", FAMILIES)
def test_a_backwards_activations_are_the_saved_tensors_and_the_logits(alias, one_thread):
    """A whole (two-layer) model, fp32, padded batch 4 x 32, every position's logits (the plan's bound: the
    objectives keep fewer) and a classification loss's float32 log-softmax of one row per example: what autograd
    saves plus the logits and the gathered rows, alive together at the forward's end, is activation_bytes within 0.2%
    (the plan leaves out the token ids, the rotary tables and index tensors: 2-17 kB here)."""
    from l2o.memory_plan import activation_bytes

    model, config = _model(alias, 2, torch.float32, "sdpa")
    ids, mask = _padded_batch(4, 32)
    with _Saved(model) as saved:
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = logits[torch.arange(4), torch.tensor([15, 31, 31, 31])].float()  # a copy, alive until the loss
        rows.log_softmax(-1)
    measured = sum(saved.bytes.values()) + logits.numel() * logits.element_size() + rows.numel() * 4
    planned = activation_bytes(config, 4, 32, 4, False, False, scored=4)
    assert abs(planned - measured) <= 0.002 * measured, (measured, planned)
