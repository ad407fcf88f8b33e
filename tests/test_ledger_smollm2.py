"""Slow: a real SmolLM2-135M full-parameter fine-tune, published as a ledger, downloaded into a fresh zoo
cache and materialised to exactly the weights the same run saves as weights (the issue's done-when)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fine_tune.cli import main as fine_tune
from zoo.cli import main as zoo

pytestmark = pytest.mark.slow

RUN = ["--base", "smollm2-135m", "--task", "tweet_sentiment", "--peft", "full", "--steps", "3", "--batch-size", "2",
       "--num-train", "8", "--num-dev", "0", "--num-eval", "4", "--eval-batch-size", "4", "--zero-shot", "false",
       "--lr", "1e-5", "--eps", "1e-3", "--max-length", "64"]


def test_smollm2_fine_tune_published_as_a_ledger_materialises_to_the_same_weights(tmp_path, capsys):
    as_ledger, as_weights = tmp_path / "ledger-run", tmp_path / "weights-run"
    assert fine_tune([*RUN, "--out", str(as_ledger), "--save-model", "ledger"]) == 0
    results = json.loads((as_ledger / "results.json").read_text())
    assert results["checkpoint"] == "ledger" and results["saved_model"] == "ledger"  # the default above 50M params
    assert fine_tune([*RUN, "--out", str(as_weights), "--save-model", "weights", "--checkpoint", "weights"]) == 0

    registry, fresh = tmp_path / "registry", tmp_path / "fresh-zoo-cache"
    assert zoo(["publish", str(as_ledger / "model"), "--registry", str(registry), "--name", "tweets"]) == 0
    out = tmp_path / "materialised"
    assert zoo(["apply", "smollm2-135m/tweets", "--registry", str(registry), "--cache-dir", str(fresh),
                "--base", "smollm2-135m", "--out", str(out)]) == 0
    assert (fresh / "entries" / "smollm2-135m" / "tweets").is_dir()  # downloaded and verified into the fresh cache

    expected, got = load_file(as_weights / "model" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    from zoo.acquire import embedded_smollm2_dir

    base = load_file(embedded_smollm2_dir() / "model.safetensors")
    assert any(not torch.equal(base[k], got[k]) for k in got)  # the fine-tune moved the weights
    ledger_bytes = (as_ledger / "model" / "ledger.jsonl").stat().st_size
    print(f"ledger {ledger_bytes} bytes for 3 steps; weights {(out / 'model.safetensors').stat().st_size} bytes")
