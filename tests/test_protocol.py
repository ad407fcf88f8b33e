"""MeZO's data protocol, pinned against a reference computation written from MeZO's `large_models` code.

Reference (MeZO `tasks.py` `Dataset.sample_subset` / `sample_train_sets` and `run.py` `main`):
  np.random.seed(train_set_seed); idx = np.random.permutation(len(train)).tolist()[:num_train + num_dev]
  dev = idx[-num_dev:]; train = idx[:-num_dev]          (dev is the LAST num_dev of the sample)
  np.random.seed(train_set_seed); eval = np.random.permutation(len(valid)).tolist()[:num_eval]
mezo.sh passes DEV=100 for CB and Copa, 500 otherwise. Templates: `templates.py` (CopaTemplate.capitalize,
BoolQTemplateV3, ReCoRDTemplateGPT3); losses: mezo.sh's --train_as_classification False for Copa and ReCoRD.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model, tiny_tokenizer
from l2o.tasks import Rendered, get_task, sample_splits
from l2o.tasks.objectives import DEFAULT_MAX_LENGTH, AnswerLM, CandidateCE, candidate_scores, objective_for
from l2o.tasks.sampling import split_sizes


def _mezo_reference(n_train_pool, n_valid_pool, seed, num_train, num_dev, num_eval):
    """What MeZO's code draws (global np.random under the seed, as its temp_seed does)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        idx = np.random.permutation(n_train_pool).tolist()[:num_train + num_dev]
        np.random.seed(seed)
        ev = np.random.permutation(n_valid_pool).tolist()[:num_eval]
    finally:
        np.random.set_state(state)
    return idx[:-num_dev], idx[-num_dev:], ev


def _wsc_folder(tmp_path, n_train, n_valid):
    d = tmp_path / "wsc"
    d.mkdir()
    for name, n in (("train", n_train), ("validation", n_valid)):
        rows = [{"text": f"Row {name} {i} said it.", "span1_text": "Row", "span2_text": "it", "label": i % 2}
                for i in range(n)]
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _ids(examples, split):
    return [int(e.prompt.split(f"Row {split} ")[1].split(" ")[0]) for e in examples]


@pytest.mark.parametrize("seed", [0, 3])
def test_wsc_split_and_indices_match_mezo(tmp_path, seed):
    # WSC (wsc.fixed): 554 train rows, 104 validation rows; MeZO gets 54 train / 500 dev from them
    src = _wsc_folder(tmp_path, 554, 104)
    s = sample_splits("wsc", seed=seed, num_train=1000, num_dev=500, num_eval=1000, source=src)
    train, dev, ev = _mezo_reference(554, 104, seed, 1000, 500, 1000)
    assert s.counts == {"train": 54, "dev": 500, "eval": 104} and s.rule == "mezo"
    assert _ids(s.train, "train") == train
    assert _ids(s.dev, "train") == dev
    assert _ids(s.eval, "validation") == ev and s.eval_seed == seed


def test_large_pool_and_eval_subset_match_mezo(tmp_path):
    src = _wsc_folder(tmp_path, 40, 30)
    s = sample_splits("wsc", seed=5, num_train=10, num_dev=6, num_eval=7, source=src)
    train, dev, ev = _mezo_reference(40, 30, 5, 10, 6, 7)
    assert (_ids(s.train, "train"), _ids(s.dev, "train"), _ids(s.eval, "validation")) == (train, dev, ev)
    other = sample_splits("wsc", seed=6, num_train=10, num_dev=6, num_eval=7, source=src)
    assert _ids(other.eval, "validation") == _mezo_reference(40, 30, 6, 10, 6, 7)[2] != ev


def test_fixed_eval_seed_is_an_option(tmp_path):
    src = _wsc_folder(tmp_path, 40, 30)
    a, b = (sample_splits("wsc", seed=s, num_train=10, num_dev=6, num_eval=7, source=src, eval_seed=0) for s in (1, 2))
    assert _ids(a.eval, "validation") == _ids(b.eval, "validation") == _mezo_reference(40, 30, 0, 1, 1, 7)[2]


def test_split_sizes_rules():
    assert split_sizes(554, 1000, 500) == (54, 500, "mezo")            # WSC
    assert split_sizes(250, 1000, 500, small_num_dev=100) == (150, 100, "mezo")  # CB, mezo.sh DEV=100
    assert split_sizes(400, 1000, 500, small_num_dev=100) == (300, 100, "mezo")  # COPA
    assert split_sizes(554, 1000, 500, small_pool="shrink") == (444, 110, "shrink")  # our former rule
    assert split_sizes(160, 1000, 500) == (128, 32, "shrink")  # MeZO's rule would leave no train row
    assert split_sizes(5000, 1000, 500) == (1000, 500, "mezo")


def test_cb_pool_keeps_mezo_dev_of_100(tmp_path):
    d = tmp_path / "cb"
    d.mkdir()
    rows = [{"premise": f"P {i}.", "hypothesis": "h", "label": i % 3} for i in range(250)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:56]))
    s = sample_splits("cb", seed=0, source=d)
    train, dev, _ = _mezo_reference(250, 56, 0, 1000, 100, 1000)
    assert s.counts["train"] == 150 and s.counts["dev"] == 100
    assert [e.prompt for e in s.dev] == [get_task("cb").render(rows[i]).prompt for i in dev]


# ------------------------------------------------------------------------------------ templates
def _copa(choice1, question="effect"):
    return get_task("copa").render({"premise": "My DVD player broke.", "choice1": choice1, "choice2": "I sighed.",
                                    "question": question, "label": 0})


def test_copa_lower_cases_the_first_word_as_mezo():
    r = _copa("DVD players are cheap.")
    # MeZO: verbalize = premise without "." + " so " + first word lower-cased (split on " "), "I" kept
    assert r.prompt + r.candidates[0] == "My DVD player broke so dvd players are cheap."
    assert r.candidates[1] == " I sighed."
    assert _copa("I'm sad.").candidates[0] == " i'm sad."
    assert _copa("The TV died.", "cause").candidates[0] == " the TV died."


def test_boolq_appends_question_mark_only_when_missing():
    t = get_task("boolq")
    with_q = t.render({"question": "is it wet?", "passage": "Rain.", "answer": True})
    without = t.render({"question": "is it wet", "passage": "Rain.", "answer": True})
    assert with_q.prompt == without.prompt == "Rain. Is it wet?\n"


def test_record_accepts_every_gold_answer_and_trains_on_the_first():
    row = {"passage": "Ann met Bo in Rome.", "query": "@placeholder smiled.",
           "entities": ["Ann", "Bo", "Rome", "Ann"], "answers": ["Bo", "Ann"]}
    r = get_task("record").render(row)
    assert r.candidates == [" Ann smiled.", " Bo smiled.", " Rome smiled."]
    assert r.gold == 1 and r.target == " Bo smiled."  # MeZO: candidates.index(answers[0])
    assert r.correct == {0, 1}


def test_accuracy_counts_any_correct_candidate():
    model, tok = tiny_model("opt", seed=1), tiny_tokenizer()
    ex = Rendered(prompt="Fans in", candidates=[" Leeds", " York", " Hull"], gold=0, answers=[" Leeds"])
    pred = int(candidate_scores(model, tok, [ex])[0].argmax())
    wrong_gold = (pred + 1) % 3
    plain = Rendered(prompt=ex.prompt, candidates=ex.candidates, gold=wrong_gold, answers=[""])
    multi = Rendered(prompt=ex.prompt, candidates=ex.candidates, gold=wrong_gold, answers=[""], also_correct=(pred,))
    obj = CandidateCE()
    assert obj.evaluate(model, tok, [plain])["accuracy"] == 0.0
    assert obj.evaluate(model, tok, [multi])["accuracy"] == 1.0


# ------------------------------------------------------------------------------------- losses
def test_copa_and_record_train_as_lm_on_the_gold_option():
    assert isinstance(objective_for("copa"), AnswerLM) and isinstance(objective_for("record"), AnswerLM)
    for name in ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc"):
        assert isinstance(objective_for(name), CandidateCE)
    assert isinstance(objective_for("copa", "ce"), CandidateCE)  # candidate cross-entropy stays selectable


def test_copa_lm_loss_is_token_ce_on_the_gold_option_only():
    model, tok = tiny_model("opt", seed=2), tiny_tokenizer()
    r = _copa("DVD players are cheap.")
    loss = objective_for("copa").loss(model, tok, [r])
    ids_p = tok(r.prompt)["input_ids"]
    ids = tok(r.prompt + r.candidates[0])["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    ref = -torch.stack([logp[q - 1, ids[q]] for q in range(len(ids_p), len(ids))]).mean()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)


def test_max_length_default_is_mezos():
    from fine_tune.config import FineTuneConfig

    assert DEFAULT_MAX_LENGTH == 2048 and objective_for("sst2").max_length == 2048
    assert FineTuneConfig().max_length == 2048 and FineTuneConfig().eval_seed is None
