"""The contract every registered method keeps, parametrised over `l2o.optim.REGISTRY`: a method is covered
the day it is registered. Method-specific behaviour (the paper's update against a hand computation) lives in
each method's own test file.

    declaration   hyperparameters declared once (help, paper default), catalog and README generated from them
    torch.optim   a real Optimizer: param groups, LR schedulers, closure required, state_dict round trip
    exact restore evaluating never changes the weights (fp32, bf16, fp16): a step at lr 0 is a no-op
    forwards      a step takes the forwards its own evaluation_batches() declare
    descent       an lr exists at which it lowers an ill-conditioned quadratic; its mean step is along -grad
    resume        split + save + load + continue == uninterrupted, bit for bit (fp32, bf16)
    scales        per-block scales (a learned policy's) reach every evaluation and the update
    ledger        replay rebuilds the weights bit-identically, or fine_tune refuses --checkpoint ledger
    distributed   a case of tests/distributed_cases.py runs it on 2 gloo ranks, or fine_tune refuses --devices 2
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2o import catalog
from l2o.ledger import Ledger, replay
from l2o.optim import REGISTRY, build_optimizer, probe
from tests import distributed_cases
from tests.zo_fixtures import Quadratic, TwoBlock, same_bits, snapshot

NAMES = list(REGISTRY)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# for tiny problems only: Bilevel-ZOFO's backbone moves every t_low-th step (30 by default)
TINY = {"bilevel-zofo": dict(t_low=2, lam=1.0)}


class Adapted(nn.Module):
    """`inner`'s weights frozen (the backbone a needs_adapter method moves by ZO) under a trainable adapter
    `a` whose loss term is independent of them: loss = inner() + 0.5 ||a - 1||^2."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.requires_grad_(False)
        self.a = nn.Parameter(torch.zeros(3))

    def forward(self):
        return self.inner() + 0.5 * ((self.a - 1.0) ** 2).sum()


def make(name: str, inner: nn.Module, lr: float | None = None, **kw):
    """(model, optimizer, closure) for `name` on `inner` (TwoBlock or Quadratic); `lr` is the ZO update's
    learning rate, param_groups[0]["lr"] for every method (Bilevel-ZOFO's theta_lr)."""
    cls = REGISTRY[name]
    model = Adapted(inner) if cls.needs_adapter else inner
    opt = build_optimizer(name, model, **{**TINY.get(name, {}), **kw})
    if lr is not None:
        opt.param_groups[0]["lr"] = lr
    if cls.splits:
        return model, opt, lambda split=None, task=0: model()
    return model, opt, model


def loss_of(model) -> float:
    with torch.no_grad():
        return float(model.inner() if isinstance(model, Adapted) else model())


def zo_weights(model) -> dict:
    """The weights the ZO part moves (the backbone under an adapter)."""
    return snapshot(model.inner if isinstance(model, Adapted) else model)


# ------------------------------------------------------------------------------------------ declaration
@pytest.mark.parametrize("name", NAMES)
def test_the_declaration_is_complete_and_a_class_built_directly_has_its_defaults(name):
    """`MeZOGV(model)` is what a researcher writes: it must be the registered method at the declared defaults
    (GV at M = 2 is MeZO)."""
    cls = REGISTRY[name]
    assert cls.method == name and cls.paper and cls.summary
    for hp in cls.declared().values():
        assert hp.help and hp.paper, (name, hp.name)
        assert hp.accepts(hp.default), (name, hp.name)
    model = Adapted(TwoBlock()) if cls.needs_adapter else TwoBlock()
    opt = cls(model)
    for hp_name, default in cls.defaults().items():
        if hp_name in opt.hp and default is not None and not isinstance(default, str):
            assert opt.hp[hp_name] == default, (name, hp_name, opt.hp[hp_name], default)


def test_catalog_and_readme_table_are_generated_from_the_declarations():
    """l2o/optim/catalog.json (what the CLIs read) and the README's table equal what the classes declare now
    (`python -m l2o.catalog` rewrites both)."""
    assert catalog.stale() == []
    assert set(catalog.method_names()) == set(REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_hyperparameter_is_a_fine_tune_flag_and_bad_values_are_refused(name):
    from fine_tune.cli import build_parser, resolve_config
    from l2o.errors import ConfigError

    cls = REGISTRY[name]
    flags = build_parser()._option_string_actions
    for hp in cls.declared().values():
        assert f"--{hp.name.replace('_', '-')}" in flags, hp.name
    run = ["--task", "sst2", "--optimizer", name, *(["--peft", "lora"] if cls.needs_adapter else []),
           *(["--policy", "some/policy"] if name.startswith("zo-finetuner") else [])]
    numeric = [hp for hp in cls.declared().values() if hp.types[0] in (int, float) and hp.low is not None]
    for hp in numeric:
        bad = str(hp.low - 1)
        args = build_parser().parse_args([*run, f"--{hp.name.replace('_', '-')}", bad])
        cfg = resolve_config(args)
        with pytest.raises(ConfigError, match=hp.name):
            cfg.validate()


def test_list_optimizers_names_every_method_with_its_paper_and_defaults(capsys):
    from fine_tune.cli import main

    assert main(["--list-optimizers"]) == 0
    out = "\n" + capsys.readouterr().out
    for name, cls in REGISTRY.items():
        assert f"\n{name}  ({cls.paper}; " in out, name


# ------------------------------------------------------------------------------------------ declared buffers
def held_bytes(opt, model) -> int:
    """Bytes of the tensors an optimizer holds (reachable from its attributes, storages counted once), less the
    model's own parameters and buffers: its state between steps."""
    own = {id(t) for t in (*model.parameters(), *model.buffers())}
    seen, storages, todo = set(), {}, [opt]
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            if id(o) not in own:
                storages[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, nn.Module) and o is not opt:
            continue  # the model, a policy: not the method's state
        elif isinstance(o, dict):
            todo += [*o.keys(), *o.values()]
        elif isinstance(o, (list, tuple, set)):
            todo += list(o)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            todo += list(vars(o).values())
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_the_declared_buffers_are_the_bytes_the_optimizer_holds(name, dtype):
    """The class's `buffers` (what the --dry-run plans count, through the catalog) equal the bytes of the tensors
    the optimizer holds after its steps (Bilevel-ZOFO's upper level every t_low = 2: two steps), over the
    tensors it trains: a matrix, vectors, a 1 x 16 row (LOZO-M: rows x rank)."""
    model, opt, closure = make(name, TwoBlock(dtype))
    for _ in range(2):
        opt.step(closure)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, size = [tuple(p.shape) for p in params], params[0].element_size()  # (Bilevel-ZOFO's adapter: fp32)
    declared = REGISTRY[name].buffer_bytes(trainable, size, **TINY.get(name, {}))
    assert declared == held_bytes(opt, model)
    from l2o.memory_plan import method_buffers  # the plans' reading of the catalog agrees
    assert method_buffers(name, trainable, size, TINY.get(name))[0] == declared
    if REGISTRY[name].buffers:
        assert declared > 0


# ------------------------------------------------------------------------------------------ torch.optim
@pytest.mark.parametrize("name", NAMES)
def test_torch_optim_api(name):
    model, opt, closure = make(name, TwoBlock(), eps=1e-2)
    assert isinstance(opt, torch.optim.Optimizer)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    opt.step(closure)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 2)
    opt.zero_grad()
    _, fresh, _ = make(name, TwoBlock(), eps=1e-2)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.step_count == opt.step_count == 1


# ------------------------------------------------------------------------------------------ exact restore
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_evaluations_leave_the_weights_bit_identical(name, dtype):
    """At lr 0 a whole step (every evaluation it makes) leaves every weight as it was; at lr > 0 it moves them,
    so the comparison can fail."""
    model, opt, closure = make(name, TwoBlock(dtype=dtype), lr=0.0, eps=1e-2)
    before = zo_weights(model)
    for _ in range(2):
        opt.step(closure)
    assert opt.forward_passes > 0
    assert same_bits(before, zo_weights(model))
    opt.param_groups[0]["lr"] = 1e-2
    for _ in range(2):
        opt.step(closure)
    assert not same_bits(before, zo_weights(model))


@pytest.mark.parametrize("name", NAMES)
def test_a_step_takes_the_forwards_its_evaluation_batches_declare(name):
    model, opt, closure = make(name, TwoBlock())
    steps = 2 * opt.hp.get("t_low", 1)
    for _ in range(steps):
        opt.step(closure)
    assert opt.forward_passes == pytest.approx(steps * opt.forwards_per_step())
    if not REGISTRY[name].splits:
        assert opt.last.forwards == sum(opt.evaluation_batches()) == opt.forwards_per_step()


# ------------------------------------------------------------------------------------------ descent
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def near_quadratic() -> Quadratic:
    """Quadratic() with its optimum 0.1 N(0, 1) away from the start, so a method that moves only some weights
    (Sparse-MeZO's small ones) can reach its part of the optimum."""
    model = Quadratic()
    with torch.no_grad():
        model.target.copy_(model.theta
                           + 0.1 * torch.randn(model.theta.shape, generator=torch.Generator().manual_seed(9)))
    return model


@pytest.mark.parametrize("name", NAMES)
def test_an_lr_exists_at_which_it_lowers_an_ill_conditioned_quadratic(name):
    """Lowest lr first; a run stops once the loss is below the bar (pass) or has grown 10x (next lr). The bar is
    0.7 of the start for a method that moves every weight, 1 - 0.3 x the share it moves otherwise."""
    tried = []
    for lr in LRS:
        model, opt, closure = make(name, near_quadratic(), lr=lr, eps=1e-3)
        share = sum(opt.engine.family.support(b) * b.param.numel() for b in opt.blocks) / opt.engine.num_params
        bar, start = 1 - 0.3 * share, loss_of(model)
        for _ in range(300):
            opt.step(closure)
            now = loss_of(model)
            if now < bar * start or not now < 10 * start:
                break
        tried.append((lr, now / start))
        if now < bar * start:
            return
    pytest.fail(f"{name} lowered the quadratic below {bar:.2f} of its start at no lr: {tried}")


@pytest.mark.parametrize("name", [n for n in NAMES if not REGISTRY[n].splits])
def test_the_mean_first_step_points_along_minus_the_gradient(name):
    """Over 300 seeds the mean first update has cosine > 0.25 with -grad (a flipped sign gives < 0; Sparse-MeZO's
    mask keeps only part of the gradient, hence not higher)."""
    acc = None
    for s in range(300):
        model, opt, closure = make(name, Quadratic(dim=50), lr=1e-5, eps=1e-4, seed=s)
        theta0 = model.theta.detach().clone()
        opt.step(closure)
        delta = model.theta.detach() - theta0
        acc = delta if acc is None else acc + delta
    cos = torch.nn.functional.cosine_similarity(acc, -Quadratic(dim=50).grad(), dim=0).item()
    assert cos > 0.25, cos


class Linear(nn.Module):
    """L(theta) = a . theta + 5: no curvature, so a two-point pair's mean is L(theta) exactly."""

    def __init__(self, dim=200):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.theta = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.a = torch.randn(dim, generator=g, dtype=torch.float64)

    def forward(self):
        return self.a @ self.theta + 5.0


@pytest.mark.parametrize("name", [n for n in NAMES if not REGISTRY[n].splits])
def test_the_logged_train_loss_estimates_the_loss_at_theta(name):
    """f0, or the mean of two-point pairs: the same meaning for every method, so train losses compare."""
    model = Linear()
    start = loss_of(model)
    for seed in range(3):
        _, opt, closure = make(name, model, lr=0.0, eps=1e-2, seed=seed)
        opt.step(closure)
        assert opt.last.loss == pytest.approx(start, abs=1e-9), (opt.last.losses, start)


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights(name):
    model, opt, closure = make(name, Quadratic(), lr=1e-5)
    before = snapshot(model)
    nan = (lambda split=None, task=0: torch.tensor(float("nan"))) if REGISTRY[name].splits else (
        lambda: torch.tensor(float("nan")))
    with pytest.warns(UserWarning, match="non-finite"):
        opt.step(nan)
    assert same_bits(before, snapshot(model)) and opt.skipped_steps >= 1 and opt.last.skipped
    for _ in range(opt_hp(name, "t_low", 1)):
        opt.step(closure)
    assert not same_bits(zo_weights(model), zo_weights(make(name, Quadratic())[0]))


# ------------------------------------------------------------------------------------------ per-block scales
SCALABLE = [n for n in NAMES if not REGISTRY[n].needs_adapter and not n.startswith("zo-finetuner")]


class FirstOnly(nn.Module):
    """L = ||a - 1||^2 + 0 * sum(b): only the first block changes the loss (b is used, so it is perturbed)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))

    def forward(self):
        return ((self.a - 1.0) ** 2).sum() + 0.0 * self.b.sum()


@pytest.mark.parametrize("name", SCALABLE)
def test_per_block_scales_reach_every_evaluation_and_update(name):
    """A learned policy composes with a method through per-block scales s_b (`block_scales`, as the ZO Fine-tuner
    passes them): a block scaled 0 is neither perturbed (every loss the step evaluates is L(theta)) nor moved,
    and the other blocks move. A method that drops the scales from one evaluation or from its update fails."""
    zero_first = lambda o: [0.0] + [1.0] * (len(o.blocks) - 1)  # noqa: E731
    model = FirstOnly()
    seen = []
    opt = build_optimizer(name, model, lr=1e-2, eps=1e-2, block_scales=zero_first)
    for _ in range(3):
        opt.step(lambda: seen.append(float(model())) or model())
    assert seen and set(seen) == {4.0}
    net = TwoBlock()
    before = snapshot(net)
    opt = build_optimizer(name, net, lr=1e-2, eps=1e-2, block_scales=zero_first)
    for _ in range(3):
        opt.step(net)
    first = opt.blocks[0].name
    after = snapshot(net)
    assert same_bits({first: before[first]}, {first: after[first]})
    assert not same_bits({k: v for k, v in before.items() if k != first},
                         {k: v for k, v in after.items() if k != first})


# ------------------------------------------------------------------------------------------ resume
def resume_cases():
    """(name, lean): every method; lean = the optimizer state without its rule's buffers (a ledger checkpoint),
    which the ledger rebuilds, for the methods with a stateful rule."""
    cases = []
    for n in NAMES:
        cases.append(pytest.param(n, False))
        if not REGISTRY[n].splits and probe(n).engine.rule is not None:
            cases.append(pytest.param(n, True))
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,lean", resume_cases())
def test_resume_is_bit_identical_to_an_uninterrupted_run(name, lean, dtype):
    decay = {"weight_decay": 0.01} if "weight_decay" in REGISTRY[name].declared() else {}

    def fresh():
        return make(name, TwoBlock(dtype=dtype), lr=1e-3, eps=1e-2, seed=7, **decay)

    steps = 2 * max(3, opt_hp(name, "t_low", 1))
    full, opt_full, closure = fresh()
    for _ in range(steps):
        opt_full.step(closure)
    first, opt_first, closure = fresh()
    for _ in range(steps // 2):
        opt_first.step(closure)
    saved_model, saved_opt = snapshot(first), opt_first.state_dict()
    if lean:
        saved_opt = {k: v for k, v in saved_opt.items() if k != "zo_rule"}
    resumed, opt_resumed, closure = fresh()
    resumed.load_state_dict(saved_model)
    opt_resumed.load_state_dict(saved_opt)
    for _ in range(steps - steps // 2):
        opt_resumed.step(closure)
    assert same_bits(snapshot(full), snapshot(resumed))
    assert not same_bits(snapshot(full), snapshot(fresh()[0]))


def opt_hp(name: str, key: str, default):
    return {**REGISTRY[name].defaults(), **TINY.get(name, {})}.get(key, default)


# ------------------------------------------------------------------------------------------ ledger
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_the_ledger_replays_the_run_or_fine_tune_refuses_ledger_checkpoints(name, dtype):
    """Replay (update sweeps only, no forward) rebuilds the weights bit-identically in fp32/bf16/fp16; a learned
    policy's scales travel in the lines. A method whose ledger cannot do that is refused in one line."""
    if not REGISTRY[name].replayable:
        from fine_tune.config import FineTuneConfig
        from l2o.errors import ConfigError

        with pytest.raises(ConfigError, match=name) as err:
            FineTuneConfig(task="sst2", optimizer=name, peft="lora", checkpoint="ledger").validate()
        assert "\n" not in str(err.value)
        return
    kw = {"weight_decay": 0.05} if "weight_decay" in REGISTRY[name].declared() else {}
    if name.startswith("zo-finetuner"):
        from l2o.policy import ZOPolicy

        kw["policy"] = ZOPolicy.for_model(TwoBlock(dtype=dtype), seed=3)
    trained, opt, closure = make(name, TwoBlock(dtype=dtype), lr=1e-2, eps=1e-2, **kw)
    for _ in range(12):  # until 4 updates: a conservative method (zo-sgd-cons) keeps theta on some steps
        opt.step(closure)
        if opt.ledger.num_updates >= 4:
            break
    ledger = Ledger.parse(opt.ledger.text(), require_seal=False)  # through text, as from a file
    assert ledger.num_updates >= 4 and ledger.header["method"] == name
    if "policy" in kw:
        assert all("b" in r for r in ledger.records)  # the policy's scales are logged
    fresh = TwoBlock(dtype=dtype)
    assert not same_bits(snapshot(fresh), snapshot(trained))
    calls = []
    fresh.register_forward_pre_hook(lambda *a: calls.append(1))
    replay(fresh, ledger)
    assert calls == [] and same_bits(snapshot(fresh), snapshot(trained))


# ------------------------------------------------------------------------------------------ distributed
@pytest.mark.parametrize("name", NAMES)
def test_each_method_runs_on_two_ranks_or_fine_tune_refuses_two_processes(name):
    """tests/test_distributed.py runs every case of distributed_cases.CASES on 2 gloo ranks against one process;
    every distributed method has a case there (added automatically when registered)."""
    if REGISTRY[name].distributed:
        assert any(case[0] == name for case in distributed_cases.CASES.values()), name
        return
    from fine_tune.config import FineTuneConfig
    from l2o.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{name} runs on one process"):
        FineTuneConfig(task="sst2", optimizer=name, peft="lora", devices=2).validate()
