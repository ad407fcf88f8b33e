"""`fine_tune --offload cpu` and `--device-map auto` on the CPU (the execution device here) against the run
held normally: the same losses, ledger and weights; Ctrl-C and --resume exact; 2 gloo processes with
offloaded models equal to one. And `fine_tune --dry-run`'s memory plan: every alias and mode, the named
commands, and its numbers against a measured peak on a tiny model."""

import json
import subprocess
import sys
import weakref

import pytest
import torch

from fine_tune.cli import main
from tests.test_fine_tune import ROOT, _args, _trainable

COMMON = ["--steps", "4", "--save-every", "2", "--lr", "2e-3", "--eps", "1e-3", "--eval-every", "2",
          "--check-every", "2", "--zero-shot", "false"]
PLACEMENTS = {"offload": ["--offload", "cpu"], "device-map": ["--device-map", "auto"]}


@pytest.fixture(scope="module")
def plain(tiny_base, tmp_path_factory):
    """The run held normally, once; with ledger checkpoints (what --resume replays onto a placed base)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    assert main(_args(tiny_base, out, *COMMON, "--checkpoint", "ledger", "--save-model", "weights")) == 0
    return out


def _updates(folder):
    """The ledger's header and updates (seeds, coefficients), without its seals and hash chain (a resumed run
    seals where it was interrupted)."""
    rows = [json.loads(line) for line in (folder / "ledger.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "h"} for r in rows if "seal" not in r]


def _assert_same_run(got, ref):
    hist = [json.loads((d / "history.json").read_text()) for d in (got, ref)]
    assert [r["loss"] for r in hist[0]] == [r["loss"] for r in hist[1]] and len(hist[0]) == 4
    assert _updates(got) == _updates(ref) and len(_updates(ref)) == 5
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (got, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    res = [json.loads((d / "results.json").read_text()) for d in (got, ref)]
    assert res[0]["final"] == res[1]["final"] and res[0]["best_step"] == res[1]["best_step"] == 2


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_placed_fine_tuning_runs_end_to_end_and_equals_the_plain_run(placement, tiny_base, plain, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_base, out, *COMMON, *PLACEMENTS[placement], "--checkpoint", "ledger",
                      "--save-model", "weights")) == 0
    assert f"placement {' '.join(PLACEMENTS[placement])}:" in capsys.readouterr().err
    _assert_same_run(out, plain)
    where = json.loads((out / "results.json").read_text())["placement"]
    n = json.loads((plain / "results.json").read_text())["trainable_params"]
    assert where[placement.replace("-", "_")] == PLACEMENTS[placement][1] and sum(where["parameters"].values()) == n
    assert json.loads((plain / "results.json").read_text())["placement"] is None


@pytest.mark.parametrize("peft", ["lora", "prefix", "prompt"])
def test_a_peft_mode_placed_trains_as_held_normally(peft, tiny_base, tmp_path):
    """The adapter is added in CPU memory before placing, so it streams with its block (LoRA) or stays with the
    embeddings (prefix, prompt); either way the losses and the trained adapter are the plain run's."""
    runs = {}
    for name, placement in [("plain", []), *PLACEMENTS.items()]:
        out = tmp_path / name
        assert main(_args(tiny_base, out, "--steps", "2", "--eval-every", "0", "--zero-shot", "false", "--peft", peft,
                          "--save-model", "false", *placement)) == 0
        runs[name] = ([r["loss"] for r in json.loads((out / "history.json").read_text())],
                      _trainable(out / "checkpoints" / "last.ckpt"))
    (loss, weights), n = runs.pop("plain"), 0
    for got, trained in runs.values():
        assert got == loss and len(loss) == 2
        assert trained.keys() == weights.keys() and all(torch.equal(trained[k], weights[k]) for k in weights)
        n += sum(t.numel() for t in trained.values())
    assert n > 0


def test_ctrl_c_then_resume_of_an_offloaded_run_is_exact(tiny_base, plain, tmp_path):
    out = tmp_path / "run"
    argv = _args(tiny_base, out, *COMMON, "--offload", "cpu", "--checkpoint", "ledger", "--save-model", "weights")
    code = f"from tests.helpers import run_fine_tune_interrupted_at as f; f(3, {argv!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert main([*argv, "--resume"]) == 0
    _assert_same_run(out, plain)


@pytest.mark.slow  # ~1 min: two processes (the fast suite has the plain 2-process run, tests/test_fine_tune_ddp.py)
def test_two_gloo_processes_with_offloaded_models_equal_one_plain_process(tiny_base, tmp_path):
    from tests.test_fine_tune_ddp import _one_process, _two_processes

    gv = ["--optimizer", "mezo-gv", "--pool-size", "4", "--save-model", "false"]
    _two_processes(tiny_base, tmp_path / "two", *gv, "--offload", "cpu")
    _one_process(tiny_base, tmp_path / "one", *gv)
    two, one = (_trainable(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("two", "one"))
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)
    hist = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("two", "one")]
    assert [r["loss"] for r in hist[0]] == [r["loss"] for r in hist[1]]


def test_placement_flags_are_checked_in_one_sentence(tiny_base, tmp_path, capsys):
    assert main(_args(tiny_base, tmp_path / "a", "--offload", "cpu", "--device-map", "auto")) == 2
    assert "not both" in capsys.readouterr().err
    assert main(_args(tiny_base, tmp_path / "b", "--offload", "cpu", "--optimizer", "bilevel-zofo", "--peft",
                      "lora")) == 2
    assert "takes first-order steps and needs the model resident" in capsys.readouterr().err
    assert main(_args(tiny_base, tmp_path / "d", "--device-map", "auto", "--optimizer", "fo-sgd")) == 2
    assert "takes first-order steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_args(tiny_base, tmp_path / "c", "--offload", "nvme"))
    # sizes of GPUs that nothing would use: refused, not ignored
    assert main(_args(tiny_base, tmp_path / "e", "--offload", "cpu", "--gpus", "2")) == 2
    assert "--gpus 2 is the number of GPUs --device-map spreads the layers over" in capsys.readouterr().err
    assert main(_args(tiny_base, tmp_path / "f", "--offload", "cpu", "--gpu-memory", "24")) == 2
    assert "--gpu-memory 24 budgets each GPU's layers under --device-map" in capsys.readouterr().err
    assert main(_args(tiny_base, tmp_path / "g", "--device-map", "auto", "--gpus", "2", "--device", "cpu")) == 2
    assert "--gpus sizes GPUs, but this process runs on cpu" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "efg")



def test_a_device_map_in_a_process_on_the_cpu_keeps_every_layer_there(monkeypatch):
    """--device cpu (or --accelerator cpu) on a GPU machine: --device-map auto does not spread the layers over
    GPUs the run was not given (accelerate's default budget is every visible GPU)."""
    from fine_tune.config import FineTuneConfig
    from fine_tune.placement import place_model
    from tests.helpers import tiny_model

    import accelerate.utils.modeling as modeling

    real = modeling.get_max_memory  # accelerate's default budget, on a machine with 2 GPUs of 1 GiB free
    monkeypatch.setattr(modeling, "get_max_memory", lambda m=None: real(m) if m else {0: 2 ** 30, 1: 2 ** 30,
                                                                                       "cpu": 2 ** 34})
    model = place_model(FineTuneConfig(task="sst2", device_map="auto"), tiny_model("opt"), "cpu", lambda msg: None)
    assert set(model._l2o_placement["parameters"]) == {"cpu"}

# ------------------------------------------------------------------------- --dry-run: the memory plan
def test_the_plan_covers_every_alias_and_every_mode():
    """Every alias x PEFT mode x placement; the dtypes and device-map kinds taken in turn over the aliases."""
    from fine_tune.config import PEFT_MODES
    from fine_tune.plan import make_plan
    from l2o.memory_plan import BYTES, GiB, count, shapes
    from l2o.placement import DEVICE_MAPS

    seen = set()
    for i, alias in enumerate(shapes()):
        n, _ = count(alias)
        dtype, kind = list(BYTES)[i % len(BYTES)], DEVICE_MAPS[i % len(DEVICE_MAPS)]
        for peft in PEFT_MODES:
            for placement in ({}, {"offload": "cpu"}, {"device_map": kind, "gpus": 2}):
                plan = make_plan(alias, dtype=dtype, peft=peft, batch=4, length=256, **placement, advise=False)
                seen.add((dtype, placement.get("device_map")))
                rows = [r for d in plan.devices for r in d.rows]
                assert all(r[1] >= 0 for r in rows) and plan.params == n
                weights = sum(r[1] for r in rows if r[0] in ("weights", "resident weights", "offloaded weights",
                                                              "spilled weights"))
                adapter = 0 if peft == "full" or placement else plan.trainable * BYTES[dtype]
                buffers = 2 ** 20 if "device_map" in placement else 0  # accelerate's sizes count buffers too
                assert n * BYTES[dtype] + adapter <= weights <= n * BYTES[dtype] + adapter + buffers, \
                    (alias, dtype, peft, placement)
                assert plan.fits == all(d.total <= d.budget for d in plan.devices if d.budget) and not plan.spilled \
                    or not plan.fits
                assert plan.devices[0].budget == 80 * GiB
    assert {d for d, _ in seen} == set(BYTES) and {k for _, k in seen} == {None, *DEVICE_MAPS}


def test_the_named_plans(capsys):
    assert main(["--base", "opt-66b", "--dry-run", "--device-map", "auto", "--dtype", "bf16", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0:" in out and "GPU 1:" in out and "GPU 2:" not in out and "does NOT" not in out
    assert main(["--base", "opt-13b", "--dry-run", "--offload", "cpu", "--dtype", "bf16", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "fits in 24 GiB" in out and "CPU memory:" in out and "streamed blocks" in out
    assert main(["--base", "opt-13b", "--dry-run", "--offload", "cpu", "--dtype", "bf16"]) == 0  # the command
    assert "one GPU needs 12.3 GiB: fits GPUs of 16, 24, " in capsys.readouterr().out
    # the same base held on one 24 GB GPU does not fit, and the plan names what does
    assert main(["--base", "opt-13b", "--dry-run", "--dtype", "bf16", "--gpu-memory", "24"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit; options that fit: --offload cpu" in out and "one GPU needs 34.5 GiB: fits GPUs of 40," in out
    # a device map whose GPUs are filled by the step's other rows stops at one GPU (more would not help)
    assert main(["--base", "opt-1.3b", "--dry-run", "--device-map", "auto", "--gpu-memory", "6"]) == 1
    out = capsys.readouterr().out
    assert "GPU 0:" in out and "GPU 1:" not in out and "options that fit: --batch-size" in out
    assert main(["--base", "no-such-base", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("fine_tune: error: unknown base model 'no-such-base'")


@pytest.mark.parametrize("flag, value", [("--batch-size", "-5"), ("--max-length", "0")])
def test_a_dry_run_refuses_a_batch_or_length_a_run_refuses(flag, value, capsys):
    """A plan of a batch of -5 used to print negative activations and 'fits' (exit 0)."""
    assert main(["--base", "smollm2-135m", "--dry-run", flag, value]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fine_tune: error: {flag} must be a positive integer, got {value}"]


# OPT-125M's tensors by hand from l2o/base_shapes.json (hidden 768, ffn 3072, 12 layers, vocab 50272, 2048
# positions + OPT's offset 2, tied head): (rows, elements) of every matrix; the vectors' elements
H, F, L, V, P = 768, 3072, 12, 50272, 2048 + 2
OPT125_MATRIX_ROWS = V + P + L * (4 * H + F + H)                 # embeddings; q k v out, fc1 (F x H), fc2 (H x F)
OPT125_VECTORS = L * (4 * H + F + H + 2 * 2 * H) + 2 * H         # their biases, 2 layer norms; the final norm
OPT125_PARAMS = V * H + P * H + L * (4 * H * H + 2 * F * H) + OPT125_VECTORS


def test_the_plan_counts_a_stateful_methods_buffers_and_an_over_budget_plan_says_so(capsys):
    """zo-adam keeps m and v: 2 float32 copies of the trainable weights more than mezo, whatever the weights' dtype;
    lozo-m its factored momentum (rows x rank per matrix, a dense copy per vector). Checked by hand on OPT-125M."""
    from fine_tune.plan import make_plan

    assert OPT125_PARAMS == 125_239_296
    for dtype in ("fp32", "bf16"):
        mezo = make_plan("opt-125m", dtype=dtype, optimizer="mezo", advise=False).devices[0]
        adam = make_plan("opt-125m", dtype=dtype, optimizer="zo-adam", advise=False).devices[0]
        assert adam.total - mezo.total == 2 * OPT125_PARAMS * 4 == 1_001_914_368
        assert [r[0] for r in mezo.rows] == [r[0] for r in adam.rows if r[0] != "optimizer state"]
    for rank, extra in ((None, 2), (4, 4)):
        lozo = make_plan("opt-125m", dtype="bf16", optimizer="lozo-m", hparams={"rank": rank}, advise=False)
        assert lozo.devices[0].total - mezo.total == (extra * OPT125_MATRIX_ROWS + OPT125_VECTORS) * 4
    assert (2 * OPT125_MATRIX_ROWS + OPT125_VECTORS) * 4 == 1_567_504  # 1.6 MB: 0.3% of one copy
    for method in ("zo-sgd-mmt", "hizoo", "zo-finetuner+hizoo"):
        one = make_plan("opt-125m", dtype="bf16", optimizer=method, advise=False).devices[0]
        assert one.total - mezo.total == OPT125_PARAMS * 4, method
    # OPT-13B in bf16 fits one 80 GiB GPU under mezo; zo-adam's 2 fp32 copies (96 GiB) do not
    assert main(["--base", "opt-13b", "--dry-run", "--dtype", "bf16"]) == 0
    capsys.readouterr()
    assert main(["--base", "opt-13b", "--dry-run", "--dtype", "bf16", "--optimizer", "zo-adam"]) == 1
    out = capsys.readouterr().out
    assert "optimizer state" in out and "zo-adam: Adam's m and v (2 fp32 copies)" in out and "does NOT fit" in out
    # a device map gives each GPU its share of the state beside its weights: the shares add up to the whole
    plan = make_plan("opt-1.3b", dtype="bf16", optimizer="zo-adam", device_map="auto", gpus=2, advise=False)
    state = [r[1] for d in plan.devices for r in d.rows if r[0] == "optimizer state"]
    assert len(state) == 2 and sum(state) == pytest.approx(2 * 4 * plan.params, rel=1e-3) and plan.fits


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the CPU tensors created while active (storages counted once, freed with their last tensor)."""

    def __init__(self, known):
        super().__init__()
        self.known, self.refs, self.size, self.now, self.peak = set(known), {}, {}, 0, 0

    def _free(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            self.now -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                key = t.untyped_storage().data_ptr()
                if not key or key in self.known:
                    continue
                if key not in self.refs:
                    self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
                    self.now += self.size[key]
                    self.peak = max(self.peak, self.now)
                self.refs[key] += 1
                weakref.finalize(t, self._free, key)
        return out


def _tiny_sdpa_opt(folder):
    """A tiny OPT saved to `folder` and loaded with SDPA attention, its tokenizer, and a batch of 8 x 256 tokens."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import tiny_model, tiny_tokenizer

    model = tiny_model("opt", hidden_size=64, ffn_dim=256, word_embed_proj_dim=64, max_position_embeddings=1024)
    model.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    tok = tiny_tokenizer()
    ids = tok(["The movie was great and the acting was wonderful. " * 30], truncation=True, max_length=256)
    return model, tok, [ids["input_ids"][0]] * 8


@pytest.mark.parametrize("long_answers", [False, True], ids=["classification", "lm"])
def test_the_plan_bounds_a_measured_step_on_a_tiny_model(long_answers, tmp_path):
    """One MeZO step of a tiny OPT (SDPA attention, batch 8 x 256 tokens): the tensors it creates peak below the
    plan's temporaries and activations, and not far below; the weights row is their exact size."""
    from fine_tune.plan import make_plan
    from l2o.memory_plan import RUNTIME_RESERVE
    from l2o.optim import build_optimizer
    from l2o.tasks.objectives import _next_token_logprobs, _score_encoded

    model, tok, seqs = _tiny_sdpa_opt(tmp_path / "base")
    if long_answers:  # every position scored: the lm objective's worst case
        closure = lambda: -_score_encoded(model, tok, seqs, [1] * 8)[0].mean()  # noqa: E731
    else:  # one position per example: a classification objective
        closure = lambda: -_next_token_logprobs(model, tok, seqs)[:, 5].mean()  # noqa: E731
    opt = build_optimizer("mezo", model, lr=1e-3, eps=1e-3)
    mode = _LiveBytes([t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]])
    with mode:
        opt.step(closure)
    plan = make_plan(str(tmp_path / "base"), dtype="fp32", batch=8, length=256, long_answers=long_answers)
    rows = {r[0]: r[1] for r in plan.devices[0].rows}
    assert rows["weights"] == sum(b.param.numel() * 4 for b in opt.blocks)
    planned = plan.devices[0].total - rows["weights"] - RUNTIME_RESERVE
    print(f"measured {mode.peak} B, planned {planned} B")
    assert mode.peak <= planned <= 2.5 * mode.peak, (mode.peak, planned)


# OPT-125M at the plan's defaults (batch 16 x 2048 tokens): bytes a layer saves for a backward per token
# (l2o.memory_plan.layer_bytes_per_token, measured in tests/test_memory_plan.py): 2 layer norms (input, output, float32
# mean and rstd), q k v and the attention output, a float32 log-sum-exp per head (12), SDPA's mask copy (one
# position of L per token), ReLU's output f; the final norm; the logits in the weights' dtype at every position and
# in float32 at one per example (classification)
def opt125_layer_bytes(b: int, length: int = 2048) -> int:
    return (2 * 2 * H + 4 * H + length + F) * b + 2 * 2 * 4 + 12 * 4


def opt125_saved(b: int, batch: int = 16, length: int = 2048) -> int:
    tokens = batch * length
    return L * tokens * opt125_layer_bytes(b, length) + tokens * (2 * H * b + 8) + (tokens * b + batch * 8) * V


OPT125_TOKENS = 16 * 2048


def test_a_first_order_baselines_plan_counts_gradients_state_and_saved_activations(capsys):
    """fo-adamw keeps a gradient and AdamW's two moments per trainable weight, all in the weights' dtype, and the
    activations of every layer for the backward; fo-sgd (no momentum) the gradient only; neither has a ZO
    temporary. By hand on OPT-125M."""
    from fine_tune.plan import make_plan

    for dtype, b in (("fp32", 4), ("bf16", 2)):
        rows = {r[0]: r[1]
                for r in make_plan("opt-125m", dtype=dtype, optimizer="fo-adamw", advise=False).devices[0].rows}
        assert list(rows) == ["weights", "gradients", "optimizer state", "activations", "runtime"]
        assert rows["gradients"] == OPT125_PARAMS * b and rows["optimizer state"] == 2 * OPT125_PARAMS * b
        assert rows["activations"] == opt125_saved(b)
    sgd = {r[0]: r[1] for r in make_plan("opt-125m", optimizer="fo-sgd", peft="lora", advise=False).devices[0].rows}
    assert "optimizer state" not in sgd and sgd["gradients"] == L * 2 * (8 * H + H * 8) * 4  # LoRA r 8 on q, v
    assert L * OPT125_TOKENS * opt125_layer_bytes(4) == 17_741_905_920  # 16.5 GiB: the 4-12x of the ZO papers
    # a backprop run is held on one device: the plan offers no placement for it, and refuses one in a sentence
    assert main(["--base", "opt-1.3b", "--dry-run", "--optimizer", "fo-adamw", "--batch-size", "64"]) == 1
    out = capsys.readouterr().out
    assert "gradients" in out and "fo-adamw: AdamW's exp_avg and exp_avg_sq (2 weight-dtype copies)" in out
    assert "--offload" not in out.split("options")[-1] and "--device-map" not in out.split("options")[-1]
    assert main(["--base", "opt-1.3b", "--dry-run", "--optimizer", "fo-adamw", "--offload", "cpu"]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["fo-sgd", "fo-adamw"])
def test_a_first_order_optimizers_declared_state_is_what_torch_keeps(name, dtype):
    """FO_BUFFERS and GRADIENTS (what the plan counts) equal the tensors a real step leaves: the gradients, and the
    torch optimizer's per-parameter state (its 0-dim 'step' counters left out)."""
    from fine_tune.first_order import FIRST_ORDER, FO_BUFFERS, GRADIENTS, first_order_kwargs
    from l2o.footprint import buffer_bytes
    from tests.helpers import tiny_model

    assert set(FO_BUFFERS) == set(FIRST_ORDER)
    model = tiny_model("opt").to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = FIRST_ORDER[name][0](params, **first_order_kwargs(name, {}))
    model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    opt.step()
    shapes, b = [tuple(p.shape) for p in params], params[0].element_size()
    assert buffer_bytes((GRADIENTS,), shapes, {}, b) == sum(p.grad.numel() * p.grad.element_size() for p in params)
    held = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor) and t.dim())
    assert buffer_bytes(FO_BUFFERS[name], shapes, {}, b) == held


def test_a_first_order_plan_counts_the_adamw_steps_temporary_where_it_exceeds_the_saved_activations():
    """AdamW's step (foreach, torch's default on a GPU) makes one copy of the trainable tensors after the backward
    has freed the activations: at batch 1 x 8 tokens on OPT-125M (fp32) that copy, not the activations, is the row;
    fo-sgd (in place) keeps the activations. By hand."""
    from fine_tune.plan import make_plan

    saved = opt125_saved(4, 1, 8)  # 5,608,256 B: 12 layers, the final norm, the logits
    adamw = {r[0]: r[1] for r in make_plan("opt-125m", dtype="fp32", batch=1, length=8, optimizer="fo-adamw",
                                           advise=False).devices[0].rows}
    assert list(adamw) == ["weights", "gradients", "optimizer state", "optimizer step temporary", "runtime"]
    assert adamw["optimizer step temporary"] == OPT125_PARAMS * 4 == 500_957_184 > saved == 5_608_256
    sgd = {r[0]: r[1] for r in make_plan("opt-125m", dtype="fp32", batch=1, length=8, optimizer="fo-sgd",
                                         advise=False).devices[0].rows}
    assert sgd["activations"] == saved and "optimizer step temporary" not in sgd


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single-tensor"])
@pytest.mark.parametrize("name", ["fo-sgd", "fo-adamw"])
def test_a_first_order_steps_temporary_is_what_torch_makes(name, foreach):
    """FO_STEP_TEMPORARY (what the plan counts for the step): the tensors a second step creates peak at exactly one
    trainable copy for AdamW's foreach path (the GPU's default; the same ops on the CPU), at two to three tensors of
    at most the largest's size for its single-tensor path, and at nothing for SGD without momentum."""
    from fine_tune.first_order import FIRST_ORDER, FO_STEP_TEMPORARY, first_order_kwargs
    from tests.helpers import tiny_model

    assert set(FO_STEP_TEMPORARY) == set(FIRST_ORDER)
    model = tiny_model("opt")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = FIRST_ORDER[name][0](params, **first_order_kwargs(name, {}), foreach=foreach)
    model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    opt.step()  # the first step makes the state; the second makes only the step's temporaries
    held = [*model.parameters(), *model.buffers(), *(p.grad for p in params),
            *(t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor))]
    mode = _LiveBytes([t.untyped_storage().data_ptr() for t in held])  # what in-place ops return is not new
    with mode:
        opt.step()
    copy = sum(p.numel() * p.element_size() for p in params)
    largest = max(p.numel() * p.element_size() for p in params)
    if foreach or name == "fo-sgd":
        assert mode.peak == FO_STEP_TEMPORARY[name] * copy
    else:  # sqrt(v) and its quotient of one tensor, the previous tensor's denominator still bound: <= 3 tensors
        assert 2 * largest <= mode.peak <= 3 * largest and mode.peak <= copy


def test_the_first_order_plan_is_the_order_of_a_measured_backprop_step(tmp_path):
    """One fo-adamw step (forward, backward, AdamW) of a tiny OPT (SDPA, batch 8 x 256 tokens, fp32): the tensors it
    creates (gradients, moments, saved activations) peak within a factor 2 of the plan's gradients + state +
    activations, either way. The per-layer count is measured on layers alone (tests/test_memory_plan.py), not
    fitted here."""
    from fine_tune.first_order import FIRST_ORDER
    from fine_tune.plan import make_plan
    from l2o.memory_plan import RUNTIME_RESERVE
    from l2o.tasks.objectives import _next_token_logprobs

    model, tok, seqs = _tiny_sdpa_opt(tmp_path / "base")
    opt = FIRST_ORDER["fo-adamw"][0]([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mode = _LiveBytes([t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]])
    with mode:
        opt.zero_grad(set_to_none=True)
        loss = -_next_token_logprobs(model, tok, seqs)[:, 5].mean()
        loss.backward()
        del loss
        opt.step()
    plan = make_plan(str(tmp_path / "base"), dtype="fp32", batch=8, length=256, optimizer="fo-adamw")
    rows = {r[0]: r[1] for r in plan.devices[0].rows}
    planned = plan.devices[0].total - rows["weights"] - RUNTIME_RESERVE
    print(f"fo-adamw: measured {mode.peak} B, planned {planned} B (activations {rows['activations']} B), "
          f"ratio {planned / mode.peak:.2f}")
    assert mode.peak / 2 <= planned <= 2 * mode.peak, (mode.peak, planned)


def test_bilevel_zofos_plan_sizes_its_temporaries_from_the_backbone_and_plans_its_backward():
    """Bilevel-ZOFO's engine perturbs the frozen backbone (not the adapter): its temporaries are OPT-125M's largest
    tensor's, the tied embedding (V x H) with its perturbed copy; its first-order steps keep the adapter's
    gradient and the activations saved for a backward. By hand, bf16, LoRA (r 8 on q and v)."""
    from fine_tune.plan import make_plan

    rows = {r[0]: r[1] for r in make_plan("opt-125m", dtype="bf16", peft="lora", optimizer="bilevel-zofo",
                                            advise=False).devices[0].rows}
    assert rows["perturbation/update"] == V * H * (4 + 2 + 2) + V * H * 2 == 386_088_960
    assert rows["adapter gradient"] == L * 2 * (8 * H + H * 8) * 2
    # the base frozen: no layer norm's output (nor the final one's) kept for a weight gradient, but LoRA's A on q
    # and v reads the attention norm's output and B its two rank-8 projections (tests/test_memory_plan.py)
    lora_layer = opt125_layer_bytes(2) - 2 * H * 2 + (H + 2 * 8) * 2
    assert rows["activations"] == (L * OPT125_TOKENS * lora_layer + OPT125_TOKENS * (H * 2 + 8)
                                   + (OPT125_TOKENS * 2 + 16 * 8) * V)
    mezo = {r[0]: r[1] for r in make_plan("opt-125m", dtype="bf16", peft="lora", advise=False).devices[0].rows}
    assert mezo["perturbation/update"] == 8 * H * 8 and mezo["activations"] < rows["activations"] / 3


def test_the_noise_tables_memory_is_a_row_of_the_plan(capsys):
    """--noise table: on the GPU the table (4,194,304 float32 values at its default size) and its signed windows,
    3 x size x 4 B, and the block path's float32 z of the largest tensor (with its float32 copy for bf16 weights);
    in CPU memory under --offload the table itself. By hand on OPT-125M; the 3 x size is what a NoiseTable holds
    after a block-path perturbation."""
    from fine_tune.plan import make_plan
    from l2o.noise import NoiseTable

    size = 1 << 22
    for dtype, per in (("fp32", 4), ("bf16", 8)):
        plain = make_plan("opt-125m", dtype=dtype, advise=False).devices[0]
        table = make_plan("opt-125m", dtype=dtype, noise="table", advise=False).devices[0]
        assert table.total - plain.total == 3 * size * 4 + V * H * per
    host = make_plan("opt-125m", dtype="bf16", noise="table", offload="cpu", advise=False).devices[1]
    assert dict((r[0], r[1]) for r in host.rows)["noise table"] == size * 4
    assert main(["--base", "opt-125m", "--dry-run", "--noise", "table"]) == 0
    assert "noise table" in capsys.readouterr().out
    src = NoiseTable(size=1 << 12, chunk_size=1 << 6, path="block")
    src.axpy(torch.empty(1000), torch.zeros(1000), seed=1, block=0, alpha=1e-3)
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (src._cpu, *src._windows.values())}
    assert sum(held.values()) == 3 * (1 << 12) * 4
