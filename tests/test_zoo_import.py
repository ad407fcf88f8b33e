"""Importing released ZO Fine-tuner policies (pickled nn.Sequential dicts) without executing pickles."""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import re
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo import ZooError
from zoo.artefact import load_artefact
from zoo.cli import main
from zoo.convert import import_zo_finetuner, read_zo_finetuner
from zoo.registry import publish
from zoo.resolve import load
from zoo.safe_pickle import restricted_load

from tests import helpers

FP = "sha256:" + "ef56" * 16
NAMES = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.bias",
         "model.norm.weight", "lm_head.weight"]  # deliberately not sorted


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


def released_policy(path: Path, dtype=torch.float32, names=NAMES, seed=0) -> dict:
    return helpers.released_policy(path, dtype, names, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_import_matches_the_original_modules(tmp_path, dtype, capsys):
    nets = released_policy(tmp_path / "llama1B_finetuner.pth", dtype)
    rc = main(["import-zo-finetuner", str(tmp_path / "llama1B_finetuner.pth"), "--base", "llama-3.2-1b",
               "--fingerprint", FP, "--out", str(tmp_path / "art")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    tensors, config = load_artefact(tmp_path / "art", expected_fingerprint=FP, expected_kind="zo-finetuner-policy",
                                    expected_keys=["w1", "b1", "w2", "b2"])
    assert config["arch"] == {"in_features": 5, "hidden": 64, "block_names": NAMES, "normalize": True,
                              "size_rule": "authors"}  # the authors' code trained it under its own nf
    assert config["base_model"] == "llama-3.2-1b" and config["base_fingerprint"] == FP
    assert config["training"]["source_dtypes"] == [str(dtype).replace("torch.", "")]
    b = len(NAMES)
    assert [tuple(tensors[k].shape) for k in ("w1", "b1", "w2", "b2")] == [(b, 64, 5), (b, 64), (b, 1, 64), (b, 1)]
    for i, name in enumerate(NAMES):
        seq = nets[name]
        assert torch.equal(tensors["w1"][i], seq[0].weight.detach().float())
        assert torch.equal(tensors["b1"][i], seq[0].bias.detach().float())
        assert torch.equal(tensors["w2"][i], seq[2].weight.detach().float())
        assert torch.equal(tensors["b2"][i], seq[2].bias.detach().float())
        assert all(t.dtype == torch.float32 for t in tensors.values())
        # the stacked policy computes what the released module computes
        x = torch.randn(7, 5)
        ref = seq.float()(x)
        got = torch.tanh(x @ tensors["w1"][i].T + tensors["b1"][i]) @ tensors["w2"][i].T + tensors["b2"][i]
        assert torch.allclose(got, ref, atol=1e-6)
    assert "pickle" not in "".join(p.name for p in (tmp_path / "art").iterdir())


def test_an_import_stopped_mid_write_leaves_out_as_it_was_and_the_next_one_clears_a_killed_ones(tmp_path,
                                                                                                 monkeypatch, capsys):
    """The artefact's files were written straight into --out: Ctrl-C after the weights left weights without their
    config, and a kill -9 mid-write a temp file nothing removed. They are staged and renamed in once all are whole."""
    from l2o.filelock import WRITER_LOCK_SUFFIX
    from zoo import artefact
    from zoo.convert import IMPORT_STAGING

    released_policy(tmp_path / "p.pth")
    args = (tmp_path / "p.pth", "llama-3.2-1b")
    write = artefact.write_json_atomic

    def stopped(path, data):  # the weights are written: their config is next
        assert (path.parent / artefact.WEIGHTS_NAME).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(artefact, "write_json_atomic", stopped)
    with pytest.raises(KeyboardInterrupt):
        import_zo_finetuner(*args, tmp_path / "new" / "art", fingerprint=FP)
    assert not (tmp_path / "new").exists()  # a folder the import made goes
    old = tmp_path / "old"
    monkeypatch.setattr(artefact, "write_json_atomic", write)
    import_zo_finetuner(*args, old, fingerprint=FP)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(artefact, "write_json_atomic", stopped)
    with pytest.raises(KeyboardInterrupt):
        import_zo_finetuner(tmp_path / "p.pth", "llama-3.2-3b", old, fingerprint=FP)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the folder's artefact, whole and unchanged

    killed = old / f"{IMPORT_STAGING}abcd1234"  # what a kill -9 mid-write leaves: the folder and its lock, unheld
    killed.mkdir()
    (killed / artefact.WEIGHTS_NAME).write_bytes(b"half")
    killed.with_name(killed.name + WRITER_LOCK_SUFFIX).touch()
    monkeypatch.setattr(artefact, "write_json_atomic", write)
    capsys.readouterr()
    import_zo_finetuner(tmp_path / "p.pth", "llama-3.2-3b", old, fingerprint=FP)
    assert capsys.readouterr().err == (f"zoo: removed 1 stale temp folder(s) {IMPORT_STAGING}* that an interrupted "
                                       f"import left in {old}\n")
    assert sorted(p.name for p in old.iterdir()) == sorted(before)
    assert load_artefact(old, expected_fingerprint=FP)[1]["base_model"] == "llama-3.2-3b"


def test_restricted_reader_agrees_with_torch_weights_only_loader(tmp_path):
    """torch.load(weights_only=True) + safe_globals([Sequential, Linear, Tanh]) also works; same numbers."""
    released_policy(tmp_path / "p.pth", torch.float16)
    tensors, names, _ = read_zo_finetuner(tmp_path / "p.pth")
    with torch.serialization.safe_globals([nn.Sequential, nn.Linear, nn.Tanh]):
        ref = torch.load(tmp_path / "p.pth", weights_only=True)
    assert names == list(ref)
    assert torch.equal(tensors["w1"], torch.stack([ref[n][0].weight.detach().float() for n in names]))


class _System:
    sentinel = None

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _Eval:
    sentinel = None

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.sentinel)!r}, 'w').close()",))


class _Custom:  # an ordinary class that is simply not on the allow-list
    pass


class _Getattr:  # getattr is the usual first step of a gadget chain
    def __reduce__(self):
        return (getattr, ("text", "upper"))


@pytest.mark.parametrize("payload, global_name", [
    ("system", "system"),
    ("eval", "builtins.eval"),
    ("getattr", "builtins.getattr"),
    ("custom", "test_zoo_import._Custom"),
    ("counter", "collections.Counter"),
    ("relu", "torch.nn.modules.activation.ReLU"),
])
def test_malicious_or_foreign_pickles_are_refused_without_running(tmp_path, payload, global_name, capsys):
    sentinel = tmp_path / "pwned"
    _System.sentinel = _Eval.sentinel = sentinel
    obj = {
        "system": lambda: {"a.weight": _System()},
        "eval": lambda: {"a.weight": _Eval()},
        "getattr": lambda: {"a.weight": _Getattr()},
        "custom": lambda: {"a.weight": _Custom()},
        "counter": lambda: {"a.weight": collections.Counter(x=1)},
        "relu": lambda: {"a.weight": nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 1))},
    }[payload]()
    torch.save(obj, tmp_path / "evil.pth")
    assert not sentinel.exists()
    rc = main(["import-zo-finetuner", str(tmp_path / "evil.pth"), "--base", "x", "--fingerprint", FP,
               "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"zoo: error: refusing to load {tmp_path / 'evil.pth'}: disallowed global"), err
    assert global_name in err
    assert not sentinel.exists()
    assert not (tmp_path / "art").exists()


class _Storage:  # a storage of a hand-made archive: pickled as the persistent id torch.save writes
    def __init__(self, key, numel, tag="storage"):
        self.key, self.numel, self.tag = key, numel, tag


class _Tensor:  # a tensor of a hand-made archive: torch._utils._rebuild_tensor_v2 over a _Storage
    def __init__(self, storage, size):
        self.storage, self.size = storage, size

    def __reduce__(self):
        hooks = collections.OrderedDict()
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.size,), (1,), False, hooks))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return (obj.tag, torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _archive(path: Path, *, key="0", numel=4, data=None, tag="storage", byteorder="little", pkls=("arc",)) -> Path:
    """A torch zip checkpoint made by hand, {"t": float32 tensor of `numel` elements over storage `key`}, with one
    thing about it changed (a storage key, its size, the byte order, the persistent id, a second data.pkl)."""
    buf = io.BytesIO()
    _ArchivePickler(buf, protocol=2).dump({"t": _Tensor(_Storage(key, numel, tag), numel)})
    data = torch.arange(1.0, numel + 1).numpy().tobytes() if data is None else data
    with zipfile.ZipFile(path, "w") as z:
        for prefix in pkls:
            z.writestr(f"{prefix}/data.pkl", buf.getvalue())
            z.writestr(f"{prefix}/byteorder", byteorder)
            z.writestr(f"{prefix}/data/{key}", data)
    return path


@pytest.mark.parametrize("change, why", [
    (dict(key="../0"), "bad storage key '../0'"),  # a storage key is a name inside <archive>/data/, never a path
    (dict(data=b"\0" * 20), "storage 0 has an unexpected size"),  # 20 bytes for 4 float32s
    (dict(byteorder="big"), "byte order 'big' is not supported"),
    (dict(tag="module"), "unexpected persistent id"),
    (dict(pkls=("arc", "other")), "expected one <archive>/data.pkl"),
])
def test_hand_made_archives_that_bend_the_format_are_refused(tmp_path, change, why):
    """The reader takes only what torch.save writes: the same archive loads when nothing about it is bent."""
    good = restricted_load(_archive(tmp_path / "good.pth"))
    assert list(good) == ["t"] and torch.equal(good["t"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ZooError, match=re.escape(why)):
        restricted_load(_archive(tmp_path / "bent.pth", **change))


def test_wrong_shapes_and_non_checkpoints_are_refused(tmp_path):
    torch.save({"a": nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 2))}, tmp_path / "two.pth")
    with pytest.raises(ZooError, match="expected Linear"):
        import_zo_finetuner(tmp_path / "two.pth", "x", tmp_path / "o", fingerprint=FP)
    torch.save({"a": nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)),
                "b": nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))}, tmp_path / "mixed.pth")
    with pytest.raises(ZooError, match="unlike the first block"):
        import_zo_finetuner(tmp_path / "mixed.pth", "x", tmp_path / "o", fingerprint=FP)
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02}q\x00.")  # a bare (legacy-style) pickle, not a torch zip
    with pytest.raises(ZooError, match="not a torch zip checkpoint"):
        import_zo_finetuner(tmp_path / "junk.pth", "x", tmp_path / "o", fingerprint=FP)
    with pytest.raises(ZooError, match="invalid base fingerprint"):
        import_zo_finetuner(tmp_path / "two.pth", "x", tmp_path / "o", fingerprint="md5:1234")
    assert not (tmp_path / "o").exists()


def test_fingerprint_is_computed_or_required(tmp_path, monkeypatch, capsys):
    released_policy(tmp_path / "p.pth")
    monkeypatch.setitem(sys.modules, "l2o.models", None)  # l2o.models unavailable -> ImportError
    rc = main(["import-zo-finetuner", str(tmp_path / "p.pth"), "--base", "opt-125m", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "pass --fingerprint" in err and "--no-fingerprint" in err and len(err.strip().splitlines()) == 1

    fake = types.ModuleType("l2o.models")
    fake.base_fingerprint = lambda base: "sha256:" + ("12" * 32 if base == "opt-125m" else "00" * 32)
    fake.base_block_names = lambda base: list(NAMES)
    monkeypatch.setitem(sys.modules, "l2o.models", fake)
    out = import_zo_finetuner(tmp_path / "p.pth", "opt-125m", tmp_path / "a")
    assert load_artefact(out)[1]["base_fingerprint"] == "sha256:" + "12" * 32

    out = import_zo_finetuner(tmp_path / "p.pth", "opt-125m", tmp_path / "nofp", compute_fingerprint=False)
    assert load_artefact(out)[1]["base_fingerprint"] is None
    with pytest.raises(ZooError, match="records no base fingerprint"):
        publish(out, tmp_path / "reg")


def test_import_refuses_a_policy_made_for_another_base(tiny_llama_base, tmp_path, capsys):
    """A policy for a smaller base (fewer layers) does not import as a policy for a bigger one."""
    from l2o.models import block_names
    from tests.helpers import tiny_model

    big = tiny_llama_base  # 2 layers
    small_names = block_names(tiny_model("llama", num_hidden_layers=1))
    assert set(small_names) < set(block_names(tiny_model("llama")))  # every one of its names exists in big
    released_policy(tmp_path / "small.pth", names=small_names)
    capsys.readouterr()  # drop save_pretrained's progress bars
    rc = main(["import-zo-finetuner", str(tmp_path / "small.pth"), "--base", big, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "made for another base" in err[0] and "has no network" in err[0]
    assert not (tmp_path / "a").exists()
    released_policy(tmp_path / "big.pth", names=block_names(tiny_model("llama")))
    assert main(["import-zo-finetuner", str(tmp_path / "big.pth"), "--base", big, "--out", str(tmp_path / "b")]) == 0


def test_imported_policy_publishes_and_loads_by_id(tmp_path):
    released_policy(tmp_path / "p.pth", torch.float16)
    art = import_zo_finetuner(tmp_path / "p.pth", "llama-3.2-1b", tmp_path / "art", fingerprint=FP, license="mit")
    entry = publish(art, tmp_path / "reg")
    assert entry["id"] == "llama-3.2-1b/zo-finetuner@1" and entry["license"] == "mit"
    tensors, config = load("llama-3.2-1b/zo-finetuner@1", registry=tmp_path / "reg", expected_fingerprint=FP,
                           expected_keys=["w1", "b1", "w2", "b2"])
    assert tensors["w1"].shape == (len(NAMES), 64, 5) and config["arch"]["block_names"] == NAMES
    with pytest.raises(ZooError, match="policy was made for base 'llama-3.2-1b'"):
        load("llama-3.2-1b/zo-finetuner@1", registry=tmp_path / "reg", expected_fingerprint="sha256:" + "0" * 64,
             model_name="opt-125m")


def test_state_dict_variant_is_accepted(tmp_path):
    """Some users re-save the policy as {name: Sequential.state_dict()}: same result."""
    nets = released_policy(tmp_path / "p.pth")
    torch.save({n: m.state_dict() for n, m in nets.items()}, tmp_path / "sd.pth")
    a, names_a, _ = read_zo_finetuner(tmp_path / "p.pth")
    b, names_b, _ = read_zo_finetuner(tmp_path / "sd.pth")
    assert names_a == names_b == NAMES and all(torch.equal(a[k], b[k]) for k in a)
