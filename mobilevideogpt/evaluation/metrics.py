"""Text metrics for exercise feedback: exercise identification, ROUGE-L, METEOR (QEVD's text metrics).

Answers read "<exercise> - <feedback>" ("tricep stretch (right arm) - User is holding the stretch").

Exercise identification (the public fork's report rule, made precise):
- the exercise of a text is what precedes its first " - " (space, hyphen, space; a bare "-" would split
  names like "cat-cow pose"), lower-cased with underscores as spaces and whitespace collapsed; a text
  without " - " names no exercise;
- `exercise_exact`: prediction and ground truth name the same exercise (qualifiers such as "(right arm)"
  must match too);
- `exercise_base`: the same after dropping parenthesised qualifiers ("tricep stretch (left arm)" matches
  "tricep stretch (right arm)").
A sample whose ground truth names no exercise does not count toward either accuracy.

ROUGE-L: the `rouge-score` package's ROUGE-L F-measure, without stemming (its default).

METEOR: NLTK's `meteor_score` (Lavie & Agarwal 2007: exact, Porter-stem, then WordNet-synonym matching;
α = 0.9, β = 3, γ = 0.5) with WordNet 3.0 from `evaluation.wordnet` (NLTK's data or Debian's `wordnet-base`).
Without WordNet the synonym stage matches nothing and the label says "no synonyms". Tokens are lower-cased
words and single punctuation marks (NLTK's `word_tokenize` needs its punkt data, which is not installed).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EXERCISE_SEPARATOR = " - "
_QUALIFIER = re.compile(r"\([^)]*\)")
_METEOR_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_exercise(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def exercise_of(text: str) -> str | None:
    """The exercise a QVED-style text names (before its first " - "), normalised; None when it names none."""
    head, separator, _ = text.strip().partition(EXERCISE_SEPARATOR)
    if not separator:
        return None
    name = normalize_exercise(head)
    return name or None


def base_exercise(name: str) -> str:
    """`name` without parenthesised qualifiers: "tricep stretch (right arm)" → "tricep stretch"."""
    return normalize_exercise(_QUALIFIER.sub(" ", name))


@dataclass(frozen=True)
class ExerciseMatch:
    reference: str | None
    predicted: str | None

    @property
    def scorable(self) -> bool:
        return self.reference is not None

    @property
    def exact(self) -> bool:
        return self.predicted is not None and self.predicted == self.reference

    @property
    def base(self) -> bool:
        return (
            self.predicted is not None
            and self.reference is not None
            and base_exercise(self.predicted) == base_exercise(self.reference)
        )


def exercise_match(prediction: str, reference: str) -> ExerciseMatch:
    return ExerciseMatch(reference=exercise_of(reference), predicted=exercise_of(prediction))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of `prediction` against `reference` (`rouge-score`); 0 when either has no tokens."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def meteor_tokens(text: str) -> list[str]:
    return _METEOR_TOKEN.findall(text.lower())


class _NoSynonyms:
    """Stands in for WordNet when it is not installed: the synonym stage then matches nothing."""

    def synsets(self, *args, **kwargs) -> list:
        return []


@dataclass(frozen=True)
class MeteorScorer:
    """A METEOR implementation and the label its figures carry in reports."""

    label: str
    score: Callable[[str, str], float]  # (prediction, reference) → score


@functools.cache
def meteor_scorer() -> MeteorScorer:
    """NLTK's METEOR with WordNet synonyms when WordNet is installed, else without the synonym stage (labelled)."""
    from nltk.translate.meteor_score import meteor_score

    from .wordnet import load_wordnet

    wordnet, where = load_wordnet()
    if wordnet is None:
        logger.warning("METEOR without synonyms: %s", where)
        wordnet, label = _NoSynonyms(), f"METEOR (nltk, no synonyms: {where})"
    else:
        label = f"METEOR (nltk, {where} synonyms)"

    def score(prediction: str, reference: str) -> float:
        return float(meteor_score([meteor_tokens(reference)], meteor_tokens(prediction), wordnet=wordnet))

    return MeteorScorer(label, score)
