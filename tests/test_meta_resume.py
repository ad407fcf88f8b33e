"""meta_train resumes bit-identically after a real Ctrl-C, with every estimator, and stops within one step.

What a resumed run must carry (issue 22): the policy and its Adam state (Lightning's checkpoint), the LLM
trajectory (look-ahead: its weights and momentum; ES and PES: the ledger records of their ZO runs, replayed
onto the pretrained weights), the policy's recurrent features, task sampling and the reset schedule (pure
functions of the step), and the meta-validations (a resumed run does the one its checkpoint preceded)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5
pytestmark = pytest.mark.usefixtures("isolated")


def _args(base, out, estimator):
    return ["--base", base, "--tasks", "imdb", "siqa", "piqa", "--holdout", "piqa",
            "--out", str(out), "--estimator", estimator, "--max_steps", str(STEPS), "--save_every", "100",
            "--model.lr_policy", "0.05", "--model.eta_meta", "1e-2", "--model.lr_llm", "0.05",
            "--model.reset_every", "3", "--model.val_every", "2", "--model.val_steps", "1", "--model.val_tasks", "1",
            "--model.log_every", "0", "--model.pairs", "2", "--model.unroll", "2", "--model.inner_lr", "1e-2",
            "--data.batch_size", "2", "--data.num_train", "8", "--data.num_dev", "4", "--data.num_eval", "2",
            "--data.max_length", "32", "--trainer.accelerator", "cpu"]


def _interrupted(argv: list[str], step: int, during, sig: str = "SIGINT") -> tuple[subprocess.CompletedProcess, dict]:
    """`meta_train argv` in a subprocess that sends itself SIGINT, or `sig`
    (tests.helpers.run_meta_train_interrupted_at); it must exit 130 (SIGTERM: 143). Returns the process and its
    checkpoint. The stopped process leaves no parked weights behind in its temporary folder (ES's snapshot of the
    weights stayed there, one base-sized file per stop)."""
    code = (f"from tests.helpers import run_meta_train_interrupted_at as f; "
            f"f({step}, {argv!r}, during={during!r}, sig={sig!r})")
    out = Path(argv[argv.index("--out") + 1])
    scratch = out.parent / f"tmp-{out.name}"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[sig], proc.stderr[-3000:]
    assert [p.name for p in scratch.glob("l2o-*")] == []
    return proc, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


def _main(argv: list[str]) -> int:
    """The `meta_train` CLI in this process, on one thread as the subprocess (the same float reductions)."""
    from meta_train.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def _reference_then_interrupted(tiny_base, tmp_path, estimator, step, during, extra=(), sig="SIGINT"):
    """An uninterrupted run in tmp_path/ref; then the same run in tmp_path/run, interrupted (`_interrupted`).
    Returns the interrupted process, its checkpoint and its argv."""
    assert _main(_args(tiny_base, tmp_path / "ref", estimator)) == 0
    argv = _args(tiny_base, tmp_path / "run", estimator) + list(extra)
    return (*_interrupted(argv, step, during, sig), argv)


def _assert_same_outcome(ref: Path, out: Path) -> None:
    """The published policy bit for bit, the per-step meta-losses and every meta-validation of an uninterrupted
    run (val_every 2 of 5 steps: after steps 2, 4 and at the end)."""
    a, b = load_file(ref / "policy" / "model.safetensors"), load_file(out / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert ra["meta_forwards"] == rb["meta_forwards"] > 0
    assert [(r["step"], r["meta_loss"]) for r in ra["history"]] == [(r["step"], r["meta_loss"]) for r in rb["history"]]
    assert [m["step"] for m in rb["meta_validations"]] == [2, 4, 5]
    assert ra["meta_validations"] == rb["meta_validations"]


@pytest.mark.parametrize("estimator, sig", [("lookahead", "SIGINT"), ("es", "SIGINT"),
                                            pytest.param("pes", "SIGINT", marks=pytest.mark.slow),
                                            ("lookahead", "SIGTERM")])
def test_sigint_mid_step_then_resume_publishes_the_uninterrupted_policy(tiny_base, tmp_path, estimator, sig):
    """(Also the CLI's Ctrl-C contract: exit 130, the resume line, nothing exported or published.)
    SIGINT arrives in the middle of meta-step 3 (after its meta-gradient): the step finishes, its checkpoint
    is saved, and the run exits 130 without another step or the meta-validation due after it (val_every 2).
    --resume then ends with a policy bit-identical to an uninterrupted run's, the same per-step meta-losses
    and the same meta-validations (the resumed run does the one it owes first). Each run crosses a reset
    (an episode end) at step 3. A scheduler's SIGTERM does the same (l2o/stop.py), saying so, exit 143."""
    out = tmp_path / "run"
    proc, ckpt, argv = _reference_then_interrupted(tiny_base, tmp_path, estimator, 3, True,
                                                   ["--registry", str(tmp_path / "reg")], sig)
    last = out / "checkpoints" / "last.ckpt"
    how = "interrupted" if sig == "SIGINT" else "stopped by SIGTERM"
    assert proc.stderr.strip().splitlines()[-1] == f"meta_train: {how}; continue with --resume (checkpoint {last})"
    assert "Traceback" not in proc.stderr
    assert not (out / "results.json").exists() and not (tmp_path / "reg").exists()  # nothing exported/published
    assert ckpt["global_step"] == 4  # the interrupted step (number 3) finished; no step after it
    assert [r["step"] for r in ckpt["l2o"]["history"]] == [0, 1, 2, 3]
    assert [m["step"] for m in ckpt["l2o"]["metaval"]] == [2]  # not the one due after the interrupted step
    assert _main(argv + ["--resume"]) == 0
    _assert_same_outcome(tmp_path / "ref", out)
    if estimator != "lookahead":
        _assert_forward_only_run_reports(tmp_path / "ref", estimator)


def _assert_forward_only_run_reports(run: Path, estimator: str) -> None:
    """Issue 23: an ES/PES run logs its estimator's SNR in TensorBoard at every meta-step, and the published
    policy's card names the estimator and the horizon its meta-loss looks through (unroll 2, episodes of 3)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    card = (run / "policy" / "README.md").read_text()
    expected = {"es": ("| estimator | es (antithetic ES over 2-step unrolls of the deployed zo-finetuner, 2 pairs",
                       "| unroll horizon | 2 inner steps (truncated ES from the trajectory's state; episodes of 6"),
                "pes": ("| estimator | pes (Persistent ES (Vicol et al. 2021) over 6-step inner runs of the "
                        "deployed zo-finetuner in 2-step truncations, 2 particles",
                        "| unroll horizon | 6 inner steps (the whole inner run")}
    for field in expected[estimator]:
        assert field in card, (field, card)

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = [e.value for e in acc.Scalars("meta/snr")]
    history = [r["snr"] for r in json.loads((run / "results.json").read_text())["history"]]
    assert len(logged) == len(history) == STEPS and all(map(math.isfinite, history))
    assert logged == pytest.approx(history, rel=1e-6)  # TensorBoard stores float32


def test_sigint_during_a_meta_validation_stops_before_the_next_step_and_resume_redoes_it(tiny_base, tmp_path):
    """SIGINT as the meta-validation due after step 2 starts (val_every 2): it is abandoned before its next ZO
    step, the run saves its checkpoint at step 2 and exits 130 without running step 3 (before, it ran one more
    meta-step first, and the whole meta-validation before that); --resume does that meta-validation first and
    publishes the uninterrupted run's policy, bit for bit."""
    _, ckpt, argv = _reference_then_interrupted(tiny_base, tmp_path, "lookahead", 2, "metaval")
    assert ckpt["global_step"] == 2 and [r["step"] for r in ckpt["l2o"]["history"]] == [0, 1]
    assert ckpt["l2o"]["metaval"] == []  # abandoned, not recorded
    assert _main(argv + ["--resume"]) == 0
    _assert_same_outcome(tmp_path / "ref", tmp_path / "run")


def test_sigint_during_the_final_meta_validation_then_resume_only_validates(tiny_base, tmp_path):
    """SIGINT as the end-of-run meta-validation (after the last step, 5) starts: abandoned, checkpoint at step 5,
    exit 130, nothing exported. Lightning skips the training loop of a run resumed at max_steps; the resumed run
    still does the final meta-validation (on_fit_start) and publishes the uninterrupted run's policy and
    results. (ES: its estimator state is never needed for that.)"""
    _, ckpt, argv = _reference_then_interrupted(tiny_base, tmp_path, "es", STEPS, "metaval")
    assert ckpt["global_step"] == STEPS and [m["step"] for m in ckpt["l2o"]["metaval"]] == [2, 4]
    assert not (tmp_path / "run" / "results.json").exists()
    assert _main(argv + ["--resume"]) == 0
    _assert_same_outcome(tmp_path / "ref", tmp_path / "run")


def test_resume_with_another_save_every_says_so_in_one_line_not_lightnings_warning(tiny_base, tmp_path, capsys):
    """The checkpoint callback's state key names --save_every, so a resume with another one drew Lightning's
    warning that the run's callback was missing; the run now says what changed in one line of its own."""
    import warnings

    argv = _args(tiny_base, tmp_path / "run", "lookahead")
    _interrupted(argv, 2, False)
    argv[argv.index("--save_every") + 1] = "1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _main(argv + ["--resume"]) == 0
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    assert "meta_train: --save_every 1 differs from the run's 100; checkpoints now every 1 steps" in \
        capsys.readouterr().err
