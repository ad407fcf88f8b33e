"""Bilevel-ZOFO: the penalty objective and its gradients, LoRA learning, the engine as the only weight
writer, multi-task estimates, resume, the meta-init artefact, and both Lightning modules (tiny models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from l2o.adapters import backbone_params
from l2o.engine import Direction
from l2o.ledger import ledger_delta
from l2o.meta_init import apply_meta_init
from l2o.noise import derive_seed
from l2o.optim import build_optimizer
from l2o.optim.bilevel_zofo import BilevelZOFO
from l2o.streams import BilevelStreams, split_dg_df
from l2o.peft_modes import apply_peft
from l2o.tasks import Rendered
from l2o.tasks.objectives import CandidateCE
from tests.helpers import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "tests" / "fixtures" / "hub"
EXAMPLES = [Rendered(f"review {i}: the film was {'great fun' if i % 2 else 'dull'}. It was", [" terrible", " great"],
                     i % 2, []) for i in range(12)]
OBJ = CandidateCE(max_length=64)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _method(tok, mode="lora", num_tasks=1, seed=0, **kw):
    model = apply_peft(tiny_model("llama", seed=seed), mode, seed=seed)
    args = dict(lam=3.0, lower_lr=5e-2, upper_lr=1e-2, theta_lr=1e-3, eps=1e-3, t_low=2)
    args.update(kw)
    return build_optimizer("bilevel-zofo", model, num_tasks=num_tasks, **args)


def _backbone(m):
    return [p.detach().clone() for _, p in m.backbone]


def _loss_of(m, tok):
    return lambda task, batch: OBJ.loss(m.model, tok, batch)


def _batches(m, tok, **by_split):
    """closure(split, task) over explicit batches: the same batch for every task."""
    return lambda split, task: OBJ.loss(m.model, tok, by_split[split])


def _run(m, streams, steps, start=0, tok=None):
    tok = tok or tiny_tokenizer()
    for t in range(start, start + steps):
        m.step(streams.losses(t, _loss_of(m, tok)), task=streams.lower_task(t), upper_tasks=streams.upper_tasks(t))


def test_split_is_seeded_2_to_1_and_streams_schedule_upper_steps():
    d_g, d_f = split_dg_df(EXAMPLES, seed=3)
    assert (len(d_g), len(d_f)) == (8, 4) and sorted(e.prompt for e in d_g + d_f) == sorted(e.prompt for e in EXAMPLES)
    assert split_dg_df(EXAMPLES, seed=3) == (d_g, d_f) and split_dg_df(EXAMPLES, seed=4) != (d_g, d_f)
    s = BilevelStreams([(d_g, d_f)] * 3, batch_size=2, t_low=3, tasks_per_step=2, seed=0)
    assert [s.upper_tasks(t) is not None for t in range(6)] == [False, False, True] * 2
    assert len(s.upper_tasks(2)) == 2 and s.lower_task(2) in s.cycle_tasks(0)
    again = BilevelStreams([(d_g, d_f)] * 3, 2, 3, 2, 0)
    assert s.batch(4, "lower", 1) == again.batch(4, "lower", 1)  # a pure function of t
    prompts = lambda xs: {e.prompt for e in xs}  # noqa: E731
    assert s.batch(5, "upper_f", 0) == again.batch(5, "upper_f", 0)
    assert prompts(s.batch(5, "upper_f", 0)) <= prompts(d_f) and prompts(s.batch(5, "upper_g", 0)) <= prompts(d_g)
    assert prompts(s.batch(4, "lower", 0)) <= prompts(d_g)
    from l2o.optim import REGISTRY

    assert REGISTRY["bilevel-zofo"] is BilevelZOFO  # registered like every other method


def test_objective_p_gradient_and_zo_estimate_agree_with_a_direct_computation(tok):
    m = _method(tok, lam=3.0, theta_lr=0.0, one_sided=False, eps=1e-3)
    d_g, d_f = split_dg_df(EXAMPLES, 0)
    bf, bg = d_f[:3], d_g[:4]
    fn = _batches(m, tok, lower=d_g[:4], upper_f=bf, upper_g=bg)
    for _ in range(3):  # make w differ from p so the penalty is not trivially zero
        m.lower_step(fn, 0)
    # direct computation of F and of its pieces with the copies swapped in by hand
    m.slots.install(m.p[0])
    lf = OBJ.loss(m.model, tok, bf)
    lgp = OBJ.loss(m.model, tok, bg)
    gp_direct = torch.autograd.grad(lf + 3.0 * lgp, m.p[0], allow_unused=True)
    m.slots.install(m.w[0])
    with torch.no_grad():
        lgw = OBJ.loss(m.model, tok, bg)
    f_direct = float(lf) + 3.0 * (float(lgp) - float(lgw))
    # directional derivative of F along the step's z, by autograd through the backbone
    for _, p in m.backbone:
        p.requires_grad_(True)
    try:
        m.slots.install(m.p[0])
        f_p = OBJ.loss(m.model, tok, bf) + 3.0 * OBJ.loss(m.model, tok, bg)
        m.slots.install(m.w[0])
        f_w = -3.0 * OBJ.loss(m.model, tok, bg)
        gp_theta = torch.autograd.grad(f_p, [p for _, p in m.backbone], allow_unused=True)
        gw_theta = torch.autograd.grad(f_w, [p for _, p in m.backbone], allow_unused=True)
    finally:
        for _, p in m.backbone:
            p.requires_grad_(False)
    d = Direction.single(derive_seed(m.seed, 0, 0))
    dir_deriv = sum(float(((a if a is not None else 0) + (b if b is not None else 0))
                          .mul(m.engine.direction_tensor(d, blk)).sum())
                    for a, b, blk in zip(gp_theta, gw_theta, m.engine.blocks))
    captured = []
    real_step = m.adapters.step
    m.adapters.step = lambda engine, name, grads, *a: (captured.append(list(grads)), real_step(engine, name, grads, *a))
    res = m.upper_step(fn, [0])
    assert res.objective[0] == pytest.approx(f_direct, rel=1e-6)
    assert res.penalty[0] == pytest.approx(3.0 * (float(lgp) - float(lgw)), rel=1e-5, abs=1e-7)
    assert res.seeds == [d.seeds[0]]
    # the central difference at eps = 1e-3 errs by up to ~6% of a projection's scale |grad F| (measured, seeds
    # 0-3, torch's z and the portable generator's); a projection itself can be near 0 (z nearly orthogonal to
    # the gradient: -0.016 at |grad F| = 3.9 here), so the bound is on that scale. The z of another seed errs
    # by ~|grad F|
    grad_norm = sum(float(((a if a is not None else 0) + (b if b is not None else 0)).square().sum())
                    for a, b in zip(gp_theta, gw_theta)) ** 0.5
    assert abs(res.projected_grads[0] - dir_deriv) <= 0.1 * grad_norm
    for a, b in zip(captured[0], gp_direct):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_adapter_parameters_actually_learn(tok, mode):
    m = _method(tok, mode)
    if mode == "lora":  # peft's init: A Kaiming-uniform, B zero (the official code zeroes both)
        a = [t for n, t in zip(m.slots.names, m.init_copy) if "lora_A" in n]
        b = [t for n, t in zip(m.slots.names, m.init_copy) if "lora_B" in n]
        assert a and all(t.abs().sum() > 0 for t in a) and all(t.abs().sum() == 0 for t in b)
    streams = BilevelStreams([split_dg_df(EXAMPLES, 0)], 4, 2)
    _run(m, streams, 4)
    for copy in (m.p[0], m.w[0]):
        for name, before, now in zip(m.slots.names, m.init_copy, copy):
            assert not torch.equal(before, now.detach()), name
    assert m.counters["upper_steps"] == 2 and m.counters["step"] == 4


def test_backbone_moves_only_by_the_engines_update(tok):
    m = _method(tok)
    streams = BilevelStreams([split_dg_df(EXAMPLES, 0)], 4, 2)
    start = _backbone(m)
    calls = []
    real_update = m.engine.update
    m.engine.update = lambda d, step, decay=0.0, rounding_seed=0, params=None: calls.append((d, step, rounding_seed))
    _run(m, streams, 4)  # 4 lower FO steps, 2 upper steps: 12 ZO evaluations, 4 PEFT backward passes
    assert all(torch.equal(a, b) for a, b in zip(start, _backbone(m)))  # evaluations restored bit-exactly
    assert (len(calls) == 2 and calls[0][0].seeds == (derive_seed(0, 0, 0),)
            and calls[1][0].seeds == (derive_seed(0, 1, 0),))
    assert m.forward_passes == 4 + 2 * 6 and m.backward_passes == 4 + 2 * 2
    # the real update moves theta by -theta_lr * g * z, nothing more
    m.engine.update = real_update
    d, step, rs = calls[1]
    m.engine.update(d, step, rounding_seed=rs)
    for blk, a, b in zip(m.engine.blocks, start, _backbone(m)):
        torch.testing.assert_close(b - a, -step * m.engine.direction_tensor(d, blk), rtol=1e-5, atol=1e-7)


def test_multi_task_estimate_uses_every_task(tok):
    m = _method(tok, num_tasks=3, theta_lr=1e-3)
    pairs = [split_dg_df(EXAMPLES[i:i + 6], 0) for i in (0, 3, 6)]
    start = _backbone(m)
    res = m.upper_step(lambda split, k: OBJ.loss(m.model, tok,
                                                 (pairs[k][1] if split == "upper_f" else pairs[k][0])[:2]),
                       [0, 1, 2])
    assert res.tasks == [0, 1, 2] and len(set(res.seeds)) == 3 and all(g != 0 for g in res.projected_grads)
    total = {blk.index: torch.zeros_like(a) for blk, a in zip(m.engine.blocks, start)}
    for s, g in zip(res.seeds, res.projected_grads):
        for blk in m.engine.blocks:
            total[blk.index] -= 1e-3 * g / 3 * m.engine.direction_tensor(Direction.single(s), blk)
    last_only = [-1e-3 * res.projected_grads[-1] * m.engine.direction_tensor(Direction.single(res.seeds[-1]), blk)
                 for blk in m.engine.blocks]
    for blk, a, b, lo in zip(m.engine.blocks, start, _backbone(m), last_only):
        # b - a is itself rounded to the weights' float32 ulp (~1.2e-7 at |w| ~ 1): allow a few ulps of |a|
        ulps = 4 * torch.finfo(torch.float32).eps * float(a.abs().max())
        torch.testing.assert_close(b - a, total[blk.index], rtol=1e-4, atol=max(1e-7, ulps))
        assert not torch.allclose(b - a, lo, rtol=1e-2, atol=1e-6)
    # every task's upper copy got its own first-order step; the log records all three seeds
    assert all(not torch.equal(p[0].detach(), m.init_copy[0]) or not torch.equal(p[1].detach(), m.init_copy[1])
               for p in m.p)
    assert m.ledger.records[-1]["s"] == res.seeds


def test_state_round_trip_replays_the_backbone_bit_exactly(tok):
    streams = BilevelStreams([split_dg_df(EXAMPLES, 0)], 4, 2)
    a = _method(tok)
    _run(a, streams, 4)
    state = a.state_dict()
    b = _method(tok)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(_backbone(a), _backbone(b)))
    _run(a, streams, 2, start=4)
    _run(b, streams, 2, start=4)
    assert all(torch.equal(x, y) for x, y in zip(_backbone(a), _backbone(b)))
    for ca, cb in zip(a.p + a.w, b.p + b.w):
        assert all(torch.equal(x, y) for x, y in zip(ca, cb))
    with pytest.raises(ValueError, match="cannot resume"):
        a.load_state_dict(state)  # a is past that point: its backbone cannot be rewound


def test_meta_init_round_trips_through_the_zoo_and_is_refused_on_another_base(tok, tmp_path, monkeypatch):
    from l2o.models import fingerprint
    from zoo import ZooError, publish

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    from zoo.learned import load_meta_init, save_meta_init

    m = _method(tok, theta_lr=1e-2)
    _run(m, BilevelStreams([split_dg_df(EXAMPLES, 0)], 4, 2), 4)
    delta = ledger_delta(m.engine, m.ledger)
    assert set(delta) == {n for n, _ in m.backbone}  # names of the plain base model
    art = save_meta_init(tmp_path / "art", delta, "tiny-llama", fingerprint(m.model), {"tasks": ["toy"], "steps": 4})
    card = (art / "README.md").read_text()
    assert "apply_meta_init" in card and "bilevel-meta-init" in card
    entry = publish(art, tmp_path / "reg")
    assert entry["id"] == "tiny-llama/meta-init@1"

    fresh = tiny_model("llama")  # the same base, before any training
    changed = apply_meta_init(fresh, load_meta_init("zoo:tiny-llama/meta-init@1", fresh,
                                                    registry=str(tmp_path / "reg")))
    assert changed == sorted(delta)
    trained = dict(m.backbone)
    for name, p in backbone_params(fresh, exclude=set()):
        torch.testing.assert_close(p, trained[name].detach(), rtol=0, atol=1e-6)
    # also through a PEFT wrapper (names looked through)
    wrapped = apply_peft(tiny_model("llama"), "lora")
    apply_meta_init(wrapped, load_meta_init(str(art), wrapped))
    with pytest.raises(ZooError, match="made for base 'tiny-llama'"):
        load_meta_init(str(art), tiny_model("opt"))
    with pytest.raises(ZooError, match="made for base"):
        load_meta_init(str(art), tiny_model("llama", num_hidden_layers=3))


def test_meta_init_keeps_changes_below_half_an_ulp_in_bf16():
    """Through the engine with stochastic rounding: a change of a quarter ulp survives in expectation
    (rounding to nearest would leave every bf16 weight unchanged)."""
    model = tiny_model("llama").to(torch.bfloat16)
    name, p = backbone_params(model, exclude=set())[0]
    with torch.no_grad():
        p.fill_(1.0)  # bf16 ulp at 1.0 is 2**-7
    delta = 2.0 ** -9  # a quarter ulp
    assert apply_meta_init(model, {name: torch.full(p.shape, delta)}, rounding_seed=3) == [name]
    moved = p.float() - 1.0
    assert set(moved.unique().tolist()) <= {0.0, 2.0 ** -7} and p.numel() > 10_000
    assert float(moved.mean()) == pytest.approx(delta, rel=0.05)
    with pytest.raises(ValueError, match="has shape"):
        apply_meta_init(model, {name: torch.zeros(3)})


def test_bad_hyperparameters_are_one_sentence(tok):
    for kw, needle in ((dict(lam=-1.0), "lam must be"), (dict(eps=0.0), "eps must be"),
                       (dict(t_low=0), "t_low must be"), (dict(theta_clip=-1.0), "theta_clip must be")):
        with pytest.raises(ValueError, match=needle):
            _method(tok, **kw)
    with pytest.raises(ValueError, match="needs a PEFT adapter"):
        model = tiny_model("llama")
        for p in model.parameters():
            p.requires_grad_(False)
        BilevelZOFO(model)
    m = _method(tok)
    with pytest.raises(ValueError, match="needs a closure"):
        m.step()


# ---------------------------------------------------------------------------------------------- Lightning
def _trainer(tmp_path, steps, **kw):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=str(tmp_path), **kw)


def _ft_module(tok):
    from fine_tune.module import ZOFineTuneModule
    from l2o.models import fingerprint
    from l2o.tasks import Splits

    model = apply_peft(tiny_model("llama"), "lora")
    splits = Splits(train=EXAMPLES[:9], dev=EXAMPLES[9:], eval=EXAMPLES[9:], seed=0)
    return ZOFineTuneModule(model, tok, OBJ, splits, "bilevel-zofo", dict(lam=3.0, lower_lr=5e-2, upper_lr=1e-2,
                                                                          theta_lr=1e-3, t_low=2),
                            seed=0, data_seed=0, batch_size=3, eval_batch_size=16, steps=6,
                            fingerprint=fingerprint(model))


def test_fine_tune_module_runs_under_lightning_and_resumes_exactly(tok, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = _ft_module(tok)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), filename="s{step}", every_n_train_steps=3, save_top_k=-1)
    tr = _trainer(tmp_path, 6, callbacks=[ckpt])
    tr.fit(full)
    a = full.optimizers().optimizer
    assert tr.global_step == 6 and a.counters["upper_steps"] == 3 and len(full.history) == 6
    assert [r["upper_steps"] for r in full.history] == [0, 1, 1, 2, 2, 3] and "upper/penalty" in full.history[1]
    saved = torch.load(tmp_path / "ck" / "sstep=3.ckpt", map_location="cpu", weights_only=True)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])  # no backbone tensor
    resumed = _ft_module(tok)
    _trainer(tmp_path / "r", 6).fit(resumed, ckpt_path=str(tmp_path / "ck" / "sstep=3.ckpt"))
    b = resumed.optimizers().optimizer
    assert all(torch.equal(x, y) for x, y in zip(_backbone(a), _backbone(b)))  # the ledger replayed onto the base
    for ca, cb in zip(a.p + a.w, b.p + b.w):
        assert all(torch.equal(x, y) for x, y in zip(ca, cb))
    assert [r["step"] for r in resumed.history] == list(range(1, 7))  # steps done, as every ZO run records
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    out = full.export(tmp_path / "model")
    assert (out / "backbone_delta.safetensors").is_file() and (out / "adapter_model.safetensors").is_file()


def test_bilevel_runs_through_the_one_fine_tune_run_path(tiny_llama_base, tmp_path):
    import dataclasses

    from fine_tune.config import ConfigError, FineTuneConfig
    from fine_tune.run import run

    cfg = FineTuneConfig(base=tiny_llama_base, task="sst2", source=str(HUB / "sst2"), peft="lora", steps=4,
                         batch_size=2, num_dev=2, eval_batch_size=8, out=str(tmp_path / "run"), save_model=False,
                         max_length=64,
                         optimizer="bilevel-zofo", t_low=2, lam=10.0, lower_lr=1e-2, upper_lr=1e-3, theta_lr=1e-4)
    res = run(cfg, log=lambda *a: None)
    assert res["steps"] == 4 and res["upper_steps"] == 2 and res["forward_passes"] == 4 + 2 * 6
    assert res["optimizer_kwargs"]["lam"] == 10.0 and res["splits_dg_df"] == [[4, 2]]  # 8 rows - 2 dev (MeZO), 2:1
    assert set(res["final"]) == {"dev", "eval"} and (tmp_path / "run" / "results.json").is_file()
    with pytest.raises(ConfigError, match="different configuration"):
        run(dataclasses.replace(cfg, resume=True, lam=11.0))
    with pytest.raises(ConfigError, match="needs --peft lora, prefix or prompt"):
        run(dataclasses.replace(cfg, peft="full", out=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="lam must be"):
        run(dataclasses.replace(cfg, lam=-2.0, out=str(tmp_path / "x")))


def test_meta_train_cli_publishes_a_meta_init_and_validates_on_heldout_tasks(tiny_llama_base, tmp_path, monkeypatch,
                                                                            capsys):
    """`meta_train --method bilevel-zofo` end to end: held-out validation reachable from the CLI
    (--model.val_every), the meta-init published by the CLI, and usable on a fresh base."""
    from meta_train.cli import main

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_ZOO_REGISTRY", raising=False)
    out, reg = tmp_path / "out", tmp_path / "reg"
    assert main(["--method", "bilevel-zofo", "--base", tiny_llama_base, "--tasks", "sst2", "rte", "cb", "boolq",
                 "--holdout", "boolq", "--max_steps", "4", "--out", str(out), "--registry", str(reg),
                 "--model.lam", "10", "--model.lower_lr", "1e-2", "--model.upper_lr", "1e-3",
                 "--model.theta_lr", "1e-3",
                 "--model.t_low", "2", "--model.tasks_per_step", "2", "--model.batch_size", "2",
                 "--model.adapt_steps", "2", "--model.val_every", "2", "--data.num_train", "6",
                 "--data.adapt_examples", "2", "--data.num_eval", "2", "--data.max_length", "64",
                 "--data.source_root", str(HUB)]) == 0
    printed = capsys.readouterr().out
    assert "held-out boolq" in printed and "published:   tiny-llama/meta-init@1" in printed
    res = json.loads((out / "results.json").read_text())
    assert set(res["heldout"]) == {"boolq"} and res["heldout"]["boolq"]["base_adapted"] is not None
    held = res["heldout"]["boolq"]
    assert all(0 < held[f"{who}_{f}"] < 10 for who in ("meta", "base") for f in ("zero_shot_loss", "adapted_loss"))
    assert res["published"] == "tiny-llama/meta-init@1" and res["training"]["upper_steps"] == 2
    assert res["training"]["tasks"] == ["sst2", "rte", "cb"]
    assert [row["step"] for row in res["adaptation"]] == [2, 4]  # validation ran every 2 steps
    card = (out / "meta-init" / "README.md").read_text()  # the card says how it was made and how it did
    for field in ("| estimator | Bilevel-ZOFO", "| unroll horizon | 2 |", "| inner optimizer | first-order lora steps, "
                  "lr 0.01 |", "| outer optimizer | ZO-SGD on the backbone, lr 0.001, eps 0.001 |",
                  f"| boolq | {res['heldout']['boolq']['meta_adapted']:.4g} |", "none (one seed)"):
        assert field in card, field
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    from l2o.ledger import Ledger

    ups = [r for r in Ledger.parse(state["optimizer_states"][0]["zo_ledger"], require_seal=False).records
           if "seal" not in r]
    assert len(ups) == 2 and all(len(e["s"]) == 2 for e in ups)  # two tasks per upper step, both used
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("lower/loss", "upper/loss", "upper/penalty", "upper/projected_grad", "heldout/boolq/adapted",
                "heldout/boolq/base_adapted", "heldout/mean_adapted", "heldout/boolq/adapted_loss",
                "heldout/boolq/base_adapted_loss", "heldout/mean_adapted_loss", "heldout/mean_base_adapted_loss"):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("upper/penalty")] == [2, 4]  # upper steps only, as steps completed
    from zoo.learned import load_meta_init

    fresh = tiny_model("llama")
    before = [p.detach().clone() for p in fresh.parameters()]
    assert apply_meta_init(fresh, load_meta_init("tiny-llama/meta-init@1", fresh, registry=str(reg)))
    assert any(not torch.equal(a, b) for a, b in zip(before, fresh.parameters()))


@pytest.mark.parametrize("flag, value, least", [("--model.batch_size", "0", 1),   # a ZeroDivisionError in l2o.streams
                                                 ("--data.max_length", "-3", 1),  # ran
                                                 ("--model.eval_batch_size", "0", 1)])
def test_meta_init_counts_below_their_floor_are_one_line(flag, value, least, tiny_llama_base, tmp_path, capsys):
    from meta_train.cli import main

    out = tmp_path / "run"
    assert main([*_meta_init_argv(tiny_llama_base, out), flag, value]) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("meta_train: error: ")]
    assert err == [f"meta_train: error: {flag} must be an integer >= {least}, got {value}"], err
    assert not out.exists()


def _meta_init_argv(base, out) -> list[str]:
    return ["--method", "bilevel-zofo", "--base", base, "--tasks", "sst2", "rte", "cb", "boolq", "--holdout", "boolq",
            "--max_steps", "6", "--save_every", "2", "--out", str(out), "--model.lam", "10", "--model.lower_lr", "1e-2",
            "--model.upper_lr", "1e-3", "--model.theta_lr", "1e-3", "--model.t_low", "2", "--model.tasks_per_step", "2",
            "--model.batch_size", "2", "--model.adapt_steps", "2", "--model.val_every", "2", "--data.num_train", "6",
            "--data.adapt_examples", "2", "--data.num_eval", "2", "--data.max_length", "64",
            "--data.source_root", str(HUB), "--trainer.accelerator", "cpu", "--registry", str(out) + "-registry"]


def _heldout_rows(out: Path) -> dict:
    """tag -> [(step, value)] of every held-out validation row on TensorBoard (a resumed run's event files too)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if tag.startswith("heldout/")}


@pytest.mark.parametrize("how,step", [("sigint", 2), ("kill", 3), ("sigint", 6)])
def test_meta_train_resumed_does_the_held_out_validations_of_an_uninterrupted_run(tiny_llama_base, tmp_path,
                                                                                 monkeypatch, how, step):
    """--model.val_every 2 of 6 steps, checkpoints every 2: a checkpoint at a validation step is saved at the
    step's end, before its validation. Ctrl-C at step 2 (or 6, the last) stops there; kill -9 in step 3 comes after
    step 2's validation, which the step-2 checkpoint the run resumes from does not hold. The resumed run must do
    each validation the uninterrupted one did, once, at the same step, with the same values, and meta-train the
    same backbone."""
    import subprocess
    import sys

    from meta_train.cli import main

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_ZOO_REGISTRY", raising=False)
    full, run = tmp_path / "full", tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess's reductions
    try:
        assert main(_meta_init_argv(tiny_llama_base, full)) == 0
        helper = "run_meta_train_interrupted_at" if how == "sigint" else "run_meta_train_killed_at"
        code = f"from tests.helpers import {helper} as f; f({step}, {_meta_init_argv(tiny_llama_base, run)!r})"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env=env)
        assert proc.returncode == (130 if how == "sigint" else 137), proc.stderr[-3000:]
        assert not (run / "results.json").exists()
        assert main([*_meta_init_argv(tiny_llama_base, run), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, run))
    assert [r["step"] for r in a["adaptation"]] == [2, 4, 6]
    assert b["adaptation"] == a["adaptation"] and b["heldout"] == a["heldout"]
    rows = _heldout_rows(full)
    assert [s for s, _ in rows["heldout/boolq/adapted"]] == [1, 3, 5]  # Lightning logs at steps completed - 1
    assert _heldout_rows(run) == rows
    x, y = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["zo_ledger"]
            for d in (full, run))
    assert x == y


def test_one_sided_estimate_and_the_clipped_backbone_step_by_hand(tok):
    """The default one-sided estimate is g = [F(theta + eps z) - F(theta)] / eps (not / 2 eps: half the step), F
    evaluated here with z added to the backbone by hand; theta_clip bounds |g| on both sides, so a projection of
    -66 moves the backbone by -theta_lr * (-0.5) z, not by 66 theta_lr z."""
    m = _method(tok, seed=1, lam=3.0, theta_lr=1e-3, one_sided=True, eps=1e-2, theta_clip=0.5)
    d_g, d_f = split_dg_df(EXAMPLES, 0)
    bf, bg = d_f[:3], d_g[:4]
    fn = _batches(m, tok, lower=d_g[:4], upper_f=bf, upper_g=bg)
    for _ in range(3):  # make w differ from p so the penalty is not trivially zero
        m.lower_step(fn, 0)
    z = [m.engine.direction_tensor(Direction.single(derive_seed(m.seed, 0, 0)), b) for b in m.engine.blocks]

    @torch.no_grad()
    def objective():
        m.slots.install(m.p[0])
        lf, lgp = float(OBJ.loss(m.model, tok, bf)), float(OBJ.loss(m.model, tok, bg))
        m.slots.install(m.w[0])
        return lf + 3.0 * (lgp - float(OBJ.loss(m.model, tok, bg)))

    before = [b.param.detach().clone() for b in m.engine.blocks]
    f0 = objective()
    with torch.no_grad():
        for b, zb in zip(m.engine.blocks, z):
            b.param.add_(zb * 1e-2)
    g = (objective() - f0) / 1e-2
    with torch.no_grad():
        for b, x in zip(m.engine.blocks, before):
            b.param.copy_(x)
    res = m.upper_step(fn, [0])
    assert res.projected_grads[0] == pytest.approx(g, rel=1e-4) and g < -0.5
    for b, x, zb in zip(m.engine.blocks, before, z):
        torch.testing.assert_close(b.param.detach(), x + 1e-3 * 0.5 * zb, rtol=0, atol=1e-6)


def test_each_copy_takes_adam_steps_at_its_own_levels_lr(tok):
    """The lower copy w learns at lower_lr and the upper copy p at upper_lr: Adam's first step moves every
    coordinate with a gradient well above adam_eps by lr, so after one lower and one upper step the largest change
    of w is lower_lr (5e-2) and of p upper_lr (1e-2); swapped rates would train the evaluated copy p 5x faster
    than meant."""
    m = _method(tok, theta_lr=0.0, lower_lr=5e-2, upper_lr=1e-2)
    d_g, d_f = split_dg_df(EXAMPLES, 0)
    fn = _batches(m, tok, lower=d_g[:4], upper_f=d_f[:3], upper_g=d_g[4:8])
    w0, p0 = [q.detach().clone() for q in m.w[0]], [q.detach().clone() for q in m.p[0]]
    m.lower_step(fn, 0)
    assert all(torch.equal(a, b) for a, b in zip(p0, m.p[0]))  # the lower step leaves p as it is
    dw = max(float((q.detach() - a).abs().max()) for q, a in zip(m.w[0], w0))
    m.upper_step(fn, [0])
    dp = max(float((q.detach() - a).abs().max()) for q, a in zip(m.p[0], p0))
    assert dw == pytest.approx(5e-2, rel=1e-3) and dp == pytest.approx(1e-2, rel=1e-3)
