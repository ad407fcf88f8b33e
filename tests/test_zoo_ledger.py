"""Fine-tunes as zoo ledgers: publish -> download into a fresh cache -> materialise the same weights,
and one-line refusals of a wrong base, dtype or noise source, or a damaged ledger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from l2o.ledger import replay
from l2o.models import fingerprint, load_base
from l2o.optim import build_optimizer
from tests.helpers import tiny_tokenizer
from tests.zo_fixtures import same_bits, snapshot
from zoo import ZooError, load_ledger, save_ledger
from zoo.cli import main
from zoo.registry import publish


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_bases):
    """A tiny OPT base folder, 5 full-parameter MeZO steps on it, the ledger published to a registry."""
    root = tmp_path_factory.mktemp("ledger-zoo")
    base = tiny_bases("opt")
    model, tok, _ = load_base(base)
    batch = tiny_tokenizer()(["The movie was great.", "It was terrible."], return_tensors="pt", padding=True)
    opt = build_optimizer("mezo", model, lr=1e-2, eps=1e-2, seed=3)
    for _ in range(5):
        opt.step(lambda: model(**batch, labels=batch["input_ids"]).loss)
    art = save_ledger(root / "art", opt.ledger, base_model="tiny-opt", training={"steps": 5})
    entry = publish(art, root / "registry", name="sentiment")
    return {"base": base, "registry": root / "registry", "id": entry["id"], "trained": snapshot(model),
            "art": art, "ledger_bytes": (art / "ledger.jsonl").stat().st_size}


def test_a_published_ledger_downloads_into_a_fresh_cache_and_replays_to_the_same_weights(published, tmp_path):
    assert published["id"] == "tiny-opt/sentiment@1"
    ledger, config = load_ledger(published["id"], registry=published["registry"], cache_dir=tmp_path / "fresh")
    assert config["kind"] == "zo-ledger" and config["arch"]["updates"] == 5
    assert list((tmp_path / "fresh" / "blobs" / "sha256").iterdir())  # it was fetched and verified into the cache
    model, _, info = load_base(published["base"])
    assert not same_bits(snapshot(model), published["trained"])
    replay(model, ledger)
    assert same_bits(snapshot(model), published["trained"])


def test_zoo_verify_and_list_know_the_ledger_kind(published, capsys):
    reg = ["--registry", str(published["registry"])]
    assert main(["verify", published["id"], *reg]) == 0
    assert main(["list", *reg]) == 0
    assert "zo-ledger" in capsys.readouterr().out


def test_zoo_apply_materialises_the_weights(published, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    rc = main(["apply", published["id"], "--base", published["base"], "--out", str(tmp_path / "out"),
               "--registry", str(published["registry"])])
    assert rc == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert same_bits(snapshot(model), published["trained"])
    assert json.loads((tmp_path / "out" / "ledger.json").read_text())["updates"] == 5
    # again into the same folder: refused before the base loads (save_pretrained replaced the weights silently),
    # then done with --overwrite
    (tmp_path / "out" / "model.safetensors").write_bytes(b"someone else's weights")
    argv = ["apply", published["id"], "--base", published["base"], "--out", str(tmp_path / "out"),
            "--registry", str(published["registry"])]
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"zoo: error: --out {tmp_path / 'out'} already holds files (config.json, generation_config.json, ledger.json "
        "and 3 more); give a new or empty folder, or --overwrite to replace them"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"someone else's weights"
    # --overwrite replaces another model's weights, its other shards and index too; the user's other files stay
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "notes.txt"):
        (tmp_path / "out" / name).write_text("old")
    assert main([*argv, "--overwrite"]) == 0
    assert same_bits(snapshot(AutoModelForCausalLM.from_pretrained(tmp_path / "out")), published["trained"])
    assert not list((tmp_path / "out").glob("model*-of-*")) and not (tmp_path / "out" / "model.safetensors.index.json"
                                                                      ).exists()
    assert (tmp_path / "out" / "notes.txt").read_text() == "old"


@pytest.mark.parametrize("stop, rc, said", [(KeyboardInterrupt, 130, "zoo: error: interrupted"),
                                            (OSError(28, "No space left on device"), 1,
                                             "zoo: error: No space left on device")])
def test_a_stopped_apply_leaves_out_as_it_was_and_the_next_one_runs(published, tmp_path, capsys, monkeypatch,
                                                                     stop, rc, said):
    """Ctrl-C (or SIGTERM, l2o/stop.py), or a full disk, once the base-sized weights are written but not the rest:
    --out stays as it was (new: no folder; an empty one: empty). It kept the half-written model, which the next apply
    refused as files already there (unless --overwrite)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

    def stopped(*args, **kw):
        raise stop

    reg = ["--registry", str(published["registry"])]
    empty = tmp_path / "empty"
    empty.mkdir()
    for out, before in ((tmp_path / "new" / "out", lambda: not (tmp_path / "new").exists()),
                        (empty, lambda: list(empty.iterdir()) == [])):
        argv = ["apply", published["id"], "--base", published["base"], "--out", str(out), *reg]
        with monkeypatch.context() as m:
            m.setattr(PreTrainedTokenizerBase, "save_pretrained", stopped)  # after the model's weights
            assert main(argv) == rc
        assert capsys.readouterr().err.strip().splitlines()[-1] == said
        assert before()
        assert main(argv) == 0, capsys.readouterr().err
        assert same_bits(snapshot(AutoModelForCausalLM.from_pretrained(out)), published["trained"])


def test_the_next_apply_removes_what_a_killed_one_left_in_out(published, tmp_path, capsys):
    """kill -9 mid-write leaves the staging folder in --out; the next apply into it removes it (it is no file of the
    user's, so it does not count as --out holding files) and says so; a live apply's is left alone."""
    from tests.helpers import hold_writer_folder

    out, staging = tmp_path / "out", ".tmp-apply-"  # zoo.ledger.APPLY_STAGING
    live, live_folder = hold_writer_folder(out, staging)
    try:
        argv = ["apply", published["id"], "--base", published["base"], "--out", str(out),
                "--registry", str(published["registry"])]
        assert main(argv) == 2  # another apply is writing there
        assert "already holds files" in capsys.readouterr().err
    finally:
        live.kill()
        live.wait()
    assert main(argv) == 0
    assert f"removed the unfinished weights a stopped zoo apply left in {out}" in capsys.readouterr().err
    assert not live_folder.exists() and not any(p.name.startswith(staging) for p in out.iterdir())
    assert (out / "ledger.json").is_file()


def _one_line(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("zoo: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])


def test_zoo_apply_refuses_another_base_or_dtype_in_one_line(published, tiny_llama_base, tmp_path, capsys):
    other = tiny_llama_base
    capsys.readouterr()
    reg = ["--registry", str(published["registry"])]
    _one_line(capsys, main(["apply", published["id"], "--base", other, "--out", str(tmp_path / "o1"), *reg]),
              "ledger was made for base 'tiny-opt'")
    _one_line(capsys, main(["apply", published["id"], "--base", published["base"], "--dtype", "bf16",
                            "--out", str(tmp_path / "o2"), *reg]), "recorded in fp32, not bf16")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_zoo_apply_refuses_a_device_or_out_it_cannot_use_before_the_base_loads(published, tmp_path, capsys,
                                                                               monkeypatch):
    """--device tpu / auto / cuda without CUDA ended in `zoo: error: unexpected RuntimeError` (AssertionError), exit
    1, after the base had loaded; an --out that is a file in `Not a directory (<out>/.tmp-ledger.json-...)` after the
    whole replay. Both are one line, exit 2, before the base loads."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("l2o.models.load_base", lambda *a, **k: pytest.fail("the base loaded before the check"))
    reg = ["--registry", str(published["registry"])]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for extra, said in ((["--device", "tpu"], "--device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
                        (["--device", "auto"], "--device must be cpu, cuda, cuda:N or mps, got 'auto'"),
                        (["--device", "cuda"], "--device cuda: this machine has no usable CUDA device; use --device "
                                               "cpu"),
                        (["--out", str(blocker)], f"--out {blocker} is a file; give the folder to write the weights "
                                                  "to")):
        argv = ["apply", published["id"], "--base", published["base"], "--out", str(tmp_path / "o"), *reg, *extra]
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"zoo: error: {said}"]
    assert not (tmp_path / "o").exists()


def test_a_folder_that_does_not_exist_is_named_as_a_folder_not_as_an_invalid_id(tmp_path, capsys):
    """`zoo verify /path/to/policy` (or fine_tune --policy) with a mistyped path said "invalid zoo id ...: absolute
    paths and drive letters are not ids"."""
    missing = tmp_path / "no-such" / "policy"
    for spec in (str(missing), "runs/no-such/policy"):
        assert main(["verify", spec]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"zoo: error: no artefact folder {Path(spec).resolve()} (no such folder), and {spec!r} is an invalid zoo "
            "id (ids look like base/name@version)"]
    (tmp_path / "file.json").write_text("{}")
    assert main(["verify", str(tmp_path / "file.json")]) == 2
    assert "is a file, not an artefact folder" in capsys.readouterr().err
    assert main(["verify", "nope"]) == 2  # not a path: still an invalid id
    assert "invalid zoo id 'nope'" in capsys.readouterr().err


def test_a_model_folder_given_as_an_artefact_is_named_as_not_an_artefact(published, capsys):
    """`zoo verify` (or fine_tune --init) of a saved model's folder (config.json, model.safetensors, README.md, as
    fine_tune's <out>/model has) said "has unknown kind None"."""
    from transformers import AutoModelForCausalLM

    folder = published["art"].parent / "a-model"
    AutoModelForCausalLM.from_pretrained(published["base"]).save_pretrained(folder)
    (folder / "README.md").write_text("a model card")
    capsys.readouterr()  # transformers' loading bars
    assert main(["verify", str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"zoo: error: artefact {folder}: its config.json has no kind, so it is not a zoo artefact (kinds: "
        "zo-finetuner-policy, bilevel-meta-init, zo-ledger); a model's own config.json is not an artefact's"]


def test_load_refuses_another_noise_source_and_a_damaged_ledger(published, tmp_path):
    with pytest.raises(ZooError, match="recorded with noise"):
        load_ledger(published["art"], expected_noise={"name": "table"})
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in published["art"].iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    lines = (damaged / "ledger.jsonl").read_text().splitlines(keepends=True)
    (damaged / "ledger.jsonl").write_text("".join(lines[:2] + lines[3:]))
    with pytest.raises(ZooError, match="hash chain breaks"):
        load_ledger(damaged)
    model, _, _ = load_base(published["base"])
    assert fingerprint(model) == load_ledger(published["art"])[1]["base_fingerprint"]
    with pytest.raises(ZooError, match="is a ledger"):
        from zoo import load
        load(published["art"])


def test_a_ledger_whose_base_is_named_two_ways_is_refused(published, tmp_path):
    """Its header and its config.json, or the manifest and the config.json, name different bases: which base it
    replays onto is then unknown."""
    other = "sha256:" + "77" * 32
    art = shutil.copytree(published["art"], tmp_path / "art")
    cfg = json.loads((art / "config.json").read_text())
    (art / "config.json").write_text(json.dumps({**cfg, "base_fingerprint": other}))
    with pytest.raises(ZooError, match="disagree on base_fingerprint"):
        load_ledger(art)
    reg = shutil.copytree(published["registry"], tmp_path / "registry")
    doc = json.loads((reg / "zoo.json").read_text())
    doc["entries"][published["id"]]["base_fingerprint"] = other
    (reg / "zoo.json").write_text(json.dumps(doc))
    with pytest.raises(ZooError, match=f"'{published['id']}' is inconsistent"):
        load_ledger(published["id"], registry=reg, cache_dir=tmp_path / "cache")


def test_load_ledger_and_apply_refuse_what_they_cannot_replay(published, tmp_path, capsys):
    """A folder of another kind is not a ledger; a ledger that moved a LoRA adapter does not apply to the plain
    base (zoo apply materialises full-parameter ledgers)."""
    from l2o.peft_modes import apply_peft
    from zoo.artefact import save_artefact

    mi = save_artefact(tmp_path / "mi", {"lm_head.weight": torch.zeros(2)},
                       {"kind": "bilevel-meta-init", "base_model": "tiny-opt", "base_fingerprint": "sha256:" + "0" * 64,
                        "arch": {"delta": True}}, {})
    with pytest.raises(ZooError, match="is a bilevel-meta-init, not a ledger"):
        load_ledger(mi)
    model, _, _ = load_base(published["base"])
    model = apply_peft(model, "lora", seed=0)
    batch = tiny_tokenizer()(["The movie was great."], return_tensors="pt")
    opt = build_optimizer("mezo", model, lr=1e-2, eps=1e-2, seed=3)
    opt.step(lambda: model(**batch, labels=batch["input_ids"]).loss)
    art = save_ledger(tmp_path / "lora", opt.ledger, base_model="tiny-opt")
    capsys.readouterr()
    _one_line(capsys, main(["apply", str(art), "--base", published["base"], "--out", str(tmp_path / "out")]),
              "materialises full-parameter ledgers", "lora")
    assert not (tmp_path / "out").exists()


def test_a_ledger_is_kilobytes(published):
    assert published["ledger_bytes"] < 8 * 1024
