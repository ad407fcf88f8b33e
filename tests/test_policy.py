"""The ZO Fine-tuner policy (l2o.policy) and its deployment optimizers (l2o.optim.zo_finetuner)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from l2o.blocks import named_blocks
from l2o.optim import REGISTRY, build_optimizer
from zoo.learned import load_policy, save_policy
from l2o.policy import (ZOPolicy, effective_sizes, embedding_block_ids, features,
                        normalization_factor, weight_stats)
from tests.helpers import tiny_model
from tests.zo_fixtures import TwoBlock, same_bits, snapshot


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


# every registered composition of the policy with a method (l2o/optim/zo_finetuner.py), the day it is registered
COMPOSED = [n for n in REGISTRY if n.startswith("zo-finetuner")]


def _batch(n=2, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 500, (n, length), generator=g)


def test_policy_shapes_and_batched_forward_match_per_block_mlps():
    names = [f"layer{i}.weight" for i in range(7)]
    pol = ZOPolicy(names, seed=3)
    assert pol.w1.shape == (7, 64, 5) and pol.b1.shape == (7, 64) and pol.w2.shape == (7, 1, 64)
    assert pol.b2.shape == (7, 1)
    assert sum(p.numel() for p in pol.parameters()) == 7 * 449
    x = torch.randn(7, 5)
    sigma = pol(x)
    assert sigma.shape == (7,) and (sigma >= 0).all()
    for b in range(7):  # the same as one nn.Sequential(Linear(5,64), Tanh(), Linear(64,1)) per block, then |.|
        net = nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1))
        with torch.no_grad():
            net[0].weight.copy_(pol.w1[b]); net[0].bias.copy_(pol.b1[b])
            net[2].weight.copy_(pol.w2[b]); net[2].bias.copy_(pol.b2[b])
        torch.testing.assert_close(net(x[b]).abs().squeeze(), sigma[b], rtol=1e-6, atol=1e-6)
    # an untrained policy starts near sigma = 1 (MeZO)
    zero_feats = features(torch.zeros(7, 2), 0.0, 0.0, torch.ones(7))
    assert (pol(zero_feats) - 1).abs().max() < 0.5


def test_features_and_embedding_aware_normalisation():
    model = tiny_model("llama")  # tied embedding / lm_head: one block
    blocks = named_blocks(model)
    params = [p for _, p in blocks]
    emb = embedding_block_ids(model, params)
    assert [blocks[i][0] for i in emb] == ["model.embed_tokens.weight"]

    class Renamed(nn.Module):  # detected by module type, not by name
        def __init__(self):
            super().__init__()
            self.foo = nn.Embedding(100, 8)
            self.bar = nn.Linear(8, 8)

    r = Renamed()
    sizes = effective_sizes(r, [r.foo.weight, r.bar.weight, r.bar.bias], batch_size=2, rule="authors")
    assert sizes.tolist() == [min(800, 8 * 15 * 2), 64, 8]
    assert effective_sizes(r, [r.foo.weight, r.bar.weight, r.bar.bias], batch_size=2).tolist() == [800, 64, 8]

    sizes = effective_sizes(model, params, batch_size=4, rule="authors")
    hidden = model.config.hidden_size
    assert sizes[list(emb)[0]] == min(params[list(emb)[0]].numel(), hidden * 15 * 4)
    sigma = torch.rand(len(params)) + 0.1
    nf = normalization_factor(sigma, sizes)
    # E||nf sigma z||^2 over the effective sizes equals the effective dimension
    torch.testing.assert_close((sizes * (nf.double() * sigma.double()) ** 2).sum(), sizes.sum(), rtol=1e-5, atol=0)

    st = weight_stats(params)
    assert st.shape == (len(params), 2)
    torch.testing.assert_close(st[0, 0], params[0].detach().mean())
    torch.testing.assert_close(st[0, 1], params[0].detach().var())
    x = features(st, 1.5, 2.5, torch.full((len(params),), 0.7))
    assert x.shape == (len(params), 5) and x[:, 2].eq(1.5).all() and x[:, 3].eq(2.5).all()


def test_policy_scales_give_nf_sigma_and_track_losses():
    model = tiny_model("opt")
    pol = ZOPolicy.for_model(model, seed=1)
    opt = build_optimizer("zo-finetuner", model, policy=pol, lr=1e-3, policy_batch_size=2)
    x = _batch()
    opt.step(lambda: model(input_ids=x, labels=x).loss)
    ps = opt.policy_scales
    assert ps.prev_plus == opt.last.losses[0] and ps.prev_minus == opt.last.losses[1]
    assert opt.last.forwards == 2
    scales = ps(opt)
    sizes = effective_sizes(model, [b.param for b in opt.blocks], 2)
    s = torch.tensor(scales, dtype=torch.float64)
    torch.testing.assert_close((sizes * s ** 2).sum(), sizes.sum(), rtol=1e-5, atol=0)
    assert all(p.requires_grad is False for p in ps.policy.parameters())


@pytest.mark.parametrize("name", COMPOSED)
def test_resume_is_bit_identical(name):
    x = _batch()
    closure_of = lambda m: (lambda: m(input_ids=x, labels=x).loss)  # noqa: E731
    pol = ZOPolicy.for_model(tiny_model("opt"), seed=2)
    full = tiny_model("opt")
    opt = build_optimizer(name, full, policy=pol, lr=1e-3, policy_batch_size=2, seed=5)
    for _ in range(6):
        opt.step(closure_of(full))

    part = tiny_model("opt")
    opt = build_optimizer(name, part, policy=pol, lr=1e-3, policy_batch_size=2, seed=5)
    for _ in range(3):
        opt.step(closure_of(part))
    buf = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert "zo_policy" in saved["opt"]
    resumed = tiny_model("opt", seed=9)
    resumed.load_state_dict(saved["model"])
    opt2 = build_optimizer(name, resumed, policy=ZOPolicy.from_tensors(pol.tensors(), pol.config()), lr=1e-3,
                           policy_batch_size=2, seed=0)
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        opt2.step(closure_of(resumed))
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n


class _Linear(nn.Module):
    """L = a . theta + 5: a two-point pair's mean is L(theta) exactly, and a mirrored L- is exact too."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.theta = nn.Parameter(torch.randn(40, generator=g, dtype=torch.float64))
        self.a = torch.randn(40, generator=g, dtype=torch.float64)

    def forward(self):
        return self.a @ self.theta + 5.0


@pytest.mark.parametrize("name,kw", [("zo-finetuner", {"one_sided": True}), ("zo-finetuner+bszo", {"k": 3, "m": 5}),
                                     *((n, {}) for n in COMPOSED)])
def test_policy_features_are_a_two_point_pair_under_every_method(name, kw):
    """The policy learned L+ and L- as MeZO's L(theta +- eps z). Every method hands it that pair along one of
    its directions, so on a linear loss (L+ + L-)/2 = L(theta) and L+ is a loss the step evaluated. Reading
    the last two losses instead gives one-sided MeZO (f0, L+) and BSZO (L(theta + eps z_1), L(theta + eps z_2)),
    whose mean is off by eps times a projected gradient."""
    model = _Linear()
    pol = ZOPolicy(["theta"], seed=3)
    opt = build_optimizer(name, model, policy=pol, lr=1e-3, eps=1e-2, seed=4, **kw)
    for _ in range(3):
        with torch.no_grad():
            start = float(model())
        opt.step(model)
        plus, minus = opt.policy_scales.prev_plus, opt.policy_scales.prev_minus
        assert (plus + minus) / 2 == pytest.approx(start, abs=1e-9), (opt.last.losses, start)
        assert plus in opt.last.losses and abs(plus - minus) > 1e-6


def test_true_sizes_hold_the_effective_step_at_mezos_and_the_authors_rule_does_not():
    """E||d||^2/D = sum n_b (nf sigma_b)^2 / sum n_b: exactly 1 with true sizes whatever sigma; with the
    authors' rule (tied embedding counted as hidden x 15 x batch) a policy that favours the embedding
    takes a bigger step than MeZO at the same lr."""
    model = tiny_model("llama")  # tied embedding / lm_head
    pol = _embedding_heavy_policy(model)
    x = _batch()
    steps = {}
    for rule in ("numel", "authors"):
        opt = build_optimizer("zo-finetuner", model, policy=pol, lr=0.0, policy_batch_size=1, policy_size_rule=rule)
        opt.step(lambda: model(input_ids=x, labels=x).loss)
        steps[rule] = opt.last.effective_step
    assert steps["numel"] == pytest.approx(1.0, rel=1e-6)
    assert steps["authors"] > 1.5
    with pytest.raises(ValueError, match="size rule"):
        build_optimizer("zo-finetuner", model, policy=pol, policy_size_rule="rows")


def _embedding_heavy_policy(model, **kw):
    """A policy whose sigma favours the (tied) embedding: its step depends on the size rule."""
    pol = ZOPolicy.for_model(model, seed=1, **kw)
    emb = embedding_block_ids(model, [p for _, p in named_blocks(model)])
    with torch.no_grad():
        pol.w2.zero_(); pol.b2.fill_(1.0)
        pol.b2[list(emb)[0]] = 5.0
    return pol


def test_an_artefact_carries_its_size_rule_and_deploys_with_it(tmp_path):
    """The rule a policy was meta-trained under travels in its artefact (arch.size_rule) and is the deployment
    default; an explicit rule overrides it; an artefact that records none is refused, not guessed."""
    model = tiny_model("llama")
    x = _batch()

    def effective_step(pol, **kw):
        opt = build_optimizer("zo-finetuner", model, policy=pol, lr=0.0, policy_batch_size=1, **kw)
        opt.step(lambda: model(input_ids=x, labels=x).loss)
        return opt.last.effective_step

    save_policy(_embedding_heavy_policy(model, size_rule="authors"), tmp_path / "pol", card={"license": "mit"})
    assert json.loads((tmp_path / "pol" / "config.json").read_text())["arch"]["size_rule"] == "authors"
    back = load_policy(tmp_path / "pol")
    assert back.size_rule == "authors"
    authors = effective_step(back)
    assert authors == pytest.approx(effective_step(back, policy_size_rule="authors")) and authors > 1.5
    assert effective_step(back, policy_size_rule="numel") == pytest.approx(1.0, rel=1e-6)
    old = ZOPolicy.from_tensors(back.tensors(), {**back.config(), "arch": {
        k: v for k, v in back.config()["arch"].items() if k != "size_rule"}})
    assert old.size_rule is None
    with pytest.raises(ValueError, match="does not record the size rule"):
        build_optimizer("zo-finetuner", model, policy=old)
    assert effective_step(old, policy_size_rule="authors") == pytest.approx(authors)


def test_constant_policy_is_mezo_and_no_policy_is_the_base_method():
    x = _batch()
    a, b, c = tiny_model("opt"), tiny_model("opt"), tiny_model("opt")
    pol = ZOPolicy.for_model(a)
    with torch.no_grad():  # sigma_b = 3 for every block: normalisation brings the scales back to 1
        pol.w2.zero_(); pol.b2.fill_(3.0)
    o1 = build_optimizer("mezo", a, lr=1e-3, seed=1)
    o2 = build_optimizer("zo-finetuner", b, policy=pol, lr=1e-3, seed=1)
    o3 = build_optimizer("zo-finetuner", c, lr=1e-3, seed=1)
    for _ in range(3):
        for m, o in ((a, o1), (b, o2), (c, o3)):
            o.step(lambda: m(input_ids=x, labels=x).loss)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(p, r)


def _fixed_policy(model, sigma: list[float]) -> ZOPolicy:
    """A policy whose sigma_b is `sigma` whatever its features (W2 = 0, b2 = sigma)."""
    pol = ZOPolicy.for_model(model)
    with torch.no_grad():
        pol.w2.zero_()
        pol.b2.copy_(torch.tensor(sigma).view(-1, 1))
    return pol


def _base_of(name: str) -> str:
    """The method a zo-finetuner composition runs with the policy's scales (zo_finetuner.compose's base)."""
    return REGISTRY[name].__bases__[1].method


@pytest.mark.parametrize("name", COMPOSED)
def test_a_block_the_policy_scales_to_zero_never_moves_and_the_others_do(name):
    """Each composition takes the policy's per-block scale into its evaluations and its update: with sigma = 0 for
    the first block that block stays bit-identical over steps that move the rest (a composition that ignored the
    scales, or kept them out of its update or its rule's state, would move it)."""
    model = TwoBlock()
    pol = _fixed_policy(model, [0.0] + [1.0] * (len(list(named_blocks(model))) - 1))
    before = snapshot(model)
    opt = build_optimizer(name, model, policy=pol, lr=1e-2, eps=1e-2, seed=3)
    for _ in range(4):
        opt.step(model)
    after, first = snapshot(model), opt.blocks[0].name
    assert opt.sigma[0] == 0.0 and same_bits({first: before[first]}, {first: after[first]})
    rest = [k for k in before if k != first]
    assert not same_bits({k: before[k] for k in rest}, {k: after[k] for k in rest})


@pytest.mark.parametrize("name", COMPOSED)
def test_a_policy_with_every_scale_one_is_the_base_method_bit_for_bit(name):
    """sigma_b = 1 for every block (nf = 1 exactly): the composition takes the base method's steps, bit for bit."""
    a, b = TwoBlock(), TwoBlock()
    pol = _fixed_policy(a, [1.0] * len(list(named_blocks(a))))
    composed = build_optimizer(name, a, policy=pol, lr=1e-2, eps=1e-2, seed=3)
    base = build_optimizer(_base_of(name), b, lr=1e-2, eps=1e-2, seed=3)
    for _ in range(4):
        composed.step(a)
        base.step(b)
    assert same_bits(snapshot(a), snapshot(b)) and not same_bits(snapshot(a), snapshot(TwoBlock()))


def test_policy_block_mismatch_is_refused():
    pol = ZOPolicy(["nope.weight"])
    with pytest.raises(ValueError, match="no network for 36 of the model's 36"):
        build_optimizer("zo-finetuner", tiny_model("opt"), policy=pol)


def test_policy_artefact_round_trip_and_fingerprint_refusal(tmp_path):
    from l2o.models import fingerprint
    from zoo import ZooError

    model = tiny_model("opt")
    pol = ZOPolicy.for_model(model, base_model="tiny-opt", seed=4)
    save_policy(pol, tmp_path / "pol", card={"license": "mit", "tasks": ["sst2"], "steps": 3})
    cfg = json.loads((tmp_path / "pol" / "config.json").read_text())
    assert cfg["kind"] == "zo-finetuner-policy" and cfg["base_fingerprint"] == fingerprint(model)
    assert cfg["arch"]["block_names"] == [n for n, _ in named_blocks(model)]
    back = load_policy(tmp_path / "pol", expected_fingerprint=fingerprint(model))
    for k, v in pol.tensors().items():
        assert torch.equal(v, back.tensors()[k])
    other = fingerprint(tiny_model("llama"))
    with pytest.raises(ZooError, match=r"made for base 'tiny-opt' .* but the model is 'tiny-llama'"):
        load_policy(tmp_path / "pol", expected_fingerprint=other, model_name="tiny-llama")


def test_converted_released_policy_matches_the_authors_modules(tmp_path):
    from zoo.convert import import_zo_finetuner

    model = tiny_model("llama")
    names = [n for n, _ in named_blocks(model)]
    torch.manual_seed(0)
    nets = {n: nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)) for n in names}
    torch.save(nets, tmp_path / "tiny_finetuner.pth")
    from l2o.models import fingerprint

    art = import_zo_finetuner(tmp_path / "tiny_finetuner.pth", "tiny-llama", tmp_path / "art",
                              fingerprint=fingerprint(model))
    pol = load_policy(art, expected_fingerprint=fingerprint(model))
    x = torch.randn(len(names), 5)
    want = torch.stack([nets[n](x[i]).abs().squeeze() for i, n in enumerate(names)])
    torch.testing.assert_close(pol(x), want, rtol=1e-6, atol=1e-6)


def test_fine_tune_refuses_a_converted_policy_for_another_base(tiny_bases, tmp_path, capsys):
    """A released ZO Fine-tuner file converted for one base is refused by fine_tune on a different base."""
    from fine_tune.cli import main
    from l2o.models import fingerprint
    from zoo.convert import import_zo_finetuner

    llama = tiny_model("llama")
    names = [n for n, _ in named_blocks(llama)]
    torch.save({n: nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)) for n in names},
               tmp_path / "llama_finetuner.pth")
    art = import_zo_finetuner(tmp_path / "llama_finetuner.pth", "tiny-llama", tmp_path / "art",
                              fingerprint=fingerprint(llama))
    sst2 = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "hub" / "sst2")
    common = ["--base", tiny_bases("opt"), "--task", "sst2", "--source", sst2, "--steps", "2", "--batch-size", "4",
              "--num-dev", "2", "--save-model", "false", "--zero-shot", "false"]
    code = main(common + ["--out", str(tmp_path / "r1"), "--optimizer", "zo-finetuner", "--policy", str(art)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and err[0].startswith("fine_tune: error: "), err
    assert "made for base 'tiny-llama'" in err[0] and tiny_bases("opt") in err[0]
    # the `zoo:` shorthand goes through the same check
    assert main(common + ["--out", str(tmp_path / "r2"), "--optimizer", f"zoo:{art}"]) == 2
    assert "made for base 'tiny-llama'" in capsys.readouterr().err
    # and a policy-less zo-finetuner is a one-line configuration error
    assert main(common + ["--out", str(tmp_path / "r3"), "--optimizer", "zo-finetuner"]) == 2
    assert "needs a learned policy" in capsys.readouterr().err


def test_fine_tune_runs_with_a_policy_for_its_base(tiny_bases, tmp_path, capsys):
    from fine_tune.cli import main
    from l2o.models import fingerprint
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_bases("opt"))
    pol = ZOPolicy.for_model(base, base_model="tiny-opt", seed=1, size_rule="authors")
    save_policy(pol, tmp_path / "pol", card={"license": "mit"})
    sst2 = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "hub" / "sst2")
    out = tmp_path / "run"
    code = main(["--base", tiny_bases("opt"), "--task", "sst2", "--source", sst2, "--steps", "4", "--batch-size", "4",
                 "--num-dev", "2", "--save-model", "false", "--zero-shot", "false", "--out", str(out),
                 "--optimizer", "zo-finetuner+gv", "--policy", str(tmp_path / "pol"), "--lr", "1e-3"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["policy"] == str(tmp_path / "pol") and res["forward_passes"] == 6 * 4
    assert fingerprint(base) == res["base"]["fingerprint"]
    assert res["policy_size_rule"] == "authors"  # the artefact's rule, without --policy-size-rule
    # an artefact that records no rule (made before it was recorded): one line naming the flag
    cfg = json.loads((tmp_path / "pol" / "config.json").read_text())
    del cfg["arch"]["size_rule"]
    (tmp_path / "pol" / "config.json").write_text(json.dumps(cfg))
    args = ["--base", tiny_bases("opt"), "--task", "sst2", "--source", sst2, "--steps", "1", "--batch-size", "4",
            "--num-dev", "2", "--save-model", "false", "--zero-shot", "false", "--optimizer", "zo-finetuner",
            "--policy", str(tmp_path / "pol"), "--lr", "1e-3"]
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "old")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "does not record the size rule" in err[0] and "--policy-size-rule" in err[0], err
    assert main(args + ["--out", str(tmp_path / "named"), "--policy-size-rule", "numel"]) == 0


def test_shipped_default_policy_for_smollm2_loads_by_id():
    """zoo/builtin lists the meta-trained SmolLM2-135M policy; it resolves by id and covers every block."""
    import zoo.manifest
    from l2o.models import base_fingerprint

    entries = zoo.manifest.builtin_manifest().entries
    assert "smollm2-135m/zo-finetuner@1" in entries
    fp = entries["smollm2-135m/zo-finetuner@1"]["base_fingerprint"]
    pol = load_policy("smollm2-135m/zo-finetuner@1", expected_fingerprint=fp, model_name="smollm2-135m")
    assert pol.base_model == "smollm2-135m" and pol.base_fingerprint == fp == base_fingerprint("smollm2-135m")
    assert pol.num_blocks == 272 and "model.embed_tokens.weight" in pol.block_names
    assert pol.size_rule == "authors"  # trained (2026-11-23) before "numel" existed: the authors' rule was the only one
    sigma = pol(features(torch.zeros(pol.num_blocks, 2), 0.0, 0.0, torch.ones(pol.num_blocks)))
    assert torch.isfinite(sigma).all() and (sigma >= 0).all()


T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582}  # Student t quantiles, by df


def test_the_panel_policy_ships_beside_the_default_with_its_records_on_its_card():
    """zoo/builtin's smollm2-135m/zo-finetuner-panel@1 is the evidence suite's panel policy. Its card's evaluation
    row (vs the shipped policy on tweets, paired by seed, each at its dev-chosen lr) is recomputed here from the
    committed records (docs/data/evidence/full/runs.jsonl) by a second, plain computation, so a card number that
    the records do not give fails; and the unversioned id still resolves to the default @1."""
    import statistics
    from pathlib import Path

    import zoo.manifest
    from l2o.models import base_fingerprint
    from zoo.resolve import resolve

    entries = zoo.manifest.builtin_manifest().entries
    fp = entries["smollm2-135m/zo-finetuner-panel@1"]["base_fingerprint"]
    pol = load_policy("smollm2-135m/zo-finetuner-panel@1", expected_fingerprint=fp, model_name="smollm2-135m")
    assert fp == base_fingerprint("smollm2-135m") and pol.num_blocks == 272 and pol.size_rule == "numel"
    assert resolve("smollm2-135m/zo-finetuner").entry["id"] == "smollm2-135m/zo-finetuner@1"

    folder = zoo.manifest.builtin_root() / "smollm2-135m" / "zo-finetuner-panel" / "1"
    ev = json.loads((folder / "config.json").read_text())["training"]["evaluation"]
    (row,) = ev["rows"]
    assert row["task"] == "tweet_sentiment" and ev["baseline"] == "smollm2-135m/zo-finetuner@1"

    records = Path(__file__).resolve().parents[1] / "docs" / "data" / "evidence" / "full" / "runs.jsonl"
    runs = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]

    def finals(label):  # seed -> eval accuracy of the runs at the lr the seeds > 0 ran at (the dev-chosen one)
        mine = [r for r in runs if r["label"] == label and r["task"] == "tweet_sentiment"
                and not r["config"]["out"].endswith("probe10")]
        (lr,) = {r["lr"] for r in mine if r["config"]["seed"] > 0}
        return {r["config"]["seed"]: r["final"]["eval"] for r in mine if r["lr"] == lr}

    new, old = finals("zo-finetuner-panel"), finals("zo-finetuner")
    seeds = sorted(set(new) & set(old))
    assert seeds == ev["seeds"] and len(seeds) >= 3
    d = [new[s] - old[s] for s in seeds]
    half = T_975[len(d) - 1] * statistics.stdev(d) / len(d) ** 0.5
    assert row["value"] == pytest.approx(statistics.fmean(new[s] for s in seeds), abs=1e-9)
    assert row["difference"] == pytest.approx(statistics.fmean(d), abs=1e-9)
    assert row["interval"] == pytest.approx([statistics.fmean(d) - half, statistics.fmean(d) + half], abs=1e-5)
    assert row["interval"][0] > 0  # why it ships: better than the default policy on this task
    assert "weak basis" in (folder / "README.md").read_text()


@pytest.mark.parametrize("normalize", [True, False])
def test_deployed_scales_are_nf_sigma_and_the_next_step_sees_sigma(normalize):
    """The scales a step uses are nf sigma_b (sigma alone for a policy that does not normalise), sigma_b the policy's
    MLP at x_b = [mean, var (unbiased), L+, L-, sigma_prev] computed here from the weights, with nf =
    sqrt(sum n_b) / sqrt(sum n_b sigma_b^2); the next step's sigma_prev is sigma itself, not the scale, as in
    meta-training (l2o.estimators.lookahead keeps sigma)."""
    model = tiny_model("opt")
    pol = ZOPolicy.for_model(model, seed=1, normalize=normalize)
    opt = build_optimizer("zo-finetuner", model, policy=pol, lr=1e-3, policy_batch_size=2)
    rows = [pol.block_names.index(b.name) for b in opt.blocks]
    ps = opt.policy_scales
    x = torch.tensor([[float(b.param.detach().mean()), float(b.param.detach().var()), 0.0, 0.0, 1.0]
                      for b in opt.blocks])
    full = torch.zeros(pol.num_blocks, 5)
    full[rows] = x
    with torch.no_grad():
        sigma = pol(full)[rows].double()
    n = torch.tensor([float(b.param.numel()) for b in opt.blocks], dtype=torch.float64)
    nf = float(n.sum().sqrt() / (n * sigma ** 2).sum().sqrt()) if normalize else 1.0
    assert abs(nf - 1) > 1e-3 or not normalize  # the scales are not sigma by chance
    torch.testing.assert_close(torch.tensor(ps(opt), dtype=torch.float64), nf * sigma, rtol=1e-5, atol=0)
    x_ids = _batch()
    opt.step(lambda: model(input_ids=x_ids, labels=x_ids).loss)
    torch.testing.assert_close(ps.prev_sigma.double(), sigma, rtol=1e-5, atol=0)
    assert (ps.prev_plus, ps.prev_minus) == tuple(opt.last.pair)


def test_weight_stats_are_each_blocks_mean_and_unbiased_variance():
    """The features' statistics: each block's mean and unbiased variance (sum (x - mean)^2 / (n - 1), torch's .var()
    as in the authors' code), 0 for a one-element block. On a small block (a bias, a norm's weight) n / (n - 1)
    is far from 1, so a population variance would feed the policy other features than it was trained on."""
    st = weight_stats([torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[2.0, 4.0], [6.0, 8.0]]), torch.tensor([7.0])])
    assert st.dtype == torch.float32
    assert st.reshape(-1).tolist() == pytest.approx([2.5, 5 / 3, 5.0, 20 / 3, 7.0, 0.0], rel=1e-6)
