"""Meta-training without resident copies: the fused first-order trajectory (bf16 with stochastic rounding),
resets from the model files, meta-validation on the LLM itself with the trajectory parked on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from l2o.engine import Engine
from l2o.models import load_base
from l2o.weights import PretrainedFiles, Trajectory, park, unpark
from tests.helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _lm_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


X = torch.randint(4, 500, (2, 10), generator=torch.Generator().manual_seed(0))


def test_fused_trajectory_is_torch_sgd_momentum_and_never_holds_the_gradient():
    a = tiny_model("llama")
    b = copy.deepcopy(a)
    traj = Trajectory(Engine(a), lr=0.1, momentum=0.8)
    ref = torch.optim.SGD(list(b.parameters()), lr=0.1, momentum=0.8)
    for _ in range(3):
        traj.step(_lm_loss, a, X)
        ref.zero_grad()
        _lm_loss(b, X).backward()
        ref.step()
        assert all(p.grad is None for p in a.parameters())  # consumed block by block in the backward
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert max(float((p - q).detach().abs().max())
               for p, q in zip(a.parameters(), tiny_model("llama").parameters())) > 1e-3


def test_the_trajectory_moves_only_inside_its_steps_and_starts_over_after_a_reset():
    """A backward outside `step` (another loss on the same model) leaves the weights and the gradient to their owner;
    after `reset` (a periodic reset to the pretrained weights) the momentum starts over: the next step is a fresh
    trajectory's first."""
    a = tiny_model("llama", num_hidden_layers=1)
    start = copy.deepcopy(a.state_dict())
    traj = Trajectory(Engine(a), lr=0.1, momentum=0.8)
    _lm_loss(a, X).backward()
    assert all(torch.equal(p, start[n]) and p.grad is not None for n, p in a.named_parameters())
    a.zero_grad(set_to_none=True)
    traj.step(_lm_loss, a, X)
    traj.reset()
    a.load_state_dict(start)
    traj.step(_lm_loss, a, X)
    b = tiny_model("llama", num_hidden_layers=1)
    Trajectory(Engine(b), lr=0.1, momentum=0.8).step(_lm_loss, b, X)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bf16_momentum_step_moves_by_the_fp32_step_in_expectation():
    """A step 40x below bf16's resolution at 1.0: round-to-nearest would not move; stochastic rounding of
    both the weights and the bf16 momentum moves by the fp32 amount on average."""
    lin = torch.nn.Linear(1000, 1000, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    engine = Engine(lin)
    block = engine.blocks[0]
    grad = torch.full((1000, 1000), 1e-4, dtype=torch.bfloat16)
    buf, expected, m = None, 1.0, 0.0
    for step in range(3):
        buf = engine.momentum_step(block, grad, buf, lr=1.0, momentum=0.8, rounding_seed=step)
        m = 0.8 * m + float(grad[0, 0])
        expected -= m
        assert buf.dtype == torch.bfloat16
        assert float(buf.float().mean()) == pytest.approx(m, rel=0.02)
    mean = float(lin.weight.detach().float().mean())
    assert mean == pytest.approx(expected, abs=3e-6) and mean != 1.0


def test_a_bf16_trajectory_resumed_from_its_state_continues_bit_identically():
    """The state (momentum buffers and step count, the stochastic rounding's seeds) and the weights are all a resumed
    bf16 trajectory needs: 1 + 1 steps through a state_dict equal 2 steps straight, bit for bit."""
    def steps(model, traj, n):
        for _ in range(n):
            traj.step(_lm_loss, model, X)

    straight = tiny_model("opt", num_hidden_layers=1).to(torch.bfloat16)
    resumed = copy.deepcopy(straight)
    steps(straight, Trajectory(Engine(straight), lr=0.5, momentum=0.8), 2)
    first = Trajectory(Engine(resumed), lr=0.5, momentum=0.8)
    steps(resumed, first, 1)
    state = copy.deepcopy(first.state_dict())
    first.remove()
    second = Trajectory(Engine(resumed), lr=0.5, momentum=0.8)
    second.load_state_dict(state)
    steps(resumed, second, 1)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_reset_rereads_the_model_files_bit_identically(tiny_llama_base, dtype):
    model, _, info = load_base(tiny_llama_base, dtype=dtype)
    fresh = [p.detach().clone() for p in model.parameters()]
    engine = Engine(model)
    files = PretrainedFiles(info.path, engine)
    assert not files.resident  # every block found in the safetensors files
    Trajectory(engine, lr=0.5, momentum=0.8).step(_lm_loss, model, X)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), fresh))
    files.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh))


def test_reset_finds_files_saved_without_the_base_prefix_and_keeps_a_reshaped_block_resident(tiny_llama_base, tmp_path):
    """Checkpoints name tensors with or without the base prefix (OPT's own files: `decoder.…`, not `model.decoder.…`):
    both are found. A block whose file tensor has another shape (resized embeddings) is not read from the files: it is
    kept resident, with a warning, and a reset still gives every block back."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(tiny_llama_base, tmp_path / "base"))
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    model, _, info = load_base(str(folder))
    assert not PretrainedFiles(info.path, Engine(model)).resident
    model.resize_token_embeddings(model.config.vocab_size + 8)
    fresh = [p.detach().clone() for p in model.parameters()]
    engine = Engine(model)
    with pytest.warns(UserWarning, match=r"1 block\(s\) are not in the safetensors files"):
        files = PretrainedFiles(info.path, engine)
    Trajectory(engine, lr=0.5, momentum=0.8).step(_lm_loss, model, X)
    files.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh))


def test_parked_trajectory_comes_back_bit_identical(tmp_path):
    model = tiny_model("opt").to(torch.bfloat16)
    engine = Engine(model)
    Trajectory(engine, lr=0.5, momentum=0.8).step(_lm_loss, model, X)
    before = [p.detach().clone() for p in model.parameters()]
    park(engine, tmp_path / "theta.bin")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    unpark(engine, tmp_path / "theta.bin")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert (tmp_path / "theta.bin").stat().st_size == sum(b.param.numel() * 2 for b in engine.blocks)


def test_a_snapshot_restores_only_what_was_saved(tmp_path):
    from l2o.weights import Snapshot

    model = tiny_model("opt")
    snap = Snapshot(Engine(model), tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="nothing saved"):
        snap.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    snap.save()
    # the parked weights have no name in the folder: nothing to leave behind however the process ends (a stopped
    # ES run left its base-sized l2o-es-*.bin there)
    assert not list(tmp_path.iterdir())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    snap.close()
    assert not list(tmp_path.iterdir())


def test_meta_validation_runs_on_the_llm_and_gives_the_trajectory_back(tiny_llama_base, isolated):
    # isolated: its own cache, the BIG-bench files extracted from the real cache's sdist (a bare L2O_CACHE
    # downloaded the 358 MB sdist again: 30 of this test's 38 s in CI)
    from meta_train.data import TaskFamilyData
    from meta_train.module import ZOFineTunerMeta

    dm = TaskFamilyData(tasks=["imdb", "piqa"], holdout=["piqa"], batch_size=4, num_train=8,
                        num_eval=4, max_length=32)
    dm.setup()

    class Meta(ZOFineTunerMeta):
        dm = None
        global_step = 0

    module = Meta(base=tiny_llama_base, val_steps=2, val_tasks=1, lr_llm=0.5)
    module.dm = dm
    module.setup()
    module._tb = lambda: None
    assert not hasattr(module, "pretrained") and not hasattr(module, "_scratch")  # no resident copies
    trajectory = module.estimator.trajectory
    trajectory.step(module._loss_fn("imdb"), module.model, dm.batch("imdb", 0))
    theta = [p.detach().clone() for p in module.model.parameters()]
    momentum = {i: m.clone() for i, m in trajectory.buf.items()}
    row = module.meta_validate()
    assert set(row["tasks"]) == {"piqa"} and row["tasks"]["piqa"]["mezo_forwards"] == 4
    assert all(torch.equal(p, q) for p, q in zip(module.model.parameters(), theta))
    assert all(torch.equal(trajectory.buf[i], m) for i, m in momentum.items())
    # both fine-tunings started from the pretrained weights: MeZO's result equals a fresh model's
    from l2o.optim import build_optimizer

    fresh, _, _ = load_base(tiny_llama_base)
    fn = module._loss_fn("piqa")
    opt = build_optimizer("mezo", fresh, lr=module.hparams.val_lr, eps=module.hparams.eps, seed=module.hparams.seed)
    for k in range(2):
        batch = dm.batch("piqa", 10 ** 7 + k)
        opt.step(lambda: fn(fresh, batch))
    assert module._eval_loss(fresh, "piqa") == pytest.approx(row["tasks"]["piqa"]["mezo"], rel=1e-6)


@pytest.mark.slow
def test_es_meta_training_peaks_near_inference_on_smollm2():
    """bench/meta_memory.py on SmolLM2-135M fp32, batch 4 x 48: ES meta-training (3 meta-steps, 2 pairs, unroll 2,
    one meta-validation) against an inference process that imports the same libraries (Lightning, which
    imports torch._dynamo: a floor any meta_train process pays). Each is its own process; peak RSS from the
    kernel. On BIG-bench tasks (which cannot be had offline any more) it measured 1.14x and 1.15x; on the package
    tasks below (one-token answers, as those) 1.14x to 1.19x over 7 runs on two days, against 1.022-1.023 GB
    (docs/meta_train.md): the issue's 1.15x does not hold there, and a process peak varies by about +-0.025 GB
    from run to run. The bound, 1.25x, is what ES costs plus that spread; the look-ahead, which holds a step of
    first-order training, peaks at 2.0x."""
    import json
    import subprocess
    import sys

    def measure(*args):
        proc = subprocess.run([sys.executable, "bench/meta_memory.py", "--repo", str(ROOT), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_gb"]

    tasks = ("--tasks", "boolq,imdb,tweet_sentiment")  # package data (after `make data`), one-token answers
    inference = measure("--what", "inference-libraries", *tasks)
    es = measure("--estimator", "es", *tasks)
    assert es <= 1.25 * inference, (es, inference)
