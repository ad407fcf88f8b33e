"""fine_tune end to end on a tiny OPT and the SST-2 fixture: artefacts, resume equality, errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fine_tune.cli import main
from fine_tune.config import ConfigError, FineTuneConfig
from l2o import catalog

ROOT = Path(__file__).resolve().parents[1]
SST2 = str(ROOT / "tests" / "fixtures" / "hub" / "sst2")


def _args(base, out, *extra):
    return ["--base", base, "--task", "sst2", "--source", SST2, "--out", str(out), "--batch-size", "8",
            "--num-dev", "2", "--eval-batch-size", "8", *extra]


def test_short_fine_tuning_lowers_the_loss_and_writes_its_artefacts(tiny_base, tmp_path, capsys):
    out = tmp_path / "run"
    # batch 8 >= the 6 train examples: every step sees the same batch, so losses are comparable
    assert main(_args(tiny_base, out, "--steps", "40", "--lr", "2e-3", "--eps", "1e-3", "--eval-every", "20")) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "zero-shot" in printed and "TensorBoard" in printed and str(out / "loss.png") in printed
    # stderr is not a terminal here: progress lines instead of a bar, every 40 // 20 = 2 steps
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("step ")]
    assert len(lines) == 20 and lines[-1].startswith("step 40/40, loss ")
    assert "80 forward passes" in lines[-1] and "steps/s" in lines[-1] and "ETA 0 s" in lines[-1]

    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 40 and results["forward_passes"] == 80
    assert set(results["zero_shot"]) == {"dev", "eval"} and set(results["final"]) == {"dev", "eval"}
    assert results["base"]["fingerprint"].startswith("sha256:")
    from l2o.tasks import sample_splits  # the examples it ran on, as bench.harness compares them across records

    sample = sample_splits("sst2", seed=0, num_train=1000, num_dev=2, num_eval=1000, source=SST2)
    assert results["splits"]["fingerprint"] == sample.fingerprint() != \
        sample_splits("sst2", seed=1, num_train=1000, num_dev=2, num_eval=1000, source=SST2).fingerprint()
    assert results["config"]["dtype"] == "auto" and results["base"]["dtype"] == "fp32"  # auto on the CPU: fp32
    assert results["config"]["optimizer"] == "mezo" and results["seeds"] == {"seed": 0, "data_seed": 0}
    assert results["peak_memory_bytes"] > 0 and results["wall_time_s"] > 0

    losses = [r["loss"] for r in json.loads((out / "history.json").read_text())]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < losses[0]
    assert results["final_train_loss"] == sum(losses[-4:]) / 4  # the mean over the last tenth of the steps

    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    saved = json.loads((out / "model" / "base.json").read_text())
    assert saved["fingerprint"] == results["base"]["fingerprint"]
    assert (out / "model" / "model.safetensors").exists() and (out / "tb" / "config.yaml").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/projected_grad", "train/lr", "train/forward_passes", "train/step_time_s",
                "dev/accuracy", "eval/accuracy"):
        assert tag in tags, tag
    assert len(acc.Scalars("train/loss")) == 40


def _trainable(ckpt_path):
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_run_resumes_to_the_same_weights(tiny_base, tmp_path):
    common = ["--steps", "8", "--save-every", "2", "--optimizer", "mezo-gv", "--lr", "1e-3", "--eval-every", "4",
              "--save-model", "false"]
    full = tmp_path / "full"
    assert main(_args(tiny_base, full, *common)) == 0

    killed = tmp_path / "killed"
    code = ("from tests.helpers import run_fine_tune_killed_at; "
            f"run_fine_tune_killed_at(5, {_args(tiny_base, killed, *common)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (killed / "results.json").exists()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    assert main(_args(tiny_base, killed, *common, "--resume")) == 0
    a, b = _trainable(full / "checkpoints" / "last.ckpt"), _trainable(killed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = json.loads((killed / "history.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 9))  # steps completed, as on TensorBoard
    assert json.loads((killed / "results.json").read_text())["forward_passes"] == 8 * 6  # M = 4: 4 + 2
    # zero-shot and step 4's validation were logged before the kill: the resumed run logs neither again
    from tests.test_run_failures import _validations

    assert _validations(killed) == _validations(full)
    assert [s for s, _ in _validations(full)["dev/accuracy"]] == [0, 3, 7]  # zero-shot, after steps 4 and 8


def test_the_final_model_is_the_best_on_dev_checkpoints_not_the_last_steps(tiny_base, tmp_path, monkeypatch):
    """MeZO's selection: the validations after steps 2 and 4 score dev 1.0 and 0.0 (scripted), so the run ends on
    step 2's weights: results name step 2 and the saved model is best.ckpt's, not last.ckpt's."""
    from safetensors.torch import load_file

    from l2o.tasks import objectives

    real, dev_scores = objectives.CandidateCE.evaluate, iter([1.0, 0.0])

    def scripted(self, model, tokenizer, examples, batch_size=16):
        got = real(self, model, tokenizer, examples, batch_size)
        return {**got, "accuracy": next(dev_scores)} if len(examples) == 2 else got  # dev: --num-dev 2

    monkeypatch.setattr(objectives.CandidateCE, "evaluate", scripted)
    out = tmp_path / "best"
    assert main(_args(tiny_base, out, "--steps", "4", "--eval-every", "2", "--lr", "1e-3", "--save-model", "weights",
                      "--zero-shot", "false")) == 0
    assert json.loads((out / "results.json").read_text())["best_step"] == 2
    best, last = _trainable(out / "checkpoints" / "best.ckpt"), _trainable(out / "checkpoints" / "last.ckpt")
    saved = load_file(str(out / "model" / "model.safetensors"))
    names = [k for k in best if k.removeprefix("model.") in saved]
    assert len(names) > 10
    assert all(torch.equal(saved[k.removeprefix("model.")], best[k]) for k in names)
    assert not all(torch.equal(best[k], last[k]) for k in names)


def test_checkpoints_hold_only_the_trainable_tensors(tiny_base, tmp_path):
    out = tmp_path / "lora"
    assert main(_args(tiny_base, out, "--steps", "2", "--peft", "lora", "--lr", "1e-3", "--save-model", "false")) == 0
    keys = set(_trainable(out / "checkpoints" / "last.ckpt"))
    assert keys and all("lora_" in k for k in keys)


def test_non_finite_losses_are_skipped_and_counted(tiny_base, tmp_path, monkeypatch):
    from l2o.tasks import objectives

    calls = {"n": 0}
    real = objectives.CandidateCE.loss

    def flaky(self, model, tokenizer, batch):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] % 3 == 0 else real(self, model, tokenizer, batch)

    monkeypatch.setattr(objectives.CandidateCE, "loss", flaky)
    out = tmp_path / "nan"
    with pytest.warns(UserWarning, match="non-finite loss"):
        assert main(_args(tiny_base, out, "--steps", "6", "--save-model", "false")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["skipped_steps"] >= 2 and results["steps"] == 6
    state = _trainable(out / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("argv,needle", [
    (["--task", "sst2", "--base", "no-such-model-zz"], "no-such-model-zz"),
    (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    (["--task", "sst2", "--optimizer", "adamw"], "unknown optimizer 'adamw'"),
    (["--task", "sst2", "--eps", "0"], "eps must be"),
    (["--task", "sst2", "--lr", "-1"], "lr must be"),
    (["--task", "sst2", "--optimizer", "mezo-gv", "--pool-size", "1"], "pool_size must be"),
    (["--task", "sst2", "--optimizer", "bszo", "--k", "0"], "k must be"),
    (["--task", "sst2", "--pool-size", "4"], "--pool-size does not apply to optimizer 'mezo'"),
    (["--task", "sst2", "--steps", "0"], "--steps must be a positive integer"),
    (["--task", "sst2", "--peft", "bogus"], "invalid choice"),
    (["--task", "sst2", "--steps", "ten"], "invalid int value"),
    (["--base", "x"], "choose a task"),
    (["--config", "/nonexistent/run.yaml"], "cannot read config file"),
    (["--task", "sst2", "--device", "tpu9"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu9'"),
    (["--task", "sst2", "--lr", "1e30"], "--lr 1e+30 is above 1"),
    (["--task", "sst2", "--optimizer", "bilevel-zofo", "--peft", "lora", "--theta-lr", "2"],
     "--theta-lr 2.0 is above 1"),
])
def test_cli_errors_are_one_clear_line(argv, needle, tiny_base, tmp_path, capsys):
    """On the tiny base in one step (a case's own --base or --steps comes later and wins): a check that stopped
    refusing its case fails the test at once, on `rc == 2`, instead of starting a 1000-step run of SmolLM2-135M."""
    with pytest.raises(SystemExit) if "invalid" in needle else _no_raise():
        rc = main(["--base", tiny_base, "--steps", "1", *argv, "--out", str(tmp_path / "o"), "--source", SST2])
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("fine_tune: error:"), err


POLICY = dict(optimizer="zo-finetuner", policy="smollm2-135m/zo-finetuner@1")
BILEVEL = dict(optimizer="bilevel-zofo", peft="lora")


@pytest.mark.parametrize("bad, good, why", [
    (dict(save_every=0), dict(save_every=1), "--save-every must be a positive integer, got 0"),  # not the default
    (dict(BILEVEL, theta_lr=2.0), dict(BILEVEL, theta_lr=1.0), "--theta-lr 2.0 is above 1"),
    (dict(num_dev=-1), dict(num_dev=0), "--num-dev must be an integer >= 0, got -1"),
    (dict(eval_seed=-1), dict(eval_seed=0), "--eval-seed must be an integer >= 0, got -1"),
    (dict(POLICY, policy_size_rule="paper"), dict(POLICY, policy_size_rule="authors"),
     "--policy-size-rule must be numel or authors, got 'paper'"),
], ids=["save-every-0", "theta-lr-2", "num-dev-negative", "eval-seed-negative", "policy-size-rule"])
def test_the_config_refuses_values_before_anything_loads(bad, good, why):
    """`validate` refuses them itself, before any base, task or policy is loaded; the nearest valid values pass."""
    from fine_tune.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(why)):
        FineTuneConfig(task="sst2", **bad).validate()
    FineTuneConfig(task="sst2", **good).validate()


def test_checkpoints_follow_save_every_else_eval_every_else_a_tenth_of_the_steps():
    """The default cadence puts a checkpoint at every validation, so best-on-dev and a resume land on one."""
    assert FineTuneConfig(task="sst2", steps=100, eval_every=5).checkpoint_every() == 5
    assert FineTuneConfig(task="sst2", steps=100, eval_every=5, save_every=3).checkpoint_every() == 3
    assert FineTuneConfig(task="sst2", steps=100).checkpoint_every() == 10
    assert FineTuneConfig(task="sst2", steps=5).checkpoint_every() == 1


def test_unwritable_out_is_refused(tiny_base, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(_args(tiny_base, blocker / "run", "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fine_tune: error: cannot write to --out") and len(err.splitlines()) == 1


def test_existing_run_needs_resume_and_resume_needs_the_same_config(tiny_base, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_base, out, "--steps", "2", "--save-model", "false")) == 0
    assert main(_args(tiny_base, out, "--steps", "2", "--save-model", "false")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(_args(tiny_base, out, "--steps", "2", "--lr", "0.5", "--save-model", "false", "--resume")) == 2
    assert "different configuration (lr)" in capsys.readouterr().err
    assert main(_args(tiny_base, out, "--steps", "4", "--save-model", "false", "--resume")) == 2  # not a longer run
    assert "different configuration (steps)" in capsys.readouterr().err


def test_print_config_merges_yaml_and_flags(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: boolq\noptimizer: mezo-gv\nlr: 2.0e-7\nsteps: 50\n")
    assert main(["--config", str(cfg), "--steps", "70", "--print-config"]) == 0
    import yaml

    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["task"] == "boolq" and shown["steps"] == 70 and shown["lr"] == 2e-7
    assert shown["resolved_optimizer_kwargs"]["pool_size"] == 4


@pytest.mark.parametrize("value, needle", [("[1, 2]", "--lr must be a number, got [1, 2]"),
                                           ("abc", "--lr must be a number, got 'abc'"),
                                           ("true", "--lr must be a number, got True")])
def test_config_values_of_the_wrong_type_are_one_line(value, needle, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"task: sst2\nlr: {value}\n")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fine_tune: error: {needle}" and not (tmp_path / "o").exists()
    cfg.write_text("task: sst2\nlr: 1e-5\n")  # YAML reads 1e-5 as a string; it is the number it spells
    assert main(["--config", str(cfg), "--print-config"]) == 0 and "lr: 1.0e-05" in capsys.readouterr().out


def test_cuda_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--task", "sst2", "--device", "cuda", "--out", str(tmp_path / "o"), "--source", SST2]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fine_tune: error: --device cuda: this machine has no usable CUDA device; use --device cpu or auto"


def test_accelerator_gpu_without_cuda_is_one_line_and_not_a_cpu_run(tmp_path, capsys, monkeypatch):
    """--accelerator gpu used to run on the CPU without a word where CUDA is missing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["--task", "sst2", "--accelerator", "gpu", "--print-config"]) == 2  # validated as a run is
    err = capsys.readouterr().err.strip()
    assert err == ("fine_tune: error: --accelerator gpu: this machine has no usable CUDA device (available: cpu); "
                   "use --accelerator cpu or auto")
    assert main(["--task", "sst2", "--accelerator", "cpu", "--device", "cuda", "--print-config"]) == 2
    assert "--device cuda: this machine has no usable CUDA device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["--task", "sst2", "--accelerator", "gpu", "--device", "cpu", "--print-config"]) == 2
    assert "--accelerator gpu and --device cpu disagree" in capsys.readouterr().err
    from fine_tune.run import resolve_device  # --accelerator cpu keeps a one-process run on the CPU of a GPU machine

    assert resolve_device(FineTuneConfig(task="sst2", accelerator="cpu")) == "cpu"
    assert resolve_device(FineTuneConfig(task="sst2")) == "cuda"


def test_an_accelerator_fine_tune_does_not_run_on_names_what_it_runs_on(tmp_path, capsys, monkeypatch):
    """--accelerator tpu (flag or config file): one line with fine_tune's choices and what this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sst2\naccelerator: tpu\n")
    for argv in (["--task", "sst2", "--accelerator", "tpu"], ["--config", str(cfg)]):
        assert main([*argv, "--print-config"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["fine_tune: error: --accelerator tpu: this command runs on auto, cpu, gpu (this machine has: "
                       "cpu)"], err


def test_a_config_file_that_is_not_yaml_text_is_one_line(tmp_path, capsys):
    """A binary file given as --config (a checkpoint, say) used to end in a UnicodeDecodeError traceback."""
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"\xff\xfe\x00PK")
    assert main(["--config", str(cfg), "--print-config"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fine_tune: error: config file {cfg} is not a YAML text file (it is not UTF-8)"]
    cfg.write_text("task: [sst2\n")
    assert main(["--config", str(cfg), "--print-config"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fine_tune: error: config file {cfg} is not valid YAML (line 2): expected ',' or ']', but got '<stream end>'"]


@pytest.mark.parametrize("damage", ["truncated", "removed"])
def test_a_resume_whose_saved_configuration_is_damaged_is_one_line(tiny_base, tmp_path, capsys, damage):
    """--resume compares the flags with <out>/config.yaml; a damaged one used to end in a yaml traceback, and
    without one the resume went on comparing nothing (a run saves it before its first step)."""
    out = tmp_path / "run"
    assert main(_args(tiny_base, out, "--steps", "1", "--save-model", "false", "--zero-shot", "false")) == 0
    saved = out / "config.yaml"
    if damage == "truncated":
        saved.write_text(saved.read_text()[:40] + "\n: {[")
    else:
        saved.unlink()
    capsys.readouterr()
    assert main(_args(tiny_base, out, "--steps", "2", "--save-model", "false", "--zero-shot", "false",
                      "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fine_tune: error: the run's saved configuration {saved} is not "
                                               "valid YAML (line " if damage == "truncated" else
                                               f"fine_tune: error: cannot read the run's saved configuration {saved}: "
                                               "No such file or directory"), err
    assert err[0].endswith("; --resume cannot check its options without it; restore it, or start the run again in "
                           "another --out"), err


def test_yaml_with_unknown_keys_is_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: boolq\nlearning_rate: 1\n")
    assert main(["--config", str(cfg), "--print-config"]) == 2
    assert "unknown option(s): learning_rate" in capsys.readouterr().err


def test_a_noise_source_outside_the_engines_registry_is_refused_in_one_line(tmp_path, capsys):
    """--noise's choices and the config check come from l2o.noise.SOURCES (through the catalog), also from YAML."""
    from l2o.noise import SOURCES

    assert catalog.noise_sources() == list(SOURCES) == ["gaussian", "table"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sst2\nnoise: pink\n")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--source", SST2]) == 2
    assert capsys.readouterr().err.strip() == "fine_tune: error: --noise must be one of gaussian, table, got 'pink'"


def test_help_imports_no_heavy_library():
    code = ("import sys; from fine_tune.cli import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_default_out_folder_names_the_run():
    assert str(FineTuneConfig(task="boolq", optimizer="bszo", seed=3).resolved_out()) == "runs/boolq-bszo-full-s3"


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_without_a_dev_split_nothing_is_selected_on_the_eval_split(tiny_base, tmp_path):
    out = tmp_path / "nodev"
    argv = ["--base", tiny_base, "--task", "sst2", "--source", SST2, "--out", str(out), "--batch-size", "8",
            "--num-dev", "0", "--steps", "4", "--eval-every", "2", "--save-model", "false"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["best_step"] is None and "dev" not in results["final"]
    assert not (out / "checkpoints" / "best.ckpt").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert "eval/accuracy" in acc.Tags()["scalars"] and "dev/accuracy" not in acc.Tags()["scalars"]


def test_bilevel_zofo_runs_through_the_fine_tune_cli(tiny_base, tmp_path):
    out = tmp_path / "bilevel"
    assert main(_args(tiny_base, out, "--optimizer", "bilevel-zofo", "--peft", "lora", "--steps", "4",
                      "--t-low", "2", "--theta-lr", "1e-4", "--lower-lr", "1e-2")) == 0
    results = json.loads((out / "results.json").read_text())
    # 4 lower steps (1 forward + 1 backward each); 2 upper steps (3 + 3 forwards, 2 backwards each)
    assert results["steps"] == 4 and results["upper_steps"] == 2
    assert results["forward_passes"] == 4 + 2 * 6 and results["backward_passes"] == 4 + 2 * 2
    # both levels moved: the backbone by the ZO steps (delta from the seed ledger), the adapter by Adam
    from safetensors.torch import load_file

    delta = load_file(out / "model" / "backbone_delta.safetensors")
    assert delta and all(torch.isfinite(v).all() for v in delta.values())
    assert sum(float(v.abs().sum()) for v in delta.values()) > 0
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # lora_B starts at zero
    assert json.loads((out / "model" / "base.json").read_text())["method"] == "bilevel-zofo"


def test_bilevel_zofo_refuses_full_parameter_mode(capsys):
    assert main(["--task", "sst2", "--optimizer", "bilevel-zofo", "--peft", "full", "--print-config"]) == 2
    assert "needs --peft lora, prefix or prompt" in capsys.readouterr().err



def test_bilevel_zofo_takes_its_own_prefix_defaults_in_prefix_mode_and_the_official_sweep_elsewhere():
    """Prefix mode: lam 10, both Adam rates 1e-2, theta_lr 1e-6, T_low 10 (the official LoRA sweep's lam 1e4 diverged
    there); LoRA and prompt keep the declared official values; a flag given still wins, the others stay the mode's."""
    official = catalog.defaults("bilevel-zofo")
    assert (official["lam"], official["upper_lr"], official["t_low"]) == (1e4, 1e-7, 30)

    def kwargs(*flags):
        return FineTuneConfig(task="sst2", optimizer="bilevel-zofo", **dict(flags)).optimizer_kwargs()

    prefix = kwargs(("peft", "prefix"))
    assert {k: prefix[k] for k in ("lam", "lower_lr", "upper_lr", "theta_lr", "t_low")} == \
        {"lam": 10.0, "lower_lr": 1e-2, "upper_lr": 1e-2, "theta_lr": 1e-6, "t_low": 10}
    assert prefix["eps"] == official["eps"]  # not named for prefix: the declared one
    for peft in ("lora", "prompt"):
        assert kwargs(("peft", peft)) == official
    mixed = kwargs(("peft", "prefix"), ("lam", 100.0))
    assert mixed["lam"] == 100.0 and mixed["t_low"] == 10
    assert "with --peft prefix: lam 10, lower_lr 0.01" in catalog.listing()


def test_a_held_out_folder_is_refused_and_a_failed_run_removes_what_it_created(tiny_base, tmp_path, capsys,
                                                                              monkeypatch):
    import signal

    from tests.helpers import hold_run_folder

    out = tmp_path / "held"
    holder = hold_run_folder(out)  # another fine_tune is running into `out`
    try:
        assert main(_args(tiny_base, out, "--steps", "2")) == 2
        err = capsys.readouterr().err.strip()
        assert f"--out {out} is in use by process {holder.pid}" in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the refused run's
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    fresh = tmp_path / "new" / "run"  # fails after it claimed --out, before any checkpoint
    claimed = []

    def fails(cfg, task, out, *args):
        claimed.append(out.exists())
        raise ConfigError("a refusal once the run holds --out")

    monkeypatch.setattr("fine_tune.run.prepare", fails)
    assert main(_args(tiny_base, fresh, "--steps", "2")) == 2
    assert "a refusal once the run holds --out" in capsys.readouterr().err and claimed == [True]
    assert not (tmp_path / "new").exists()  # what the failed run created is gone


def test_an_unknown_init_is_refused_before_the_base_and_the_task_data_load(tiny_base, tmp_path, capsys, monkeypatch):
    """--init zoo:a/b@x was refused only once the base and the task's data had loaded (minutes on a large base)."""
    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the --init id was checked")

    monkeypatch.setattr("zoo.acquire.ensure_base", loaded)
    monkeypatch.setattr("zoo.acquire.ensure_task", loaded)
    out = tmp_path / "run"
    assert main(_args(tiny_base, out, "--steps", "2", "--init", "zoo:nobody/nothing@1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fine_tune: error: ") and "nobody/nothing@1" in err[0]
    assert not out.exists()
