"""The seed ledger: every optimizer records it, replay rebuilds the weights bit-identically in fp32/bf16/fp16
with update sweeps only, and damaged or mismatched ledgers are refused before any weight is written."""

import json

import pytest
import torch

from l2o.ledger import Ledger, LedgerError, canonical, decode_scales, encode_scales, replay
from l2o.optim import build_optimizer
from l2o.policy import ZOPolicy
from tests.zo_fixtures import TwoBlock, same_bits, snapshot

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KW = {"bszo": dict(sigma_prior=10.0, sigma_noise=1.0), "bszo-b": dict(sigma_prior=10.0, sigma_noise=1.0),
      "zo-finetuner+bszo": dict(sigma_prior=10.0, sigma_noise=1.0)}


def _run(name, dtype=torch.float32, steps=4, noise=None, seed=0):
    """A model trained `steps` steps by optimizer `name` (with a learned policy for zo-finetuner*)."""
    model = TwoBlock(dtype=dtype)
    kw = dict(KW.get(name, {}), lr=1e-2, eps=1e-2, seed=seed, weight_decay=0.05, noise=noise)
    if name.startswith("zo-finetuner"):
        kw["policy"] = ZOPolicy.for_model(TwoBlock(dtype=dtype), seed=3)
    opt = build_optimizer(name, model, **kw)
    for _ in range(steps):
        opt.step(model)
    return model, opt


# replay of every registered method, in every dtype: tests/test_methods.py


def test_replay_with_the_shared_noise_table_rebuilds_it_from_the_header():
    trained, opt = _run("mezo-gv", torch.bfloat16, noise="table")
    assert opt.ledger.header["noise"]["name"] == "table"
    fresh = TwoBlock(dtype=torch.bfloat16)
    replay(fresh, Ledger.parse(opt.ledger.text(), require_seal=False))
    assert same_bits(snapshot(fresh), snapshot(trained))


def test_replay_runs_no_forward_pass():
    trained, opt = _run("mezo")
    fresh = TwoBlock()
    calls = []
    fresh.register_forward_pre_hook(lambda *a: calls.append(1))
    replay(fresh, opt.ledger)
    assert calls == [] and same_bits(snapshot(fresh), snapshot(trained))


def test_scales_round_trip_exactly_in_float32_or_float64():
    f32 = torch.rand(7).tolist()
    assert encode_scales(f32).startswith("f4:") and decode_scales(encode_scales(f32)) == f32
    f64 = [0.1, 1 / 3, 2.0]
    assert encode_scales(f64).startswith("f8:") and decode_scales(encode_scales(f64)) == f64


def test_flush_appends_and_a_resumed_optimizer_continues_the_same_ledger(tmp_path):
    path = tmp_path / "ledger.jsonl"
    full, opt_full = _run("mezo-gv", steps=6)
    part, opt = _run("mezo-gv", steps=3)
    opt.ledger.flush(path)
    first = path.read_text()
    state = opt.state_dict()
    resumed = TwoBlock()
    opt2 = build_optimizer("mezo-gv", resumed, lr=1e-2, eps=1e-2, weight_decay=0.05)
    opt2.load_state_dict(state)
    replay(resumed, Ledger.parse(state["zo_ledger"], require_seal=False))
    for _ in range(3):
        opt2.step(resumed)
    opt2.ledger.flush(path)
    text = path.read_text()
    assert text.startswith(first)  # append-only
    assert same_bits(snapshot(resumed), snapshot(full))
    back = Ledger.read(path)
    assert back.num_updates == 6 and sum("seal" in r for r in back.records) == 2
    def bare(records):  # the hashes differ only because the resumed file has a seal in between
        return [{k: v for k, v in r.items() if k != "h"} for r in records if "seal" not in r]

    assert bare(back.records) == bare(opt_full.ledger.records)


# ---------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    trained, opt = _run("zo-finetuner", torch.bfloat16, steps=5)
    path = tmp_path_factory.mktemp("ledger") / "ledger.jsonl"
    opt.ledger.write(path)
    return path, opt.ledger.summary()


def _refused(text, match, **expect):
    """Parsing + replaying `text` onto a fresh base raises LedgerError and leaves every weight as it was."""
    model = TwoBlock(dtype=torch.bfloat16)
    before = snapshot(model)
    with pytest.raises(LedgerError, match=match):
        replay(model, Ledger.parse(text, **expect))
    assert same_bits(before, snapshot(model))


def test_an_intact_ledger_replays(written):
    path, summary = written
    model = TwoBlock(dtype=torch.bfloat16)
    assert replay(model, Ledger.read(path, **summary)) == 5


def test_truncated_ledgers_are_refused(written):
    path, summary = written
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    _refused(text[:-40], "truncated: its last line is incomplete")
    _refused("".join(lines[:-2]), "does not end in a seal")
    cut = Ledger.parse("".join(lines[:3]), require_seal=False)  # cut after 2 updates, then sealed: a valid chain
    cut.seal()
    _refused(cut.text(), "not the ledger that was recorded", **summary)


def test_another_run_s_ledger_with_as_many_updates_is_refused_against_the_recorded_summary(written):
    """A checkpoint or zoo config pins its ledger by update count and last h: another run's ledger on the same base
    (another seed), intact, sealed and with the same number of updates, matches the count alone but not the head,
    so it is refused before any weight is written rather than replayed into other weights."""
    _, summary = written
    _, other = _run("zo-finetuner", torch.bfloat16, steps=5, seed=1)
    other.ledger.seal()
    assert other.ledger.num_updates == summary["updates"] and other.ledger.head != summary["head"]
    _refused(other.ledger.text(), "not the ledger that was recorded", **summary)


def test_reordered_and_edited_ledgers_are_refused(written):
    path, _ = written
    lines = path.read_text().splitlines(keepends=True)
    _refused("".join(lines[:1] + [lines[2], lines[1]] + lines[3:]), "hash chain breaks there")
    rec = json.loads(lines[2])
    rec["w"][0] *= 1.0001
    _refused("".join(lines[:2] + [canonical(rec) + "\n"] + lines[3:]), "edited, reordered or cut at line 3")
    header = lines[0].replace('"dtype":"bf16"', '"dtype":"fp32"')
    _refused("".join([header] + lines[1:]), "header does not match its hash")


def _rechained(path, change) -> str:
    """The same ledger with header fields changed and a valid chain (as a different run would write)."""
    old = Ledger.read(path)
    new = Ledger({**old.header, **change(old.header)})
    for r in old.records:
        new._push(r)
    return new.text()


@pytest.mark.parametrize("change,match", [
    (lambda h: dict(base_fingerprint="sha256:" + "0" * 64), "recorded on base"),
    (lambda h: dict(dtype="fp32"), "recorded in fp32"),
    (lambda h: dict(base_digest="sha256:" + "1" * 64), "not its starting weights"),
    (lambda h: dict(blocks=h["blocks"][::-1]), "parameter blocks"),
    (lambda h: dict(noise={**h["noise"], "keying": "v9"}), "noise source"),
], ids=["fingerprint", "dtype", "digest", "blocks", "noise"])
def test_a_header_that_does_not_match_the_model_is_refused(written, change, match):
    path, _ = written
    _refused(_rechained(path, change), match)


def test_another_initialisation_of_the_same_architecture_is_refused(written):
    path, _ = written
    model = TwoBlock(dtype=torch.bfloat16, seed=5)
    before = snapshot(model)
    with pytest.raises(LedgerError, match="not its starting weights"):
        replay(model, Ledger.read(path))
    assert same_bits(before, snapshot(model))


# ---------------------------------------------------------------------------------- devices and paths
@pytest.mark.parametrize("source,dtype,written_on,replayed_on", [
    ("gaussian", "bf16", "chunked", "block"), ("gaussian", "fp32", "block", "chunked"),
    ("table", "bf16", "block", "chunked"), ("table", "fp16", "chunked", "block")])
def test_a_ledger_replays_bit_identically_on_the_other_noise_path(monkeypatch, source, dtype, written_on, replayed_on):
    """A ledger written on the CPU's chunked path replays on the accelerators' block path (the Triton kernel,
    interpreted on CPU tensors here) to the same bits, and the other way round: z and the rounding bits are
    functions of (key, element index) only, so the header needs no path or device entry."""
    pytest.importorskip("triton")
    from l2o.noise import make_noise

    noise = make_noise(source, path=written_on, **({"size": 1 << 14, "chunk_size": 256} if source == "table" else {}))
    trained, opt = _run("mezo" if dtype == "fp32" else "mezo-gv", DTYPES[dtype], steps=2, noise=noise)
    assert "path" not in opt.ledger.header["noise"]
    monkeypatch.setenv("L2O_NOISE_PATH", replayed_on)
    fresh = TwoBlock(dtype=DTYPES[dtype])
    replay(fresh, Ledger.parse(opt.ledger.text(), require_seal=False))
    assert same_bits(snapshot(fresh), snapshot(trained))


@pytest.mark.parametrize("old", [{"name": "gaussian", "chunk_size": 262144, "keying": "mt19937-state"},
                                 {"name": "gaussian", "chunk_size": 262144, "keying": "mt19937-state", "path": "block"},
                                 {"name": "table", "size": 4194304, "seed": 0, "chunk_size": 65536}],
                         ids=["gaussian-cpu", "gaussian-accelerator", "table"])
def test_a_ledger_of_the_old_device_dependent_generators_is_refused_in_one_line(written, old):
    """Before the portable generator, z came from mt19937 (CPU) or Philox (CUDA) and the rounding bits too:
    such a ledger cannot be replayed exactly anywhere now, so it is refused before any weight is written."""
    text = _rechained(written[0], lambda h: dict(noise=old))
    _refused(text, "cannot reproduce")
    with pytest.raises(LedgerError) as err:
        replay(TwoBlock(dtype=torch.bfloat16), Ledger.parse(text))
    assert "\n" not in str(err.value)
