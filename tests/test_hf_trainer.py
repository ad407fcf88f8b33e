"""l2o.integrations.hf.ZOTrainer: a zeroth-order drop-in for transformers.Trainer, on a tiny OPT, offline."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from transformers import TrainerCallback

from l2o.integrations.hf import TrainerConfigError, ZOTrainer, check_training_args
from l2o.optim import build_optimizer
from l2o.policy import ZOPolicy
from tests.helpers import tiny_model

SEQ, N_EXAMPLES = 12, 16


class Examples(torch.utils.data.Dataset):
    """Fixed-length token sequences (no padding), labels = input_ids: plain causal LM."""

    def __init__(self, n=N_EXAMPLES, vocab=500, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, SEQ), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.ids[i]}


class Recording(ZOTrainer):
    """Records the micro-batches Trainer feeds and checks that no gradient buffer ever exists (test only)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", []) + [{k: v.clone() for k, v in inputs.items()}]
        modes = []   # every training forward runs without autograd: no activations are kept for a backward
        hook = model.register_forward_hook(lambda *_: modes.append(torch.is_grad_enabled()))
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            hook.remove()
        assert not any(modes) and all(p.grad is None for p in model.parameters())
        self.forwards = getattr(self, "forwards", 0) + len(modes)
        return loss


def make_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, learning_rate=1e-3,
                max_grad_norm=0.0, max_steps=3, logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, seed=7, dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def plain_loop(batches, name="mezo", steps=3, **kw):
    """The same optimizer in an ordinary loop over the same batches, with the same linear LR schedule."""
    from transformers import get_linear_schedule_with_warmup

    model = tiny_model("opt")
    opt = build_optimizer(name, model, lr=1e-3, weight_decay=0.0, seed=7, **kw)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    for batch in batches:
        opt.step(lambda: model(**batch).loss)
        sched.step()
    return model, opt


@pytest.mark.parametrize("name,kw", [("mezo", {"eps": 1e-3}), ("mezo-gv", {"eps": 1e-3, "pool_size": 3})])
def test_trainer_steps_equal_a_plain_loop(tmp_path, name, kw):
    model = tiny_model("opt")
    trainer = Recording(model=model, args=make_args(tmp_path), train_dataset=Examples(), optimizer=name,
                        optimizer_kwargs=kw)
    trainer.train()
    ref_model, ref_opt = plain_loop(trainer.seen, name, **kw)
    assert len(trainer.seen) == 3 and ref_opt.step_count == trainer.zo_optimizer.step_count == 3
    assert_same_bits(weights(model), weights(ref_model))
    assert weights(model)["model.decoder.embed_tokens.weight"].ne(weights(tiny_model("opt"))[
        "model.decoder.embed_tokens.weight"]).any()   # it trained
    assert trainer.zo_optimizer.forward_passes == ref_opt.forward_passes == trainer.forwards
    assert all(p.grad is None for p in model.parameters())
    # the logged loss is the optimizer's own step loss; the LR followed Trainer's linear schedule
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["zo_forward_passes"] for h in logged] == [ref_opt.forward_passes // 3 * t for t in (1, 2, 3)]
    assert logged[-1]["loss"] == pytest.approx(ref_opt.last.loss, rel=1e-6)
    assert logged[-1]["zo_projected_grad"] == pytest.approx(sum(ref_opt.last.projected_grads)
                                                           / len(ref_opt.last.projected_grads), rel=1e-6)
    assert "grad_norm" not in logged[-1]
    assert ref_opt.hp["lr"] == trainer.zo_optimizer.hp["lr"] == 0.0


def test_gradient_accumulation_means_more_examples_per_step(tmp_path):
    """gas=2 x batch 2: one ZO step whose forwards each see 4 examples (2 forwards, not 4), as one batch of 4."""
    model = tiny_model("opt")
    trainer = Recording(model=model, args=make_args(tmp_path, gradient_accumulation_steps=2, max_steps=1),
                        train_dataset=Examples(), optimizer="mezo")
    trainer.train()
    assert len(trainer.seen) == 2 and trainer.zo_optimizer.forward_passes == 2 and trainer.forwards == 4  # 2 x 2
    batch4 = {k: torch.cat([b[k] for b in trainer.seen]) for k in trainer.seen[0]}
    _, ref = plain_loop([batch4], "mezo", steps=1)
    # each loss is a mean of two 2-example means here and one 4-example mean there: they differ by float32
    # rounding (a few units of 1.2e-7 L), which g = (L+ - L-) / (2 eps) magnifies by 1 / eps
    tol = 4 * torch.finfo(torch.float32).eps * abs(ref.last.loss) / ref.hp["eps"]
    assert trainer.zo_optimizer.last.projected_grads == pytest.approx(ref.last.projected_grads, abs=tol)
    assert trainer.zo_optimizer.last.loss == pytest.approx(ref.last.loss, rel=1e-5)


def test_resume_is_bit_identical_and_tensorboard_eval_save_work(tmp_path):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
                     report_to=["tensorboard"])
    full = tiny_model("opt")
    trainer = ZOTrainer(model=full, args=args, train_dataset=Examples(), eval_dataset=Examples(4, seed=1),
                        optimizer="mezo")
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2
    resumed = tiny_model("opt", seed=3)     # other weights: the checkpoint must restore them
    args2 = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "out"))
    trainer2 = ZOTrainer(model=resumed, args=args2, train_dataset=Examples(), optimizer="mezo")
    trainer2.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert_same_bits(weights(full), weights(resumed))
    assert trainer2.zo_optimizer.state["zo"] == trainer.zo_optimizer.state["zo"]
    # TensorBoard got our scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((tmp_path / "out").rglob("events.out.tfevents*"))
    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/zo_forward_passes", "train/zo_projected_grad", "train/loss", "eval/loss"} <= tags
    # save_model writes a model that loads with the trained weights
    from transformers import AutoModelForCausalLM

    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    assert_same_bits(weights(full), weights(loaded))


def test_an_evaluation_before_training_logs_into_the_output_dir(tmp_path, monkeypatch):
    """The zero-shot `evaluate()` before `train()`: Trainer's TensorBoard callback opened its writer in ./runs of the
    working directory then, and the training's logs followed it there, not into `<output_dir>/runs`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    args = make_args(tmp_path, max_steps=2, report_to=["tensorboard"], output_dir=str(tmp_path / "out"))
    trainer = ZOTrainer(model=tiny_model("opt"), args=args, train_dataset=Examples(),
                        eval_dataset=Examples(4, seed=1), optimizer="mezo")
    trainer.evaluate()
    trainer.train()
    assert not (tmp_path / "runs").exists()
    tags = set()
    for ev in (tmp_path / "out" / "runs").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"eval/loss", "train/loss"} <= tags


class SignalAt(TrainerCallback):
    """Sends this process `signals` at the start of step `step` (0-based), or at the end of training (step None)."""

    def __init__(self, step, *signals):
        self.step, self.signals = step, signals

    def send(self):
        import os

        for s in self.signals:
            os.kill(os.getpid(), s)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.send()

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.send()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_the_step_and_the_run_resumes_to_the_uninterrupted_weights(tmp_path, signum, caplog):
    """SIGTERM (a scheduler's preemption) or Ctrl-C in step 3 of 5: the step finishes, checkpoint-3 is saved although
    save_strategy is "no", train() raises KeyboardInterrupt(.signum) and gives the handlers back; train(resume=True)
    ends on the uninterrupted run's weights, bit for bit."""
    from l2o.stop import signum_of

    full = tiny_model("opt")
    ZOTrainer(model=full, args=make_args(tmp_path / "full", max_steps=5), train_dataset=Examples(),
              optimizer="mezo").train()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    model = tiny_model("opt")
    stopped = ZOTrainer(model=model, args=make_args(tmp_path, max_steps=5), train_dataset=Examples(),
                        optimizer="mezo", callbacks=[SignalAt(2, signum)])
    with pytest.raises(KeyboardInterrupt) as err:
        stopped.train()
    assert signum_of(err.value) == signum and stopped.state.global_step == 3
    said = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert f"{said} after step 3: checkpoint {tmp_path / 'out' / 'checkpoint-3'}; continue with" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3"]
    assert {s: signal.getsignal(s) for s in before} == before
    resumed = tiny_model("opt", seed=3)  # other weights: the checkpoint must restore them
    ZOTrainer(model=resumed, args=make_args(tmp_path, max_steps=5), train_dataset=Examples(),
              optimizer="mezo").train(resume_from_checkpoint=True)
    assert_same_bits(weights(full), weights(resumed))


class SignalInEval(TrainerCallback):
    """Sends this process SIGTERM in the first prediction step of the evaluation after step `step` (1-based)."""

    def __init__(self, step):
        self.step, self.sent = step, False

    def on_prediction_step(self, args, state, control, **kwargs):
        import os

        if state.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class Evaluations(TrainerCallback):
    """The steps at which Trainer evaluated (test only)."""

    def __init__(self):
        self.steps = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def evals(log_history):
    return [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]


def test_a_signal_during_an_evaluation_stops_after_it_without_another_step(tmp_path):
    """SIGTERM while Trainer evaluates after step 2 of 4: that evaluation ends, checkpoint-2 is saved with its
    metrics, and no step 3 runs first (a scheduler's grace period is short). The resumed run ends on the
    uninterrupted run's weights and evaluations."""
    kw = dict(max_steps=4, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=1)
    full = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path / "full", **kw), train_dataset=Examples(),
                     eval_dataset=Examples(4, seed=1), optimizer="mezo")
    full.train()
    assert [s for s, _ in evals(full.state.log_history)] == [2, 4]
    stopped = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, **kw), train_dataset=Examples(),
                        eval_dataset=Examples(4, seed=1), optimizer="mezo", callbacks=[SignalInEval(2)])
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    assert stopped.state.global_step == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = ZOTrainer(model=tiny_model("opt", seed=3), args=make_args(tmp_path, **kw), train_dataset=Examples(),
                        eval_dataset=Examples(4, seed=1), optimizer="mezo")
    resumed.train(resume_from_checkpoint=True)
    assert_same_bits(weights(full.model), weights(resumed.model))
    assert evals(resumed.state.log_history) == evals(full.state.log_history)


def test_a_stop_inside_an_epoch_does_not_run_the_epoch_end_evaluation(tmp_path):
    """eval_strategy="epoch", SIGTERM in step 2 of an 8-step epoch: the stop saves step 2 and evaluates nothing
    (the epoch has not ended; the resumed run evaluates when it does)."""
    seen = Evaluations()
    stopped = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=8, eval_strategy="epoch",
                                                                save_strategy="epoch"),
                        train_dataset=Examples(), eval_dataset=Examples(4, seed=1), optimizer="mezo",
                        callbacks=[SignalAt(1, signal.SIGTERM), seen])
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    assert stopped.state.global_step == 2 and seen.steps == []
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=8, eval_strategy="epoch",
                                                                save_strategy="epoch"),
                        train_dataset=Examples(), eval_dataset=Examples(4, seed=1), optimizer="mezo",
                        callbacks=[seen])
    resumed.train(resume_from_checkpoint=True)
    assert seen.steps == [8]


def test_a_signal_after_the_last_step_still_leaves_its_checkpoint_and_a_second_one_stops_at_once(tmp_path):
    trainer = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=2), train_dataset=Examples(),
                        optimizer="mezo", callbacks=[SignalAt(None, signal.SIGTERM)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    twice = ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path / "twice", max_steps=3),
                      train_dataset=Examples(), optimizer="mezo",
                      callbacks=[SignalAt(1, signal.SIGTERM, signal.SIGTERM)])
    with pytest.raises(KeyboardInterrupt):
        twice.train()
    assert twice.state.global_step == 1 and not list((tmp_path / "twice").rglob("checkpoint-*"))


def test_zoo_names_need_a_resolver_and_take_a_policy(tmp_path):
    model = tiny_model("opt")
    with pytest.raises(TrainerConfigError, match="policy_resolver"):
        ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=Examples(), optimizer="zoo:some/policy")
    policy = ZOPolicy.for_model(model, seed=1)
    asked = []
    trainer = ZOTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=Examples(),
                        optimizer="zoo:some/policy", optimizer_kwargs={"eps": 1e-3},
                        policy_resolver=lambda spec, m: asked.append(spec) or policy)
    trainer.train()
    assert asked == ["some/policy"] and trainer.zo_optimizer.method == "zo-finetuner"
    assert trainer.zo_optimizer.sigma is not None and trainer.zo_optimizer.step_count == 2


@pytest.mark.parametrize("change,match", [
    (dict(max_grad_norm=1.0), "max_grad_norm=1.0: gradient clipping"),
    (dict(bf16=True), "mixed precision"),
    (dict(fp16=True), "mixed precision"),
    (dict(deepspeed="ds_config.json"), "DeepSpeed"),
    (dict(fsdp=["full_shard"]), "FSDP"),
    (dict(neftune_noise_alpha=5.0), "NEFTune"),
])
def test_what_does_not_apply_is_refused_in_one_line(tmp_path, change, match):
    args = copy.copy(make_args(tmp_path))
    for k, v in change.items():
        object.__setattr__(args, k, v)
    with pytest.raises(TrainerConfigError, match=match) as err:
        check_training_args(args)
    assert "\n" not in str(err.value)


def test_trainer_defaults_and_bad_choices_are_refused(tmp_path):
    from transformers import TrainingArguments

    model, ds = tiny_model("opt"), Examples()
    with pytest.raises(TrainerConfigError, match="max_grad_norm"):   # Trainer's default clipping, 1.0
        ZOTrainer(model=model, args=TrainingArguments(str(tmp_path / "o"), use_cpu=True, report_to=[]),
                  train_dataset=ds)
    with pytest.raises(TrainerConfigError, match="unknown optimizer 'adam'"):
        ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=ds, optimizer="adam")
    with pytest.raises(TrainerConfigError, match="set learning_rate in TrainingArguments"):
        ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=ds, optimizer_kwargs={"lr": 1e-6})
    with pytest.raises(TrainerConfigError, match="eps must be"):
        ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=ds, optimizer_kwargs={"eps": -1.0})
    with pytest.raises(TrainerConfigError, match="not a zeroth-order optimizer"):
        ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=ds,
                  optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # TRL's own
def test_trl_sft_trainer_takes_zo_steps(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig

    from l2o.integrations.trl import ZOSFTTrainer
    from tests.helpers import tiny_tokenizer

    model, tok = tiny_model("opt"), tiny_tokenizer()
    start = weights(model)
    ds = Dataset.from_dict({"prompt": ["The movie was", "It was okay,", "The film was", "Once upon a"] * 2,
                            "completion": [" great.", " neither good nor bad.", " terrible.", " time."] * 2})
    common = dict(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2,
                  logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, max_length=32)
    with pytest.raises(TrainerConfigError, match="mixed precision"):   # SFTConfig turns bf16 on by default
        ZOSFTTrainer(model=model, args=SFTConfig(**common, max_grad_norm=0), train_dataset=ds, processing_class=tok)
    trainer = ZOSFTTrainer(model=model, args=SFTConfig(**common, max_grad_norm=0, bf16=False), train_dataset=ds,
                           processing_class=tok, optimizer="mezo")
    trainer.train()
    assert trainer.zo_optimizer.forward_passes == 4 and all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(start[k], v) for k, v in weights(model).items())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all("mean_token_accuracy" in h and "zo_forward_passes" in h for h in logged)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["hf", "sft"])
def test_example_runs_on_the_embedded_smollm2(tmp_path, trainer):
    """examples/hf_trainer.py: MeZO and the shipped policy through Trainer / SFTTrainer (2 steps each)."""
    import subprocess
    import sys
    from pathlib import Path

    if trainer == "sft":
        pytest.importorskip("trl")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "examples" / "hf_trainer.py"), "--trainer", trainer, "--steps",
                          "2", "--num-train", "16", "--num-eval", "8", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=root, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines()
            if line.startswith(("| mezo |", "| zoo:smollm2-135m/zo-finetuner |"))]
    assert len(rows) == 2 and all("| 2 | 4 |" in r for r in rows)
    assert (tmp_path / "mezo" / "model.safetensors").is_file()


@pytest.mark.parametrize("placement", [{"offload": "cpu"}, {"device_map": "auto"}], ids=["offload", "device-map"])
def test_a_placed_model_trains_as_the_model_held_normally(placement, tmp_path):
    from l2o.blocks import named_blocks

    runs = []
    for kw in ({}, placement):
        model = tiny_model("opt")
        trainer = ZOTrainer(model=model, args=make_args(tmp_path), train_dataset=Examples(), optimizer="mezo",
                            optimizer_kwargs={"eps": 1e-3}, **kw)
        trainer.train()
        runs.append(({n: p.clone() for n, p in named_blocks(model)},
                     [r["loss"] for r in trainer.state.log_history if "loss" in r]))
    if "offload" in placement:
        assert any(p.device.type == "meta" for p in model.parameters())  # really offloaded
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) == 3
    assert_same_bits(runs[0][0], runs[1][0])


@pytest.mark.slow
def test_the_example_with_an_offloaded_model_reports_the_run_held_normally(tmp_path):
    """examples/hf_trainer.py --offload cpu (ZOTrainer(offload="cpu")): the same eval losses as without."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = []
    for placement in ([], ["--offload", "cpu"]):
        out = subprocess.run([sys.executable, str(root / "examples" / "hf_trainer.py"), "--optimizers", "mezo",
                              "--steps", "2", "--num-train", "16", "--num-eval", "8", "--out",
                              str(tmp_path / str(len(placement))), *placement],
                             capture_output=True, text=True, cwd=root, timeout=1200)
        assert out.returncode == 0, out.stderr[-2000:]
        rows += [line.rsplit("|", 2)[0] for line in out.stdout.splitlines() if line.startswith("| mezo |")]
    assert len(rows) == 2 and rows[0] == rows[1] and "| 2 | 4 |" in rows[0]  # steps, forwards, losses; not time


def test_a_resume_skips_a_checkpoint_whose_save_was_cut_short_and_refuses_it_by_name(tmp_path, caplog):
    """A kill or a full disk during a save leaves a checkpoint-N without its trainer_state.json (Trainer writes it
    last) and with half-written weights. Trainer's resume would take it as the newest and fail (or load the
    half-written weights); ZOTrainer's resumes from the newest complete one, says so in one line, and ends on the
    uninterrupted run's weights. Named explicitly, the cut-short one is refused in one line naming the good one."""
    full = tiny_model("opt")
    ZOTrainer(model=full, args=make_args(tmp_path / "full", max_steps=4), train_dataset=Examples(),
              optimizer="mezo").train()
    ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2),
              train_dataset=Examples(), optimizer="mezo").train()
    out = tmp_path / "out"
    cut = out / "checkpoint-4"
    (cut / "trainer_state.json").unlink()
    weights_file = next(cut.glob("model*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    good = out / "checkpoint-2"
    with pytest.raises(TrainerConfigError, match=f"checkpoint {cut} is incomplete .*resume from {good}, the newest"):
        ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=4), train_dataset=Examples(),
                  optimizer="mezo").train(resume_from_checkpoint=str(cut))
    resumed = tiny_model("opt", seed=3)
    ZOTrainer(model=resumed, args=make_args(tmp_path, max_steps=4), train_dataset=Examples(),
              optimizer="mezo").train(resume_from_checkpoint=True)
    assert f"skipping {cut}: incomplete" in caplog.text and f"resuming from {good}" in caplog.text
    assert_same_bits(weights(full), weights(resumed))
    (good / "trainer_state.json").unlink()
    (cut / "trainer_state.json").write_text('{"global_step": 4, "log_hi')   # cut mid-write
    with pytest.raises(TrainerConfigError, match="no complete checkpoint in .*none of checkpoint-4, checkpoint-2"):
        ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=4), train_dataset=Examples(),
                  optimizer="mezo").train(resume_from_checkpoint=True)
    with pytest.raises(TrainerConfigError, match="incomplete .*no complete checkpoint is beside it, so start afresh"):
        ZOTrainer(model=tiny_model("opt"), args=make_args(tmp_path, max_steps=4), train_dataset=Examples(),
                  optimizer="mezo").train(resume_from_checkpoint=str(cut))


def test_the_example_stopped_by_sigterm_resumes_with_its_flag_to_the_uninterrupted_model(tiny_bases, tmp_path,
                                                                                       monkeypatch, capsys):
    """examples/hf_trainer.py on a tiny base: SIGTERM in step 2 of 4 stops it with the step saved; `--resume`
    continues from it (steps 3 and 4 only) and saves the model an uninterrupted run saves, bit for bit."""
    import importlib.util
    from pathlib import Path

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location(
        "hf_trainer_example", Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--base", tiny_bases("smollm"), "--optimizers", "mezo", "--steps", "4", "--batch-size", "2",
            "--num-train", "8", "--num-eval", "4", "--lr", "1e-3"]
    assert example.main([*argv, "--out", str(tmp_path / "ref")]) == 0
    made = example.trainer_for
    monkeypatch.setattr(example, "trainer_for", lambda *a: (lambda t: t.add_callback(SignalAt(1, signal.SIGTERM))
                                                             or t)(made(*a)))
    with pytest.raises(KeyboardInterrupt):
        example.main([*argv, "--out", str(tmp_path / "run")])
    assert [p.name for p in (tmp_path / "run" / "mezo").glob("checkpoint-*")] == ["checkpoint-2"]
    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    monkeypatch.setattr(example, "trainer_for", lambda *a: (lambda t: t.add_callback(Count()) or t)(made(*a)))
    assert example.main([*argv, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert steps == [3, 4] and "mezo: eval loss" in capsys.readouterr().out  # from the saved step, not afresh
    ref, run = (load_file(tmp_path / d / "mezo" / "model.safetensors") for d in ("ref", "run"))
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)


@pytest.mark.parametrize("argv, said", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),            # ran one step anyway
    (["--num-eval", "0"], "--num-eval must be a positive integer, got 0"),      # KeyError: 'eval_loss'
    (["--base", "/no/such/base"], "no model folder at '/no/such/base' (and it is not a hub id of the form org/name)"),
])
def test_the_example_says_a_user_error_in_one_line(argv, said, tmp_path):
    """examples/hf_trainer.py let every user error (a base, optimizer or zoo id that does not exist, a bad lr) end in
    a traceback; it is one line, exit 2, as the CLIs'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "examples" / "hf_trainer.py"), "--optimizers", "mezo",
                           "--out", str(tmp_path / "out"), *argv], capture_output=True, text=True, cwd=root, env=env,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"hf_trainer: error: {said}"
