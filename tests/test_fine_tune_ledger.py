"""fine_tune with seed-ledger checkpoints: no weights in checkpoints, a killed run resumed by replay reaches
the weights an uninterrupted weights-checkpointed run reaches, --save-model ledger publishes as a zoo
artefact that materialises to the same weights, and --init takes a ledger."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fine_tune.cli import main
from l2o.ledger import Ledger
from tests.helpers import same_threads_env

ROOT = Path(__file__).resolve().parents[1]
SST2 = str(ROOT / "tests" / "fixtures" / "hub" / "sst2")
DATA = ["--task", "sst2", "--source", SST2, "--batch-size", "8", "--num-dev", "2", "--eval-batch-size", "8"]
STEPS = [*DATA, "--steps", "6", "--save-every", "2", "--eval-every", "3", "--lr", "1e-2", "--eps", "1e-2",
         "--weight-decay", "0.01"]


@pytest.fixture(scope="module", params=["mezo", "zo-adam"])
def runs(tmp_path_factory, tiny_bases, request):
    """The same run twice: weights checkpoints, uninterrupted; ledger checkpoints, killed after step 3's
    checkpoint (the fault tests.helpers injects) and resumed. Both select the best-on-dev checkpoint at the end.
    ZO-Adam: the ledger checkpoint holds no moments either; the resumed optimizer rebuilds them from the ledger."""
    COMMON = [*STEPS, "--optimizer", request.param]
    root = tmp_path_factory.mktemp("ledger-runs")
    base = tiny_bases("opt")
    weights, ledger = root / "weights", root / "ledger"
    assert main(["--base", base, "--out", str(weights), *COMMON, "--checkpoint", "weights",
                 "--save-model", "weights"]) == 0
    argv = ["--base", base, "--out", str(ledger), *COMMON, "--checkpoint", "ledger", "--save-model", "ledger"]
    code = f"from tests.helpers import run_fine_tune_killed_at; run_fine_tune_killed_at(5, {argv!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=same_threads_env())  # its resumed run is compared bit for bit with one made here
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert main([*argv, "--resume"]) == 0
    return {"base": base, "weights": weights, "ledger": ledger, "root": root}


def test_ledger_checkpoints_hold_no_weights_and_results_say_so(runs):
    ckpt = torch.load(runs["ledger"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] == {} and ckpt["l2o"]["checkpoint"] == "ledger"
    assert ckpt["l2o"]["ledger"]["updates"] == 6
    results = json.loads((runs["ledger"] / "results.json").read_text())
    assert results["checkpoint"] == "ledger" and results["saved_model"] == "ledger"
    assert json.loads((runs["weights"] / "results.json").read_text())["checkpoint"] == "weights"
    full = Ledger.read(runs["ledger"] / "ledger.jsonl")
    assert full.num_updates == 6
    assert os.path.getsize(runs["ledger"] / "checkpoints" / "last.ckpt") < \
        os.path.getsize(runs["weights"] / "checkpoints" / "last.ckpt")


def test_resumed_ledger_run_and_its_saved_ledger_give_the_uninterrupted_weights(runs, capsys):
    from zoo.cli import main as zoo_main

    expected = load_file(runs["weights"] / "model" / "model.safetensors")
    best = json.loads((runs["weights"] / "results.json").read_text())["best_step"]
    assert json.loads((runs["ledger"] / "results.json").read_text())["best_step"] == best
    out = runs["root"] / "materialised"
    assert zoo_main(["apply", str(runs["ledger"] / "model"), "--base", runs["base"], "--out", str(out)]) == 0
    got = load_file(out / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert Ledger.read(runs["ledger"] / "model" / "ledger.jsonl").num_updates == best


def test_init_from_a_ledger_replays_it_and_refuses_another_dtype(runs, tmp_path, capsys):
    art = str(runs["ledger"] / "model")
    argv = ["--base", runs["base"], *DATA, "--steps", "1", "--lr", "0", "--zero-shot", "false",
            "--init", art, "--save-model", "weights", "--checkpoint", "ledger"]
    assert main([*argv, "--out", str(tmp_path / "init")]) == 0
    expected = load_file(runs["weights"] / "model" / "model.safetensors")
    got = load_file(tmp_path / "init" / "model" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    capsys.readouterr()
    assert main([*argv, "--dtype", "bf16", "--out", str(tmp_path / "bf16")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("fine_tune: error: ") and "recorded in fp32, not bf16" in err[0], err


def test_ledger_checkpoints_are_the_default_only_for_large_full_parameter_runs():
    from fine_tune.config import LEDGER_THRESHOLD, FineTuneConfig

    assert FineTuneConfig(task="sst2").checkpoint_kind(LEDGER_THRESHOLD) == "ledger"
    assert FineTuneConfig(task="sst2").checkpoint_kind(LEDGER_THRESHOLD - 1) == "weights"
    assert FineTuneConfig(task="sst2", peft="lora").checkpoint_kind(10 * LEDGER_THRESHOLD) == "weights"
    assert FineTuneConfig(task="sst2", checkpoint="ledger").checkpoint_kind(1) == "ledger"
    assert FineTuneConfig(task="sst2").save_kind(LEDGER_THRESHOLD) == "ledger"
    assert FineTuneConfig(task="sst2", save_model=False).save_kind(LEDGER_THRESHOLD) is None
    assert FineTuneConfig(task="sst2", save_model="weights").save_kind(LEDGER_THRESHOLD) == "weights"
