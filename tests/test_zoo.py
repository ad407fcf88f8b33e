"""Zoo: artefacts, manifests, publish -> list -> download -> verify, and every refusal path (offline)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import zoo
from zoo import ZooError
from zoo.artefact import load_artefact, save_artefact
from zoo.card import card_front_matter
from zoo.cli import main
from zoo.ids import parse_id
from zoo.registry import mirror, publish
from zoo.resolve import load, resolve, verify

ROOT = Path(__file__).resolve().parents[1]
FP_A = "sha256:" + "ab12" * 16
FP_B = "sha256:" + "cd34" * 16
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _zoo_isolated(isolated, tmp_path, monkeypatch):
    """conftest's isolation, plus its own HF home, no built-in entries, local servers past no proxy."""
    import zoo.manifest

    monkeypatch.setattr(zoo.manifest, "builtin_root", lambda: tmp_path / "no-builtin")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("L2O_ZOO_TIMEOUT", "10")


def cache_dir() -> Path:
    return Path(os.environ["L2O_CACHE"]) / "zoo"


def snapshot(path: Path) -> dict:
    """Every file under ``path`` with its sha256 (directories as None): compare before/after."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def policy_tensors(blocks=3, seed=0, hidden=64):
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(blocks, hidden, 5, generator=g),
        "b1": torch.randn(blocks, hidden, generator=g),
        "w2": torch.randn(blocks, 1, hidden, generator=g),
        "b2": torch.randn(blocks, 1, generator=g),
    }


def policy_config(blocks=3, base="smollm2-135m", fp=FP_A, hidden=64):
    return {
        "kind": "zo-finetuner-policy",
        "base_model": base,
        "base_fingerprint": fp,
        "arch": {"in_features": 5, "hidden": hidden, "block_names": [f"layer{i}.weight" for i in range(blocks)],
                 "normalize": True},
        "training": {"tasks": ["copa"], "steps": 10, "metrics": {"meta_loss": 0.5}},
    }


def make_policy(directory: Path, seed=0, base="smollm2-135m", fp=FP_A, blocks=3) -> Path:
    save_artefact(directory, policy_tensors(blocks, seed), policy_config(blocks, base, fp),
                  {"license": "apache-2.0", "tasks": ["copa"], "steps": 10, "metrics": {"meta_loss": 0.5}})
    return directory


@pytest.fixture
def registry(tmp_path):
    """A registry directory holding smollm2-135m/zo-finetuner@1 (seed 0) and @2 (seed 1)."""
    reg = tmp_path / "registry"
    publish(make_policy(tmp_path / "art1", seed=0), reg)
    publish(make_policy(tmp_path / "art2", seed=1), reg)
    return reg


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zoo: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@contextlib.contextmanager
def serve(directory: Path, mode: str = "ok"):
    """http.server on 127.0.0.1:<free port> serving ``directory``; mode "kill" cuts model.safetensors (or a .pth)
    midway."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(directory), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if mode == "kill" and self.path.endswith(("model.safetensors", ".pth")):
                data = (directory / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.timeout = 5
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- ids
@pytest.mark.parametrize("text", ["smollm2-135m/zo-finetuner", "smollm2-135m/zo-finetuner@1", "a/b@1.2.3",
                                  "A.b/c_d@10"])
def test_valid_ids(text):
    zid = parse_id(text)
    assert str(zid) == text


@pytest.mark.parametrize("text", ["../x", "/abs", "a/../../b", "a/b/c", "a/b@0", "a/b@x", "a/b@-1", "a\\b", "C:/x",
                                  "a/..", "./a", "a/.b", "", "a", "a/b@1/../c", "~/x", "a/b@01"])
def test_invalid_ids_are_refused(text):
    with pytest.raises(ZooError, match="invalid"):
        parse_id(text)


@pytest.mark.parametrize("text,why", [("a b/c", "invalid base 'a b'"), ("ab/-x@1", "invalid name '-x'")])
def test_an_invalid_component_is_named_in_the_ids_one_sentence(text, why):
    with pytest.raises(ZooError) as e:
        parse_id(text)
    assert (str(e.value).startswith(f"invalid zoo id {text!r}: expected")
            and f"; {why}: use 1-64 characters" in str(e.value))


# ----------------------------------------------------------------------------- artefacts
def test_save_and_load_policy_roundtrip(tmp_path):
    tensors = policy_tensors()
    art = tmp_path / "art"
    save_artefact(art, tensors, policy_config(), {"license": "apache-2.0", "tasks": ["copa", "sst2"], "steps": 10,
                                                   "metrics": {"acc": 0.9}})
    assert sorted(p.name for p in art.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded, config = load_artefact(art, expected_fingerprint=FP_A, expected_kind="zo-finetuner-policy",
                                   expected_keys=["w1", "b1", "w2", "b2"])
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == torch.float32
    assert config["schema_version"] == 1 and config["arch"]["block_names"][0] == "layer0.weight"
    card = (art / "README.md").read_text()
    front = card_front_matter(card)
    # base_model is the Hub id of the alias (the embedded SmolLM2 is SmolLM2-135M-Instruct's GGUF)
    assert front["license"] == "apache-2.0" and front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "learned-optimizer" in front["tags"] and "zo-finetuner-policy" in front["tags"]
    for section in ("## How it was made", "## Evaluation", "## License and provenance", "## How to use",
                    "| meta-training tasks | copa, sst2 |", "| meta-steps | 10 |", "| acc | 0.9 |"):
        assert section in card, section


def test_meta_init_roundtrip(tmp_path):
    delta = {"model.layers.0.mlp.weight": torch.randn(4, 3, dtype=torch.bfloat16), "lm_head.bias": torch.randn(7)}
    cfg = {"kind": "bilevel-meta-init", "base_model": "opt-125m", "base_fingerprint": FP_B, "arch": {"delta": True}}
    save_artefact(tmp_path / "mi", delta, cfg, "---\nlicense: mit\n---\n# meta-init\n")
    loaded, config = load_artefact(tmp_path / "mi", expected_fingerprint=FP_B, expected_kind="bilevel-meta-init",
                                   expected_keys=delta)
    assert all(torch.equal(loaded[k], delta[k]) for k in delta) and config["arch"] == {"delta": True}


def test_wrong_base_fingerprint_is_one_sentence(tmp_path):
    art = make_policy(tmp_path / "art")
    with pytest.raises(ZooError) as exc:
        load_artefact(art, expected_fingerprint=FP_B, model_name="opt-125m")
    msg = str(exc.value)
    assert msg == ("policy was made for base 'smollm2-135m' (sha256:ab12ab12\u2026) "
                   "but the model is 'opt-125m' (sha256:cd34cd34\u2026)")


def test_strict_keys_kind_and_layout(tmp_path):
    art = make_policy(tmp_path / "art")
    with pytest.raises(ZooError, match="missing extra"):
        load_artefact(art, expected_keys=["w1", "b1", "w2", "b2", "extra"])
    with pytest.raises(ZooError, match="is a zo-finetuner-policy, not a bilevel-meta-init"):
        load_artefact(art, expected_kind="bilevel-meta-init")
    bad = policy_tensors()
    bad["w1"] = bad["w1"][:, :, :4]
    with pytest.raises(ZooError, match=r"tensor w1 has shape \[3, 64, 4\], expected \[3, 64, 5\]"):
        save_artefact(tmp_path / "bad", bad, policy_config(), {})
    with pytest.raises(ZooError, match="is F16, expected F32"):
        save_artefact(tmp_path / "bad", {k: v.half() for k, v in policy_tensors().items()}, policy_config(), {})
    # config.json edited to another base while the safetensors header still names the old one
    cfg = json.loads((art / "config.json").read_text())
    cfg["base_fingerprint"] = FP_B
    (art / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ZooError, match="inconsistent"):
        load_artefact(art, expected_fingerprint=FP_B)


def test_artefact_folders_the_zoo_cannot_trust_are_refused(tmp_path):
    """A config claiming a fingerprint its weights' header does not carry, a future schema, duplicate block names, and
    tensors beyond the strict keys asked for are each refused; the weights' data starts 8-byte aligned."""
    art = make_policy(tmp_path / "art", fp=None)  # its safetensors header records no fingerprint
    cfg = json.loads((art / "config.json").read_text())
    (art / "config.json").write_text(json.dumps({**cfg, "base_fingerprint": FP_A}))
    with pytest.raises(ZooError, match="is inconsistent: model.safetensors says base_fingerprint=''"):
        load_artefact(art)
    (art / "config.json").write_text(json.dumps({**cfg, "schema_version": 2}))
    with pytest.raises(ZooError, match="has schema_version 2 but this zoo reads schema_version 1"):
        load_artefact(art)
    dup = policy_config()
    dup["arch"]["block_names"][1] = dup["arch"]["block_names"][0]
    with pytest.raises(ZooError, match="block_names has duplicates"):
        save_artefact(tmp_path / "dup", policy_tensors(), dup, {})
    cfg = {"kind": "bilevel-meta-init", "base_model": "opt-125m", "base_fingerprint": FP_B, "arch": {"delta": True}}
    save_artefact(tmp_path / "mi", {"a": torch.ones(2), "b": torch.ones(3)}, cfg, {})
    with pytest.raises(ZooError, match=r"does not match the expected tensors \(unexpected b\)"):
        load_artefact(tmp_path / "mi", expected_keys=["a"])
    for folder in (tmp_path / "mi", make_policy(tmp_path / "aligned")):
        n = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
        assert (8 + n) % 8 == 0


def test_load_never_unpickles(tmp_path):
    art = make_policy(tmp_path / "art")
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    (art / "model.safetensors").write_bytes(pickle.dumps({"w1": Evil()}))
    with pytest.raises(ZooError, match="not a readable safetensors file"):
        load_artefact(art)
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- publish / list / download / verify
def test_publish_list_download_verify_local_registry(registry, tmp_path, capsys):
    manifest = json.loads((registry / "zoo.json").read_text())
    assert manifest["schema_version"] == 1
    e1 = manifest["entries"]["smollm2-135m/zo-finetuner@1"]
    assert e1["kind"] == "zo-finetuner-policy" and e1["base_fingerprint"] == FP_A and e1["license"] == "apache-2.0"
    assert e1["created"].endswith("Z") and set(e1["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert e1["sources"] == [{"type": "registry", "path": "smollm2-135m/zo-finetuner/1"}]

    rc, out, _ = run_cli(capsys, "list", "--registry", str(registry))
    assert rc == 0 and "smollm2-135m/zo-finetuner@1" in out and "smollm2-135m/zo-finetuner@2" in out
    rc, out, _ = run_cli(capsys, "info", "smollm2-135m/zo-finetuner@1", "--registry", str(registry), "--json")
    assert rc == 0 and json.loads(out)["files"] == e1["files"]

    before = snapshot(registry)
    rc, out, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner", "--registry", str(registry))
    assert rc == 0, err
    latest = Path(out.strip())
    assert latest.is_relative_to(cache_dir()) and "/2/" in str(latest)
    tensors, _ = load_artefact(latest)
    assert torch.equal(tensors["w1"], policy_tensors(seed=1)["w1"])
    rc, out, err = run_cli(capsys, "verify", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
    assert rc == 0 and out.startswith("ok:"), err
    assert snapshot(registry) == before

    # the cache index now answers without any registry; both versions live side by side
    rc, out, _ = run_cli(capsys, "list")
    assert "smollm2-135m/zo-finetuner@1" in out and "cache" in out
    v1 = resolve("smollm2-135m/zo-finetuner@1").path
    v2 = resolve("smollm2-135m/zo-finetuner@2").path
    assert v1 != v2 and v1.is_dir() and v2.is_dir()
    t1, cfg = load("smollm2-135m/zo-finetuner@1", expected_fingerprint=FP_A, expected_kind="zo-finetuner-policy",
                   expected_keys=["w1", "b1", "w2", "b2"])
    assert torch.equal(t1["b2"], policy_tensors(seed=0)["b2"])
    blobs = list((cache_dir() / "blobs" / "sha256").iterdir())
    assert all(b.name == hashlib.sha256(b.read_bytes()).hexdigest() for b in blobs)


def test_publish_refuses_different_content_and_is_idempotent(registry, tmp_path, capsys):
    again = publish(make_policy(tmp_path / "same", seed=0), registry, version=1)
    assert again["id"] == "smollm2-135m/zo-finetuner@1"
    before = snapshot(registry)
    rc, _, err = run_cli(capsys, "publish", str(make_policy(tmp_path / "other", seed=5)), "--registry", str(registry),
                         "--version", "1")
    assert_one_line_error(rc, err, "already exists", "different content")
    assert snapshot(registry) == before
    rc, out, err = run_cli(capsys, "publish", str(tmp_path / "other"), "--registry", str(registry), "--name", "mine",
                           "--version", "1.0.0", "--license", "mit")
    assert rc == 0 and "smollm2-135m/mine@1.0.0" in out, err
    entry = json.loads((registry / "zoo.json").read_text())["entries"]["smollm2-135m/mine@1.0.0"]
    assert entry["license"] == "mit"


def test_the_next_version_follows_the_highest_one_not_the_count(tmp_path):
    reg = tmp_path / "reg"
    assert publish(make_policy(tmp_path / "a", seed=0), reg, version=5)["id"] == "smollm2-135m/zo-finetuner@5"
    assert publish(make_policy(tmp_path / "b", seed=1), reg)["id"] == "smollm2-135m/zo-finetuner@6"


def test_latest_of_two_spellings_of_one_version_is_the_first_manifests(tmp_path):
    """1 and 1.0.0 are one version: @latest takes the one of the manifest that comes first (the registry before the
    cache), as for any version both have."""
    from zoo.manifest import Manifest
    from zoo.resolve import Catalog

    first, second = {"id": "a/b@1"}, {"id": "a/b@1.0.0"}
    cat = Catalog([Manifest({"a/b@1": first}), Manifest({"a/b@1.0.0": second})], [], tmp_path)
    assert cat.find("a/b")[0] is first
    cat = Catalog([Manifest({"a/b@1.0.0": second}), Manifest({"a/b@1": first})], [], tmp_path)
    assert cat.find("a/b")[0] is second


@pytest.mark.parametrize("size, sha, why", [(100, "0" * 64, "failed its sha256 check"), (101, None, "truncated"),
                                            (99, None, "larger than the 99 bytes")],
                         ids=["wrong-hash", "short", "long"])
def test_a_verified_copy_that_fails_leaves_no_file_behind(tmp_path, size, sha, why):
    from zoo.transfer import TransferError, copy_verified

    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    src.write_bytes(bytes(range(100)))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(TransferError, match=why):
        copy_verified(src, dest, sha or digest, size, "src.bin")
    assert not dest.exists()
    copy_verified(src, dest, digest, 100, "src.bin")
    assert dest.read_bytes() == src.read_bytes()


def test_publish_refuses_artefact_without_fingerprint(tmp_path):
    art = make_policy(tmp_path / "art", fp=None)
    with pytest.raises(ZooError, match="records no base fingerprint"):
        publish(art, tmp_path / "reg")
    assert not (tmp_path / "reg").exists()


@pytest.mark.parametrize("key,change,why", [
    ("smollm2-135m/../x@1", {}, "invalid zoo id 'smollm2-135m/../x@1'"),
    ("smollm2-135m/zo-finetuner@0", {}, "invalid version '0'"),
    ("smollm2-135m/zo-finetuner@1", {"base_fingerprint": "md5:12"}, "invalid base fingerprint 'md5:12'"),
])
def test_a_damaged_manifest_entry_is_one_line_naming_the_manifest_and_the_entry(registry, capsys, key, change, why):
    """The id and fingerprint checks raise the manifest's IntegrityError themselves (no error is caught and
    rethrown with another message): one line, exit 1, naming the manifest, the entry and what is wrong."""
    path = registry / "zoo.json"
    doc = json.loads(path.read_text())
    entry = {**doc["entries"].pop("smollm2-135m/zo-finetuner@1"), "id": key, **change}
    doc["entries"][key] = entry
    path.write_text(json.dumps(doc))
    from zoo.errors import IntegrityError
    from zoo.manifest import Location, read_manifest

    with pytest.raises(IntegrityError) as err:
        read_manifest(Location(path=registry))
    assert (str(err.value).startswith(f"registry manifest {path} has an invalid entry {key!r}: ")
            and why in str(err.value))
    assert err.value.__context__ is None  # raised where the problem was found, not a rewrapped ZooError
    rc, _, out = run_cli(capsys, "list", "--registry", str(registry))
    assert_one_line_error(rc, out, "has an invalid entry", why)
    assert rc == 1


def _remote(entry):  # the entry as a remote one (a pinned source file and how to convert it), with 0 blocks
    entry.update(convert={"from": "zo-finetuner-pth", "blocks": 0}, files={"p.pth": entry["files"]["config.json"]})


@pytest.mark.parametrize("change,why", [
    (lambda e: e.update(id="smollm2-135m/other@1"), "its id 'smollm2-135m/other@1' differs from its key"),
    (lambda e: e["files"].update({"/etc/passwd": {"sha256": "0" * 64, "size": 1}}), "unsafe file name '/etc/passwd'"),
    (lambda e: e["files"]["config.json"].update(size=-1), "file config.json has no valid size"),
    (lambda e: e["sources"].append({"type": "hf", "repo_id": "org/policy", "revision": "main"}),
     "a Hub source must pin a 40-hex commit revision"),
    (lambda e: e["sources"].append({"type": "github", "repo": "org/policy", "commit": COMMIT, "path": "x/../../y"}),
     "invalid GitHub path 'x/../../y'"),
    (_remote, "convert.blocks must be a positive integer"),
])
def test_a_manifest_entry_that_names_unsafe_or_unpinned_places_is_refused(registry, change, why):
    """Every manifest is untrusted: an entry filed under another id, a file name that is a path, a negative size, a
    source not pinned to a commit, a path out of its repository, a conversion into nothing: refused when read."""
    from zoo.errors import IntegrityError
    from zoo.manifest import Location, read_manifest

    path = registry / "zoo.json"
    doc = json.loads(path.read_text())
    change(doc["entries"]["smollm2-135m/zo-finetuner@1"])
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="has an invalid entry 'smollm2-135m/zo-finetuner@1': .*" + re.escape(why)):
        read_manifest(Location(path=registry))


def test_a_manifest_without_its_schema_version_is_refused(registry):
    from zoo.manifest import Location, read_manifest

    path = registry / "zoo.json"
    doc = json.loads(path.read_text())
    del doc["schema_version"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ZooError, match="has schema_version None but this zoo reads schema_version 1"):
        read_manifest(Location(path=registry))


def test_an_artefact_config_with_a_bad_fingerprint_is_one_sentence_naming_the_artefact(tmp_path):
    art = make_policy(tmp_path / "art")
    config = json.loads((art / "config.json").read_text())
    (art / "config.json").write_text(json.dumps({**config, "base_fingerprint": "md5:12"}))
    with pytest.raises(ZooError) as err:
        load_artefact(art)
    assert f"artefact {art} config: invalid base fingerprint 'md5:12'" in str(err.value)
    assert err.value.__context__ is None  # raised by the check itself, not a caught ZooError rethrown


def test_a_file_that_fails_its_copy_into_a_registry_is_the_transfer_s_own_one_line_error(tmp_path):
    """Publishing copies each file verified (zoo.transfer.copy_verified); its TransferError, a UserError naming the
    file and what failed, reaches the user as it is, and nothing is installed."""
    from zoo.registry import _install
    from zoo.transfer import TransferError

    art = make_policy(tmp_path / "art")
    name = "model.safetensors"
    files = {name: {"sha256": "0" * 64, "size": (art / name).stat().st_size}}
    with pytest.raises(TransferError) as err:
        _install(tmp_path / "reg", "smollm2-135m/zo-finetuner@1", files, art)
    assert str(err.value).startswith(f"{art / name} failed its sha256 check") and "\n" not in str(err.value)
    assert err.value.__context__ is None
    assert sorted(p.name for p in (tmp_path / "reg").iterdir()) == []  # no target, no staging left


def test_file_url_registry_via_environment(registry, monkeypatch, capsys):
    monkeypatch.setenv("L2O_ZOO_REGISTRY", registry.as_uri())
    rc, out, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1")
    assert rc == 0, err
    assert verify("smollm2-135m/zo-finetuner@1")
    # an explicit artefact folder or file:// URL is used as is
    assert resolve((registry / "smollm2-135m/zo-finetuner/1").as_uri()).origin == "path"


def test_http_registry_roundtrip(registry, capsys):
    with serve(registry) as url:
        rc, out, err = run_cli(capsys, "list", "--registry", url)
        assert rc == 0 and "smollm2-135m/zo-finetuner@2" in out, err
        rc, out, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", url)
        assert rc == 0, err
        rc, out, err = run_cli(capsys, "verify", "smollm2-135m/zo-finetuner@1", "--registry", url)
        assert rc == 0, err
    tensors, _ = load("smollm2-135m/zo-finetuner@1")  # server is gone: served from the cache
    assert torch.equal(tensors["w2"], policy_tensors(seed=0)["w2"])


def test_killed_http_download_leaves_cache_unchanged(registry, capsys):
    load("smollm2-135m/zo-finetuner@1", registry=registry)  # cache holds something already
    before = snapshot(cache_dir())
    with serve(registry, mode="kill") as url:
        rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@2", "--registry", url)
    assert_one_line_error(rc, err, "could not get a verified copy of model.safetensors", "interrupted")
    assert snapshot(cache_dir()) == before


def test_stream_raising_midway_leaves_no_cache(registry, monkeypatch, capsys):
    import zoo.transfer as transfer

    real_open = transfer._open_source

    class Flaky:
        def __init__(self, f):
            self.f, self.n = f, 0

        def read(self, n):
            self.n += 1
            if self.n == 2:
                raise ConnectionResetError("peer went away")
            return self.f.read(min(n, 100))

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(transfer, "_open_source", lambda src: Flaky(real_open(src)))
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
    assert_one_line_error(rc, err, "interrupted after 100 of")
    # nothing in the cache but the isolated fixture's link to the session's BIG-bench files (tests/conftest.py)
    root = cache_dir().parent
    assert not cache_dir().exists() and (not root.exists() or [p.name for p in root.iterdir()] == ["bigbench"])


def test_tampered_and_truncated_registry_files(registry, capsys):
    load("smollm2-135m/zo-finetuner@2", registry=registry)
    before = snapshot(cache_dir())
    weights = registry / "smollm2-135m/zo-finetuner/1/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
    assert_one_line_error(rc, err, "failed its sha256 check")
    rc, _, err = run_cli(capsys, "verify", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
    assert_one_line_error(rc, err, "is corrupt", "model.safetensors failed its sha256 check")
    weights.write_bytes(bytes(data[:-10]))
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
    assert_one_line_error(rc, err, "truncated")
    with serve(registry) as url:  # the same truncated file over http
        rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", url)
    assert_one_line_error(rc, err, "truncated")
    assert snapshot(cache_dir()) == before


def test_tampered_cache_copy_is_detected_and_repaired(registry):
    folder = resolve("smollm2-135m/zo-finetuner@1", registry=registry).path
    blob = next(p for p in (cache_dir() / "blobs/sha256").iterdir()
                if p.stat().st_size == (folder / "model.safetensors").stat().st_size)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ZooError, match=r"cached copy of 'smollm2-135m/zo-finetuner@1' is corrupt \(model.safetensors "
                                       "failed its sha256 check"):
        verify("smollm2-135m/zo-finetuner@1")  # verify reports, it does not repair silently
    again = resolve("smollm2-135m/zo-finetuner@1", registry=registry).path  # re-fetched from the registry
    assert again == folder and verify("smollm2-135m/zo-finetuner@1")
    assert hashlib.sha256((again / "model.safetensors").read_bytes()).hexdigest() == blob.name


def test_unknown_id_wrong_version_and_traversal(registry, capsys):
    load("smollm2-135m/zo-finetuner@1", registry=registry)
    before = snapshot(cache_dir())
    rc, _, err = run_cli(capsys, "download", "nope/zo-finetuner", "--registry", str(registry))
    assert_one_line_error(rc, err, "unknown zoo id 'nope/zo-finetuner'")
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@7", "--registry", str(registry))
    assert_one_line_error(rc, err, "has no version 7", "available: 1, 2")
    for bad in ("../x", "/abs", "a/../../b"):
        for cmd in ("download", "info", "verify"):
            rc, _, err = run_cli(capsys, cmd, bad, "--registry", str(registry))
            assert_one_line_error(rc, err, "invalid zoo id")
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner", "--registry", "/does/not/exist")
    assert_one_line_error(rc, err, "no zoo.json in registry")
    with serve(registry) as url:
        pass  # server is shut down: the registry URL is unreachable
    rc, _, err = run_cli(capsys, "download", "other/zo-finetuner", "--registry", url)
    assert_one_line_error(rc, err, "unknown zoo id", "cannot reach")
    assert snapshot(cache_dir()) == before


def test_manifest_with_unsafe_entry_is_refused(registry, capsys):
    doc = json.loads((registry / "zoo.json").read_text())
    entry = doc["entries"]["smollm2-135m/zo-finetuner@1"]
    entry["files"]["../../evil"] = {"sha256": "0" * 64, "size": 1}
    (registry / "zoo.json").write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, "list", "--registry", str(registry))
    assert_one_line_error(rc, err, "invalid entry", "unsafe file name")


def _hub_only_registry(tmp_path, art) -> Path:
    """A registry whose entry can only come from the Hub (its folder is absent)."""
    reg = tmp_path / "hubreg"
    entry = publish(art, reg)
    import shutil

    shutil.rmtree(reg / "smollm2-135m")
    doc = json.loads((reg / "zoo.json").read_text())
    doc["entries"][entry["id"]]["sources"] = [{"type": "hf", "repo_id": "org/policy", "revision": COMMIT}]
    (reg / "zoo.json").write_text(json.dumps(doc))
    return reg


def test_offline_hub_is_skipped_with_a_clear_message(tmp_path, monkeypatch, capsys):
    reg = _hub_only_registry(tmp_path, make_policy(tmp_path / "art"))
    real_connect = socket.socket.connect

    def no_network(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network attempt to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(reg))
    assert_one_line_error(rc, err, "Hub skipped (HF_HUB_OFFLINE=1", "org/policy@01234567")
    assert not cache_dir().exists()


def test_hub_source_download_and_push(tmp_path, monkeypatch, capsys):
    art = make_policy(tmp_path / "art")
    # push while offline: clear error, nothing written
    rc, _, err = run_cli(capsys, "publish", str(art), "--registry", str(tmp_path / "reg"),
                         "--push-to-hub", "org/policy")
    assert_one_line_error(rc, err, "cannot push", "HF_HUB_OFFLINE=1")
    assert not (tmp_path / "reg").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    class FakeApi:
        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return SimpleNamespace(oid=COMMIT, commit_url="https://huggingface.co/org/policy/commit/" + COMMIT)

    import zoo.hub

    monkeypatch.setattr(zoo.hub, "_hf_api", FakeApi)
    entry = publish(art, tmp_path / "reg", push_to_hub="org/policy")
    assert {"type": "hf", "repo_id": "org/policy", "revision": COMMIT} in entry["sources"]
    assert calls[1][1]["repo_id"] == "org/policy" and Path(calls[1][1]["folder_path"]) == art.resolve()

    # resolution through the Hub (registry copy gone): hf_hub_download is called with the pinned commit
    reg = _hub_only_registry(tmp_path, art)
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, *, revision=None, local_files_only=False, **kw):
        asked.append((repo_id, filename, revision, local_files_only))
        return str(art / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    tensors, _ = load("smollm2-135m/zo-finetuner@1", registry=reg, expected_fingerprint=FP_A)
    assert torch.equal(tensors["w1"], policy_tensors()["w1"])
    assert {a[2] for a in asked} == {COMMIT} and not any(a[3] for a in asked)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: only the Hugging Face cache may be consulted
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache-2"))
    load("smollm2-135m/zo-finetuner@1", registry=reg)
    assert asked[-1][3] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def unreachable(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "fresh-cache"))
    rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(reg))
    assert_one_line_error(rc, err, "Hub repo org/policy@01234567 is unreachable")
    assert not (tmp_path / "fresh-cache").exists()


def test_mirror_for_offline_machines(registry, tmp_path, monkeypatch, capsys):
    with serve(registry) as url:
        rc, out, err = run_cli(capsys, "mirror", "--to", str(tmp_path / "mirror"), "--registry", url)
    assert rc == 0 and "mirrored 2 entries" in out, err
    rc, out, err = run_cli(capsys, "mirror", "--to", str(tmp_path / "mirror"), "--registry", str(registry),
                           "smollm2-135m/zo-finetuner@1")
    assert rc == 0 and "mirrored 1 entry" in out, err
    # a fresh machine: only the mirror, empty cache
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "other-machine"))
    monkeypatch.setenv("L2O_ZOO_REGISTRY", str(tmp_path / "mirror"))
    tensors, _ = load("smollm2-135m/zo-finetuner", expected_fingerprint=FP_A)
    assert torch.equal(tensors["w1"], policy_tensors(seed=1)["w1"])
    assert verify("smollm2-135m/zo-finetuner@1")


def test_an_entry_whose_manifest_and_config_name_other_bases_is_refused_by_load_and_verify(registry):
    """The files verify against the manifest, but the manifest names another base than the artefact's config: which
    base it fits is then unknown, and load and verify refuse it."""
    from zoo.errors import IntegrityError

    path = registry / "zoo.json"
    doc = json.loads(path.read_text())
    doc["entries"]["smollm2-135m/zo-finetuner@1"]["base_fingerprint"] = FP_B
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="'smollm2-135m/zo-finetuner@1' is inconsistent"):
        load("smollm2-135m/zo-finetuner@1", registry=registry)
    with pytest.raises(IntegrityError, match="'smollm2-135m/zo-finetuner@1' is inconsistent"):
        verify("smollm2-135m/zo-finetuner@1", registry=registry)


def test_a_mirror_that_fails_midway_keeps_the_entries_it_mirrored(registry, tmp_path):
    weights = registry / "smollm2-135m/zo-finetuner/2/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    to = tmp_path / "new" / "mirror"
    with pytest.raises(ZooError, match="sha256"):
        mirror(to, ["smollm2-135m/zo-finetuner@1", "smollm2-135m/zo-finetuner@2"], registry=registry)
    assert list(json.loads((to / "zoo.json").read_text())["entries"]) == ["smollm2-135m/zo-finetuner@1"]
    assert verify("smollm2-135m/zo-finetuner@1", registry=to)


def test_mirroring_an_id_the_mirror_holds_with_other_content_is_refused(registry, tmp_path):
    to = tmp_path / "mirror"
    mirror(to, ["smollm2-135m/zo-finetuner@1"], registry=registry)
    other = tmp_path / "other-registry"
    publish(make_policy(tmp_path / "other", seed=7), other)
    before = snapshot(to)
    with pytest.raises(ZooError, match="already exists in registry .* with different content"):
        mirror(to, ["smollm2-135m/zo-finetuner@1"], registry=other)
    assert snapshot(to) == before


def test_a_mirror_names_no_path_of_this_machine(registry, tmp_path):
    """An entry downloaded from a local registry is indexed in the cache with that folder as a file:// source; a
    mirror made from the cache is carried to other machines, so it keeps only its own copy and remote sources."""
    load("smollm2-135m/zo-finetuner@1", registry=registry)
    to = tmp_path / "mirror"
    mirror(to, ["smollm2-135m/zo-finetuner@1"])  # from the cache's index
    entry = json.loads((to / "zoo.json").read_text())["entries"]["smollm2-135m/zo-finetuner@1"]
    assert entry["sources"] == [{"type": "registry", "path": "smollm2-135m/zo-finetuner/1"}]


def test_one_id_from_two_registries_keeps_two_cache_copies(registry, tmp_path):
    """Two registries may hold one id with different content: the cache keeps a copy of each (keyed by its files'
    hashes), so using one never overwrites the other's, and each verifies."""
    other = tmp_path / "other-registry"
    publish(make_policy(tmp_path / "other", seed=7), other)
    a = resolve("smollm2-135m/zo-finetuner@1", registry=registry).path
    b = resolve("smollm2-135m/zo-finetuner@1", registry=other).path
    assert a != b and a.is_dir() and b.is_dir()
    assert verify("smollm2-135m/zo-finetuner@1", registry=registry)
    assert verify("smollm2-135m/zo-finetuner@1", registry=other)
    # the cache's index lists the copy used last; the other is checked as a folder, not against that entry
    from zoo.resolve import verify_artefact_folder

    assert verify_artefact_folder(b) and verify_artefact_folder(a) is None


def test_a_download_or_mirror_killed_mid_way_leaves_staging_the_next_one_there_removes(registry, tmp_path, capsys):
    """kill -9 during a download into the cache or a mirror into a registry left its .staging-* there for good; the
    next download or mirror there removes a dead writer's (and says so in one line), never a live writer's."""
    import signal

    from tests.helpers import hold_writer_folder
    from zoo.resolve import cache_root

    cache, to = cache_root(), tmp_path / "mirror"
    dead = [hold_writer_folder(cache, ".staging-"), hold_writer_folder(to, ".staging-")]
    live, live_folder = hold_writer_folder(cache, ".staging-")
    try:
        for proc, _ in dead:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert all((folder / "half.bin").is_file() for _, folder in dead)
        rc, _, err = run_cli(capsys, "download", "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
        assert rc == 0 and err.strip().splitlines() == [
            f"removed 1 stale temp folder(s) .staging-* that an interrupted download or copy left in {cache}"], err
        assert not dead[0][1].exists() and (live_folder / "half.bin").is_file()
        rc, _, err = run_cli(capsys, "mirror", "--to", str(to), "--registry", str(registry),
                             "smollm2-135m/zo-finetuner@1")
        assert rc == 0 and err.strip().splitlines() == [
            f"removed 1 stale temp folder(s) .staging-* that an interrupted download or copy left in {to}"], err
        assert not dead[1][1].exists() and not any(p.name.startswith(".staging-") for p in to.iterdir())
        assert (live_folder / "half.bin").is_file()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


# ----------------------------------------------------------------------------- CLI surface
def test_cli_help_and_usage_errors(capsys, tmp_path, monkeypatch):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "publish" in out and "import-zo-finetuner" in out
    rc, _, err = run_cli(capsys, "frobnicate")
    assert_one_line_error(rc, err, "invalid choice")
    rc, _, err = run_cli(capsys, "publish", "somewhere")
    assert_one_line_error(rc, err, "needs a registry directory")
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0 and "no entries" in out


def test_python_m_zoo_entry_point(tmp_path):
    env = dict(os.environ)
    code = ("import sys, zoo.cli; rc = zoo.cli.main(['list']); "
            "print('HEAVY' if {'torch', 'safetensors', 'huggingface_hub'} & set(sys.modules) else 'LIGHT')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip().endswith("LIGHT"), res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "zoo", "download", "../x"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("zoo: error: invalid zoo id '../x'") and len(res.stderr.splitlines()) == 1


def test_public_api_is_lazy():
    assert zoo.publish is publish and zoo.mirror is mirror and zoo.load is load and zoo.verify is verify
    assert zoo.load_artefact is load_artefact and zoo.save_artefact is save_artefact
    assert callable(zoo.import_zo_finetuner) and zoo.parse_id is parse_id
    with pytest.raises(AttributeError):
        zoo.does_not_exist  # noqa: B018


def test_builtin_defaults_are_the_last_resort(tmp_path, monkeypatch, capsys):
    import zoo.manifest

    shipped_entries = zoo.manifest.read_manifest(zoo.manifest.Location(path=ROOT / "zoo" / "builtin")).entries
    assert "smollm2-135m/zo-finetuner@1" in shipped_entries  # the default policy ships inside the package
    shipped = tmp_path / "builtin"
    publish(make_policy(tmp_path / "art"), shipped)
    monkeypatch.setattr(zoo.manifest, "builtin_root", lambda: shipped)
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0 and "smollm2-135m/zo-finetuner@1" in out and "built-in" in out
    folder = resolve("smollm2-135m/zo-finetuner").path
    assert folder.is_relative_to(cache_dir())
    # the cache index now shadows the built-in entry; losing the cached copy still resolves from the package
    import shutil

    shutil.rmtree(cache_dir() / "blobs")
    shutil.rmtree(cache_dir() / "entries")
    tensors, _ = load("smollm2-135m/zo-finetuner@1", expected_fingerprint=FP_A)
    assert torch.equal(tensors["w1"], policy_tensors()["w1"])


# ----------------------------------------------------------------------------- concurrency, exit codes, messages
_RACE = """
import os, sys, time
import zoo.registry as reg, zoo.resolve as res
real = reg.read_manifest
def slow(*a, **k):  # widen the read-modify-write window so an unlocked update would lose entries
    out = real(*a, **k)
    time.sleep(0.15)
    return out
reg.read_manifest = res.read_manifest = slow
go, cmd, arg, registry = sys.argv[1:5]
while not os.path.exists(go):
    time.sleep(0.01)
print(reg.publish(arg, registry)["id"] if cmd == "publish" else res.resolve(arg, registry=registry).path)
"""


def _race(tmp_path, cmd, args, registry) -> list[str]:
    go = tmp_path / f"go-{cmd}"
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(go), cmd, str(a), str(registry)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in args]
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [o.strip() for o, _ in outs]


def test_concurrent_publishes_and_downloads_lose_nothing(tmp_path, capsys):
    n = 4
    arts = [make_policy(tmp_path / f"art{i}", seed=i, base="tiny-base") for i in range(n)]
    reg = tmp_path / "reg"
    ids = _race(tmp_path, "publish", arts, reg)
    assert sorted(ids) == [f"tiny-base/zo-finetuner@{v}" for v in range(1, n + 1)]  # one version each
    entries = json.loads((reg / "zoo.json").read_text())["entries"]
    assert sorted(entries) == sorted(ids)
    _race(tmp_path, "download", ids, reg)  # n downloads into one cache: its index keeps all of them
    assert sorted(json.loads((cache_dir() / "zoo.json").read_text())["entries"]) == sorted(ids)
    for eid, art in zip(ids, arts):
        rc, out, err = run_cli(capsys, "verify", eid, "--registry", str(reg))
        assert rc == 0, err
        t, _ = load(eid)  # from the cache index alone
        assert torch.equal(t["w1"], load_artefact(art)[0]["w1"])


def test_publish_never_shadows_a_builtin_id_unless_asked(tmp_path, monkeypatch, capsys):
    import zoo.manifest

    shipped = tmp_path / "builtin"
    publish(make_policy(tmp_path / "shipped", seed=0), shipped)
    monkeypatch.setattr(zoo.manifest, "builtin_root", lambda: shipped)
    reg = tmp_path / "reg"
    other = make_policy(tmp_path / "other", seed=3)
    assert publish(other, reg)["id"] == "smollm2-135m/zo-finetuner@2"  # the next free version, not @1
    rc, _, err = run_cli(capsys, "publish", str(other), "--registry", str(reg), "--version", "1")
    assert_one_line_error(rc, err, "built-in entry", "--shadow-builtin")
    assert rc == 2 and "smollm2-135m/zo-finetuner@1" not in json.loads((reg / "zoo.json").read_text())["entries"]
    assert publish(tmp_path / "shipped", reg, version=1)["id"] == "smollm2-135m/zo-finetuner@1"  # same bytes: fine
    reg2 = tmp_path / "reg2"
    rc, out, err = run_cli(capsys, "publish", str(other), "--registry", str(reg2), "--version", "1", "--shadow-builtin")
    assert rc == 0 and "smollm2-135m/zo-finetuner@1" in out, err


@pytest.mark.parametrize("where", ["under-a-file", "file"])
def test_refused_mirror_leaves_the_cache_as_it_was(registry, tmp_path, capsys, where):
    load("smollm2-135m/zo-finetuner@2", registry=registry)  # @1 is not cached yet
    before = snapshot(cache_dir())
    (tmp_path / "plain-file").write_text("x")
    to = tmp_path / "plain-file" / "mirror" if where == "under-a-file" else tmp_path / "plain-file"
    rc, _, err = run_cli(capsys, "mirror", "--to", str(to), "--registry", str(registry))
    assert snapshot(cache_dir()) == before
    assert_one_line_error(rc, err, "cannot write to registry")
    assert rc == 2


def test_exit_codes_user_errors_2_integrity_failures_1(registry, tmp_path, capsys):
    for argv in (["download", "nope/zo-finetuner@3"], ["download", "../x"], ["info", "a/b@x"],
                 ["verify", str(tmp_path / "missing")], ["publish", str(tmp_path / "missing")]):
        rc, _, err = run_cli(capsys, *argv, "--registry", str(registry))
        assert rc == 2 and err.startswith("zoo: error: "), (argv, rc, err)
    assert "unknown zoo id 'nope/zo-finetuner@3'" in run_cli(capsys, "info", "nope/zo-finetuner@3")[2]  # keeps @3
    weights = registry / "smollm2-135m/zo-finetuner/1/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    for cmd in ("download", "verify"):
        rc, _, err = run_cli(capsys, cmd, "smollm2-135m/zo-finetuner@1", "--registry", str(registry))
        assert_one_line_error(rc, err, "sha256")
        assert rc == 1, (cmd, err)


def test_verify_says_what_it_checked_and_folders_name_what_they_lack(registry, tmp_path, capsys):
    loose = make_policy(tmp_path / "loose")
    weights = loose / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # a flipped tensor byte: the structure still parses
    weights.write_bytes(bytes(data))
    rc, out, err = run_cli(capsys, "verify", str(loose))
    assert rc == 0 and out.strip() == f"structure ok: {loose}; no manifest, so hashes were not checked", err
    listed = registry / "smollm2-135m/zo-finetuner/2"  # a folder its registry's manifest lists: hashes checked
    rc, out, _ = run_cli(capsys, "verify", str(listed))
    assert rc == 0 and out.startswith("ok: ") and "every sha256" in out
    (listed / "model.safetensors").write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "verify", str(listed))
    assert_one_line_error(rc, err, "does not match registry manifest", "model.safetensors")
    assert rc == 1
    empty = tmp_path / "not-an-artefact"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    for spec in (str(empty), f"{empty}/"):
        with pytest.raises(ZooError,
                           match=r"not-an-artefact is not an artefact folder: it lacks config.json, README.md"):
            load(spec)
    rc, _, err = run_cli(capsys, "verify", str(empty))
    assert_one_line_error(rc, err, "is not an artefact folder: it lacks config.json")
    assert rc == 2


def test_sigterm_during_a_download_removes_its_staging_folder_says_so_and_exits_143(tmp_path):
    """A scheduler's SIGTERM (l2o/stop.py) stops the zoo as Ctrl-C does: the folder a download or copy was staging
    into is removed with its lock file, one line, exit 143. Python's default killed it where it stood (exit -15),
    leaving both for the next run's clean-up."""
    code = ("import os, signal, sys, time\n"
            "from pathlib import Path\n"
            "import zoo.cli\n"
            "from l2o.filelock import writer_folder\n"
            "def download(args):\n"
            "    with writer_folder(Path(sys.argv[1]), '.staging-') as folder:\n"
            "        (folder / 'model.safetensors').write_bytes(b'half')\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n"
            "zoo.cli.COMMANDS['download'] = download\n"
            "raise SystemExit(zoo.cli.main(['download', 'smollm2-135m/zo-finetuner']))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr == "zoo: error: stopped by SIGTERM\n"
    assert list(tmp_path.iterdir()) == []  # the staging folder and its lock file
