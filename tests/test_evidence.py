"""`make evidence` (bench/evidence.py, bench/claims.py, bench/evidence_doc.py): the verdict rules on synthetic
summaries, and the whole suite at toy sizes on a tiny model: every phase, the claims table, resume."""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics

import pytest

from bench import claims
from bench.stats import at_level, paired_interval, pairs_to_separate, pairs_to_separate_moments, wilson, win_rate


def _d(mean, lo, hi, n=10, sd=0.05):
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "sd": sd, "df": n - 1, "pairs_to_separate": (1.96 * sd / mean)
            ** 2 if mean else float("inf")}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _methods(argv: list[str]) -> list[str]:
    return [a for a, b in zip(argv[1:], argv) if b == "--method"]


def _m(d_eval, d_loss, wins=5, n=10):
    return {"d_eval": d_eval, "d_loss": d_loss, "win_eval": {"rate": wins / n, "lo": 0.2, "hi": 0.8, "n": n}}


@pytest.mark.parametrize("d_eval,d_loss,verdict", [
    (_d(0.03, 0.01, 0.05), _d(0.0, -0.01, 0.01), claims.HOLDS),           # accuracy up, loss unchanged
    (_d(0.0, -0.01, 0.01), _d(-0.02, -0.03, -0.01), claims.HOLDS),        # loss down
    (_d(-0.03, -0.05, -0.01), _d(0.0, -0.01, 0.01), claims.FAILS),        # accuracy down
    (_d(0.01, -0.01, 0.03), _d(0.01, -0.01, 0.02), claims.INCONCLUSIVE),  # both intervals hold 0
    (_d(0.03, 0.01, 0.05), _d(0.02, 0.01, 0.03), claims.INCONCLUSIVE),    # better accuracy but worse loss
])
def test_better_than_mezo_verdicts(d_eval, d_loss, verdict):
    v, measured, separate = claims.better_verdict(_m(d_eval, d_loss))
    assert v == verdict and "Δ eval acc" in measured
    assert ("pairs to separate" in separate) == (verdict == claims.INCONCLUSIVE and d_eval["mean"] != 0)
    assert claims.better_verdict(None)[0] == claims.NOT_RUN


def test_an_interval_at_another_level_is_the_one_computed_at_that_level():
    """at_level rescales a 95% summary by the t quantiles; paired_interval at that level, from the pairs, agrees."""
    diffs = {"a": [0.01, -0.03, 0.05], "b": [0.02, 0.04, -0.01, 0.06, 0.0, 0.03]}
    d95 = paired_interval(diffs)
    for level in (0.95, 0.975, 0.99):
        want, got = paired_interval(diffs, level=level), at_level(d95, level)
        assert math.isclose(got["lo"], want["lo"], abs_tol=1e-12) and math.isclose(got["hi"], want["hi"], abs_tol=1e-12)
    assert at_level(paired_interval({"a": [0.1]}), 0.975)["mean"] == 0.1  # one pair: no interval to widen
    with pytest.raises(ValueError, match="df"):
        at_level({"mean": 0.1, "lo": 0.0, "hi": 0.2}, 0.975)


@pytest.mark.parametrize("diffs,fixed", [({"a": [0.01, -0.03, 0.05], "b": [0.02, 0.04, -0.01, 0.06]}, ()),
                                         ({"a": [0.01, -0.03, 0.05], "b": [0.02, 0.04, -0.01, 0.06]}, ("a",)),
                                         ({"a": [0.04], "b": [0.02, 0.05, -0.01]}, ()),
                                         ({"a": [-0.07, -0.02, -0.12], "b": [-0.01, -0.09]}, ("b",))])
@pytest.mark.parametrize("level", [0.95, 0.975])
def test_pairs_to_separate_from_each_tasks_moments_is_the_count_from_the_pairs(diffs, fixed, level):
    moments = {t: (len(v), statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan) for t, v in
               diffs.items()}
    assert pairs_to_separate_moments(moments, fixed, level) == pairs_to_separate(diffs, fixed, level)


def test_a_claim_looked_at_twice_is_judged_on_intervals_corrected_for_both_looks():
    """BSZO's pairs were looked at twice (at 4 seeds, then at the 6 that look asked for): at 95% each, the two looks
    together would call the claim by chance more than 5% of the time. With 2 looks each interval is at 97.5%
    (Bonferroni), and what would separate is counted at that level."""
    acc = {"a": [0.021, 0.035, 0.010, 0.030], "b": [0.024, 0.002, 0.040, 0.015, 0.030]}
    loss = {t: [0.0, 0.001, -0.001, 0.0005, -0.0005][: len(v)] for t, v in acc.items()}
    m = {"d_eval": paired_interval(acc), "d_loss": paired_interval(loss),
         "win_eval": win_rate([(1, 0)] * 8 + [(0, 1)], True),
         "per_task": {t: {"d_eval": paired_interval({t: v})} for t, v in acc.items()}}
    assert 0 < m["d_eval"]["lo"] and paired_interval(acc, level=0.975)["lo"] > 0  # separated at both levels
    assert claims.better_verdict(m)[0] == claims.better_verdict(m, looks=2)[0] == claims.HOLDS
    acc["b"][1] = -0.027  # now 95% separates, 97.5% does not
    m.update(d_eval=paired_interval(acc), per_task={t: {"d_eval": paired_interval({t: v})} for t, v in acc.items()})
    assert m["d_eval"]["lo"] > 0 > paired_interval(acc, level=0.975)["lo"]
    assert claims.better_verdict(m)[0] == claims.HOLDS
    v, measured, separate = claims.better_verdict(m, looks=2)
    assert v == claims.INCONCLUSIVE and "(97.5% intervals, the win-rate's too: Bonferroni over its 2 looks)" in measured
    lo, hi = wilson(8, 9, z=2.241402727604947)  # the normal 98.75% quantile
    assert measured.endswith(f"win-rate (acc) 0.89 [{lo:.2f}, {hi:.2f}]") and (lo, hi) < wilson(8, 9)
    lo, hi = (f"{paired_interval(acc, level=0.975)[k]:+.3f}" for k in ("lo", "hi"))
    assert measured.startswith(f"Δ eval acc {m['d_eval']['mean']:+.3f} [{lo}, {hi}]")
    need = pairs_to_separate(acc, level=0.975)
    assert separate.startswith(f"~{math.ceil(need)} pairs to separate") and "from 0 at 97.5%" in separate
    assert need > 9


def test_what_would_separate_says_when_no_seed_can_be_had():
    """Every task fixed (its data cannot be had here): no count of seeds; a mean of 0 whose tasks' differences do
    not cancel when one grows: the count, not "no difference"; a count past 10,000 is not called impossible."""
    base = {"mean": -0.05, "lo": -0.2, "hi": 0.1, "n": 3, "tasks": {"a": 3}}
    assert claims._acc_need({**base, "fixed": ["a"], "pairs_to_separate": math.inf}) == (
        "no more seeds here: a cannot gain any (no data; have 3 pair(s))")
    cancel = {**base, "mean": 0.0, "tasks": {"a": 3, "b": 3}, "fixed": ["a"], "pairs_to_separate": 8}
    assert claims._acc_need(cancel).startswith("~8 pairs") and "a cannot gain seeds here" in claims._acc_need(cancel)
    assert claims._acc_need({**base, "pairs_to_separate": math.inf}).startswith("more than 10,000 pairs")
    lone = {**base, "lo": math.nan, "tasks": {"a": 1, "b": 3}, "fixed": ["a"], "pairs_to_separate": math.inf}
    assert claims._acc_need(lone) == "no interval here: a has 1 pair and cannot gain seeds (no data)"


def test_one_seed_is_inconclusive_whatever_its_sign():
    """A single (task, seed) pair: a task with one seed gives no interval, so no verdict but 'inconclusive'."""
    from bench.stats import paired_interval, win_rate
    d_eval, d_loss = paired_interval({"t": [-0.105]}), paired_interval({"t": [0.0355]})
    m = {"d_eval": d_eval, "d_loss": d_loss, "win_eval": win_rate([(0.61, 0.715)], True)}
    v, measured, separate = claims.better_verdict(m)
    assert v == claims.INCONCLUSIVE and "no interval" in measured and ">= 2 seeds" in separate


@pytest.mark.parametrize("wins,n,d_lo,verdict", [(19, 20, 0.01, claims.HOLDS), (9, 20, 0.01, claims.FAILS),
                                                 (7, 9, 0.01, claims.INCONCLUSIVE),
                                                 (19, 20, -0.01, claims.INCONCLUSIVE)])
def test_policy_verdicts(wins, n, d_lo, verdict):
    from bench.stats import win_rate

    w = win_rate([(0.1, 0.2)] * wins + [(0.3, 0.2)] * (n - wins), higher_is_better=False)
    assert claims.policy_verdict({"win_loss": w, "d_eval": _d(0.02, d_lo, 0.05)})[0] == verdict


@pytest.mark.parametrize("wins,n,d_lo,says", [
    (3, 3, 0.01, "~4 pairs at the observed rate 1.00 (have 3)"),   # the rate is the claim's; 3 of 3 is [0.44, 1]
    (2, 3, 0.01, "at the observed rate 0.67 (have 3)"),            # below 0.82: the interval has to drop under it
    (19, 20, -0.01, "pairs to separate Δ acc +0.020 from 0"),       # the win-rate holds, the accuracy does not yet
    (0, 1, float("nan"), ">= 2 seeds on every task"),               # one pair: 0 of 1 is [0, 0.79], no verdict
])
def test_an_inconclusive_policy_verdict_says_what_would_decide_it(wins, n, d_lo, says):
    from bench.stats import win_rate

    w = win_rate([(0.1, 0.2)] * wins + [(0.3, 0.2)] * (n - wins), higher_is_better=False)
    verdict, _, separate = claims.policy_verdict({"win_loss": w, "d_eval": _d(0.02, d_lo, 0.05)})
    assert verdict == claims.INCONCLUSIVE and says in separate


def test_the_claims_on_a_share_of_pairs_get_enough_seeds_to_be_decided(tmp_path):
    """3 of 3 wins is [0.44, 1]: the ZO Fine-tuner claim could never hold at 3 pairs; the full phase runs 4
    (`--seeds auto`), or 4 over its tasks; given seeds are kept. In the prefix phase, FO-AdamW's k and
    Bilevel-ZOFO's reach (shares too) run 4 seeds on each task with auto (MeZO with them), and every other method
    pairs with each of MeZO's runs."""
    from bench import evidence
    from bench.stats import wilson

    n = claims.share_pairs_to_decide()
    assert wilson(n, n)[0] > 0.5 >= wilson(n - 1, n - 1)[0] and n == 4
    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["navigate", "tweet_sentiment"]}))

    def seeds(*flags, phase="full"):
        argv = evidence.harness_argv(evidence.parse_args(["--out", str(tmp_path), *flags]), phase)
        return _flag(argv, "--seeds")

    assert seeds() == seeds(phase="full-shipped") == "0,1,2,3"
    assert seeds("--full-tasks", "2") == "0,1,2" and seeds("--seeds", "1,2") == "1,2"
    (tmp_path / "full").mkdir()  # a task already holds 4 seeds: widening the phase keeps them all in its pairs
    (tmp_path / "full" / "runs.jsonl").write_text("".join(
        json.dumps({"label": label, "config": {"task": "navigate", "seed": s}}) + "\n"
        for s in range(4) for label in ("mezo", "zo-finetuner")))
    assert seeds("--full-tasks", "2") == "0,1,2,3"
    assert seeds(phase="prefix") == "auto"
    prefix = _methods(evidence.harness_argv(evidence.parse_args(["--out", str(tmp_path)]), "prefix"))
    more = evidence.MORE_PREFIX_SEEDS
    assert prefix[0] == "mezo" and prefix[1:] == [f"{m}:{m}:seeds={more.get(m, 4)}" if ":" not in m else f"{m}:seeds=4"
                                                  for m in evidence.PREFIX_METHODS[1:]]
    assert more == {"bszo": 6} and "bszo:bszo:seeds=6" in prefix and "fo-adamw:fo-adamw:seeds=4" in prefix
    assert "bszo-matched:bszo:match=mezo:seeds=4" in prefix and "gv-matched:mezo-gv:match=mezo:seeds=4" in prefix
    given = _methods(evidence.harness_argv(evidence.parse_args(["--out", str(tmp_path), "--seeds", "1,2"]), "prefix"))
    assert given == evidence.PREFIX_METHODS


def test_the_cost_estimate_counts_the_runs_the_prefix_phase_asks_for(tmp_path):
    """The page's prefix cost counts what the phase's argv asks for: each method's seeds= (BSZO's 6 from
    MORE_PREFIX_SEEDS), MeZO as many as the most any method runs, 3 lrs for a method without match=."""
    from bench import evidence, evidence_doc

    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["tweet_sentiment"]}))
    argv = evidence.harness_argv(evidence.parse_args(["--out", str(tmp_path)]), "prefix")
    specs = [m for m in _methods(argv) if m != "mezo"]
    seeds = [int(m.split("seeds=")[1]) for m in specs]
    lrs = 3 * (1 + sum("match=" not in m for m in specs))
    assert max(seeds) == 6 and evidence_doc.prefix_runs(evidence.PREFIX_METHODS, 4, 3, evidence.MORE_PREFIX_SEEDS) \
        == (lrs, sum(seeds) + max(seeds)) == (21, 44)
    assert evidence_doc.prefix_runs(["mezo", "bszo"], 4, 5, {}) == (6, 9)          # MeZO's own count when it is more
    assert evidence_doc.prefix_runs(["bszo", "x:y:match=bszo"], 2, 2, {"bszo": 3}) == (3, 5)  # no MeZO, no lrs


def test_share_verdicts():
    assert claims.share_verdict(18, 20, "x")[0] == claims.HOLDS
    assert claims.share_verdict(2, 20, "x")[0] == claims.FAILS
    assert claims.share_verdict(5, 9, "x")[0] == claims.INCONCLUSIVE
    assert claims.share_verdict(0, 0, "x")[0] == claims.NOT_RUN


def test_an_inconclusive_share_says_how_many_pairs_would_decide_it():
    """MeZO reached FO-AdamW's loss on 0/3 pairs: Wilson [0, 0.56] straddles 0.5, and 0/4 ([0, 0.49]) would not."""
    from bench.stats import wilson

    assert wilson(0, 3)[1] > 0.5 > wilson(0, 4)[1]
    v, _, sep = claims.share_verdict(0, 3, "x")
    assert v == claims.INCONCLUSIVE and sep.startswith("~4 pairs")
    assert claims.share_verdict(0, 4, "x")[::2] == (claims.FAILS, "—")
    k = {"n": 3, "reached": 0, "median_k": None, "k_at_least": 10.0}
    v, measured, sep = claims.fo_claim({"methods": {"fo-adamw": {"k": k}}}, None)
    assert v == claims.INCONCLUSIVE and "k > 10" in measured and sep.startswith("fo-adamw: ~4 pairs")
    assert "to measure k: MeZO runs past 10x FO's forward passes" in sep and "64x" in sep  # the budget caps k at 10
    reached = {"n": 3, "reached": 3, "median_k": 4.0, "k_at_least": None}
    assert "to measure k" not in claims.fo_claim({"methods": {"fo-adamw": {"k": reached}}}, None)[2]


def test_smoke_suite_writes_the_claims_table_and_resumes(tiny_smollm_base, tmp_path):
    from bench import evidence

    out, docs = tmp_path / "ev", tmp_path / "docs"
    argv = ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--docs", str(docs)]
    assert evidence.main(argv) == 0
    doc = (docs / "evidence.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == 8  # the six claims (GV, Greedy and the two policies a row each), each with a verdict
    verdicts = [line.split("**")[1] for line in rows]
    plain = {re.sub(r" (\(matched step\)|within \d+x \(the paper's ~64x not run\))$", "", v) for v in verdicts}
    assert plain <= {claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE, claims.NOT_RUN}
    assert verdicts[1].endswith(" (matched step)")  # the smoke runs GV only at MeZO's step: that verdict stands in
    assert verdicts[-1] == claims.NOT_RUN                                # no --meta-init given
    assert verdicts[0] != claims.NOT_RUN and "matched step: Δ eval acc" in rows[1]  # FO and GV-matched measured
    assert "## 1. The learnability scan" in doc and "| tweet_sentiment |" in doc and "peak RSS" in doc
    assert "for the issue's 4, before the full-parameter" in doc      # the cut section's measured run cost
    assert "median prompt ≤ 128 tokens" in doc  # a 1-task panel (< 4) widened the scan to the last cut
    assert (docs / "evidence_learnability.png").exists() and (docs / "evidence_prefix.png").exists()
    assert "![evidence_claims.png](evidence_claims.png)" in doc and (docs / "evidence_claims.png").exists()
    counts = {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("*/runs.jsonl")}
    assert set(counts) >= {"learnability", "prefix", "full", "bf16"}
    bf16 = [json.loads(line) for line in (out / "bf16" / "runs.jsonl").read_text().splitlines()]
    assert {r["config"]["dtype"] for r in bf16} == {"bf16"}
    # bf16 runs each method at its fp32 prefix lr, no search: 2 methods x 2 seeds
    assert len(bf16) == 4 and {(r["label"], r["lr"]) for r in bf16} == {
        (m, evidence.prefix_lrs(evidence.parse_args(argv), "tweet_sentiment")[m]) for m in ("mezo", "bszo")}
    # the harness: MeZO's lr chosen on dev, GV at MeZO's lr x effective step, a first-order run of budget // 10 steps
    summary = json.loads((out / "prefix" / "summary.json").read_text())
    prefix = [json.loads(line) for line in (out / "prefix" / "runs.jsonl").read_text().splitlines()]
    mezo_lr = summary["methods"]["mezo"]["per_task"]["tweet_sentiment"]["lr"]
    assert mezo_lr in (1e-2, 3e-2) and ("mezo", 1, mezo_lr) in {(r["label"], r["config"]["seed"], r["lr"])
                                                                for r in prefix}
    gv = summary["methods"]["gv-matched"]["per_task"]["tweet_sentiment"]
    assert gv["effective_step"] > 1.5 and gv["lr"] == pytest.approx(mezo_lr / gv["effective_step"], rel=1e-3)
    probes = [r for r in prefix if r["label"] == "gv-matched" and r["lr"] == mezo_lr]
    assert [r["steps"] for r in probes] == [2] and not gv["dev_per_lr"]  # one short probe at MeZO's lr
    assert summary["methods"]["fo-adamw"]["per_task"]["tweet_sentiment"]["steps"] == 1  # budget 8 // 10 -> 1 step
    assert summary["methods"]["gv-matched"]["win_eval"]["n"] == 2 and summary["methods"]["fo-adamw"]["k"]["n"] == 2
    assert sum(1 for r in prefix if r["config"].get("zero_shot")) <= 1   # zero-shot once per task (or from the scan)
    assert evidence.main(argv + ["--phases", "scan,prefix,full,bf16"]) == 0  # resumed: no run repeats
    assert {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("*/runs.jsonl")} == counts
    doc = (docs / "evidence.md").read_text()
    assert "median prompt ≤ 128 tokens" in doc  # the rerun resumed the scan at the widened cut, not at the first
    # a wiped --out (a fresh clone): the records kept beside the doc rewrite the same doc and resume the suite
    kept = docs / "data" / "evidence"
    assert (kept / "prefix" / "runs.jsonl").read_bytes() == (out / "prefix" / "runs.jsonl").read_bytes()
    assert list(kept.glob("prefix/*/history.json")) and not list(kept.rglob("*.ckpt"))
    shutil.rmtree(out)
    assert evidence.main(argv + ["--report"]) == 0
    assert (docs / "evidence.md").read_text() == doc
    assert evidence.main(argv + ["--phases", "scan,prefix,full,bf16"]) == 0
    assert {p.parent.name: len(p.read_text().splitlines()) for p in out.glob("*/runs.jsonl")} == counts


def test_mezo_claim_shows_the_memory_before_k_is_measured():
    memory = {"rows": [{"what": "inference", "peft": None, "peak_rss_gb": 1.0},
                       {"what": "mezo", "peft": "full", "peak_rss_gb": 1.2},
                       {"what": "fo-adamw", "peft": "full", "peak_rss_gb": 4.8}]}
    v, measured, _ = claims.fo_claim(None, memory)
    assert (v == claims.NOT_RUN and "FO-AdamW 4.80 GiB vs MeZO 1.20 GiB (4.0x)" in measured
            and "1.20x inference" in measured)
    k = {"n": 6, "reached": 6, "median_k": 3.0, "k_at_least": None}
    prefix = {"methods": {"fo-adamw": {"k": k}, "fo-sgd": {"k": {**k, "reached": 0, "median_k": None,
                                                                 "k_at_least": 10.0}}}}
    v, measured, _ = claims.fo_claim(prefix, None)
    assert "median k 3.0" in measured and "k > 10" in measured  # MeZO never reached FO-SGD: the claim fails as
    assert v == f"{claims.FAILS} within 10x (the paper's ~64x not run)"  # restated, at a k the paper's recipe passes
    prefix["methods"]["fo-sgd"]["k"]["k_at_least"] = 100.0
    assert claims.fo_claim(prefix, None)[0] == claims.FAILS  # past the paper's k: a plain failure
    short = {"n": 3, "reached": 0, "median_k": None, "k_at_least": 10.0}  # FO-AdamW inconclusive within 10x
    assert claims.fo_claim({"methods": {"fo-adamw": {"k": short}, **prefix["methods"]}}, None)[0] == claims.FAILS
    once = {"n": 8, "reached": 1, "median_k": 9.0, "k_at_least": 10.0, "cap": 10.0}  # reached once within 10x
    assert claims.fo_claim({"methods": {"fo-sgd": {"k": once}}}, None)[0] == f"{claims.FAILS} within 10x (the " \
        "paper's ~64x not run)"


def test_the_page_says_where_the_runs_are_when_some_panel_tasks_have_no_data(tmp_path):
    """Above the claims: the runs per panel task and the tasks whose data could not be had (the harness summaries'
    no_data); nothing when every task's data can be had. Under section 5: why the meta-initialisation's rows stop
    when its weights are not on this machine (not kept with the records), nothing when they are."""
    import argparse

    from bench import artefacts, evidence_doc
    from bench.records import append_record
    from zoo.artefact import WEIGHTS_NAME

    out = tmp_path / "evidence"
    panel = {"tasks": ["a", "b", "c"], "scanned": ["a", "b", "c", "f1", "f2"]}
    for folder in ("learnability", "prefix", "artefacts/bilevel-zofo"):
        (out / folder).mkdir(parents=True)
    (out / "learnability" / "panel.json").write_text(json.dumps(panel))
    for task in ("a", "a", "b"):
        append_record(out / "prefix" / "runs.jsonl", {"task": task, "config": {}})
    args = argparse.Namespace(max_tasks=2, full_tasks=2, meta_init=None)
    (out / "prefix" / "summary.json").write_text(json.dumps({"no_data": {}}))
    assert evidence_doc.where_ran(out, panel, args) == []
    (out / "prefix" / "summary.json").write_text(json.dumps({"no_data": {"a": "no BIG-bench files here"}}))
    note = evidence_doc.where_ran(out, panel, args)[0]
    assert "per panel task: a 2, b 1, c 0 (c: past the phases' --max-tasks 2 and --full-tasks 2)" in note
    assert "The data of a cannot be had" in note and "the remaining runs are on b" in note

    assert evidence_doc.meta_init_gone(out, args) == []  # no meta-initialisation yet
    append_record(out / "artefacts" / "bilevel-zofo" / "rounds.jsonl", {"round": 1, "meta_steps": 4, "metric": 0.1})
    gone = evidence_doc.meta_init_gone(out, args)[0]
    assert "round-1/meta-init" in gone and "is not on this machine" in gone and "(f1, f2)" in gone
    (out / "metainit").mkdir()
    (out / "metainit" / "summary.json").write_text(json.dumps({"complete": True}))
    assert evidence_doc.meta_init_gone(out, args) == []  # every run made: nothing stops
    (out / "metainit" / "summary.json").write_text(json.dumps({"complete": False}))
    assert evidence_doc.meta_init_gone(out, args)[0] == gone
    weights = artefacts.artefact(out, "bilevel-zofo", 1) / WEIGHTS_NAME
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    assert evidence_doc.meta_init_gone(out, args) == []


def test_the_docs_memory_section_is_the_committed_raw_outputs_rendering():
    """docs/evidence.md section 6 and the MeZO claim's memory are bench/fo_memory.py's committed output
    (docs/data/fo_memory_full_prefix.json) rendered, with the command that made it: no hand-edited number, and a
    lost runs/ folder loses nothing the page shows."""
    from pathlib import Path

    from bench.evidence_doc import load_memory, memory_file, memory_section

    docs = Path(__file__).resolve().parents[1] / "docs"
    mem = load_memory(docs)
    assert mem is not None and memory_file(docs).is_relative_to(docs / "data")
    doc = (docs / "evidence.md").read_text()
    section = doc[doc.index("## 6. Peak memory"):doc.index("## 7. ")]
    assert section == "\n".join(memory_section(docs)) + "\n"
    assert f"`{mem['command']}`" in section and "bench/fo_memory.py" in mem["command"] and mem["commit"] in section
    assert claims.memory_text(mem) in doc
    assert {(r["what"], r["peft"]) for r in mem["rows"]} >= {("inference", None), ("mezo", "full"),
                                                              ("fo-adamw", "full"), ("mezo", "prefix"),
                                                              ("fo-adamw", "prefix")}


def test_the_lora_memory_table_in_the_benchmarks_is_the_committed_raw_output():
    """docs/benchmarks.md's Bilevel-ZOFO memory table quotes docs/data/fo_memory_lora.json's peaks and its command."""
    from pathlib import Path

    from bench import fo_memory

    mem = json.loads(fo_memory.default_out("lora").read_text())
    doc = (Path(fo_memory.ROOT) / "docs" / "benchmarks.md").read_text()
    assert mem["command"] in doc and mem["commit"] in doc
    for r in mem["rows"]:
        label = r["what"] if r["peft"] is None else f"{r['what']}, LoRA"
        assert f"| {label} | {r['peak_rss_gb']:.3f} |" in doc, label


def test_fo_memory_writes_one_committed_file_per_set_of_peft_modes():
    from bench import fo_memory

    assert fo_memory.default_out("full,prefix").relative_to(fo_memory.ROOT).as_posix() == \
        "docs/data/fo_memory_full_prefix.json"
    assert fo_memory.default_out("lora").name == "fo_memory_lora.json"  # the LoRA run does not overwrite it


def test_harness_stops_at_its_cpu_budget_and_reports_what_exists(tiny_base, tmp_path):
    from bench import harness

    argv = ["--smoke", "--base", tiny_base, "--tasks", "tweet_sentiment", "--out", str(tmp_path / "h"), "--lr-grid",
            "1,3", "--extend", "0", "--method", "mezo", "--method", "fo-sgd", "--cpu-budget-h", "1e-9"]
    summary = harness.run_suite(harness.parse_args(argv))                # the first run spends the whole budget
    runs = (tmp_path / "h" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 1 and not summary["complete"] and summary["final_runs"] == 0
    assert "**Partial**" in (tmp_path / "h" / "table.md").read_text()
    again = harness.run_suite(harness.parse_args(argv[:-2] + ["--report"]))  # --report: nothing runs
    assert (tmp_path / "h" / "runs.jsonl").read_text().splitlines() == runs and again["final_runs"] == 0


def test_an_empty_panel_skips_the_harness_phases_and_the_doc_says_it_is_not_established(tmp_path, capsys):
    from bench import evidence

    out, docs = tmp_path / "ev", tmp_path / "docs"
    (out / "learnability").mkdir(parents=True)
    (out / "learnability" / "panel.json").write_text(json.dumps({"tasks": [], "settings": {}, "runs": "x"}))
    (out / "learnability" / "table.md").write_text("| task |\n\nStill to run at this cut: stage 1 on fever\n")
    argv = ["--report", "--phases", "prefix,full,bf16,metainit", "--out", str(out), "--docs", str(docs)]
    assert evidence.main(argv) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(said) == 4 and all("skipped: the panel is empty" in line for line in said)
    doc = (docs / "evidence.md").read_text()
    assert "**The evidence panel is not established yet.** It needs 4 tasks" in doc and "the scan has found 0" in doc
    assert "Still to run at this cut: stage 1 on fever" in doc                 # section 1 is the scan's table
    assert not list(out.glob("*/runs.jsonl"))                                  # nothing ran
    args = evidence.parse_args(["--out", str(tmp_path / "none")])
    assert evidence.skip_reason(args, "prefix").startswith("no panel yet")


def test_bf16_waits_for_the_lrs_the_prefix_phase_has_reported_and_names_those_missing(tmp_path):
    from bench import evidence

    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["navigate"]}))
    args = evidence.parse_args(["--out", str(tmp_path)])
    assert "not reported mezo and bszo's lr on navigate" in evidence.skip_reason(args, "bf16")

    def report(lrs):
        (tmp_path / "prefix").mkdir(exist_ok=True)
        (tmp_path / "prefix" / "summary.json").write_text(json.dumps({"methods": {
            m: {"per_task": {"navigate": {"lr": lr}}} for m, lr in lrs.items()}}))

    report({"mezo": 0.01, "bszo": None})
    assert "not reported bszo's lr on navigate yet" in evidence.skip_reason(args, "bf16")
    report({"mezo": 0.01, "bszo": 0.03})
    assert evidence.skip_reason(args, "bf16") is None


def test_a_harness_phase_without_a_final_run_reads_not_run_yet(tmp_path):
    """`--report` on a panel a phase has not reached writes a summary with no final run; the doc shows that phase as
    not run (not a table of dashes and an empty plot), and shows it once it has a run."""
    from bench import evidence, evidence_doc

    out, docs = tmp_path / "ev", tmp_path / "docs"
    for phase, runs in (("prefix", 1), ("full", 0)):
        (out / phase).mkdir(parents=True)
        (out / phase / "summary.json").write_text(json.dumps({"final_runs": runs}))
        (out / phase / "table.md").write_text(f"| {phase} table |\n")
        (out / phase / "loss_vs_forwards.png").write_bytes(b"png")
    doc = evidence_doc.render(out, docs, evidence.parse_args(["--out", str(out)]), [])
    full = doc[doc.index("## 3."):doc.index("## 4.")]
    assert "| prefix table |" in doc and "evidence_prefix.png" in doc
    assert "*not run yet*" in full and "| full table |" not in full and "evidence_full.png" not in full


def test_the_doc_says_when_the_scans_lora_stage_has_not_run(tmp_path):
    from bench import evidence, evidence_doc

    out, docs = tmp_path / "ev", tmp_path / "docs"
    (out / "learnability").mkdir(parents=True)
    runs = out / "learnability" / "runs.jsonl"
    runs.write_text(json.dumps({"name": "s2-navigate-prefix-lr0.01"}) + "\n")
    args = evidence.parse_args(["--out", str(out)])
    assert "- LoRA in the scan (stage 2 in LoRA" in evidence_doc.render(out, docs, args, [])
    with runs.open("a") as f:
        f.write(json.dumps({"name": "s2-navigate-lora-lr0.0001"}) + "\n")
    assert "LoRA in the scan" not in evidence_doc.render(out, docs, args, [])


def test_the_scans_lora_rows_come_from_its_records_where_its_table_cannot_be_rewritten(tmp_path):
    """The lora phase runs on the tasks whose data is here, and the scan's table (it profiles every scanned task) is
    then kept; the page shows LoRA's rows from the records: the dev-chosen lr and its paired delta over the stage-1
    run's zero-shot scores, the grid said unfinished until its three lrs are in. A table that has them adds none."""
    from bench import evidence, evidence_doc

    out, docs = tmp_path / "ev", tmp_path / "docs"
    (out / "learnability").mkdir(parents=True)
    zero = [0, 1, 0, 0, 1, 0, 0, 0]
    s1 = {"name": "s1-tweet_sentiment-prefix-lr0.01", "config": {"task": "tweet_sentiment"}, "lr": 1e-2,
          "per_example": {"zero_shot": {"eval": zero}, "final": {"eval": zero}}, "final": {"eval": 0.25}}
    finals = {3e-4: [0, 1, 1, 0, 1, 0, 0, 0], 1e-3: [1, 1, 1, 0, 1, 1, 0, 1], 3e-3: [1, 0, 0, 0, 0, 0, 0, 0]}
    dev = {3e-4: 0.30, 1e-3: 0.45, 3e-3: 0.20}

    def s2(lr):
        return {"name": f"s2-tweet_sentiment-lora-lr{lr:.3g}", "config": {"task": "tweet_sentiment"}, "lr": lr,
                "final": {"dev": dev[lr], "eval": sum(finals[lr]) / 8}, "final_train_loss": 1.0,
                "per_example": {"final": {"eval": finals[lr]}}}

    runs = out / "learnability" / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in (s1, s2(3e-4), s2(1e-3))))
    args = evidence.parse_args(["--out", str(out)])
    d = [f - z for f, z in zip(finals[1e-3], zero)]
    row = (f"| tweet_sentiment | 0.0003: 0.300, 0.001: 0.450 | 0.001 | 0.750 | {statistics.mean(d):+.3f} ± "
           f"{statistics.stdev(d) / math.sqrt(8):.3f} (+2.6 se) |")
    page = evidence_doc.render(out, docs, args, [])
    assert "lr grid still running on tweet_sentiment." in page and row in page
    with runs.open("a") as f:
        f.write(json.dumps(s2(3e-3)) + "\n")
    page = evidence_doc.render(out, docs, args, [])
    assert "lr grid still running" not in page and "from its records" in page and "edge" not in page
    assert "| tweet_sentiment | 0.0003: 0.300, 0.001: 0.450, 0.003: 0.200 | 0.001 | 0.750 |" in page
    dev[3e-3] = 0.5  # the best at the grid's top: the run past it is still to come
    runs.write_text("".join(json.dumps(r) + "\n" for r in (s1, s2(3e-4), s2(1e-3), s2(3e-3))))
    page = evidence_doc.render(out, docs, args, [])
    assert "on tweet_sentiment the dev-chosen lr is the edge of those run, so one more run past it" in page
    finals[1e-2], dev[1e-2] = finals[3e-3], 0.6  # the run past it, best again: --extend 1 is spent, the choice final
    with runs.open("a") as f:
        f.write(json.dumps(s2(1e-2)) + "\n")
    page = evidence_doc.render(out, docs, args, [])
    assert "edge" not in page and "| 0.01 | 0.125 |" in page
    (out / "learnability" / "table.md").write_text("| task | LoRA dev per lr | chosen lr | eval | Δ |\n")
    assert "from its records" not in evidence_doc.render(out, docs, args, [])


def test_smoke_suite_trains_the_panel_artefacts_and_uses_them_on_the_panel(tiny_smollm_base, tmp_path):
    """The artefacts phase on the tiny base: the policy and the meta-initialisation meta-trained in rounds on the
    task family (the scan here admits only the panel task, so two scanned tasks that did not move are added to
    its panel.json), then the full phase runs the new policy and the metainit phase the new meta-initialisation."""
    from bench import artefacts, evidence

    out, docs = tmp_path / "ev", tmp_path / "docs"
    argv = ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--docs", str(docs)]
    assert evidence.main(argv + ["--phases", "scan,artefacts"]) == 0  # a family of none: skipped, the suite goes on
    assert not (out / "artefacts").exists()
    path = out / "learnability" / "panel.json"
    panel = json.loads(path.read_text())
    assert panel["scanned"] == ["tweet_sentiment"] == panel["tasks"]
    path.write_text(json.dumps({**panel, "scanned": ["imdb", "tweet_sentiment", "piqa"]}))
    assert evidence.main(argv + ["--phases", "artefacts,full,metainit"]) == 0
    for kind in artefacts.KINDS:
        rows = artefacts.rounds(out, kind)
        assert 1 <= len(rows) <= 2 and all(r["cpu_s"] > 0 for r in rows)
        res = json.loads((out / "artefacts" / kind / "round-1" / "results.json").read_text())
        trained = res["tasks"] if kind == "zo-finetuner" else res["training"]["tasks"]
        assert trained == ["piqa"]  # imdb meta-validates; tweet_sentiment (the panel) is in neither
    full = json.loads((out / "full" / "summary.json").read_text())
    assert full["methods"]["zo-finetuner-panel"]["spec"]["policy"] == artefacts.best(out, "zo-finetuner")
    meta = json.loads((out / "metainit" / "summary.json").read_text())
    assert meta["methods"]["mezo-init"]["spec"]["init"] == artefacts.best(out, "bilevel-zofo")
    doc = (docs / "evidence.md").read_text()
    section = doc[doc.index("## 8. Learned artefacts"):doc.index("## What was cut")]
    for kind in artefacts.KINDS:
        rows = artefacts.rounds(out, kind)
        for r in rows:
            assert f"| {r['round']} | {r['meta_steps']} | {r['metric']:+.4f} | {'yes' if r['improved'] else 'no'} |" \
                in section
        used = artefacts.shown(artefacts.best(out, kind), out)
        assert f"Used: round {artefacts.decide(rows, 0, 9)[1]['round']} (`{used}`)" in section
    claim = next(line for line in doc.splitlines() if line.startswith("| Bilevel-ZOFO meta-initialisation"))
    assert "the artefacts phase's round-" in claim and "**not measured**" not in claim


def test_the_bszo_row_shows_the_dev_chosen_lr_the_matched_step_and_bf16(tmp_path):
    """BSZO's step differs from MeZO's by its definition (its effective step was ~2x at its dev lr): its row shows
    the matched-step comparison beside the dev-chosen one and the bf16 cell; the verdict is the dev-chosen lr's,
    with the matched step's standing in until that has run."""
    def write(phase, methods):
        (tmp_path / phase).mkdir(exist_ok=True)
        (tmp_path / phase / "summary.json").write_text(json.dumps({"methods": methods}))

    write("prefix", {"bszo-matched": _m(_d(-0.05, -0.08, -0.02), _d(+0.02, +0.01, +0.03))})
    row = next(r for r in claims.claim_rows(tmp_path) if r[0].startswith("BSZO"))
    assert row[3] == f"{claims.FAILS} (matched step)" and "matched step: Δ eval acc -0.050 [-0.080, -0.020]" in row[2]
    write("prefix", {"bszo": _m(_d(-0.02, -0.09, +0.05), _d(-0.01, -0.03, +0.01)),
                     "bszo-matched": _m(_d(-0.05, -0.08, -0.02), _d(+0.02, +0.01, +0.03))})
    write("bf16", {"bszo": _m(_d(+0.04, +0.01, +0.07), _d(-0.02, -0.03, -0.01))})
    row = next(r for r in claims.claim_rows(tmp_path) if r[0].startswith("BSZO"))
    wider = at_level(_d(-0.02, -0.09, +0.05), 0.975)  # BSZO at its own lr had a second look (MORE_PREFIX_SEEDS)
    assert row[3] == claims.INCONCLUSIVE and row[2].startswith(f"Δ eval acc -0.020 [{wider['lo']:+.3f}, "
                                                               f"{wider['hi']:+.3f}]")
    assert "(97.5% intervals, the win-rate's too: Bonferroni over its 2 looks) over 10" in row[2]
    assert "matched step: Δ eval acc -0.050 [-0.080, -0.020], Δ train loss +0.0200" in row[2]
    assert "bf16: Δ eval acc +0.040 [+0.010, +0.070]" in row[2] and f"({claims.HOLDS})" in row[2]


def test_the_panel_policy_row_shows_it_against_mezo_and_against_the_shipped_policy(tmp_path):
    w = {"rate": 0.9, "lo": 0.6, "hi": 0.98, "n": 10, "wins": 9, "ties": 0}
    full = {"methods": {"zo-finetuner-panel": {"win_loss": w, "d_eval": _d(0.03, 0.01, 0.05)}},
            "versus": {"zo-finetuner-panel:zo-finetuner": _m(_d(-0.03, -0.05, -0.01), _d(0.0, -0.01, 0.01))}}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "summary.json").write_text(json.dumps(full))
    row = next(r for r in claims.claim_rows(tmp_path) if "meta-trained for the panel" in r[0])
    assert row[3] == claims.HOLDS and "lower final loss on 9/10 pairs" in row[2]
    assert "vs the shipped policy: Δ eval acc -0.030 [-0.050, -0.010]" in row[2] and f"({claims.FAILS})" in row[2]
    meta = next(r for r in claims.claim_rows(tmp_path) if r[0].startswith("Bilevel-ZOFO meta-init"))
    assert meta[1].endswith("meta-initialisation: none yet") and meta[3] == claims.NOT_RUN


def test_the_claims_plot_draws_each_compared_method_on_the_side_of_0_its_interval_is(tmp_path):
    """bench/claims_plot.py: one row per comparison with a pair, in the claims table's order, coloured by where its
    interval lies (a flipped comparison would colour a failing method green); rows with no pair are left out."""
    from bench import claims_plot

    assert not claims_plot.plot(tmp_path, tmp_path / "c.png") and not (tmp_path / "c.png").exists()
    for phase, part in (("prefix", {"methods": {"mezo": {}, "fo-adamw": {"d_eval": _d(0.16, 0.12, 0.2, n=8)},
                                                "bszo": {"d_eval": _d(-0.08, -0.17, 0.02, n=7)},
                                                "mezo-greedy": {"d_eval": _d(-0.02, math.nan, math.nan, n=1)},
                                                "gv-matched": {"d_eval": _d(-0.08, -0.12, -0.04, n=7)}}}),
                        ("full", {"methods": {"zo-finetuner-panel-matched": {"d_eval": _d(0.0, -0.02, 0.01, n=4)}},
                                  "versus": {"zo-finetuner-panel:zo-finetuner": {"d_eval": _d(0.03, 0.01, 0.05, n=4)}},
                                  "same_runs": {"zo-finetuner-panel-matched": "zo-finetuner-panel"}}),
                        ("metainit", {"methods": {"mezo-init": {"d_eval": _d(math.nan, math.nan, math.nan, n=0)}}})):
        (tmp_path / phase).mkdir()
        (tmp_path / phase / "summary.json").write_text(json.dumps(part))
    got = [(r["label"], r["side"]) for r in claims_plot.rows(tmp_path)]
    assert got == [("FO-AdamW (first-order ceiling)", "above"), ("MeZO-GV, matched step", "below"),
                   ("MeZO-Greedy, own lr", "no interval"), ("BSZO, own lr (97.5%: 2 looks)", "spans"),
                   ("ZO Fine-tuner panel policy, matched step (full)", "spans"),
                   ("ZO Fine-tuner panel policy − shipped policy (full)", "above")]
    assert [r["same_as"] for r in claims_plot.rows(tmp_path)][-2:] == ["zo-finetuner-panel", None]
    bszo = claims_plot.rows(tmp_path)[3]["d"]  # drawn as the claims table judges it: at 97.5%, its 2 looks
    assert (bszo["lo"], bszo["hi"]) == (at_level(_d(-0.08, -0.17, 0.02, n=7), 0.975)["lo"],
                                        at_level(_d(-0.08, -0.17, 0.02, n=7), 0.975)["hi"]) and bszo["lo"] < -0.17
    assert claims_plot.plot(tmp_path, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scan_widens_to_longer_prompts_at_a_max_length_that_holds_them():
    """The default cuts reach prompts past 64 tokens (the panel had too few tasks at 64 here): a cut runs the scan at
    a max length that holds it, so a task of median 84 tokens (vitaminc) is scanned at 128, not cut from the left."""
    from bench import evidence

    from bench.learnability import cut_length

    assert [cut_length(c) for c in (32, 48, 64, 65, 96, 128, 129)] == [64, 64, 64, 128, 128, 128, 256]
    args = evidence.parse_args([])
    assert args.cuts[-1] > 64
    argv = evidence.scan_argv(args, 96)
    assert argv[argv.index("--max-median") + 1] == "96" and argv[argv.index("--max-length") + 1] == "128"


def test_a_report_states_the_budget_the_suite_last_ran_under(tmp_path):
    """--cpu-hours given to a run is kept (<out>/suite.json, and with the records), so a later `--report` without
    it does not read the default 8 as the budget of runs made under 90."""
    from bench import evidence, snapshot

    out, docs = tmp_path / "ev", tmp_path / "docs"
    argv = ["--out", str(out), "--docs", str(docs)]
    assert evidence.parse_args(argv).cpu_hours == evidence.DEFAULT_CPU_HOURS
    evidence.record_budget(evidence.parse_args(argv + ["--cpu-hours", "90"]))
    evidence.record_budget(evidence.parse_args(argv + ["--cpu-hours", "5", "--report"]))  # a report keeps nothing
    assert evidence.parse_args(argv + ["--report"]).cpu_hours == 90
    snapshot.save(out, docs / "data" / "evidence")
    shutil.rmtree(out)  # a fresh clone: the kept copy
    assert evidence.parse_args(argv + ["--report"]).cpu_hours == 90
    assert evidence.parse_args(argv + ["--cpu-hours", "100"]).cpu_hours == 100


def test_two_workers_share_the_scan_and_run_the_second_lane_in_a_second_process(tiny_smollm_base, tmp_path, capfd):
    """--workers 2 (make evidence): the scan's two processes run each scan run once between them, and report them
    once (the last pass); the full phase runs in the second process beside the prefix phase here; both lanes' runs
    are in the records and the doc."""
    from bench import evidence

    out, docs = tmp_path / "ev", tmp_path / "docs"
    argv = ["--smoke", "--base", tiny_smollm_base, "--out", str(out), "--docs", str(docs), "--workers", "2",
            "--phases", "scan,prefix,full", "--max-median", "128"]
    assert evidence.main(argv) == 0
    assert capfd.readouterr().out.count("Panel rule: stage-2") == 1  # the scan's table, printed by one pass
    scan = [json.loads(line)["name"] for line in (out / "learnability" / "runs.jsonl").read_text().splitlines()]
    assert len(scan) == len(set(scan)) >= 3  # stage 1 and stage 2's lrs, none twice
    full = [json.loads(line) for line in (out / "full" / "runs.jsonl").read_text().splitlines()]
    assert {r["label"] for r in full} == {"mezo"} and (out / "prefix" / "summary.json").exists()
    assert (docs / "data" / "evidence" / "full" / "runs.jsonl").exists()  # the parent saved after the child ended
    assert "## 3. The ZO Fine-tuner policy" in (docs / "evidence.md").read_text()


def test_bf16_runs_after_the_prefix_phases_first_task_before_its_others(tmp_path):
    """bf16 needs only MeZO's and BSZO's lrs on the first task: it comes right after the methods up to BSZO there,
    before that task's others and the prefix phase's second task, so that every claim has a verdict before any claim
    gains power; the first-task pass is the prefix phase's (same --out, one task)."""
    from bench import evidence

    args = evidence.parse_args(["--out", str(tmp_path)])
    assert evidence.ordered(list(evidence.PHASES), args) == [
        "scan", "memory", "prefix-first", "bf16", "prefix", "widen", "artefacts", "full-shipped", "metainit", "full",
        "lora"]
    assert evidence.ordered(["prefix", "lora"], args) == ["prefix", "lora"]
    one = evidence.parse_args(["--out", str(tmp_path), "--max-tasks", "1"])
    assert evidence.ordered(["prefix", "bf16"], one) == ["prefix", "bf16"]
    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["navigate", "tweet_sentiment"]}))

    first, whole = evidence.harness_argv(args, "prefix-first"), evidence.harness_argv(args, "prefix")
    assert _flag(first, "--out") == _flag(whole, "--out") == str(tmp_path / "prefix")
    assert _flag(first, "--tasks") == "navigate" and _flag(whole, "--tasks") == "navigate,tweet_sentiment"

    labels = [m.split(":")[0] for m in _methods(whole)]
    assert labels == [m.split(":")[0] for m in evidence.PREFIX_METHODS]
    assert _methods(first) == _methods(whole)[:5]
    assert _methods(first)[-1].split(":")[0] == "bszo"  # bf16 needs their lrs


def test_metainit_reuses_the_prefix_phases_mezo_runs_from_the_base(tmp_path, tiny_base):
    """MeZO from the base in the metainit phase has the prefix phase's MeZO configurations: its runs there count
    (`--reuse`), so the phase runs only the meta-initialisation's own."""
    from bench import evidence
    from bench import harness as hn

    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["tweet_sentiment"]}))
    args = evidence.parse_args(["--out", str(tmp_path), "--meta-init", tiny_base])
    argv = evidence.harness_argv(args, "metainit")
    assert _flag(argv, "--reuse") == str(tmp_path / "prefix" / "runs.jsonl")
    assert "--reuse" not in evidence.harness_argv(args, "prefix")
    smoke = ["--smoke", "--base", tiny_base, "--tasks", "tweet_sentiment", "--lr-grid", "1", "--extend", "0", "--seeds",
             "0,1", "--method", "mezo"]
    hn.run_suite(hn.parse_args(smoke + ["--out", str(tmp_path / "prefix")]))
    hn.run_suite(hn.parse_args(smoke + ["--out", str(tmp_path / "metainit"), "--reuse", _flag(argv, "--reuse")]))
    assert not (tmp_path / "metainit" / "runs.jsonl").exists() or not \
        (tmp_path / "metainit" / "runs.jsonl").read_text().strip()


def test_metainit_runs_after_the_full_phases_shipped_policy_before_the_panel_policy(tmp_path):
    """The second lane reaches Bilevel-ZOFO's meta-initialisation claim before it compares the artefacts phase's
    policy: a first full-phase pass without that policy's rows (same --out, same tasks), metainit, then the whole
    full phase (the first pass's runs are done by then)."""
    from bench import evidence

    args = evidence.parse_args(["--out", str(tmp_path)])
    assert evidence.ordered(["artefacts", "full", "metainit", "lora"], args) == [
        "artefacts", "full-shipped", "metainit", "full", "lora"]
    assert evidence.ordered(["full", "lora"], args) == ["full", "lora"]
    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps({"tasks": ["navigate", "tweet_sentiment"]}))
    (tmp_path / "artefacts" / "zo-finetuner").mkdir(parents=True)
    (tmp_path / "artefacts" / "zo-finetuner" / "rounds.jsonl").write_text(json.dumps({"round": 1, "metric": 0.05}))
    assert evidence.panel_policy_methods(args), "the fixture should give the artefacts phase a policy"

    first, whole = evidence.harness_argv(args, "full-shipped"), evidence.harness_argv(args, "full")
    assert _flag(first, "--out") == _flag(whole, "--out") == str(tmp_path / "full")
    assert _flag(first, "--tasks") == _flag(whole, "--tasks") == "navigate" and "--peft" in first
    assert _methods(first) == evidence.FULL_METHODS and "--versus" not in " ".join(first)
    assert _methods(whole) == evidence.FULL_METHODS + evidence.panel_policy_methods(args)
    assert any(a.startswith(f"--versus={evidence.PANEL_POLICY}") for a in whole)


def test_two_workers_widen_the_scan_first_then_run_two_lanes():
    from bench import evidence

    def lanes(phases):
        return evidence.lanes(evidence.parse_args(["--workers", "2", "--phases", phases]))

    assert lanes(",".join(evidence.PHASES)) == (
        ["scan-widened", "lane", "memory", "prefix-first", "bf16", "prefix"], ["artefacts", "full", "metainit", "lora"])
    assert lanes("scan,prefix") == (["scan", "prefix"], [])
    assert lanes("widen") == (["scan-widened", "prefix"], [])          # widen's own prefix run
    assert lanes("full,bf16") == (["lane", "bf16"], ["full"])
    with pytest.raises(SystemExit):
        evidence.parse_args(["--workers", "3"])


def test_a_meta_initialisation_restored_without_its_weights_is_gone_and_a_scan_without_its_data_is_skipped(
        tmp_path, monkeypatch, capsys):
    """After a wipe the records bring back a meta-initialisation's card and config, not its weights (a base's size):
    the metainit phase says it is gone instead of running from a folder that cannot load. A scan whose tasks' data
    cannot be had here is skipped, saying why, and leaves the panel as it was (rewriting it would drop those tasks)."""
    from bench import evidence, learnability
    from l2o.tasks.errors import TaskError
    from zoo.artefact import WEIGHTS_NAME

    panel = {"tasks": ["tweet_sentiment"], "scanned": ["a", "b", "tweet_sentiment"], "settings": {"max_median": 64}}
    (tmp_path / "learnability").mkdir()
    (tmp_path / "learnability" / "panel.json").write_text(json.dumps(panel))
    rounds = tmp_path / "artefacts" / "bilevel-zofo"
    (rounds / "round-1" / "meta-init").mkdir(parents=True)
    (rounds / "rounds.jsonl").write_text(json.dumps({"round": 1, "meta_steps": 4, "metric": 0.1, "cpu_s": 1.0}) + "\n")
    for name in ("README.md", "config.json"):
        (rounds / "round-1" / "meta-init" / name).write_text("{}")
    args = evidence.parse_args(["--out", str(tmp_path)])
    assert "meta-initialisation" in evidence.skip_reason(args, "metainit") and "is gone" in \
        evidence.skip_reason(args, "metainit")
    assert evidence.skip_reason(evidence.parse_args(["--out", str(tmp_path), "--report"]), "metainit") is None
    (rounds / "round-1" / "meta-init" / WEIGHTS_NAME).write_bytes(b"weights")  # (a report reads only the records)
    assert evidence.skip_reason(args, "metainit") is None

    def no_data(argv):
        raise TaskError("task 'a' needs BIG-bench task files: no source here")

    monkeypatch.setattr(learnability, "main", no_data)
    before = (tmp_path / "learnability" / "panel.json").read_text()
    evidence.run_phase(args, "lora")
    assert "evidence: the scan is skipped, its records and panel stand as they are: task 'a' needs BIG-bench" \
        in capsys.readouterr().out
    evidence.scan_report(args)  # --report: the scan's table and panel are kept, not rewritten without the task
    assert "evidence: the scan's report is kept as it is, its tasks' data cannot be had here: task 'a' needs" \
        in capsys.readouterr().out
    assert (tmp_path / "learnability" / "panel.json").read_text() == before


def test_bilevel_counts_as_faster_only_where_it_needs_fewer_forward_passes_than_mezo(tmp_path):
    """The claim "faster than MeZO to a target loss": a pair counts where Bilevel-ZOFO reaches MeZO's final train
    loss in fewer forward passes than MeZO's run took (ratio < 1). Reaching it only at MeZO's own count (ratio 1:
    e.g. at the last step of an equal budget) is not faster, nor is never reaching it: 1 of these 4 pairs, not 3."""
    reach = [{"forwards": 30, "ratio": 0.75}, {"forwards": 40, "ratio": 1.0}, {"forwards": 40, "ratio": 1.0},
             {"forwards": None, "ratio": None}]
    prefix = {"methods": {"bilevel-zofo": {"reach": {"n": 4, "reached": 3}, "per_task": {"t": {"reach": reach}}}}}
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "summary.json").write_text(json.dumps(prefix))
    row = next(r for r in claims.claim_rows(tmp_path) if r[0].startswith("Bilevel-ZOFO: faster"))
    assert "in fewer forward passes on 1/4 pairs" in row[2] and row[3] == claims.INCONCLUSIVE


def test_the_memory_benches_leave_no_run_folder_behind(tmp_path, monkeypatch, capsys):
    """bench.fo_memory and bench.meta_memory ran each measured process in a tempfile.mkdtemp folder and never
    removed it: one fine_tune or meta_train run folder (checkpoints, TensorBoard) in /tmp per measurement."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from bench import fo_memory, meta_memory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def peak(cmd):
        out = Path(cmd[cmd.index("--out") + 1])
        seen.append(out.is_dir() and out.parent == tmp_path)  # the child gets a fresh folder that exists
        return 1.0

    monkeypatch.setattr(fo_memory, "_peak_gb", peak)
    args = SimpleNamespace(base="b", task="t", steps=1, batch_size=2, max_length=8)
    assert fo_memory.measure("mezo:prefix", args)["peak_rss_gb"] == 1.0

    def child(cmd, repo):
        out = Path(cmd[cmd.index("--out") + 1])
        seen.append(out.is_dir() and out.parent == tmp_path)
        (out / "results.json").write_text(json.dumps({"history": [{"step_time_s": 0.5}]}))
        return 1.0, 2.0

    monkeypatch.setattr(meta_memory, "_child", child)
    assert meta_memory.main(["--tasks", "a,b"]) == 0
    assert json.loads(capsys.readouterr().out)["step_s"] == [0.5]
    assert seen == [True, True] and list(tmp_path.iterdir()) == []
