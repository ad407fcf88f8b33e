"""Meta-gradient estimators (l2o.estimators): ES and PES against the exact meta-gradient of the deployed
optimizer's unroll (autograd through an independent implementation of it), their resumable states, and the
exact restore of the weights they unroll from."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from l2o.engine import Direction, Engine
from l2o.estimators import ES, PES, Coordinates, TaskStream, Unroller
from l2o.estimators.unroll import inner_seed
from l2o.noise import derive_seed
from l2o.policy import ZOPolicy, normalization_factor
from l2o.weights import Snapshot

LR, EPS = 0.05, 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def regression_stream():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 4, generator=g, dtype=torch.float64)
    Y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(256, 1, generator=g, dtype=torch.float64)

    def batch(i):
        idx = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(1000 + i))
        return X[idx], Y[idx]

    return TaskStream("regression", lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batch, lambda i: batch(10 ** 6 + i))


def exact_meta_gradient(model, start, policy, stream, seed, steps, meta_loss="final"):
    """d meta-loss / d psi of `steps` MeZO steps with the policy's scales, by autograd through everything
    (sigma's features incl. weight statistics and the previous L+-, nf, the projected gradients c_k):
    the function ES smooths, written here independently of l2o.optim and l2o.estimators."""
    names = [n for n, _ in model.named_parameters()]
    engine = Engine(model)
    sizes = torch.tensor([float(p.numel()) for p in model.parameters()], dtype=torch.float64)
    pol = ZOPolicy.from_tensors(policy.tensors(), policy.config()).double()

    def loss(theta, batch):
        return stream.loss(lambda x: functional_call(model, dict(zip(names, theta)), (x,)), batch)

    theta = [p.detach().clone() for p in start]
    prev_plus = prev_minus = torch.zeros((), dtype=torch.float64)
    prev_sigma = torch.ones(len(theta), dtype=torch.float64)
    metas = []
    for t in range(steps):
        stats = torch.stack([torch.stack([p.mean(), p.var() if p.numel() > 1 else p.sum() * 0]) for p in theta])
        x = torch.cat([stats, prev_plus.expand(len(theta), 1), prev_minus.expand(len(theta), 1),
                       prev_sigma.reshape(-1, 1)], dim=1)
        sigma = pol(x)
        s = normalization_factor(sigma, sizes) * sigma
        z = [engine.direction_tensor(Direction.single(derive_seed(seed, t, 0)), b).double() for b in engine.blocks]
        batch = stream.train(t)
        plus = loss([p + EPS * s[i] * z[i] for i, p in enumerate(theta)], batch)
        minus = loss([p - EPS * s[i] * z[i] for i, p in enumerate(theta)], batch)
        c = (plus - minus) / (2 * EPS)
        theta = [p - LR * c * s[i] * z[i] for i, p in enumerate(theta)]
        prev_plus, prev_minus, prev_sigma = plus, minus, sigma
        if meta_loss == "mean" or t == steps - 1:
            metas.append(loss(theta, stream.heldout(t + 1)))
    meta = sum(metas) / len(metas)
    return [g.float() for g in torch.autograd.grad(meta, list(pol.parameters()))], float(meta.detach())


def cosine_bound(n: int, p: int, delta: float) -> float:
    """A lower bound on cos(g_ES, grad) that holds with probability >= 1 - delta, for N antithetic pairs in
    P coordinates and a locally linear meta-loss.

    With g = (1/N) sum_i (epsilon_i . grad) epsilon_i and u = grad / |grad|: a_i = epsilon_i . u ~ N(0, 1) and
    the parts of epsilon_i orthogonal to u are independent N(0, I_{P-1}). So g . u = |grad| S / N with
    S = sum a_i^2 ~ chi2_N, and g's orthogonal part is |grad| sqrt(S) / N times an independent N(0, I_{P-1})
    vector, whose squared norm is W ~ chi2_{P-1}. Hence cos^2 = S / (S + W) ~ Beta(N/2, (P-1)/2).
    Laurent & Massart (2000): P(S <= N - 2 sqrt(N x)) <= e^-x and P(W >= k + 2 sqrt(k x) + 2x) <= e^-x
    (k = P - 1); with x = ln(2 / delta) both hold with probability >= 1 - delta, and cos^2 >= S_lo / (S_lo + W_hi).
    """
    x = math.log(2 / delta)
    s_lo = n - 2 * math.sqrt(n * x)
    k = p - 1
    w_hi = k + 2 * math.sqrt(k * x) + 2 * x
    return math.sqrt(s_lo / (s_lo + w_hi))


def _flat(grads, coords, policy):
    named = dict(zip(("w1", "b1", "w2", "b2"), grads))
    return torch.cat([named[n].reshape(-1).double() for n in coords.names])


def _estimator(cls, model, policy, inner=0, meta_loss="final", **kw):
    unroller = Unroller(model, lr=LR, eps=EPS, batch_size=16, meta_loss=meta_loss, seed=inner)
    start = Snapshot(Engine(model)).save()
    return cls(model, policy, start, unroller, **kw), start


def test_es_agrees_in_direction_with_the_exact_k_step_meta_gradient():
    """128 antithetic pairs in the output layer's 390 coordinates, K = 3 MeZO steps with the policy, final
    held-out loss: the ES estimate's cosine with the exact meta-gradient clears the bound derived above
    (delta = 1e-4); a random direction's cosine has sd 1/sqrt(390) = 0.05, a flipped sign would be negative."""
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est, _ = _estimator(ES, model, policy, unroll=3, pairs=128, std=1e-2, params="head", reset_every=0, seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    out = est.estimate(policy, lambda key: stream, 0)
    exact, meta = exact_meta_gradient(model, before, policy, stream, inner_seed(0, 0), 3)
    assert out.task == "regression" and out.forwards == 128 * 2 * 7 + 7  # (6 + 1 held-out) per unroll, + the center
    g, e = _flat(out.grad, est.coords, policy), _flat(exact, est.coords, policy)
    cos = float(g @ e / (g.norm() * e.norm()))
    bound = cosine_bound(128, est.coords.dim, 1e-4)
    assert 0.28 < bound < cos, (bound, cos)
    assert out.meta_loss == pytest.approx(meta, rel=1e-3)  # the pairs' mean meta-loss is the exact one's
    # after 256 unrolls, each read back from the parked theta_0, the trajectory moved K steps with the policy
    # itself: bit-identical to a plain zo-finetuner run of K steps from theta_0 (so every restore was exact)
    from l2o.optim import build_optimizer

    fresh = mlp()
    opt = build_optimizer("zo-finetuner", fresh, policy=est.coords.perturbed(policy, None), lr=LR, eps=EPS,
                          seed=inner_seed(0, 0), policy_batch_size=16)
    for t in range(3):
        opt.step(lambda: stream.loss(fresh, stream.train(t)))
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    est.close()


def test_es_unrolls_the_deployed_gv_optimizer_when_asked():
    """--model.inner_method zo-finetuner+gv: ES unrolls MeZO-GV with the policy (the optimizer a user deploys
    with `fine_tune --optimizer zo-finetuner+gv --policy`), not MeZO. After one estimate (2 pairs, K = 2, each
    unroll read back from the parked theta_0), the trajectory moved 2 steps of a plain zo-finetuner+gv run with
    the policy, bit for bit, and not the 2 steps MeZO with the policy takes from the same seed."""
    from l2o.optim import build_optimizer

    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    unroller = Unroller(model, method="zo-finetuner+gv", pool_size=3, lr=LR, eps=EPS, batch_size=16, seed=0)
    est = ES(model, policy, Snapshot(Engine(model)).save(), unroller, unroll=2, pairs=2, std=1e-2, params="bias",
             reset_every=0, seed=5)
    out = est.estimate(policy, lambda key: stream, 0)
    assert math.isfinite(out.meta_loss) and any(g.abs().sum() > 0 for g in out.grad)

    def plain(method, **kw):
        fresh = mlp()
        opt = build_optimizer(method, fresh, policy=est.coords.perturbed(policy, None), lr=LR, eps=EPS,
                              seed=inner_seed(0, 0), policy_batch_size=16, **kw)
        for t in range(2):
            opt.step(lambda: stream.loss(fresh, stream.train(t)))
        return list(fresh.parameters())

    gv, mezo = plain("zo-finetuner+gv", pool_size=3), plain("zo-finetuner")
    assert all(torch.equal(a, b) for a, b in zip(gv, model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(mezo, model.parameters()))
    est.close()


def test_es_snr_is_about_pairs_over_coordinates_on_a_locally_linear_meta_loss():
    """The logged SNR (||E g||^2 / E||g - E g||^2 of the N-pair mean, estimated without bias) is about N / (P + 1)
    when the meta-loss is locally linear: 64 / 7 for the 6 per-block biases; a wrong sign or pairing would not
    change it, so this checks the diagnostic, not the gradient."""
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est, _ = _estimator(ES, model, policy, unroll=2, pairs=64, std=1e-3, params="bias", reset_every=0)
    snr = est.estimate(policy, lambda key: stream, 0).metrics["snr"]
    assert 0.4 * 64 / 7 < snr < 2.5 * 64 / 7, snr
    est.close()


def test_pes_over_truncations_agrees_with_full_unroll_es_and_the_exact_gradient():
    """A 6-step inner run as 3 truncations of 2 steps (PES, one particle) and as one 6-step unroll (full-unroll
    ES, 2 pairs); meta-loss = the mean held-out loss over the 6 steps; 48 independent runs (inner seeds).

    The exact gradient varies over runs by two orders of magnitude, so each estimate is compared with its own
    run's exact gradient g_i: r_i = (est_i - g_i) . g_i / |g_i|^2, the relative error along the truth (0 in
    expectation for an unbiased estimator), and the relative error per coordinate (the 6 per-block biases).
    PES and ES are each within 4 standard errors of 0, and of each other (paired). Truncated ES on the same
    runs (each truncation weighted by its own epsilon, no accumulation) misses what earlier truncations' scales
    did to later losses: it recovers about half of the gradient, r = -0.56 +- 0.18 over 16 runs when measured,
    so over 48 runs it is more than 4 standard errors below 0."""
    n_runs, steps, k = 48, 6, 2
    policy = ZOPolicy.for_model(mlp(), seed=3)
    stream = regression_stream()
    coords = Coordinates(policy, "bias")

    def exact(i):
        model = mlp()
        g, _ = exact_meta_gradient(model, list(model.parameters()), policy, stream, inner_seed(i, 0), steps, "mean")
        return _flat(g, coords, policy)

    def es(i):
        est, _ = _estimator(ES, mlp(), policy, inner=i, meta_loss="mean", unroll=steps, pairs=2, std=1e-2,
                            params="bias", reset_every=0, seed=1000 + i)
        out = _flat(est.estimate(policy, lambda key: stream, 0).grad, coords, policy)
        est.close()
        return out

    def pes(i, persistent=True):
        est, _ = _estimator(PES, mlp(), policy, inner=i, meta_loss="mean", unroll=k, pairs=1, std=1e-2,
                            params="bias", reset_every=steps // k, seed=2000 + i, stagger=False, persistent=persistent)
        total = sum(_flat(est.estimate(policy, lambda key: stream, j).grad, coords, policy) for j in range(steps // k))
        est.close()
        return total / (steps // k)  # sum_j L_j = (steps / k) x the mean over the 6 steps

    g = torch.stack([exact(i) for i in range(n_runs)])
    e, p, t = (torch.stack([f(i) for i in range(n_runs)]) for f in (es, pes, lambda i: pes(i, persistent=False)))
    norm2 = (g * g).sum(1)

    def z(x):  # mean / standard error, over the runs
        return x.mean(0) / (x.var(0) / len(x)).sqrt()

    def along(est):
        return ((est - g) * g).sum(1) / norm2

    def per_coordinate(est):
        return (est - g) / norm2.sqrt().unsqueeze(1)

    for est in (p, e):
        assert abs(z(along(est))) < 4 and z(per_coordinate(est)).abs().max() < 4, \
            (z(along(est)), z(per_coordinate(est)))
    assert abs(z(along(p) - along(e))) < 4 and z(per_coordinate(p) - per_coordinate(e)).abs().max() < 4
    assert z(along(t)) < -4, z(along(t))


def test_type_coordinates_tie_the_output_bias_within_each_kind_of_block():
    """The "type" parametrisation: coordinate k is the output bias of every block of kind k (every layer's
    q_proj weight, ...): a perturbation moves exactly those biases, and a coordinate gradient comes back on
    each of them (U g), nothing else."""
    from l2o.estimators.base import block_kind
    from tests.helpers import tiny_model

    policy = ZOPolicy.for_model(tiny_model("llama"), seed=1)
    coords = Coordinates(policy, "type")
    names = policy.block_names
    assert coords.dim == len({block_kind(n) for n in names}) < len(names)
    assert block_kind("model.layers.12.mlp.up_proj.weight") == "model.layers.#.mlp.up_proj.weight"
    v = torch.arange(1.0, coords.dim + 1, dtype=torch.float64)
    moved = coords.perturbed(policy, v)
    for b, name in enumerate(names):
        k = coords.kinds.index(block_kind(name))
        assert float(moved.b2[b, 0] - policy.b2[b, 0]) == pytest.approx(k + 1, rel=1e-6)
    assert torch.equal(moved.w1, policy.w1.detach()) and torch.equal(moved.w2, policy.w2.detach())
    w1, b1, w2, b2 = coords.grads(policy, v)
    assert not (w1.any() or b1.any() or w2.any())
    assert [float(b2[b, 0]) for b in range(len(names))] == [coords.kinds.index(block_kind(n)) + 1.0 for n in names]


# hyperparameters that make each inner method's own state matter within a few steps on the MLP
INNER_HPARAMS = {"zo-finetuner+hizoo": {"hessian_smooth": 0.1}, "zo-finetuner+lozo": {"interval": 3},
                 "zo-finetuner+lozo-m": {"interval": 3}, "zo-finetuner+bszo": {"k": 2}}
INNER_LR = {"zo-finetuner+zo-sgd-mmt": 0.01, "zo-finetuner+zo-sgd-sign": 0.01, "zo-finetuner+lozo-m": 0.02}
# the methods with state beyond the step and the policy's features: an update rule's buffers (momentum, HiZOO's
# preconditioner, LOZO-M's factored momentum), BSZO's noise estimate, Sparse-MeZO's thresholds
STATEFUL = ("zo-finetuner+zo-sgd-mmt", "zo-finetuner+hizoo", "zo-finetuner+lozo-m", "zo-finetuner+bszo",
            "zo-finetuner+sparse-mezo")


def _inner(model, method, **kw):
    return Unroller(model, method=method, lr=INNER_LR.get(method, LR), eps=EPS, batch_size=16,
                    **INNER_HPARAMS.get(method, {}), **kw)


def _plain_run(method, policy, stream, steps):
    """`steps` steps of the deployed `method` with `policy` from the MLP's first weights, as fine_tune runs it."""
    from l2o.optim import build_optimizer

    fresh = mlp()
    opt = build_optimizer(method, fresh, policy=policy, lr=INNER_LR.get(method, LR), eps=EPS, seed=inner_seed(0, 0),
                          policy_batch_size=16, **INNER_HPARAMS.get(method, {}))
    for t in range(steps):
        opt.step(lambda: stream.loss(fresh, stream.train(t)))
    return list(fresh.parameters())


def test_every_policy_composition_is_an_inner_method_unless_refused_with_a_reason():
    """INNER_METHODS is derived from the registry: every zo_finetuner.compose variant an unroll can drive; the
    others are refused in one sentence that says why."""
    from l2o.estimators import INNER_METHODS
    from l2o.estimators.unroll import unroll_refusal
    from l2o.optim import REGISTRY

    composed = [n for n, cls in REGISTRY.items() if getattr(cls, "base_method", None)]
    assert set(STATEFUL) | {"zo-finetuner", "zo-finetuner+gv", "zo-finetuner+lozo"} <= set(INNER_METHODS)
    assert list(INNER_METHODS) == [n for n in composed if unroll_refusal(REGISTRY[n]) is None]
    with pytest.raises(ValueError, match="mezo-gv is not a composition with the learned policy"):
        Unroller(mlp(), method="mezo-gv")
    flat = type("NoReplay", (REGISTRY["zo-finetuner"],), {"method": "x", "replayable": False})
    assert "ledger alone does not rebuild" in unroll_refusal(flat)


@pytest.mark.parametrize("method", __import__("l2o.estimators", fromlist=["INNER_METHODS"]).INNER_METHODS)
def test_es_meta_step_through_each_inner_method_uses_common_random_numbers(method, monkeypatch):
    """One ES meta-step (2 pairs, K = 2) through each inner method: finite meta-loss and a nonzero gradient, and
    the two unrolls of each antithetic pair evaluate the same directions (seeds and keys, in the same order) on
    the same train batches, so they differ only by the policy's perturbation (common random numbers)."""
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    logs = []
    real_evaluate = Engine.evaluate

    def evaluate(self, closure, d, eps, *a, **kw):
        logs[-1].append(("z", d.seeds, d.keys))
        return real_evaluate(self, closure, d, eps, *a, **kw)

    def train(i):
        logs[-1].append(("batch", i))
        return stream.train(i)

    monkeypatch.setattr(Engine, "evaluate", evaluate)
    spy = TaskStream(stream.name, stream.loss, train, stream.heldout)
    unroller = _inner(model, method, seed=0)
    real_run = unroller.run

    def run(*a, **kw):
        logs.append([])
        return real_run(*a, **kw)

    unroller.run = run
    est = ES(model, policy, Snapshot(Engine(model)).save(), unroller, unroll=2, pairs=2, std=1e-2, params="bias",
             reset_every=0, seed=5)
    out = est.estimate(policy, lambda key: spy, 0)
    est.close()
    assert math.isfinite(out.meta_loss) and any(g.abs().sum() > 0 for g in out.grad)
    assert len(logs) == 5  # + and - of each pair, then the trajectory
    for plus, minus in (logs[0:2], logs[2:4]):
        assert plus == minus and sum(e[0] == "z" for e in plus) >= 2 and [e for e in plus if e[0] == "batch"] == [
            ("batch", 0), ("batch", 1)]


@pytest.mark.parametrize("method", STATEFUL)
def test_es_trajectory_carries_the_inner_methods_state_across_unrolls(method):
    """Two ES meta-steps of K = 2 (each after 2 antithetic pairs read back from the parked weights) move the
    trajectory exactly as one deployed run of 4 steps: the method's state (momentum, preconditioner, BSZO's noise
    estimate, Sparse-MeZO's thresholds from the run's first weights) goes from one unroll to the next, bit for bit.
    A fresh state per unroll (the unroll before these methods were admitted) moves it elsewhere."""
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est = ES(model, policy, Snapshot(Engine(model)).save(), _inner(model, method, seed=0), unroll=2, pairs=2,
             std=1e-2, params="bias", reset_every=0, seed=5)
    for step in range(2):
        est.estimate(policy, lambda key: stream, step)
    est.close()
    deployed = _plain_run(method, est.coords.perturbed(policy, None), stream, 4)
    assert all(torch.equal(a, b) for a, b in zip(deployed, model.parameters()))


def _live_rule_copies() -> int:
    """Distinct buffers of block 0 alive in update rules and in unroll states (gc's objects: uncollected cycles too)."""
    import gc

    from l2o.estimators.unroll import InnerState
    from l2o.updates import UpdateRule

    ptrs = set()
    for o in gc.get_objects():
        stores = o.buffers.values() if UpdateRule in type(o).__mro__ else \
            o.rule.values() if type(o) is InnerState and o.rule else ()
        ptrs |= {store[0].untyped_storage().data_ptr() for store in stores if 0 in store}
    return len(ptrs)


@pytest.mark.parametrize("cls", [ES, PES])
def test_an_estimator_holds_the_copies_of_the_inner_methods_buffers_its_plan_counts(cls, monkeypatch):
    """meta_train --dry-run counts a stateful inner method's buffers times the copies the unroll keeps at its peak
    (meta_train.plan.state_copies): ES 2 (the trajectory's and the running unroll's; an antithetic sample's state is
    dropped when it ends, not held through the next), PES 2N + 1 (each particle's two runs' and the running one's).
    Counted while unrolls evaluate their meta-loss, over three meta-steps."""
    import gc

    from meta_train.plan import state_copies

    gc.collect()
    before = _live_rule_copies()  # other tests' leftovers, if any (collected garbage is gone)
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est = cls(model, policy, Snapshot(Engine(model)).save(), _inner(model, "zo-finetuner+zo-sgd-mmt", seed=0),
              unroll=2, pairs=2, std=1e-2, params="bias", reset_every=0 if cls is ES else 4, seed=5)
    peak, heldout = [], Unroller.heldout_loss
    monkeypatch.setattr(Unroller, "heldout_loss",
                        lambda self, *a: peak.append(_live_rule_copies()) or heldout(self, *a))
    for step in range(3):
        est.estimate(policy, lambda key: stream, step)
    est.close()
    assert max(peak) - before == state_copies(cls.name, 2)[0] == (2 if cls is ES else 5)


@pytest.mark.parametrize("method", STATEFUL)
@pytest.mark.parametrize("cls", [ES, PES])
def test_resume_through_a_stateful_inner_method_is_exact(cls, method):
    """An estimator restored from its state_dict (records and scalars, no rule buffers) rebuilds the weights and
    the method's state through the method's own engine (its family and update rule), and its next meta-gradient
    and weights equal the uninterrupted estimator's bit for bit (a plain replay without the rule does not)."""
    policy = ZOPolicy.for_model(mlp(), seed=3)
    stream = regression_stream()

    def make(model, start):
        return cls(model, policy, start, _inner(model, method, seed=0), unroll=2, pairs=2, std=1e-2,
                   params="bias", reset_every=3, seed=5)

    model = mlp()
    start = Snapshot(Engine(model)).save()
    a = make(model, start)
    for step in range(2):
        a.estimate(policy, lambda key: stream, step)
    saved = a.state_dict()
    runs = [saved["center"]] if cls is ES else [r for p in saved["particles"] for r in p["runs"]]
    assert all("rule" not in r and r["records"] for r in runs)  # records and scalars: no rule buffers
    out_a = a.estimate(policy, lambda key: stream, 2)
    after_a = [p.detach().clone() for p in model.parameters()]
    a.close()

    other = mlp()
    b = make(other, Snapshot(Engine(other)).save())
    b.load_state_dict(saved)
    out_b = b.estimate(policy, lambda key: stream, 2)
    b.close()
    assert all(torch.equal(x, y) for x, y in zip(out_a.grad, out_b.grad)) and out_a.meta_loss == out_b.meta_loss
    assert all(torch.equal(x, y) for x, y in zip(after_a, other.parameters()))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_an_unroll_leaves_no_hooks_and_continues_the_runs_family_through_the_public_api():
    """The engine's swap-in hooks live only inside each evaluation: after three unrolls (measured: 0 hooks after
    each) and after an unroll whose loss raises, the model's hook dicts are empty. A Sparse-MeZO unroll continues
    the run's family (thresholds from the run's first weights) through the optimizer's public `adopt_family`: an
    optimizer made on the later weights computes other thresholds until it adopts the run's."""
    from l2o.estimators.unroll import InnerState
    from l2o.optim import build_optimizer

    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    unroller = _inner(model, "zo-finetuner+sparse-mezo", seed=0)
    state = InnerState()
    for episode in range(3):
        _, state = unroller.run(policy, state, stream, 0, 2)
        assert _hooks(model) == 0
    broken = TaskStream("broken", lambda m, b: 1 / 0, stream.train, stream.heldout)
    with pytest.raises(ZeroDivisionError):
        unroller.run(policy, state, broken, 0, 1)
    assert _hooks(model) == 0

    fresh = build_optimizer("zo-finetuner+sparse-mezo", model, policy=policy, lr=LR, eps=EPS, policy_batch_size=16)
    assert fresh.engine.family.config() != state.family  # bound to the weights now, not the run's first
    fresh.adopt_family(state.family)
    assert fresh.engine.family.config() == state.family
    assert unroller.optimizer(policy, state, 0).engine.family.config() == state.family


def test_pes_weights_a_truncation_by_the_perturbations_of_its_own_episode_only():
    """PES's estimate at truncation j of an episode is (L+ - L-) / (2 std) xi_j, xi_j the sum of the epsilons the
    episode's runs were given so far. One particle, 2 truncations per episode: meta-steps 0, 1, 2 lie along eps_0,
    eps_0 + eps_1 and eps_2 (step 2 starts a new episode from the pretrained weights, and its sum afresh: the last
    episode's perturbations never touched its runs), each of length |L+ - L-| / (2 std) |xi|. The runs themselves
    are perturbed by +- std eps_j, this truncation's own epsilon (the sum weights the estimate, it does not move the
    policy the runs use)."""
    from l2o.noise import mix

    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est, _ = _estimator(PES, model, policy, unroll=1, pairs=1, std=1e-2, params="bias", reset_every=2, seed=7,
                        stagger=False)
    eps = [est.coords.noise(mix(7, step, 0)) for step in range(3)]  # epsilon_ij ~ N(0, I) keyed by (seed, step, i)
    seen, run = [], est.unroller.run

    def spy(pol, *args, **kw):  # the policy each inner run is given: its output biases less psi's
        seen.append((pol.b2.detach().double() - policy.b2.detach().double()).reshape(-1))
        return run(pol, *args, **kw)

    est.unroller.run = spy
    for step, xi in enumerate([eps[0], eps[0] + eps[1], eps[2]]):
        out = est.estimate(policy, lambda key: stream, step)
        torch.testing.assert_close(seen[-2:], [1e-2 * eps[step], -1e-2 * eps[step]], rtol=0, atol=1e-6)
        g = _flat(out.grad, est.coords, policy)
        assert abs(float(g @ xi) / float(g.norm() * xi.norm())) == pytest.approx(1.0, abs=1e-6), step
        assert float(g.norm()) == pytest.approx(out.metrics["delta_loss_abs"] / 2e-2 * float(xi.norm()), rel=1e-5)
    est.close()


def test_pes_staggers_each_particles_first_episode_only():
    """Particle i's first episode is cut to n - floor(i n / N) truncations, so the particles sit at different phases
    of fine-tuning; every later episode is the whole run of n truncations (H = n K inner steps). N = 2, n = 2, K = 1:
    particle 1's first episode is 1 truncation, its second 2, so after 3 meta-steps its runs are 2 inner steps into
    that episode while particle 0 has just begun its second (1 step): mean 1.5. Cutting every episode would have
    meta-trained on 1-step runs only (mean 1)."""
    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3)
    est, _ = _estimator(PES, model, policy, unroll=1, pairs=2, std=1e-2, params="bias", reset_every=2, seed=7)
    means = [est.estimate(policy, lambda key: stream, step).metrics["episode_step_mean"] for step in range(3)]
    assert means == [1.0, 1.5, 1.5]
    assert est.state_dict()["episodes_started"] == 4  # particle 0 at steps 0 and 2, particle 1 at steps 0 and 1
    est.close()


def test_the_lookahead_trajectory_decays_its_lr_within_each_restart_period_and_then_resets():
    """The look-ahead's first-order trajectory (the ZO Fine-tuner authors' trainer): within each period of
    `reset_every` meta-steps the LLM's lr falls linearly, lr (1 - (t mod P) / P), and at the period's end the LLM is
    back at its pretrained weights, so every period is a fresh fine-tuning run from the start of its schedule (a
    decay over the whole run would leave every later period at lr 0, the trajectory frozen)."""
    from l2o.estimators import LookaheadEstimator

    model, stream = mlp(), regression_stream()
    policy = ZOPolicy.for_model(model, seed=3).double()
    start = [p.detach().clone() for p in model.parameters()]
    est = LookaheadEstimator(model, policy, Snapshot(Engine(model)).save(), batch_size=16, eps=EPS, eta_meta=1e-3,
                             lr_llm=0.1, momentum=0.5, reset_every=3)
    lrs, moved = [], []
    for step in range(6):
        out = est.estimate(policy, lambda key: stream, step)
        lrs.append(out.metrics["llm_lr"])
        moved.append(any(not torch.equal(a, b) for a, b in zip(start, model.parameters())))
    assert lrs == pytest.approx([0.1, 0.1 * 2 / 3, 0.1 / 3] * 2, rel=1e-12)
    assert moved == [True, True, False] * 2  # reset at the end of each period, and moving again in the next
    est.close()
