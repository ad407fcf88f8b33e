"""PEFT modes: which parameters are trainable, seeded init, and the task losses on wrapped models."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model, tiny_tokenizer
from l2o.blocks import named_blocks
from l2o.peft_modes import PeftModeError, apply_peft, lora_targets, peft_mode, trainable_blocks
from l2o.tasks import Rendered
from l2o.tasks.objectives import AnswerLM, CandidateCE, candidate_scores

BATCH = [Rendered("a gorgeous , witty film It was", [" terrible", " great"], 1, [" great"]),
         Rendered("Does it? Yes, No, or Maybe?\n", ["Yes", "No", "Maybe"], 2, ["Maybe"])]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_full_mode_trains_everything(arch):
    model = tiny_model(arch)
    for p in model.parameters():
        p.requires_grad_(False)
    out = apply_peft(model, "full")
    assert out is model and peft_mode(out) == "full"
    assert trainable_blocks(out) == named_blocks(model, trainable_only=False)


@pytest.mark.parametrize("arch,targets", [("opt", {"q_proj", "v_proj"}), ("llama", {"q_proj", "v_proj"}),
                                          ("gpt2", {"c_attn"}), ("roberta", {"query", "value"})])
def test_lora_selects_only_adapter_matrices(arch, targets):
    base = tiny_model(arch)
    assert set(lora_targets(base)) == targets
    hidden = base.config.hidden_size if arch != "gpt2" else base.config.n_embd
    layers = base.config.num_hidden_layers if arch != "gpt2" else base.config.n_layer
    model = apply_peft(base, "lora")
    assert peft_mode(model) == "lora"
    names = [n for n, _ in trainable_blocks(model)]
    assert len(names) == 2 * len(targets) * layers  # A and B per wrapped projection
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == targets
    for n, p in trainable_blocks(model):
        assert 8 in p.shape  # rank 8
        if ".lora_A." in n:
            assert p.shape[1] == hidden
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n for n in frozen)
    assert model.peft_config["default"].lora_alpha == 16


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_prefix_and_prompt_shapes(arch):
    cfg = tiny_model(arch).config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    prefix = apply_peft(tiny_model(arch), "prefix")
    (name, p), = trainable_blocks(prefix)
    assert "prompt_encoder" in name and tuple(p.shape) == (5, cfg.num_hidden_layers * 2 * kv_heads * head_dim)
    assert peft_mode(prefix) == "prefix"
    prompt = apply_peft(tiny_model(arch), "prompt")
    (name, p), = trainable_blocks(prompt)
    assert tuple(p.shape) == (10, cfg.hidden_size) and peft_mode(prompt) == "prompt"
    assert sum(q.requires_grad for q in prompt.parameters()) == 1


def test_prefix_init_is_real_key_values_and_prompt_init_is_vocab_rows():
    base = tiny_model("llama")
    model = apply_peft(base, "prefix", seed=3)
    w = trainable_blocks(model)[0][1].detach()
    ids = torch.randint(0, base.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model.get_base_model()(input_ids=ids, use_cache=True).past_key_values
    k0 = cache.layers[0].keys[0]  # [kv_heads, 5, head_dim]
    assert torch.allclose(w[:, : k0.shape[0] * k0.shape[2]], k0.permute(1, 0, 2).reshape(5, -1), atol=1e-6)
    prompt = apply_peft(tiny_model("opt"), "prompt", seed=1)
    w = trainable_blocks(prompt)[0][1].detach()
    emb = prompt.get_base_model().get_input_embeddings().weight
    assert all(any(torch.equal(row, e) for e in emb) for row in w[:3])


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = apply_peft(tiny_model("opt"), "lora", seed=5)
    b = apply_peft(tiny_model("opt"), "lora", seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    for (na, pa), (nb, pb) in zip(trainable_blocks(a), trainable_blocks(b)):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_the_init_follows_the_seed_given_and_nothing_else(mode):
    """The same seed gives the same adapter whatever the global RNG did before; another seed, another adapter."""
    def init(seed, global_seed):
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            return [p.detach().clone() for _, p in trainable_blocks(apply_peft(tiny_model("opt"), mode, seed=seed))]

    a, again, other = init(5, 0), init(5, 1), init(6, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not all(torch.equal(x, y) for x, y in zip(a, other))


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_base_fingerprint_survives_peft(mode):
    from l2o.models import block_names, fingerprint

    plain = tiny_model("llama")
    expected, names = fingerprint(plain), block_names(plain)
    wrapped = apply_peft(tiny_model("llama"), mode)
    assert fingerprint(wrapped) == expected and block_names(wrapped) == names


def test_bad_mode_and_double_wrap():
    with pytest.raises(PeftModeError, match="unknown PEFT mode"):
        apply_peft(tiny_model("opt"), "adapter")
    wrapped = apply_peft(tiny_model("opt"), "lora")
    with pytest.raises(PeftModeError, match="already"):
        apply_peft(wrapped, "prefix")
    with pytest.raises(PeftModeError, match="causal LM"):
        apply_peft(tiny_model("roberta"), "prompt")


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_objectives_work_on_peft_models(arch, mode, tok):
    model = apply_peft(tiny_model(arch), mode)
    loss = CandidateCE().loss(model, tok, BATCH)
    loss.backward()
    assert torch.isfinite(loss)
    for _, p in trainable_blocks(model):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    gen = [Rendered("Question: capital?\nAnswer:", [], None, ["Paris"])]
    assert torch.isfinite(AnswerLM().loss(model, tok, gen))
    assert set(CandidateCE(max_new_tokens=3).evaluate(model, tok, BATCH)) == {"accuracy"}
    assert set(AnswerLM(max_new_tokens=3).evaluate(model, tok, gen)) == {"f1"}


def test_prompt_tuning_scores_skip_the_virtual_tokens(tok):
    """Prompt tuning prepends 10 positions to the logits; scores must read the real positions."""
    model = apply_peft(tiny_model("opt"), "prompt")
    ex = BATCH[0]
    p = tok(ex.prompt)["input_ids"]
    full = tok(ex.prompt + ex.candidates[1])["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full]),
                       attention_mask=torch.ones(1, len(full), dtype=torch.long)).logits[0]
        assert logits.shape[0] == len(full) + 10
        lp = torch.log_softmax(logits[10:].double(), -1)
        expected = sum(lp[q - 1, full[q]].item() for q in range(len(p), len(full))) / (len(full) - len(p))
        got = candidate_scores(model, tok, [ex])[0][1].item()
    assert got == pytest.approx(expected, abs=1e-5)


def _manual_greedy(model, tok, prompt, n):
    cur = tok([prompt], return_tensors="pt").input_ids
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=cur, attention_mask=torch.ones_like(cur)).logits[0, -1].argmax())
            out.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]])], 1)
    return tok.decode(out, skip_special_tokens=True).split("\n")[0].strip()


@pytest.mark.parametrize("mode", ["full", "lora", "prefix", "prompt"])
def test_batched_generation_matches_a_manual_greedy_loop(mode, tok):
    from l2o.tasks.objectives import greedy_generate

    model = apply_peft(tiny_model("llama", seed=4), mode)
    prompts = ["Question: What is the capital of France?\nAnswer:", "The movie was"]  # the 2nd is left-padded
    got = greedy_generate(model, tok, prompts, max_new_tokens=6)
    assert got == [_manual_greedy(model, tok, p, 6) for p in prompts]
