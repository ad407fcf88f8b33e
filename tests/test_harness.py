"""The evidence harness (bench/harness.py, bench/evidence_report.py, bench/stats.py): its statistics against
independent computations, forwards-to-target on known curves, method specs. The whole path on a tiny model (lr
selection, matched step, a first-order baseline, seeds, report, resume) runs in tests/test_evidence.py."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from bench import evidence_report as rep
from bench import harness as hn
from bench import stats
from bench.lr_centres import centre as lr_centre


@pytest.mark.parametrize("k,n", [(8, 10), (0, 7), (7, 7), (3.5, 12), (50, 100)])
def test_wilson_endpoints_solve_the_score_equation(k, n):
    lo, hi = stats.wilson(k, n)
    p_hat, z = k / n, stats.Z95
    for p in (lo, hi):  # the Wilson interval is {p : (p_hat - p)^2 <= z^2 p (1 - p) / n}; its ends are the roots
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)
    assert lo <= p_hat <= hi


def test_win_rate_counts_ties_half_and_knows_which_way_is_better():
    pairs = [(0.6, 0.5), (0.5, 0.5), (0.4, 0.5), (0.7, 0.5)]
    acc = stats.win_rate(pairs, higher_is_better=True)
    assert (acc["wins"], acc["ties"], acc["losses"], acc["rate"]) == (2, 1, 1, 2.5 / 4)
    loss = stats.win_rate(pairs, higher_is_better=False)
    assert (loss["wins"], loss["losses"], loss["rate"]) == (1, 2, 1.5 / 4)


@pytest.mark.parametrize("p,df,t", [(0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 3, 3.1824463),
                                    (0.975, 10, 2.2281389), (0.975, 30, 2.0422725), (0.995, 5, 4.0321430),
                                    (0.975, 1000, 1.9623391), (0.5, 4, 0.0)])
def test_t_quantile_matches_the_tables(p, df, t):
    assert stats.t_quantile(p, df) == pytest.approx(t, abs=2e-7)


def test_paired_interval_is_a_t_interval_stratified_by_task():
    out = stats.paired_interval({"a": [0.1, -0.1, 0.3, 0.0, 0.2]})  # one task: the textbook paired t interval
    half = 2.7764451 * 0.1581139 / math.sqrt(5)
    assert out["mean"] == pytest.approx(0.1) and (out["lo"], out["hi"]) == pytest.approx((0.1 - half, 0.1 + half))
    out = stats.paired_interval({"a": [0.0, 1.0, 2.0], "b": [10.0, 11.0, 12.0]})  # the tasks' gap is no noise
    assert out["df"] == pytest.approx(4) and out["hi"] - out["mean"] == pytest.approx(2.7764451 * math.sqrt(1 / 6))
    out = stats.paired_interval({"a": [1.0, 1.0, 1.0], "b": [0.0, 0.0]})
    assert out["mean"] == out["lo"] == out["hi"] == pytest.approx(0.6)  # no within-task spread: zero width


@pytest.mark.parametrize("sizes", [(3,), (3, 3), (5, 3)])
def test_a_95_interval_covers_the_true_difference_95_percent_of_the_time(sizes):
    """The harness runs 3 seeds a task: a percentile bootstrap of 3 pairs (this module's interval before) covered
    the true difference 74% of the time, and a normal (z) interval on these draws 82-86% (this test fails with it);
    the t interval, by construction, 95%."""
    import numpy as np

    rng, hits, draws = np.random.default_rng(0), 0, 1500
    for _ in range(draws):
        d = {t: rng.normal(0.05, 0.02 + 0.03 * t, n) for t, n in enumerate(sizes)}  # unequal spreads per task
        out = stats.paired_interval(d)
        truth = 0.05
        hits += out["lo"] <= truth <= out["hi"]
    assert 0.93 <= hits / draws <= 0.97, hits / draws


@pytest.mark.parametrize("diffs", [{"a": [-0.105]}, {"a": [0.1, 0.3, 0.2], "b": [0.05]}])
def test_a_task_with_one_seed_has_no_interval(diffs):
    """One seed says nothing about the spread: no interval (a zero-width one would read as certainty)."""
    out = stats.paired_interval(diffs)
    assert math.isnan(out["lo"]) and math.isnan(out["hi"]) and out["n"] == sum(map(len, diffs.values()))
    assert "no interval" in stats.ci_text(out) and "[" not in stats.ci_text(out)
    assert stats.ci_text(stats.paired_interval({"a": [0.1, 0.3]})).startswith("+0.200 [")
    assert stats.ci_text(stats.paired_interval({})) == "—"


def _exact(mean, sd, k):
    """k values with exactly this mean and sample sd."""
    base = np.linspace(-1, 1, k)
    return list(mean + sd * base / base.std(ddof=1))


@pytest.mark.parametrize("mean, sd", [(0.02, 0.05), (-0.043, 0.047), (0.1, 0.01), (0.005, 0.05)])
def test_pairs_to_separate_is_what_the_reported_interval_needs(mean, sd):
    """One task: n pairs with the observed mean and sd get a paired_interval that excludes 0, n - 1 pairs do not:
    the count the claims table states is the one its own intervals would need (the normal rule (1.96 sd / mean)^2
    says 5 where the t interval needs 8, for the second case)."""
    def interval(k):
        return stats.paired_interval({"t": _exact(mean, sd, k)})

    n = stats.pairs_to_separate({"t": _exact(mean, sd, 3)})
    assert n > (1.96 * sd / mean) ** 2
    assert interval(n)["lo"] > 0 or interval(n)["hi"] < 0
    assert n == 3 or interval(n - 1)["lo"] <= 0 <= interval(n - 1)["hi"]
    assert stats.pairs_to_separate({"t": [0.0, 0.0, 0.0]}) == math.inf
    assert stats.pairs_to_separate({"t": [mean] * 3}) == 3  # no spread: separated already


def test_pairs_to_separate_grows_every_task_alike_and_never_says_fewer_than_an_interval_holding_0_has():
    """BSZO's accuracy differences at 7 pairs (3 on valid_parentheses, sd 0.107; 4 on tweets, sd 0.041): the
    stratified interval (df 2.8) holds 0, and one pooled sd with df N - 1 said ~6 pairs would separate it. The
    count is now where growing each task's seeds alike, at its own mean and sd, first gives an interval without
    0, and not one step earlier."""
    strata = {"valid_parentheses": _exact(-0.0817, 0.1069, 3), "tweet_sentiment": _exact(-0.073, 0.0409, 4)}
    now = stats.paired_interval(strata)
    assert now["lo"] < 0 < now["hi"] and now["n"] == 7
    n = stats.pairs_to_separate(strata)
    assert n > 7 and (n - 7) % 2 == 0  # each task gained (n - 7) / 2 seeds

    def grown(k):
        return stats.paired_interval({t: _exact(float(np.mean(v)), float(np.std(v, ddof=1)), len(v) + k)
                                      for t, v in strata.items()})

    k = (n - 7) // 2
    assert grown(k)["hi"] < 0 and grown(k - 1)["lo"] <= 0 <= grown(k - 1)["hi"]
    assert stats.pairs_to_separate({"a": [0.1], "b": [0.05, 0.15]}) < math.inf  # a task with 1 seed: the pooled sd


def test_pairs_to_separate_grows_only_the_tasks_that_can_gain_seeds():
    """Here valid_parentheses' data cannot be had (BIG-bench), so only tweets can gain seeds: the count is where
    growing tweets alone first separates, not one seed earlier. That differs from the count with both growing
    either way: more where the fixed task is the quiet one, fewer where it is the noisy one (its weight in the
    stratified mean shrinks). With no task left to grow: the present N if separated already, else inf."""
    noisy, quiet = _exact(-0.05, 0.2, 3), _exact(-0.05, 0.03, 3)
    strata = {"valid_parentheses": quiet, "tweet_sentiment": noisy}
    both, one = stats.pairs_to_separate(strata), stats.pairs_to_separate(strata, fixed={"valid_parentheses"})

    def grown(k):
        return stats.paired_interval({"valid_parentheses": quiet, "tweet_sentiment": _exact(-0.05, 0.2, 3 + k)})

    assert math.isfinite(one) and one > both
    swapped = {"valid_parentheses": noisy, "tweet_sentiment": quiet}
    assert stats.pairs_to_separate(swapped, fixed={"valid_parentheses"}) < stats.pairs_to_separate(swapped)
    k = one - 6
    assert grown(k)["hi"] < 0 and grown(k - 1)["lo"] <= 0 <= grown(k - 1)["hi"]
    assert stats.pairs_to_separate(strata, fixed=set(strata)) == math.inf
    apart = {"a": _exact(-0.05, 0.01, 3), "b": _exact(-0.05, 0.01, 3)}
    assert stats.pairs_to_separate(apart, fixed=set(apart)) == 6


def test_the_claims_say_which_tasks_cannot_gain_seeds(tmp_path):
    """The harness's tasks without data reach the summary's "what would separate": the count grows the other
    tasks only, and the claims table names the fixed task, and each claim its pairs per task."""
    from bench import claims

    args = hn.parse_args(["--tasks", "valid_parentheses,tweet_sentiment", "--method", "mezo", "--method", "bszo"])
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"forwards": 2 * i, "loss": 0.7} for i in range(1, 11)]))

    def run(acc):
        return {"lr": 1e-2, "final": {"eval": acc}, "final_train_loss": 0.7, "steps": 10, "effective_step": 1.0,
                "forward_passes": 20, "paths": {"history": str(history)}}

    diffs = {"valid_parentheses": _exact(-0.05, 0.03, 3), "tweet_sentiment": _exact(-0.05, 0.2, 3)}
    final = {(t, label, s): run(0.5 + (d if label == "bszo" else 0.0))
             for t, ds in diffs.items() for s, d in enumerate(ds) for label in ("mezo", "bszo")}
    seeds = {t: [0, 1, 2] for t in diffs}
    free = rep.summarize(args, final, {}, seeds, {t: None for t in diffs})["methods"]["bszo"]["d_eval"]
    bszo = rep.summarize(args, final, {}, seeds, {t: None for t in diffs},
                         {"valid_parentheses": "no BIG-bench files"})["methods"]["bszo"]
    held = bszo["d_eval"]
    assert held["fixed"] == ["valid_parentheses"] and free["fixed"] == []
    assert held["pairs_to_separate"] == stats.pairs_to_separate(diffs, fixed={"valid_parentheses"})
    assert held["pairs_to_separate"] > free["pairs_to_separate"]
    text = claims._acc_need(held)
    assert f"~{held['pairs_to_separate']} pairs" in text and "valid_parentheses cannot gain seeds" in text
    assert "cannot gain" not in claims._acc_need(free)
    assert "over 6 (task, seed) pairs (valid_parentheses 3, tweet_sentiment 3)" in claims.better_verdict(bszo)[1]


def test_forwards_to_reach_waits_for_a_full_window():
    curve = [(2 * (i + 1), loss) for i, loss in enumerate([0.5, 0.9, 0.9, 0.6, 0.5, 0.4, 0.3])]
    assert stats.forwards_to_reach(curve, 0.5, window=1) == 2       # the first step already is at 0.5
    assert stats.forwards_to_reach(curve, 0.5, window=2) == 12      # means 0.7 .9 .75 .55 .45: at the 6th step
    assert stats.forwards_to_reach(curve, 0.2, window=2) is None


def _rec(tmp_path, name, losses, forwards_per_step=2):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([{"forwards": forwards_per_step * (i + 1), "loss": v} for i, v in enumerate(losses)]))
    tail = losses[-max(1, len(losses) // 10):]
    return {"paths": {"history": str(path)}, "steps": len(losses), "forward_passes": forwards_per_step * len(losses),
            "final_train_loss": sum(tail) / len(tail)}


def test_reach_and_k_on_known_curves(tmp_path):
    mezo = _rec(tmp_path, "mezo", [1.0 - 0.01 * i for i in range(50)])            # final loss 0.53 (last 5 steps)
    fast = _rec(tmp_path, "fast", [1.0 - 0.03 * i for i in range(50)])
    r = rep.reach(fast, mezo)                     # 5-step mean <= 0.53 first at step index 18 (0.52)
    assert r["forwards"] == 2 * 19 and r["ratio"] == pytest.approx(38 / 100)
    fo = _rec(tmp_path, "fo", [0.6, 0.55, 0.5, 0.45, 0.45], forwards_per_step=1)   # final loss 0.45
    k = rep.k_factor(fo, mezo)
    assert k["forwards"] is None and k["k"] is None and k["k_at_least"] == 100 / 5  # MeZO never gets to 0.45
    fo2 = _rec(tmp_path, "fo2", [0.8, 0.7, 0.6, 0.6, 0.605], forwards_per_step=1)  # final loss 0.605
    assert rep.k_factor(fo2, mezo)["k"] == pytest.approx(2 * 43 / 5)  # MeZO's 5-step mean: 0.60 at index 42


def test_method_specs():
    m = hn.parse_method("es:zo-finetuner:policy=runs/es/policy:pool_size=8:lr=3e-3")
    assert (m.label, m.optimizer, m.options) == ("es", "zo-finetuner", {"policy": "runs/es/policy", "pool_size": 8,
                                                                          "lr": 3e-3})
    assert hn.parse_method("mezo") == hn.Method("mezo", "mezo") and hn.parse_method("x:fo-sgd").first_order


def test_the_lr_grid_sets_the_step_size_each_method_declares():
    """Bilevel-ZOFO has no `lr`: its class declares `step_size = "lower_lr"`, which the catalog carries."""
    assert [hn.parse_method(n).lr_field for n in ("mezo", "zo-adam", "fo-adamw", "bilevel-zofo")] == \
        ["lr", "lr", "lr", "lower_lr"]


def test_every_registered_method_has_its_own_lr_centre_in_every_mode_it_runs_in():
    """bench/lr_centres.py names every registered method and first-order baseline (the harness used to centre the
    ones it did not list on 1e-2 whatever the method and mode); a ZO method's centre is MeZO's in the same mode times
    its ratio (sign-SGD's 20 in full: its step does not scale with the gradient's norm, ~18 there), a policy
    composition's is its base method's, and a method the table lacks is refused before anything runs, unless given
    lr=."""
    from bench import lr_centres as lc
    from fine_tune.config import PEFT_MODES
    from fine_tune.first_order import FIRST_ORDER
    from l2o import catalog
    from l2o.optim import optimizer_class

    for name in [*catalog.method_names(), *FIRST_ORDER]:
        adapter = name in catalog.method_names() and catalog.entry(name)["needs_adapter"]
        modes = [m for m in PEFT_MODES if m != "full" or not adapter]
        assert name in lc.RATIO or name in lc.ABSOLUTE, name
        assert all(lc.centre(name, m) > 0 for m in modes), name
        if name.startswith("zo-finetuner+"):
            base = optimizer_class(name).base_method
            assert all(lc.centre(name, m) == lc.centre(base, m) for m in modes), name
    assert [lc.centre("mezo", m) for m in ("prefix", "lora", "full")] == [1e-2, 1e-3, 1e-5]
    assert [lc.centre("fo-adamw", m) for m in ("prefix", "lora", "full")] == [1e-2, 1e-4, 1e-5]  # MeZO's FT
    assert lc.centre("zo-sgd-sign", "full") == pytest.approx(20 * lc.centre("mezo", "full"))
    assert lc.centre("zo-sgd-mmt", "lora") == pytest.approx(0.1 * lc.centre("mezo", "lora"))
    assert hn.check_methods([hn.parse_method("zo-sgd-sign")], "full") is None
    assert "no lr centre for bilevel-zofo in full" in hn.check_methods([hn.parse_method("bilevel-zofo")], "full")
    assert hn.check_methods([hn.parse_method("b:bilevel-zofo:lr=1e-3")], "full") is None


def test_a_zo_methods_default_eps_is_mezos_in_the_runs_peft_mode():
    """MeZO's eps differs by mode (prefix 1e-1, LoRA 1e-2, full 1e-3): a harness run without eps= takes its mode's,
    where it used to take the prefix value in every mode; eps= wins, and first-order runs get none. Bilevel-ZOFO
    perturbs the backbone (its adapter learns first-order), so it takes the full-parameter eps in every mode."""
    a = hn.parse_args(["--tasks", "boolq", "--method", "mezo"])
    def eps(spec, peft):
        return hn.make_config(argparse.Namespace(**{**vars(a), "peft": peft}), hn.parse_method(spec), "boolq",
                              1e-3, 0, 20).eps
    assert [eps("mezo", m) for m in ("prefix", "prompt", "lora", "full")] == [1e-1, 1e-1, 1e-2, 1e-3]
    assert eps("lozo", "full") == 1e-3 and eps("m:mezo:eps=5e-2", "full") == 5e-2
    assert eps("m:mezo:peft=lora", "full") == 1e-2       # the method's own peft= sets its mode
    assert eps("fo-adamw", "lora") is None
    assert eps("bilevel-zofo", "prefix") == eps("bilevel-zofo", "lora") == 1e-3   # it perturbs the whole backbone


def test_bilevel_zofo_runs_at_its_small_scale_settings_with_both_adam_rates_searched():
    """Bilevel-ZOFO's defaults (lam 1e4, theta_lr 1e-7: the official OPT-13B LoRA sweep) diverged in prefix mode on
    SmolLM2-135M (our theta step is SGD, so it scales with lam); the harness runs docs/bilevel.md's small-scale
    settings, the searched lr setting both Adam rates (the evaluated copy p's too), and a spec's own value wins."""
    a = hn.parse_args(["--tasks", "boolq", "--method", "mezo"])
    def cfg(spec, lr):
        return hn.make_config(a, hn.parse_method(spec), "boolq", lr, 0, 20)
    c = cfg("bilevel-zofo", 3e-3)
    assert (c.lam, c.theta_lr, c.t_low, c.lower_lr, c.upper_lr) == (10, 1e-6, 10, 3e-3, 3e-3)
    assert cfg("bilevel-zofo", 1e-2).upper_lr == 1e-2                  # it follows the run's lr
    c = cfg("b:bilevel-zofo:lam=1e4:upper_lr=1e-7", 3e-3)
    assert (c.lam, c.upper_lr, c.lower_lr, c.theta_lr) == (1e4, 1e-7, 3e-3, 1e-6)
    assert cfg("mezo", 1e-3).lam is None                                # no default leaks into another method
    # its steps spend the budget at its T_low: 1 + 6/10 forwards a step (the defaults' T_low 30 would give 416)
    assert c.steps == hn.steps_for(hn.parse_method("bilevel-zofo"), 20) == int(20 / 1.6)
    assert cfg("bilevel-zofo", 3e-3).steps == 12 and cfg("b:bilevel-zofo:t_low=30", 3e-3).steps == int(20 / 1.2)


@pytest.mark.parametrize("specs,problem", [
    (["mezo", "zo-sgd-sign", "cons:zo-sgd-cons:pool_size=4", "gv:mezo-gv:match=mezo"], None),  # registry names
    (["mezo", "nope"], "unknown optimizer 'nope'"),
    (["mezo", "gv:mezo-gv:poolsize=4"], "unknown key(s) poolsize"),
    (["mezo", "gv:mezo-gv:match=greedy", "greedy:mezo-greedy"], "match=greedy names no method listed before it"),
    (["mezo", "mezo:mezo-gv"], "the label is used twice"),
    (["mezo", "b:bszo:search=0"], "search=0 needs lr"),
])
def test_method_lists_are_checked_before_anything_runs(specs, problem):
    got = hn.check_methods([hn.parse_method(s) for s in specs])
    assert (got is None) if problem is None else (problem in got)
    if problem:
        with pytest.raises(SystemExit):
            hn.parse_args(["--tasks", "boolq", *[a for s in specs for a in ("--method", s)]])


@pytest.mark.parametrize("argv, said", [
    (["--lr-grid", "1,abc"], "--lr-grid must be comma-separated numbers, got '1,abc'"),            # a ValueError
    (["--lr-grid", "0,1"], "--lr-grid must be positive numbers (multipliers of the lr), got '0,1'"),  # ZeroDivision
    (["--budget", "0"], "--budget must be a positive integer, got 0"),         # ran one step per run, exit 0
    (["--budget", "-8"], "--budget must be a positive integer, got -8"),
    (["--select-budget", "-2"], "--select-budget must be a positive integer, got -2"),
    (["--seeds", "x"], "--seeds must be comma-separated integers, got 'x'"),   # a ValueError
    (["--tasks", "boolx"], "unknown task 'boolx'; known tasks: boolq, "),     # skipped as "no data here", exit 0
    (["--peft", "bogus"], "--method mezo: bench/lr_centres.py has no lr centre for mezo in bogus; give lr=..."),
    (["--budget", "x"], "argument --budget: invalid int value: 'x' (see `python -m bench.harness --help`)"),
])
def test_bad_numbers_and_a_misspelt_task_are_one_line_before_anything_runs(argv, said, tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["--base", "no-base-is-loaded", "--tasks", "boolq", "--method", "mezo", "--seeds", "1", "--out", str(out),
            *argv]
    try:
        rc = hn.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        rc = stop.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench.harness: error: {said}"), err
    assert not out.exists()


def test_a_missing_or_empty_panel_is_refused_in_one_line(tmp_path, capsys):
    from l2o.errors import UserError

    panel = tmp_path / "panel.json"
    assert hn.main(["--panel", str(panel)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bench.harness: error: no panel at {panel}: run the "
                                                            "learnability scan first (python -m bench.learnability)"]
    panel.write_text(json.dumps({"tasks": [], "settings": {"batch_size": 16, "panel_se": 3.0}, "runs": "r.jsonl"}))
    assert hn.main(["--panel", str(panel)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is empty: no scanned task has moved by >= 3 standard errors" in err[0]
    with pytest.raises(UserError):
        hn.compare(["mezo"], panel=str(panel), out=str(tmp_path / "x"))
    args = hn.parse_args(["--panel", str(panel), "--tasks", "boolq"])  # named tasks need no panel task
    assert args.task_list == ["boolq"] and args.reuse == ["r.jsonl"]
    (tmp_path / "runs.jsonl").write_text("")          # the scan's runs beside its panel are found from any directory
    assert hn.parse_args(["--panel", str(panel), "--tasks", "x"]).reuse == [str(tmp_path / "runs.jsonl")]


# every registered ZO method `--method all` enters without a policy (the catalog holds no first-order one; the
# zo-finetuner* ones need a learned policy artefact: a different setup); mezo and two others run
# by default, the rest under -m slow
QUICK = ("mezo", "bilevel-zofo", "zo-sgd-sign")


@pytest.fixture(scope="module")
def mezo_runs(tiny_base, tmp_path_factory):
    """The reference's runs (MeZO always runs first), made once: the other methods' suites reuse them."""
    out = tmp_path_factory.mktemp("mezo")
    hn.run_suite(hn.parse_args(["--smoke", "--base", tiny_base, "--tasks", "boolq", "--out", str(out),
                                "--lr-grid", "1,3", "--extend", "0", "--seeds", "1", "--method", "mezo"]))
    return out


def test_a_policy_composition_under_method_all_runs_with_the_policy(tiny_base, tmp_path, monkeypatch):
    """`--method all --policy P` enters the zo-finetuner+<method> compositions with P (the registry narrowed here to
    mezo, lozo and zo-finetuner+lozo, so the test takes seconds; the path is the harness's own: expansion, lr grid,
    runs). Full fine-tuning of the tiny base with a fresh policy made for it. The composition's runs carry the
    policy, and at each (lr, seed) they differ from plain LOZO's, which they would equal if the policy were dropped
    (zo-finetuner+lozo without one is LOZO with s_b = 1): the first step's loss L(theta + eps s_b U V^T) (1.3064
    against 1.3051 here), and the effective step sum_b n_b s_b^2 m_b / D (the policy normalises sum_b n_b s_b^2 = D;
    LOZO's m_b is r on matrices and 1 on vectors, so a policy that scales them differently moves it off LOZO's: a
    fresh policy's near-uniform scales only slightly, 1.98580 against 1.98545)."""
    from l2o import catalog
    from l2o.models import load_base
    from l2o.policy import ZOPolicy
    from zoo.learned import save_policy

    model, _, _ = load_base(tiny_base)
    policy = str(save_policy(ZOPolicy.for_model(model, base_model=tiny_base, seed=2), tmp_path / "policy"))
    monkeypatch.setattr(catalog, "method_names", lambda: ["mezo", "lozo", "zo-finetuner+lozo"])
    out = tmp_path / "h"
    args = hn.parse_args(["--smoke", "--base", tiny_base, "--tasks", "boolq", "--out", str(out), "--peft", "full",
                          "--lr-grid", "1,3", "--extend", "0", "--seeds", "0", "--method", "all", "--policy", policy])
    assert [m.label for m in args.methods] == ["mezo", "lozo", "zo-finetuner+lozo"]
    hn.run_suite(args)
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    plain = {(r["lr"], r["config"]["seed"]): r for r in rows if r["label"] == "lozo"}
    composed = {(r["lr"], r["config"]["seed"]): r for r in rows if r["label"] == "zo-finetuner+lozo"}
    assert sorted(composed) == sorted(plain) and len(composed) == 2  # the same grid (same centre), seed 0
    for key, r in composed.items():
        p = plain[key]
        assert (r["config"]["policy"], r["policy_size_rule"]) == (policy, "numel")
        assert (p["config"]["policy"], p["policy_size_rule"]) == (None, None)
        first = [json.loads(Path(x["paths"]["history"]).read_text())[0]["loss"] for x in (r, p)]
        assert first[0] != pytest.approx(first[1], rel=1e-6, abs=0), key
        assert r["effective_step"] != pytest.approx(p["effective_step"], rel=1e-6), key  # 1.98580 vs 1.98545


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow)
                                  for n in hn.expand_all(["all"])])
def test_every_registered_method_gets_a_dev_chosen_lr_in_the_harness(name, tiny_base, mezo_runs, tmp_path):
    """`--method all` is the registry's ZO methods; each, alone on the tiny base, runs a 2-point lr grid on dev
    (seed 0) and one final run (seed 1) at the lr with the best dev metric, set on its declared step-size flag.
    Bilevel-ZOFO's flag is `lower_lr`. 2-11 s a method here."""
    from l2o import catalog

    zo = [n for n in catalog.method_names() if not n.startswith("zo-finetuner")]
    assert hn.expand_all(["all"]) == zo and hn.expand_all(["mezo", "all", "fo-sgd"], policy="p") == \
        ["mezo", *[n for n in catalog.method_names() if n != "mezo"], "fo-sgd"]
    out = mezo_runs if name == "mezo" else tmp_path / "h"
    if name != "mezo":
        hn.run_suite(hn.parse_args(["--smoke", "--base", tiny_base, "--tasks", "boolq", "--out", str(out),
                                    "--lr-grid", "1,3", "--extend", "0", "--seeds", "1", "--method", name,
                                    "--reuse", str(mezo_runs / "runs.jsonl")]))
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["label"] == name]
    flag, centre = catalog.entry(name)["step_size"], lr_centre(name, "prefix")
    assert all(r["config"]["optimizer"] == name and r["lr"] == r["config"][flag] for r in mine)
    selection = [r for r in mine if r["config"]["seed"] == 0]
    assert sorted(r["lr"] for r in selection) == pytest.approx([centre, 3 * centre])   # the 2-point grid, on dev
    assert all(r["final"].get("dev") is not None for r in selection)
    best = max(selection, key=lambda r: (r["final"]["dev"], -r["final_train_loss"]))   # ties: lower train loss
    chosen = json.loads((out / "summary.json").read_text())["methods"][name]["per_task"]["boolq"]["lr"]
    assert chosen == best["lr"]
    finals = [r for r in mine if r["config"]["seed"] == 1]
    assert len(finals) == 1 and finals[0]["config"][flag] == chosen and len(mine) == 3


def test_a_partial_report_shows_dashes_where_a_method_has_no_runs_yet(tmp_path):
    """Before a method has any final run (a partial suite), its row says "—", not a win-rate of nan over [0, 1],
    "None" as its lr or 0/0 as its reach."""
    args = hn.parse_args(["--tasks", "boolq", "--method", "mezo", "--method", "bszo", "--method", "fo-adamw"])
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"forwards": 2 * i, "loss": 0.7} for i in range(1, 11)]))
    run = {"task": "boolq", "seed": 0, "lr": 1e-2, "final": {"eval": 0.6, "dev": 0.6}, "final_train_loss": 0.7,
           "steps": 10, "paths": {"history": str(history)}, "effective_step": 1.0, "forward_passes": 20}
    edge = {**run, "lr": 3e-3, "final": {"eval": 0.6, "dev": 0.55}}  # the grid extended past its low edge: run last
    chosen = {("boolq", "mezo"): (1e-2, [run, edge])}
    summary = rep.summarize(args, {("boolq", "mezo", 0): run}, chosen, {"boolq": [0]},
                           {"boolq": 0.5})
    table = rep.render_table(summary)
    assert "nan" not in table and "None" not in table and "0/0" not in table
    assert "| boolq | 0.500 | mezo | 0.003: 0.550, 0.01: 0.600 | 0.01 |" in table  # the dev column in lr order
    assert "| bszo | 0 | — | — | — | — | — | — |" in table and "| fo-adamw | 0 | — |" in table
    assert "| boolq | 0.500 | bszo | — | — | — |" in table


def test_a_panel_tasks_scan_run_chooses_lrs_only_and_its_max_length_is_kept(tmp_path):
    """On a panel, MeZO's selection run at its chosen lr is the scan's, which put the task on the panel by its
    eval accuracy: `--seeds auto` then pairs seeds 1.., not 0 (a run of this harness's own keeps 0..). A task the
    panel records at another max length (kept from an earlier scan) is run at that length, so the scan's runs
    are reused."""
    mezo = hn.parse_method("mezo")
    settings = {"base": "smollm2-135m", "batch_size": 16, "max_length": 128, "num_train": 1000, "num_dev": 200,
                "num_eval": 500, "data_seed": 0, "panel_se": 3.0}
    panel = tmp_path / "scan" / "panel.json"
    panel.parent.mkdir()
    panel.write_text(json.dumps({"tasks": ["fever", "navigate"], "max_length": {"fever": 64, "navigate": 128},
                                 "settings": settings, "runs": "elsewhere.jsonl"}))
    args = hn.parse_args(["--panel", str(panel), "--out", str(tmp_path / "h")])
    cfg = hn.make_config(args, mezo, "fever", 1e-2, 0, args.budget)
    assert cfg.max_length == 64 and hn.make_config(args, mezo, "navigate", 1e-2, 0, args.budget).max_length == 128
    scan = {"config": cfg.to_dict(), "lr": 1e-2, "cpu_s": 60.0, "fit_time_s": 90.0}
    (panel.parent / "runs.jsonl").write_text(json.dumps(scan) + "\n")
    args = hn.parse_args(["--panel", str(panel), "--out", str(tmp_path / "h")])
    runner = hn.Runner(args)
    assert runner(cfg, "mezo") is not None and runner.reused(scan)  # found beside the panel: not rerun
    assert hn.seeds_for(args, runner, "fever", {("fever", "mezo"): (1e-2, [scan])}) == [1, 2, 3, 4, 5]
    own = {**scan, "config": {**scan["config"], "lr": 3e-2}, "lr": 3e-2}  # chosen lr: a run of the harness's own
    assert hn.seeds_for(args, runner, "fever", {("fever", "mezo"): (3e-2, [scan, own])}) == [0, 1, 2, 3, 4]
    slow = {**scan, "cpu_s": 900.0}
    assert hn.seeds_for(args, runner, "fever", {("fever", "mezo"): (1e-2, [slow])}) == [1, 2, 3]


def test_data_per_seed_gives_each_seed_its_own_sample_shared_by_the_methods_on_it(tiny_base, tmp_path):
    """--data-per-seed: seed s trains on, and is scored on, data seed s's sample (MeZO's protocol); the methods on
    one seed share it (the pairs stay paired); each sample gets its own zero-shot, and the report says what a seed
    varies. Without it, every run is on --data-seed's sample."""
    argv = ["--smoke", "--base", tiny_base, "--tasks", "boolq", "--lr-grid", "1", "--extend", "0", "--seeds",
            "1,2", "--method", "mezo", "--method", "mezo-gv"]
    summary = hn.run_suite(hn.parse_args(argv + ["--out", str(tmp_path / "per-seed"), "--data-per-seed"]))
    runs = [json.loads(x) for x in (tmp_path / "per-seed" / "runs.jsonl").read_text().splitlines()]
    final = [r for r in runs if r["config"]["seed"] in (1, 2)]
    assert len(final) == 4 and all(r["seeds"]["data_seed"] == r["config"]["seed"] for r in final)
    assert all(r["seeds"]["data_seed"] == 0 for r in runs if r["config"]["seed"] == 0)  # the lr selection's
    assert {r["config"]["data_seed"] for r in runs if r.get("zero_shot")} == {0, 1, 2}  # one zero-shot per sample
    zs = {r["config"]["data_seed"]: r["zero_shot"]["eval"] for r in runs if r.get("zero_shot")}
    assert summary["zero_shot"]["boolq"] == pytest.approx((zs[1] + zs[2]) / 2)
    assert summary["settings"]["data_per_seed"]
    assert "draws its own train, dev and eval sample" in (tmp_path / "per-seed" / "table.md").read_text()

    hn.run_suite(hn.parse_args(argv + ["--out", str(tmp_path / "shared")]))
    runs = [json.loads(x) for x in (tmp_path / "shared" / "runs.jsonl").read_text().splitlines()]
    assert {r["seeds"]["data_seed"] for r in runs} == {0}
    assert "every run trains on the same data sample" in (tmp_path / "shared" / "table.md").read_text()


def test_a_method_with_its_own_seed_count_runs_more_pairs_and_mezo_runs_them_too():
    """`seeds=N`: that method runs N seeds on each task (the task's continued), MeZO every seed any method runs (each
    is a pair), the others the task's own; fewer than the task's changes nothing; a non-count is refused."""
    ms = [hn.parse_method(s) for s in ("mezo", "fo-adamw:fo-adamw:seeds=4", "mezo-gv", "g:mezo-greedy:seeds=2")]
    assert [hn.seeds_of(m, [1, 2, 3], ms) for m in ms] == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3], [1, 2, 3]]
    assert hn.seeds_of(ms[0], [0, 1], ms[:1]) == [0, 1] and hn.seeds_of(ms[1], [], ms) == []
    assert hn.check_methods(ms) is None
    for bad in ("f:fo-adamw:seeds=0", "f:fo-adamw:seeds=two", "f:fo-adamw:seeds=1.5"):
        assert "is not a count of seeds" in hn.check_methods([ms[0], hn.parse_method(bad)])


def test_the_extra_seeds_run_and_are_paired_in_the_report(tiny_base, tmp_path):
    summary = hn.run_suite(hn.parse_args(["--smoke", "--base", tiny_base, "--tasks", "boolq", "--lr-grid", "1",
                                          "--extend", "0", "--seeds", "0", "--method", "mezo", "--method",
                                          "gv:mezo-gv:seeds=2", "--method", "zo-sgd-sign", "--out", str(tmp_path)]))
    runs = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    ran = sorted((r["label"], r["config"]["seed"]) for r in runs)
    assert ran == [("gv", 0), ("gv", 1), ("mezo", 0), ("mezo", 1), ("zo-sgd-sign", 0)]
    got = summary["methods"]
    assert (got["gv"]["d_eval"]["n"], got["zo-sgd-sign"]["d_eval"]["n"]) == (2, 1)
    assert got["mezo"]["per_task"]["boolq"]["eval"]["n"] == 2
    assert summary["seeds"] == {"boolq": [0, 1]} and summary["complete"]


def test_one_lr_reached_two_ways_is_one_run_made_once(tiny_base, tmp_path):
    """A matched-step method whose step equals MeZO's gets MeZO's lr back through a rounded ratio (3e-05), while the
    grid made it as 1e-5 x 3 = 3.0000000000000004e-05: the same configuration, so its seeds are the runs already
    made, not copies (the panel policy's matched runs repeated its own, about an hour each). Within a records file
    the first record of a configuration answers; lrs that differ in the 10th digit are other runs; an int and the
    float of it are one setting."""
    mezo = hn.parse_method("mezo:mezo:lr=1e-5")
    suite = hn.parse_args(["--smoke", "--base", tiny_base, "--tasks", "boolq", "--lr-grid", "3", "--extend", "0",
                           "--seeds", "0", "--method", "mezo:mezo:lr=1e-5", "--method", "m:mezo:match=mezo", "--out",
                           str(tmp_path)])
    summary = hn.run_suite(suite)
    runs = hn.read_records(tmp_path / "runs.jsonl")
    assert sorted((r["label"], r["steps"] == suite.probe_steps) for r in runs) == [("m", True), ("mezo", False)]
    assert runs[0]["lr"] == 1e-5 * 3 != 3e-5
    got = summary["methods"]
    assert [[got[m]["per_task"]["boolq"][k][s] for k in ("eval", "loss") for s in ("mean", "n")] for m in ("m", "mezo")
            ] == [[runs[0]["final"]["eval"], 1, runs[0]["final_train_loss"], 1]] * 2
    assert summary["same_runs"] == {"m": "mezo"}  # and the report says its rows repeat MeZO's
    assert "m: the same runs as mezo (one configuration: its lr is mezo's)" in (tmp_path / "table.md").read_text()
    args = hn.parse_args(["--tasks", "boolq", "--out", str(tmp_path / "x")])
    key = [hn.config_key(hn.make_config(args, mezo, "boolq", lr, 0, args.budget).to_dict())
           for lr in (1e-5 * 3, 3e-5, 3.000000001e-5)]
    assert key[0] == key[1] != key[2]
    bilevel = hn.make_config(args, hn.parse_method("bilevel-zofo"), "boolq", 1e-2, 0, args.budget).to_dict()
    assert bilevel["lam"] == 10 and isinstance(bilevel["lam"], float)  # the records before it was declared: int 10
    assert hn.config_key(bilevel) == hn.config_key({**bilevel, "lam": 10}) != hn.config_key({**bilevel, "lam": 11})
    (tmp_path / "x").mkdir()
    for n, eval_ in enumerate((0.4, 0.6)):
        cfg = hn.make_config(args, mezo, "boolq", (1e-5 * 3, 3e-5)[n], 0, args.budget)
        hn.append_record(tmp_path / "x" / "runs.jsonl", {"config": cfg.to_dict(), "final": {"eval": eval_}})
    assert hn.Runner(args)(cfg, "mezo")["final"]["eval"] == 0.4


def test_records_count_across_versions_and_this_out_s_own_record_answers_first(tmp_path):
    """A record written before a config field existed (so without it, at its default) is the same run, not one to
    make again; a configuration recorded both here and in a --reuse file is answered by this --out's record."""
    mezo = hn.parse_method("mezo:mezo:lr=1e-5")
    other = tmp_path / "other" / "runs.jsonl"
    args = hn.parse_args(["--tasks", "boolq", "--out", str(tmp_path / "x"), "--reuse", str(other)])
    cfg = hn.make_config(args, mezo, "boolq", 1e-5, 0, args.budget)
    old = {k: v for k, v in cfg.to_dict().items() if k != "gpu_memory"}  # a field added later, default None
    assert cfg.gpu_memory is None
    for folder in (other.parent, tmp_path / "x"):
        folder.mkdir()
    hn.append_record(other, {"config": old, "final": {"eval": 0.1}})
    hn.append_record(tmp_path / "x" / "runs.jsonl", {"config": old, "final": {"eval": 0.9}})
    key = hn.config_key(cfg.to_dict())
    assert key == hn.config_key(old)
    runner = hn.Runner(args)
    assert runner.done[key]["final"]["eval"] == 0.9


def test_records_restored_into_another_suite_folder_answer_the_same_runs_and_find_their_files(tmp_path, monkeypatch):
    """The evidence suite's records name its own artefacts by path (`--policy runs/evidence/artefacts/...`) and its
    runs' files as they ran (`runs/evidence/prefix/<run>/history.json`, relative to where it ran). Restored into
    another --out (a fresh clone's `--out /scratch/ev`, or run from another folder), the runs that use an artefact
    were other runs (to be made again) and a report died reading a history file that is not there."""
    made = hn.parse_args(["--tasks", "boolq", "--out", "runs/evidence/full"])  # relative: as the suite ran
    method = hn.parse_method("p:zo-finetuner:policy=runs/evidence/artefacts/zo-finetuner/round-3/policy")
    old = hn.make_config(made, method, "boolq", 1e-5, 0, made.budget).to_dict()
    run = old["out"]
    assert run.startswith("runs/evidence/full/")
    here = tmp_path / "ev"
    (here / "full" / Path(run).name).mkdir(parents=True)
    (here / "full" / Path(run).name / "history.json").write_text("[]")
    hn.append_record(here / "full" / "runs.jsonl", {"config": old, "final": {"eval": 0.7}, "paths": {
        "history": f"{run}/history.json", "model": None, "elsewhere": "/data/x.json"}})

    monkeypatch.chdir(tmp_path)  # not where the suite ran
    args = hn.parse_args(["--tasks", "boolq", "--out", str(here / "full")])
    asked = hn.make_config(args, hn.parse_method(f"p:zo-finetuner:policy={here}/artefacts/zo-finetuner/round-3/policy"),
                           "boolq", 1e-5, 0, args.budget)
    got = hn.Runner(args)(asked, "p")  # recorded: not made again (it would need the base, and fail here)
    assert got["final"]["eval"] == 0.7
    assert got["paths"] == {"history": str(here / "full" / Path(run).name / "history.json"), "model": None,
                            "elsewhere": "/data/x.json"}
    assert Path(got["paths"]["history"]).read_text() == "[]"
    other = hn.make_config(args, hn.parse_method(f"p:zo-finetuner:policy={here}/artefacts/zo-finetuner/round-2/policy"),
                           "boolq", 1e-5, 0, args.budget)
    assert hn.config_key(other.to_dict()) != hn.config_key(old)  # another artefact: another run
    outside = {**old, "policy": "/data/policy"}
    assert hn.config_key({**outside, "out": str(here / "full" / "r")}) == hn.config_key(outside)  # a path outside


def test_versus_compares_two_methods_over_the_same_pairs_as_each_against_mezo(tmp_path):
    """--versus A:B: A against B paired over (task, seed) like a method against MeZO (summary "versus"); a label
    that is not a method is refused."""
    args = hn.parse_args(["--tasks", "boolq", "--method", "mezo", "--method", "new:mezo-gv",
                          "--method", "old:mezo-greedy", "--versus", "new:old"])
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"forwards": 2 * i, "loss": 0.7} for i in range(1, 11)]))

    def run(acc, loss):
        return {"lr": 1e-2, "final": {"eval": acc}, "final_train_loss": loss, "steps": 10,
                "paths": {"history": str(history)}, "effective_step": 1.0, "forward_passes": 20}

    final = {("boolq", label, s): run(acc + s / 100, loss) for s in range(3)
             for label, acc, loss in (("mezo", 0.5, 0.7), ("new", 0.7, 0.6), ("old", 0.6, 0.65))}
    summary = rep.summarize(args, final, {}, {"boolq": [0, 1, 2]}, {"boolq": None})
    vs = summary["versus"]["new:old"]
    assert vs["d_eval"]["mean"] == pytest.approx(0.1) and vs["d_loss"]["mean"] == pytest.approx(-0.05)
    assert vs["win_eval"]["rate"] == 1.0 and summary["methods"]["new"]["d_eval"]["mean"] == pytest.approx(0.2)
    assert summary["same_runs"] == {}  # three methods' own runs (their histories one file here: not what tells)
    with pytest.raises(SystemExit):
        hn.parse_args(["--tasks", "boolq", "--method", "new:mezo-gv", "--versus", "new:nobody"])


def test_a_run_killed_after_it_finished_but_before_its_record_is_charged_every_attempt(tmp_path, monkeypatch):
    """The CPU meter goes only once the run is recorded: a kill between the two (here at append_record) leaves
    it, and the rerun, a replay from the finished run's last checkpoint, is charged what the first attempt spent."""
    from bench import resume

    def fake_run(cfg, log=print):
        ckpt = Path(cfg.out) / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.process_time()
        while time.process_time() - t0 < (0.01 if cfg.resume else 0.3):  # the replay is cheap
            sum(i * i for i in range(1000))
        ckpt.write_bytes(b"state")
        return {"final": {"eval": 0.5}, "final_train_loss": 0.7, "task": cfg.task}

    monkeypatch.setattr("fine_tune.run.run", fake_run)
    args = hn.parse_args(["--tasks", "boolq", "--out", str(tmp_path / "h")])
    cfg = hn.make_config(args, hn.parse_method("mezo"), "boolq", 1e-2, 0, args.budget)
    monkeypatch.setattr(hn.Runner, "zero_shot", lambda self, task, data_seed: {})

    def killed(path, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(hn, "append_record", killed)
    with pytest.raises(KeyboardInterrupt):
        hn.Runner(args)(cfg, "mezo")
    assert float((Path(cfg.out) / resume.METER_FILE).read_text()) >= 0.3
    monkeypatch.undo()
    monkeypatch.setattr("fine_tune.run.run", fake_run)
    monkeypatch.setattr(hn.Runner, "zero_shot", lambda self, task, data_seed: {})
    res = hn.Runner(args)(cfg, "mezo")
    assert res["cpu_s"] >= 0.3 and not (Path(cfg.out) / resume.METER_FILE).exists()
    assert [r["cpu_s"] for r in hn.read_records(tmp_path / "h" / "runs.jsonl")] == [res["cpu_s"]]


def test_a_second_harness_process_waits_for_the_run_the_first_is_making_and_takes_its_record(tmp_path, monkeypatch,
                                                                                               capsys):
    """Two harness commands on one --out reach the same run: the second waits on the run's claim while the first
    makes it, never touching its folder, then takes the first's record instead of making the run again. Before, it
    found no checkpoint yet, cleared the folder the first was writing and ran the configuration beside it."""
    import threading

    started, release, ran = threading.Event(), threading.Event(), []

    def fake_run(cfg, log=print):
        me = threading.current_thread().name
        ran.append(me)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "partial.txt").write_text(me)
        started.set()
        release.wait(5)
        return {"config": cfg.to_dict(), "final": {"eval": 0.5}, "final_train_loss": 0.7, "task": cfg.task}

    monkeypatch.setattr("fine_tune.run.run", fake_run)
    monkeypatch.setattr(hn.Runner, "zero_shot", lambda self, task, data_seed: {})
    args = hn.parse_args(["--tasks", "boolq", "--out", str(tmp_path / "h")])

    def cfg():
        return hn.make_config(args, hn.parse_method("mezo"), "boolq", 1e-2, 0, args.budget)

    got, runners = {}, {name: hn.Runner(args) for name in ("first", "second")}
    threads = {name: threading.Thread(target=lambda n=name: got.update({n: runners[n](cfg(), "mezo")}), name=name)
               for name in runners}
    threads["first"].start()
    assert started.wait(5)
    threads["second"].start()
    time.sleep(0.3)
    assert threads["second"].is_alive() and (Path(cfg().out) / "partial.txt").read_text() == "first"
    release.set()
    for t in threads.values():
        t.join(5)
    assert ran == ["first"] and got["second"] == got["first"]
    assert len(hn.read_records(tmp_path / "h" / "runs.jsonl")) == 1
    assert "mezo boolq lr 0.01 seed 0: another process is making this run" in capsys.readouterr().out


def test_a_task_whose_data_cannot_be_had_is_skipped_and_its_recorded_runs_still_count(tmp_path, monkeypatch, capsys):
    """A panel task whose files no source has here (BIG-bench since PyPI dropped its sdist, on a machine without
    GitHub): its recorded runs still answer, its missing ones raise NotRun (the suite goes on with the other tasks),
    said once, and the data is looked for once per task, not once per run."""
    from l2o.tasks.errors import TaskError

    ran, looked = [], []

    def fake_run(cfg, log=print):
        ran.append((cfg.task, cfg.seed))
        return {"final": {"eval": 0.5}, "final_train_loss": 0.7, "task": cfg.task}

    def ensure_task(task, source=None):
        looked.append(task)
        if task == "navigate":
            raise TaskError("task 'navigate' needs BIG-bench task files: no source here")

    monkeypatch.setattr("fine_tune.run.run", fake_run)
    monkeypatch.setattr("zoo.acquire.ensure_task", ensure_task)
    monkeypatch.setattr(hn.Runner, "zero_shot", lambda self, task, data_seed: {})
    args = hn.parse_args(["--tasks", "imdb,navigate", "--out", str(tmp_path)])
    mezo = hn.parse_method("mezo")

    def cfg(task, seed):
        return hn.make_config(args, mezo, task, 1e-2, seed, args.budget)

    before = {"config": cfg("navigate", 0).to_dict(), "final": {"eval": 0.9}, "final_train_loss": 0.3}
    hn.append_record(tmp_path / "runs.jsonl", before)
    runner = hn.Runner(args)
    assert runner(cfg("navigate", 0), "mezo")["final"]["eval"] == 0.9  # recorded: no data needed
    for seed in (1, 2):
        with pytest.raises(hn.NotRun, match="navigate: no data"):
            runner(cfg("navigate", seed), "mezo")
    assert runner(cfg("imdb", 1), "mezo")["final"]["eval"] == 0.5
    assert ran == [("imdb", 1)] and looked == ["navigate", "imdb"]
    out = capsys.readouterr().out
    assert out.count("harness: navigate's runs that are not recorded yet are skipped, since its data cannot be had "
                     "here (task 'navigate' needs BIG-bench task files: no source here)") == 1


def test_runs_on_another_copy_of_a_tasks_data_are_refused_not_paired(tmp_path, monkeypatch):
    """Each run records its examples' fingerprint (sha256 over the sampled splits). A record of the same data
    configuration made on other examples (the task's files from another source) stops the harness in one sentence
    before it runs anything; records that agree, or that predate fingerprints, pass."""
    from l2o.errors import UserError
    from l2o.tasks import sample_splits

    ran = []

    def fake_run(cfg, log=print):
        ran.append(cfg.seed)
        return {"config": cfg.to_dict(), "final": {"eval": 0.5}, "final_train_loss": 0.7, "task": cfg.task}

    monkeypatch.setattr("fine_tune.run.run", fake_run)
    monkeypatch.setattr(hn.Runner, "zero_shot", lambda self, task, data_seed: {})
    args = hn.parse_args(["--tasks", "imdb", "--out", str(tmp_path), "--num-train", "16", "--num-dev", "8",
                          "--num-eval", "12"])
    mezo = hn.parse_method("mezo")

    def cfg(seed, data_seed=0):
        c = hn.make_config(args, mezo, "imdb", 1e-2, seed, args.budget)
        c.data_seed = data_seed
        return c

    here = sample_splits("imdb", seed=0, num_train=16, num_dev=8, num_eval=12).fingerprint()
    assert here.startswith("sha256:") and here != sample_splits("imdb", seed=1, num_train=16, num_dev=8,
                                                                 num_eval=12).fingerprint()
    for seed, fp in ((0, here), (1, None)):
        hn.append_record(tmp_path / "runs.jsonl", {"config": cfg(seed).to_dict(), "final": {"eval": 0.6},
                                                   "splits": {"fingerprint": fp} if fp else {}})
    assert hn.Runner(args)(cfg(2), "mezo")["final"]["eval"] == 0.5 and ran == [2]  # agreeing records: it runs
    hn.append_record(tmp_path / "runs.jsonl", {"config": cfg(3).to_dict(), "final": {"eval": 0.6},
                                               "splits": {"fingerprint": "sha256:" + "0" * 64}})
    with pytest.raises(UserError, match=r"imdb's examples here \(data seed 0\) are not those its records were made "
                                        r"on \(fingerprint sha256:[0-9a-f]{12}, recorded sha256:000000000000\)"):
        hn.Runner(args)(cfg(4), "mezo")
    assert hn.Runner(args)(cfg(5, data_seed=1), "mezo") and ran == [2, 5]  # another sample: no record to disagree


def test_the_report_names_the_tasks_whose_missing_runs_cannot_be_made_here(tmp_path, monkeypatch):
    """--report runs nothing, yet it says which tasks lack runs because their data cannot be had on this machine
    (so a partial table is not read as a protocol still under way there)."""
    from bench.evidence_report import no_data_text
    from l2o.tasks.errors import TaskError

    def ensure_task(task, source=None):
        if task in ("navigate", "hyperbaton"):
            raise TaskError(f"task {task!r} needs BIG-bench task files: `pip download` failed; GitHub: no answer. "
                            "Set L2O_BIGBENCH_SDIST")

    monkeypatch.setattr("zoo.acquire.ensure_task", ensure_task)
    summary = hn.run_suite(hn.parse_args(["--tasks", "imdb,navigate,hyperbaton", "--out", str(tmp_path), "--report",
                                          "--method", "mezo"]))
    assert list(summary["no_data"]) == ["navigate", "hyperbaton"] and not summary["complete"]
    table = (tmp_path / "table.md").read_text()
    assert table.count("needs BIG-bench") == 1 and "**imdb**" not in table  # one reason, said whole once
    assert ("**navigate, hyperbaton**: the runs they lack cannot be made where this ran; each needs BIG-bench task "
            "files: `pip download` failed; GitHub: no answer. Set L2O_BIGBENCH_SDIST.") in table
    def recorded_or_not_run(self, cfg, label):  # no run asks for the data: as if every run were recorded
        raise hn.NotRun(label)

    monkeypatch.setattr(hn.Runner, "__call__", recorded_or_not_run)
    summary = hn.run_suite(hn.parse_args(["--tasks", "imdb,navigate,hyperbaton", "--out", str(tmp_path / "r"),
                                          "--report", "--method", "mezo"]))
    assert list(summary["no_data"]) == ["navigate", "hyperbaton"]  # every task's data is checked for the report
    assert no_data_text({"navigate": "task 'navigate' needs X.", "x": "the disk is gone"}) == (
        " **navigate**: the runs it lacks cannot be made where this ran; it needs X. **x**: the runs it lacks cannot "
        "be made where this ran; the disk is gone.")


def test_pairs_to_separate_grows_a_one_seed_task_with_the_sample_sd_of_all_the_pairs():
    """A task with one seed has no sd of its own, so it grows at the sample sd (n - 1 in the denominator) of all the
    pairs, as the intervals are computed: 0.3 alone beside 0.05 and 0.15 needs 7 pairs (its interval at 5 still
    holds 0); the population sd (n in the denominator, 0.103 for 0.126) said 5."""
    strata = {"a": [0.3], "b": [0.05, 0.15]}
    sd_all, sd_b = statistics.stdev([0.3, 0.05, 0.15]), statistics.stdev([0.05, 0.15])
    n = stats.pairs_to_separate(strata)

    def grown(k):
        return stats.paired_interval({"a": _exact(0.3, sd_all, 1 + k), "b": _exact(0.1, sd_b, 2 + k)})

    k = (n - 3) // 2
    assert n == 7 and (n - 3) % 2 == 0
    assert grown(k)["lo"] > 0 and grown(k - 1)["lo"] <= 0 <= grown(k - 1)["hi"]


def test_pairs_to_separate_weighs_each_task_mean_by_its_pairs():
    """The interval is about the mean of all the pairs, so a task that grows weighs more in it: a fixed task of 3
    pairs at +0.1 beside a growing one at -0.3 moves the mean towards -0.3, and the count is where that interval
    (computed from the grown pairs themselves) first excludes 0. The unweighted mean of the task means (-0.1 for
    ever) would need about 140."""
    fixed, growing = _exact(0.1, 0.05, 3), _exact(-0.3, 0.6, 3)
    n = stats.pairs_to_separate({"a": fixed, "b": growing}, fixed={"a"})

    def grown(k):
        return stats.paired_interval({"a": fixed, "b": _exact(-0.3, 0.6, 3 + k)})

    k = n - 6
    assert grown(k)["hi"] < 0 and grown(k - 1)["lo"] <= 0 <= grown(k - 1)["hi"]
    assert grown(k)["mean"] == pytest.approx((3 * 0.1 + (3 + k) * -0.3) / n)
