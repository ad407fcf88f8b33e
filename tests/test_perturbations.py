"""Perturbation families and stateful update rules (l2o/perturbations.py, l2o/updates.py) as the engine uses
them, and ledgers that name a family or rule this version cannot make, refused before any weight is written."""

import pytest
import torch

from l2o.blocks import as_blocks
from l2o.engine import Direction, Engine
from l2o.errors import ConfigError
from l2o.ledger import Ledger, LedgerError, replay
from l2o.noise import GaussianNoise
from l2o.perturbations import LowRank, Masked, Rademacher, make_family, threshold
from l2o.updates import Momentum, make_rule
from tests.zo_fixtures import TwoBlock, same_bits, snapshot


def block(shape, seed=0):
    return as_blocks([torch.randn(*shape, generator=torch.Generator().manual_seed(seed))])[0]


def test_rademacher_is_the_sign_of_the_gaussian():
    noise, b = GaussianNoise(), block((64, 32))
    out = torch.empty(64, 32)
    Rademacher().write(noise, out, b, 5, 0)
    z = noise.z(5, 0, (64, 32))
    assert torch.equal(out, torch.where(z >= 0, 1.0, -1.0))
    assert abs(float(out.mean())) < 0.1


def test_the_masked_threshold_keeps_the_nearest_whole_share_of_entries():
    """Sparse-MeZO perturbs a share (1 - sparsity) of each block's entries: of n distinct magnitudes, the
    round((1 - sparsity) n) smallest (at least one), not that share rounded down."""
    for n in (1, 7, 10, 33, 64):
        w = torch.randperm(n).float() + 1.0  # 1..n, shuffled
        for sparsity in (0.0, 0.25, 0.5, 0.62, 0.75, 0.9, 0.99):
            h = threshold(w, sparsity)
            assert int((w.abs() <= h).sum()) == max(1, round((1.0 - sparsity) * n)), (n, sparsity)


def test_masked_thresholds_recorded_for_other_blocks_are_refused():
    """A replayed Sparse-MeZO family brings one threshold per block of the run it recorded: bound to a model with
    another number of blocks it is refused, not zipped short."""
    blocks = as_blocks([torch.randn(4, 3), torch.randn(5)])
    with pytest.raises(ConfigError, match="masked: 1 thresholds for 2 blocks"):
        Masked(thresholds=[0.5]).bind(blocks)
    Masked(thresholds=[0.5, 0.5]).bind(blocks)


def test_lowrank_is_u_v_transposed_and_add_needs_no_block_sized_temporary():
    noise, b = GaussianNoise(), block((6, 2, 3))
    fam = LowRank(rank=2)
    u, v = fam.factors(noise, b, 11, 22)
    assert u.shape == (6, 2) and v.shape == (6, 2)
    out = torch.empty(6, 2, 3)
    fam.write(noise, out, b, 11, 22)
    assert torch.equal(out.view(6, 6), u[:, :1] * v[:, 0] + u[:, 1:] * v[:, 1])  # products, then one add: portable
    assert torch.allclose(out.view(6, 6), u @ v.t())
    acc = torch.ones(6, 2, 3)
    fam.add(noise, acc, b, 11, 22, 0.5)
    assert torch.allclose(acc.view(6, 6), 1 + 0.5 * (u @ v.t()))
    vec = block((5,))
    z = torch.empty(5)
    fam.write(noise, z, vec, 11, 22)
    assert torch.equal(z, noise.z(11, 0, (5,)))          # vectors: the plain Gaussian
    assert fam.second_moment(b) == 2 and fam.second_moment(vec) == 1


def test_masked_moves_only_the_small_weights_and_reads_the_mask_from_the_weights_now():
    noise, b = GaussianNoise(), block((100,))
    fam = Masked(sparsity=0.75)
    fam.bind([b])
    h = fam.thresholds[0]
    assert h == threshold(b.param, 0.75) and int((b.param.abs() <= h).sum()) == 25
    out = torch.empty(100)
    fam.write(noise, out, b, 3, 0)
    assert torch.equal(out, noise.z(3, 0, (100,)) * (b.param.abs() <= h))
    with torch.no_grad():
        b.param.fill_(10.0)                              # every weight now above h: nothing moves
    fam.write(noise, out, b, 3, 0)
    assert not out.any()


def test_families_and_rules_rebuild_from_their_configs_and_refuse_unknown_ones_in_one_line():
    for fam in (Rademacher(), LowRank(3), Masked(0.5, [0.1, 0.2])):
        assert make_family(fam.config()).config() == fam.config()
    assert make_rule(Momentum(0.7).config()).config() == {"name": "momentum", "beta": 0.7}
    for bad in ({"name": "sobol"}, {"name": "lowrank", "rank": 2, "colour": 1}):
        with pytest.raises(ConfigError) as err:
            make_family(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown update rule"):
        make_rule({"name": "lion"})


def test_a_rule_with_weight_decay_moves_a_matrix_block_by_decay_and_momentum():
    """theta <- (1 - wd) theta - step * m on a decaying (matrix) block, theta - step * m on a bias."""
    model = TwoBlock()
    engine = Engine(model, rule=Momentum(0.5))
    before = {b.name: b.param.detach().clone() for b in engine.blocks}
    d = Direction((7,), (2.0,))
    engine.update(d, 0.1, decay=0.01, rounding_seed=1)
    for b in engine.blocks:
        x = 2.0 * engine.noise.z(7, b.index, b.param.shape)
        keep = 1 - 0.01 if b.decays else 1.0
        assert torch.allclose(b.param.detach(), before[b.name] * keep - 0.1 * x, atol=1e-6), b.name


def test_a_ledger_naming_a_family_this_version_cannot_make_is_refused_before_any_write():
    model = TwoBlock()
    engine = Engine(model, family=LowRank(2))
    ledger = Ledger.start(engine, method="lozo")
    engine.update(Direction((1,), (1.0,), keys=(9,)), 0.1)
    ledger.append(0, Direction((1,), (1.0,), keys=(9,)), 0.1, 0.0, 0)
    header = dict(ledger.header, family={"name": "lowrank", "rank": 2, "basis": "sobol"})
    header.pop("h")
    forged = Ledger(header, ledger.records)
    fresh = TwoBlock()
    before = snapshot(fresh)
    with pytest.raises(LedgerError, match="cannot make") as err:
        replay(fresh, Ledger.parse(forged.text(), require_seal=False))
    assert "\n" not in str(err.value) and same_bits(before, snapshot(fresh))
    replay(fresh, Ledger.parse(ledger.text(), require_seal=False))
    assert same_bits(snapshot(fresh), snapshot(model))
