"""Accuracy and SQuAD-style token F1 (the official SQuAD v1.1 normalisation)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(prediction: str, gold: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, answers: Sequence[str]) -> float:
    """F1 against the best-matching gold answer."""
    return max((token_f1(prediction, a) for a in answers), default=0.0)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def accuracy(predictions: Sequence[int], golds: Sequence[int]) -> float:
    if len(predictions) != len(golds):
        raise ValueError("predictions and golds differ in length")
    if not golds:
        return 0.0
    return sum(int(p == g) for p, g in zip(predictions, golds)) / len(golds)
