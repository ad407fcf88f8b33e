"""meta_train --estimator es|pes with the LLM placed by l2o.placement (`--offload cpu`: every transformer block
streamed from CPU memory to the execution device; `--device-map auto`: layers over the devices), on the CPU
(the execution device here): bit-identical to the same run with the model held normally, since the engine
perturbs each block where its module runs and writes updates, resets and parked weights where it lives."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("isolated", "one_thread")


def _args(base, out, estimator="es"):
    return ["--base", base, "--tasks", "imdb", "siqa", "piqa", "--holdout", "piqa",
            "--out", str(out), "--estimator", estimator, "--max_steps", "3", "--model.lr_policy", "0.05",
            "--model.reset_every", "2", "--model.val_steps", "1", "--model.val_tasks", "1", "--model.log_every", "0",
            "--model.pairs", "2", "--model.unroll", "2", "--model.inner_lr", "1e-2", "--data.batch_size", "2",
            "--data.num_train", "8", "--data.num_dev", "4", "--data.num_eval", "2", "--data.max_length", "32",
            "--trainer.accelerator", "cpu"]


def _same_run(got, ref):
    a, b = load_file(got / "policy" / "model.safetensors"), load_file(ref / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (got, ref))
    untimed = [[{k: v for k, v in r.items() if k != "step_time_s"} for r in res["history"]] for res in (ra, rb)]
    assert untimed[0] == untimed[1] and all("meta_loss" in r for r in untimed[0])  # PES rows have no trajectory_loss
    assert ra["meta_validations"] == rb["meta_validations"] and ra["meta_forwards"] == rb["meta_forwards"]


_PLAIN: dict = {}


def _plain(base, tmp_path_factory, estimator):
    """The run held normally, once per estimator (a module-wide cache)."""
    if estimator not in _PLAIN:
        from meta_train.cli import main

        out = tmp_path_factory.mktemp("plain") / estimator
        assert main(_args(base, out, estimator)) == 0
        _PLAIN[estimator] = out
    return _PLAIN[estimator]


@pytest.mark.parametrize("estimator,placement", [("es", ["--offload", "cpu"]), ("es", ["--device-map", "auto"]),
                                                 pytest.param("pes", ["--offload", "cpu"], marks=pytest.mark.slow)])
def test_placed_es_meta_training_equals_the_run_held_normally(tiny_base, tmp_path, tmp_path_factory, capsys,
                                                              estimator, placement):
    from meta_train.cli import main

    plain = _plain(tiny_base, tmp_path_factory, estimator)
    capsys.readouterr()
    assert main(_args(tiny_base, tmp_path / "placed", estimator) + placement) == 0
    assert f"placement {' '.join(placement)}:" in capsys.readouterr().err
    _same_run(tmp_path / "placed", plain)


def test_placement_needs_a_forward_only_estimator(tiny_base, tmp_path, capsys):
    from meta_train.cli import main

    for argv, text in ((["--estimator", "lookahead", "--device-map", "auto"], "need a forward-only estimator"),
                       (["--offload", "disk"], "--offload must be cpu"),
                       (["--device-map", "everywhere"], "--device-map must be one of auto, balanced, sequential"),
                       (["--device-map", "auto", "--offload", "cpu"], "not both")):
        argv = ["--base", tiny_base, "--out", str(tmp_path / "r"), "--max_steps", "1", *(
            [] if "--estimator" in argv else ["--estimator", "es"]), *argv]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("meta_train: error:") and text in err[0], err
    assert main(["--method", "bilevel-zofo", "--base", tiny_base, "--offload", "cpu"]) == 2
    assert "has none" in capsys.readouterr().err
