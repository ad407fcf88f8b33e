"""Remote zoo entries (the ZO Fine-tuner authors' released policies, fetched from their repository at a pinned
commit, verified, converted here) and model cards that say how an optimizer was made (offline)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.manifest import builtin_manifest

from tests.helpers import released_policy
from tests.test_zoo import policy_config, policy_tensors, serve

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "ef9abff5f74d9e62cb03bde500dd78f7afd6439f"
LLAMA1B = "llama-3.2-1b/zo-finetuner-authors@1"
# The issue's table (what the authors' repository holds at COMMIT), stated independently of the catalogue.
RELEASED = {
    "llama-3.2-1b/zo-finetuner-authors@1": ("llama1B_finetuner.pth", 646818,
                                            "3e15467ec43a93891f4c1e4de284f3dae7494a1eb703d5084c870c44edbae24a"),
    "llama-3.1-8b/zo-finetuner-authors@1": ("llama8B_finetuner.pth", 1288830,
                                            "94fa9be788643915d71c2281d3cc4da84939b3553b88e4dbe9ec9efb740db953"),
    "opt-30b/zo-finetuner-authors@1": ("opt30B_finetuner.pth", 2763970,
                                       "014df6cfe41dac63501707200dda61856e815d6decbba512f1d501beaba28761"),
    "qwen2.5-14b/zo-finetuner-authors@1": ("qwen14B_finetuner.pth", 2046334,
                                           "dc84d97222b5a6b3cb729e15b42c94c263ce3c15663a21f03efe47c057eb671a"),
}
BLOCKS = {"llama-3.2-1b": 146, "llama-3.1-8b": 291, "opt-30b": 772, "qwen2.5-14b": 579}  # counted in the files


@pytest.fixture(autouse=True)
def _remote_isolated(isolated, tmp_path, monkeypatch):
    """conftest's isolation, with GitHub served from a local folder (empty unless a test fills it)."""
    monkeypatch.setenv("L2O_ZOO_GITHUB", (tmp_path / "github").as_uri())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup beyond this machine fails, as on a machine without internet."""
    local = ("127.0.0.1", "::1", "localhost")
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in local:
            raise OSError(101, "Network is unreachable")
        return real_connect(self, address)

    def lookup(host, *a, **k):
        if host not in local:
            raise socket.gaierror(-2, "Name or service not known")
        return real_lookup(host, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def cache() -> Path:
    return Path(os.environ["L2O_CACHE"]) / "zoo"


def snapshot(path: Path) -> dict:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def github_copy(tmp_path, fname: str) -> Path:
    """Where the file:// mirror of raw.githubusercontent.com's layout keeps `fname` at COMMIT."""
    path = tmp_path / "github" / "ASTRAL-Group" / "ZO_Fine_tuner" / COMMIT / "learned_finetuner" / fname
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def registry_with(tmp_path, entry: dict, name: str = "reg") -> Path:
    reg = tmp_path / name
    reg.mkdir()
    (reg / "zoo.json").write_text(json.dumps({"schema_version": 1, "entries": {entry["id"]: entry}}))
    return reg


def synthetic_release(tmp_path, entry_id: str = LLAMA1B, **changes):
    """The catalogue's entry for `entry_id` served from a file:// mirror of the authors' repository, holding a
    synthetic policy with the base's block names in place of the real file; the pinned sha256 and size are
    replaced by the synthetic file's (in this test only). Returns (registry, entry, released modules)."""
    from l2o.models import shipped_identity

    entry = copy.deepcopy(builtin_manifest().entries[entry_id])
    entry.update(changes.pop("entry", {}))
    names = changes.pop("names", None) or shipped_identity(entry["base_model"])[1]
    (fname,) = entry["files"]
    path = github_copy(tmp_path, fname)
    nets = released_policy(path, changes.pop("dtype", torch.float16), names)
    entry["files"] = {fname: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}}
    entry["convert"]["blocks"] = len(names)
    return registry_with(tmp_path, entry), entry, nets


# ----------------------------------------------------------------------------- the catalogue
def test_the_authors_policies_are_listed_without_fetching_anything(no_network, capsys):
    rc, out, err = run_cli(capsys, "list")
    assert rc == 0, err
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["ID", "KIND", "BASE", "SIZE", "SOURCE", "CACHED", "LICENSE"]
    for eid, (fname, size, _) in RELEASED.items():
        row = lines[eid]
        assert row[1] == "zo-finetuner-policy" and row[2] == eid.split("/")[0]
        assert row[5:] == ["remote", "no", "no-license-file"], row
    assert lines["llama-3.1-8b/zo-finetuner-authors@1"][3:5] == ["1.2", "MiB"]
    assert lines["smollm2-135m/zo-finetuner@1"][5] == "built-in"
    for base in ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"):
        rc, out, _ = run_cli(capsys, "list", "--base", base)
        assert rc == 0 and [ln.split()[0] for ln in out.splitlines()[1:]] == ["llama-3.1-8b/zo-finetuner-authors@1"]
    rc, out, _ = run_cli(capsys, "list", "--base", "opt-13b")
    assert rc == 0 and out.startswith("no entries for base 'opt-13b'")
    rows = json.loads(run_cli(capsys, "list", "--json")[1])
    assert {r["id"]: r["source"] for r in rows}[LLAMA1B] == "remote"

    rc, out, err = run_cli(capsys, "info", "qwen2.5-14b/zo-finetuner-authors")
    assert rc == 0, err
    out = " ".join(out.split())
    for needle in (f"GitHub ASTRAL-Group/ZO_Fine_tuner at commit {COMMIT}, learned_finetuner/qwen14B_finetuner.pth",
                   "arXiv 2510.00419", "no licence file", "579 blocks", "size rule authors", "estimator lookahead",
                   "Not evaluated by this project", "cached no"):
        assert needle in out, needle
    assert not cache().exists()


def test_catalogue_pins_the_released_files_and_the_bases_they_fit():
    """Each remote entry pins the issue's file, size and sha256 at COMMIT, and a base fingerprint and block count
    that the shapes l2o ships for its alias reproduce (the converter also checks the names, block by block)."""
    from l2o.models import base_fingerprint, shipped_identity

    entries = {k: v for k, v in builtin_manifest().entries.items() if "convert" in v}
    assert set(entries) == set(RELEASED)
    for eid, entry in entries.items():
        fname, size, sha = RELEASED[eid]
        assert entry["files"] == {fname: {"sha256": sha, "size": size}}
        assert entry["sources"] == [{"type": "github", "repo": "ASTRAL-Group/ZO_Fine_tuner", "commit": COMMIT,
                                     "path": "learned_finetuner"}]
        fp, names = shipped_identity(entry["base_model"])
        assert (entry["base_fingerprint"] == fp
                and entry["convert"]["blocks"] == len(names) == BLOCKS[entry["base_model"]])
        assert entry["convert"]["arch"]["size_rule"] == "authors" and entry["license"] == "no-license-file"
    # the shipped shapes give a real config's identity (checked where a real config is at hand)
    assert shipped_identity("smollm2-135m")[0] == base_fingerprint("smollm2-135m")


# ----------------------------------------------------------------------------- fetch, verify, convert
def test_remote_entry_downloads_verifies_converts_and_loads_from_a_file_mirror(tmp_path, no_network, capsys):
    from zoo.learned import load_policy
    from zoo.resolve import resolve

    reg, entry, nets = synthetic_release(tmp_path)
    names = list(nets)
    rc, out, err = run_cli(capsys, "download", LLAMA1B, "--registry", str(reg))
    assert rc == 0, err
    folder = Path(out.strip())
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "converted.json",
                                                        "llama1B_finetuner.pth", "model.safetensors"]
    policy = load_policy(f"zoo:{LLAMA1B}", expected_fingerprint=entry["base_fingerprint"], registry=reg)
    assert len(policy.block_names) == 146 and policy.block_names == names
    for i in (0, 77, 145):  # the released modules' weights, converted to float32 exactly
        assert torch.equal(policy.w1[i], nets[names[i]][0].weight.float())
        assert torch.equal(policy.b2[i], nets[names[i]][2].bias.float())
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"]["size_rule"] == "authors" and config["training"]["provenance"]["commit"] == COMMIT
    card = (folder / "README.md").read_text()
    assert "license_name: \"no-license-file\"" in card and "| commit | " + COMMIT in card
    assert run_cli(capsys, "verify", LLAMA1B, "--registry", str(reg))[0] == 0
    # the converted copy may go into one's own registry, never to the Hub (the source has no license)
    rc, _, err = run_cli(capsys, "publish", str(folder), "--registry", str(tmp_path / "mine"), "--push-to-hub", "me/x")
    assert rc == 2 and "no license file" in err and not (tmp_path / "mine").exists()
    rc, out, err = run_cli(capsys, "publish", str(folder), "--registry", str(tmp_path / "mine"), "--name", "authors")
    assert rc == 0 and "llama-3.2-1b/authors@1" in out, err
    assert json.loads((tmp_path / "mine" / "zoo.json").read_text())["entries"]["llama-3.2-1b/authors@1"][
        "license"] == "no-license-file"

    # the cache answers from now on: no mirror, no registry needed
    github_copy(tmp_path, "llama1B_finetuner.pth").unlink()
    assert resolve(LLAMA1B).path == folder
    # a damaged converted file is caught by its recorded sha256 and rebuilt from the verified source blob
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    rc, _, err = run_cli(capsys, "verify", LLAMA1B)
    assert rc == 1 and "model.safetensors" in err and "corrupt" in err
    shutil.rmtree(folder)
    policy = load_policy(f"zoo:{LLAMA1B}", expected_fingerprint=entry["base_fingerprint"])
    assert torch.equal(policy.w1[5], nets[names[5]][0].weight.float())


def test_a_converted_record_that_drops_a_file_does_not_vouch_for_it(tmp_path, no_network, capsys):
    """converted.json must record every converted file: one that lost model.safetensors' line (with that file then
    changed) is damaged, so verify fails and a load converts the verified source again."""
    from zoo.artefact import load_artefact
    from zoo.resolve import resolve

    reg, _, _ = synthetic_release(tmp_path)
    folder = resolve(LLAMA1B, registry=reg).path
    want = {k: t.clone() for k, t in load_artefact(folder)[0].items()}  # not the memory map of a file changed below
    record = json.loads((folder / "converted.json").read_text())
    del record["files"]["model.safetensors"]
    (folder / "converted.json").write_text(json.dumps(record))
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x40  # a tensor's byte: the header still reads
    (folder / "model.safetensors").write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "verify", LLAMA1B, "--registry", str(reg))
    assert rc == 1 and "converted.json is missing or damaged" in err, err
    got, _ = load_artefact(resolve(LLAMA1B, registry=reg).path)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("damage", ["one byte changed", "bytes appended", "file cut", "http transfer cut"])
def test_wrong_hash_size_or_truncated_download_is_refused_and_the_cache_unchanged(tmp_path, monkeypatch, damage,
                                                                                   capsys):
    reg, entry, _ = synthetic_release(tmp_path)
    path = github_copy(tmp_path, "llama1B_finetuner.pth")
    data = path.read_bytes()
    if damage == "one byte changed":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "bytes appended":
        path.write_bytes(data + b"\0")
    elif damage == "file cut":
        path.write_bytes(data[: len(data) // 2])
    (cache() / "blobs").mkdir(parents=True)  # an existing cache must stay exactly as it was
    before = snapshot(cache())
    with serve(tmp_path / "github", "kill") as url:  # GitHub over HTTP, the connection dropped halfway
        if damage == "http transfer cut":
            monkeypatch.setenv("L2O_ZOO_GITHUB", url)
        rc, out, err = run_cli(capsys, "download", LLAMA1B, "--registry", str(reg))
    expected = {"one byte changed": "failed its sha256 check", "bytes appended": f"larger than the {len(data)} bytes",
                "file cut": "truncated", "http transfer cut": "interrupted"}[damage]
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("zoo: error: could not get a verified copy"), err
    assert expected in lines[0] and LLAMA1B in lines[0]
    assert snapshot(cache()) == before


def test_offline_the_failure_is_one_line_naming_the_entry_and_how_to_mirror_it(tmp_path, monkeypatch, no_network,
                                                                                capsys):
    monkeypatch.delenv("L2O_ZOO_GITHUB")  # the real raw.githubusercontent.com, unreachable here
    rc, out, err = run_cli(capsys, "download", "opt-30b/zo-finetuner-authors")
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    for needle in ("'opt-30b/zo-finetuner-authors@1'", "opt30B_finetuner.pth", "raw.githubusercontent.com",
                   "`zoo mirror --to DIR opt-30b/zo-finetuner-authors@1`", "set L2O_ZOO_REGISTRY=DIR"):
        assert needle in lines[0], needle
    assert not cache().exists()
    # fine_tune fetches the policy before the base (gigabytes), so it fails first, in the same one line
    from fine_tune.cli import main as fine_tune

    rc = fine_tune(["--base", "opt-30b", "--task", "sst2", "--optimizer", "zoo:opt-30b/zo-finetuner-authors",
                    "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "`zoo mirror --to DIR opt-30b/zo-finetuner-authors@1`" in lines[0], lines
    assert "set L2O_ZOO_REGISTRY=DIR" in lines[0]  # fine_tune has no --registry: the advice it gives must work
    assert not cache().exists() and not (tmp_path / "run").exists()
    # mirroring everything offline copies what it can and says which remote entries it skipped
    rc, out, err = run_cli(capsys, "mirror", "--to", str(tmp_path / "usb"))
    assert rc == 0 and "mirrored 2 entries to" in out, err  # the built-in ones
    assert "smollm2-135m/zo-finetuner@1" in out and "smollm2-135m/zo-finetuner-panel@1" in out, out
    assert err.count("zoo: warning: skipped ") == 4 and "opt-30b/zo-finetuner-authors@1" in err


def test_mirror_on_a_connected_machine_then_use_offline(tmp_path, monkeypatch, capsys):
    reg, entry, nets = synthetic_release(tmp_path)
    rc, out, err = run_cli(capsys, "mirror", "--to", str(tmp_path / "usb"), "--registry", str(reg), LLAMA1B)
    assert rc == 0 and "mirrored 1 entry" in out, err
    mirrored = json.loads((tmp_path / "usb" / "zoo.json").read_text())["entries"][LLAMA1B]
    assert mirrored["convert"] == entry["convert"] and mirrored["files"] == entry["files"]
    assert (tmp_path / "usb" / "llama-3.2-1b" / "zo-finetuner-authors" / "1" / "llama1B_finetuner.pth").is_file()
    assert sorted(p.name for p in (tmp_path / "usb" / "llama-3.2-1b" / "zo-finetuner-authors" / "1").iterdir()) == [
        "llama1B_finetuner.pth"]  # the source file only: each machine converts it

    # the offline machine: a fresh cache, no GitHub, only the mirror
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "offline-machine"))
    monkeypatch.delenv("L2O_ZOO_GITHUB")
    shutil.rmtree(tmp_path / "github")
    from zoo.learned import load_policy

    policy = load_policy(f"zoo:{LLAMA1B}", expected_fingerprint=entry["base_fingerprint"], registry=tmp_path / "usb")
    assert torch.equal(policy.w2[9], nets[policy.block_names[9]][2].weight.float())
    rc, out, err = run_cli(capsys, "verify", LLAMA1B, "--registry", str(tmp_path / "usb"))
    assert rc == 0 and "usb/llama-3.2-1b/zo-finetuner-authors/1" in out, err


@pytest.mark.parametrize("case", ["a block too many", "another base's blocks", "another fingerprint"])
def test_a_file_that_does_not_fit_its_base_is_refused(tmp_path, case, capsys):
    from l2o.models import shipped_identity

    names = shipped_identity("llama-3.2-1b")[1]
    changes = {"a block too many": {"names": names + ["extra.weight"]},
               "another base's blocks": {"names": [n.replace("layers.15", "layers.16") for n in names]},
               "another fingerprint": {"entry": {"base_fingerprint": "sha256:" + "0" * 64}}}[case]
    reg, _, _ = synthetic_release(tmp_path, **changes)
    if case == "a block too many":  # the catalogue's count still says 146
        doc = json.loads((reg / "zoo.json").read_text())
        doc["entries"][LLAMA1B]["convert"]["blocks"] = 146
        (reg / "zoo.json").write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, "download", LLAMA1B, "--registry", str(reg))
    expected = {"a block too many": "holds 147 per-tensor networks, but the catalogue says 146",
                "another base's blocks": "made for another base",
                "another fingerprint": "pins base fingerprint sha256:0000000"}[case]
    assert rc in (1, 2) and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (cache() / "entries").exists() and not (cache() / "blobs").exists()


def test_fine_tune_runs_with_a_remote_policy_by_id(tiny_llama_base, tmp_path, monkeypatch):
    """`fine_tune --optimizer zoo:<remote id>`: resolved, fetched, verified, converted, checked against the base."""
    from l2o.models import base_block_names, base_fingerprint

    from fine_tune.cli import main as fine_tune

    base = tiny_llama_base
    eid = "tiny-llama/zo-finetuner-authors@1"
    template = copy.deepcopy(builtin_manifest().entries[LLAMA1B])
    template.update(id=eid, base_model=base, base_fingerprint=base_fingerprint(base))
    reg, entry, _ = synthetic_release(tmp_path, names=base_block_names(base), entry=template)
    # synthetic_release looked the template up by LLAMA1B; give it its own id in the registry
    (reg / "zoo.json").write_text(json.dumps({"schema_version": 1, "entries": {eid: {**entry, "id": eid}}}))
    monkeypatch.setenv("L2O_ZOO_REGISTRY", str(reg))
    sst2 = str(ROOT / "tests" / "fixtures" / "hub" / "sst2")
    out = tmp_path / "run"
    assert fine_tune(["--base", base, "--task", "sst2", "--source", sst2, "--steps", "3", "--batch-size", "4",
                      "--num-dev", "2", "--save-model", "false", "--zero-shot", "false", "--lr", "1e-3",
                      "--optimizer", "zoo:tiny-llama/zo-finetuner-authors", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["forward_passes"] == 6 and results["config"]["policy"] == "tiny-llama/zo-finetuner-authors"
    assert results["policy_size_rule"] == "authors"   # the conversion's rule, without --policy-size-rule (docs/zoo.md)


# ----------------------------------------------------------------------------- model cards
def card_config(evaluated: bool = True) -> tuple[dict, dict]:
    """A policy config carrying every card field meta_train writes, with a 3-seed evaluation."""
    config = policy_config(blocks=4, base="smollm2-135m", fp="sha256:" + "ab12" * 16)
    config["arch"]["size_rule"] = "numel"
    config["training"] = {
        "method": "zo-finetuner", "tasks": ["sports_understanding", "strategyqa"], "heldout_tasks": ["tweet_sentiment"],
        "steps": 80, "estimator": "es", "unroll": 16,
        "inner_optimizer": {"name": "MeZO", "lr": 1e-4, "eps": 1e-3}, "effective_step": 1.0,
        "provenance": {"made_by": "meta_train --base smollm2-135m (this project)"},
        "evaluation": {"baseline": "MeZO", "metric": "eval accuracy", "seeds": [0, 1, 2],
                       "rows": [{"task": "tweet_sentiment", "value": 0.31, "baseline_value": 0.26, "difference": 0.05,
                                 "interval": [0.03, 0.07]}]} if evaluated else {},
    }
    return policy_tensors(blocks=4), config


def test_a_card_without_an_evaluation_says_not_evaluated(tmp_path):
    from zoo.artefact import save_artefact

    tensors, config = card_config(evaluated=False)
    save_artefact(tmp_path / "art", tensors, config, {"license": "apache-2.0"})
    card = (tmp_path / "art" / "README.md").read_text()
    assert "## Evaluation\n\nNot evaluated.\n" in card and "| estimator | es |" in card
    assert "| parameters | 1,796 |" in card  # 4 blocks x 449


def test_card_round_trips_through_publish_to_the_hub_download_and_info(tmp_path, capsys):
    """publish --push-to-hub (huggingface_hub's real client against a local Hub over HTTP), download from the
    Hub at the pinned commit, then `zoo info`: the card's fields survive every step, byte for byte."""
    from tests.fake_hub import FakeHub
    from zoo.artefact import save_artefact

    tensors, config = card_config()
    art = save_artefact(tmp_path / "art", tensors, config, {"license": "apache-2.0", "description": "A test policy."})
    readme = (art / "README.md").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with FakeHub() as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="hf_test", HF_HOME=str(tmp_path / "hf-home"),
                   PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1")
        cmd = [sys.executable, "-m", "zoo", "publish", str(art), "--registry", str(tmp_path / "reg"),
               "--name", "tested", "--push-to-hub", "org/policy"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        (oid, files), = hub.commits["org/policy"].items()
        assert files["README.md"] == readme and set(files) == {"README.md", "config.json", "model.safetensors"}
        assert hub.validated == [readme.decode()]  # the Hub validated this card's YAML and accepted it
        entry = json.loads((tmp_path / "reg" / "zoo.json").read_text())["entries"]["smollm2-135m/tested@1"]
        assert {"type": "hf", "repo_id": "org/policy", "revision": oid} in entry["sources"]

        # only the Hub has it now: download at the pinned commit into a fresh cache
        shutil.rmtree(tmp_path / "reg" / "smollm2-135m")
        env["L2O_CACHE"] = str(tmp_path / "fresh-cache")
        res = subprocess.run([sys.executable, "-m", "zoo", "download", "smollm2-135m/tested@1", "--registry",
                              str(tmp_path / "reg")], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    folder = Path(res.stdout.strip())
    assert (folder / "README.md").read_bytes() == readme
    os.environ["L2O_CACHE"] = str(tmp_path / "fresh-cache")
    rc, out, err = run_cli(capsys, "info", "smollm2-135m/tested@1")
    assert rc == 0, err
    out = " ".join(out.split())
    for needle in ("meta-training tasks sports_understanding, strategyqa", "held-out tasks tweet_sentiment",
                   "meta-steps 80", "estimator es", "unroll horizon 16", "inner optimizer MeZO, lr 0.0001, eps 0.001",
                   "size rule numel", "effective step E‖d‖²/d 1", "parameters 1,796", "license apache-2.0",
                   "made by meta_train --base smollm2-135m", "seeds: 0, 1, 2 (3)",
                   "| tweet_sentiment | 0.31 | 0.26 | 0.05 | [0.03, 0.07] |",
                   f"Hugging Face Hub org/policy at commit {oid}"):
        assert needle in out, needle


def test_invalid_card_metadata_is_refused_by_the_hub_check(tmp_path):
    """The local Hub's YAML check is not a rubber stamp: it refuses what the Hub refuses."""
    from tests.fake_hub import card_errors
    from zoo.card import render_card

    _, config = card_config()
    assert card_errors(render_card({"license": "apache-2.0"}, config)) == []
    assert card_errors(render_card({"license": "other", "license_name": "x"}, config)) == []
    assert card_errors(render_card({"license": "my own"}, config))
    assert card_errors(render_card({"license": "other"}, config))
    assert card_errors(render_card({"license": "mit", "base_model": "smollm2-135m"}, config))
