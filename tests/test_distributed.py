"""Data- and direction-parallel ZO steps on 2 gloo processes (1 thread each) against one process.

All cases run in one pair of spawned processes (tests/distributed_cases.py), ~10-20 s on this machine.
"""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest
import torch

from l2o.distributed import LocalCollective, auto_parallel, direction_efficiency, gather_round_robin, my_share
from l2o.distributed import reduce_shards, weight_fingerprint
from tests import distributed_cases as dc
from tests.zo_fixtures import same_bits

WORLD = 2
DIRECTION = [c for c, (_, _, mode) in dc.CASES.items() if mode == "direction"]
DATA = [c for c, (_, _, mode) in dc.CASES.items() if mode == "data"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=dc.worker, args=(r, WORLD, str(tmp / "pg"), str(tmp))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", DIRECTION)
def test_direction_parallel_is_bit_identical_to_one_process(ranks, case):
    ref = dc.reference(case)
    for res in ranks:
        assert same_bits(res[case]["weights"], ref["weights"]), case
        assert res[case]["losses"] == ref["losses"]
        assert res[case]["forwards"] == ref["forwards"]  # every rank counts all ranks' evaluations


def _summation_bound(ref: dict, n: int) -> float:
    """Largest weight difference that float32 rounding of the losses alone can explain (data-parallel).

    A sum of n non-negative float32 terms is off its exact value by at most n u L (u = 2^-24, Higham's
    bound), so the one-process sum over 16 examples and the two 8-example shard sums added in float64
    differ by at most 2 n u L per evaluated loss L; the few-ulp differences of each example's float32
    forward on 8 rather than 16 rows add at most n u L more: 3 n u L. A projected gradient
    (L1 - L2) / (2 eps) or (L1 - f0) / eps then differs by at most 3 n u (L1 + L2) / eps, and the
    update lr * g * z by lr times that times max|z| (< 6 for these few thousand N(0,1) draws). Summed
    over the steps, times 2 for what the slightly different weights feed back into later steps and the
    float32 update rounding. (BSZO's posterior mean is a gain <= 1 combination of its y's.)
    """
    u = 2.0 ** -24
    per_step = [dc.LR * 3 * n * u * 2 * max(losses) / dc.EPS * 6.0 for losses in ref["losses"]]
    return 2 * sum(per_step)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


class _ShardOnly(LocalCollective):
    """Rank 0 of 2 whose partner contributes nothing: the run a broken reduction would give."""

    world_size = 2

    def all_gather(self, values):
        return [list(values), [0.0] * len(values)]


@pytest.mark.parametrize("case", DATA)
def test_data_parallel_matches_one_process_over_the_same_global_batch(ranks, case):
    ref = dc.reference(case)
    tol = _summation_bound(ref, dc.BATCH)
    for res in ranks:
        for mine, one in zip(res[case]["losses"], ref["losses"]):
            # ~170 u: the summation order (2 n u = 32 u), the float32 forward on 8 rather than 16 rows
            # (kernels block by shape) and, after step 0, the weights' own tiny differences
            assert mine == pytest.approx(one, rel=1e-5)
        assert _max_diff(res[case]["weights"], ref["weights"]) <= tol, case  # measured: 3e-6 to 6e-6
    assert same_bits(ranks[0][case]["weights"], ranks[1][case]["weights"])  # the ranks agree to the bit
    # the tolerance discriminates: half of each batch alone lands far outside it
    assert _max_diff(dc.run_case(case, _ShardOnly())["weights"], ref["weights"]) > 10 * tol


@pytest.mark.parametrize("case", list(dc.CASES))
def test_only_scalars_cross_the_wire(ranks, case):
    """Bytes sent per step: 8 per value; direction-parallel 8 ceil(n/2) per batch of n evaluations,
    data-parallel 8 (n + 1), plus the 24-byte fingerprint of the guard (every step here)."""
    res = ranks[0][case]
    n_per_step = sum(res["batches"])
    if dc.CASES[case][2] == "direction":
        expected = sum(8 * math.ceil(n / WORLD) for n in res["batches"]) + 24
    else:
        expected = sum(8 * (n + 1) for n in res["batches"]) + 24
    assert res["bytes"] == [expected] * dc.STEPS
    assert expected <= 16 * n_per_step + 24
    assert res["forwards"] == [n_per_step] * dc.STEPS


def test_the_guard_stops_diverged_ranks_and_names_the_step(ranks):
    for res in ranks:
        step, message = res["diverged"]["error"]
        assert step == dc.GUARD_STEP
        assert f"by step {dc.GUARD_STEP}" in message and "rank 1" in message
        assert len(res["diverged"]["losses"]) == dc.GUARD_STEP - 1  # the steps before the check ran


# ---------------------------------------------------------------------- the pieces, without processes
def test_round_robin_shares_cover_every_evaluation_once():
    shares = [my_share(5, 2, r) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]

    class Two(LocalCollective):
        world_size = 2

        def all_gather(self, values):  # rank 1 evaluated 1 and 3, padded to ceil(5/2) = 3 values
            return [list(values), [11.0, 13.0, float("nan")]]

    assert gather_round_robin(Two(), 5, [10.0, 12.0, 14.0]) == [10.0, 11.0, 12.0, 13.0, 14.0]


def test_shard_reduction_is_the_example_weighted_mean():
    class Two(LocalCollective):
        world_size = 2

        def all_gather(self, values):  # rank 1: totals (3, 9) over 1 example
            return [list(values), [3.0, 9.0, 1.0]]

    assert reduce_shards(Two(), [6.0, 12.0], 3.0) == [9.0 / 4.0, 21.0 / 4.0]


def test_auto_mode_prefers_directions_when_they_fill_every_rank():
    assert direction_efficiency([4, 2], 2) == 1.0      # GV, M = 4
    assert direction_efficiency([3], 2) == 0.75        # BSZO, k = 2: f0 + 2
    assert auto_parallel([4, 2], 2, batch_size=16) == "direction"
    assert auto_parallel([2], 4, batch_size=16) == "data"        # MeZO on 4 ranks
    assert auto_parallel([3], 2, batch_size=16) == "data"
    assert auto_parallel([3], 2, batch_size=1) == "direction"    # fewer examples than ranks
    assert auto_parallel([3], 1, batch_size=16) == "direction"


def test_fingerprint_sees_a_single_ulp_and_a_block_swap():
    a, b = torch.randn(5), torch.randn(7)
    base = weight_fingerprint([a, b])
    assert weight_fingerprint([b, a]) != base
    a2 = a.clone()
    a2[0] = torch.nextafter(a2[0], torch.tensor(10.0))
    assert weight_fingerprint([a2, b]) != base
