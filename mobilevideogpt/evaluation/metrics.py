"""Text metrics for QVED feedback: exercise identification, ROUGE-L, METEOR.

QVED answers read "<exercise> - <feedback>" ("tricep stretch (right arm) - User is holding the stretch").

Exercise identification (the published report's rule, made precise):
- the exercise of a text is what precedes its first " - " (space, hyphen, space; a bare "-" would split
  names like "cat-cow pose"), lower-cased with underscores as spaces and whitespace collapsed; a text
  without " - " names no exercise;
- `exercise_exact`: prediction and ground truth name the same exercise (qualifiers such as "(right arm)"
  must match too);
- `exercise_base`: the same after dropping parenthesised qualifiers ("tricep stretch (left arm)" matches
  "tricep stretch (right arm)").
A sample whose ground truth names no exercise does not count toward either accuracy.

ROUGE-L: F-measure of the longest common subsequence of tokens, tokenised as the `rouge-score` package does
without stemming (lower-case, every run of characters other than a-z/0-9 is a separator), so figures are
comparable to `rouge_score` / HF `evaluate("rouge")["rougeL"]`.

METEOR (Lavie & Agarwal 2007, as in `nltk.translate.meteor_score`): words are aligned in stages — exact
matches, then Porter stems, then WordNet synonyms — each stage scanning the hypothesis from its last word
and taking the last still-unmatched reference word that fits. With m matches, P = m/|hyp|, R = m/|ref|,
Fmean = P·R / (α·P + (1−α)·R), penalty = γ·(chunks/m)^β with α = 0.9, β = 3, γ = 0.5, and
score = Fmean·(1 − penalty); chunks = runs of matches adjacent in both texts. The WordNet stage needs nltk's
WordNet data, which cannot be downloaded here: `meteor_scorer()` uses nltk's own implementation when nltk and
WordNet are installed, and this module's implementation of the exact (+ stem when nltk is installed) stages
otherwise, labelled "no synonyms". Tokens: lower-cased words and single punctuation marks (a close
approximation of nltk's `word_tokenize`, which needs the punkt data).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EXERCISE_SEPARATOR = " - "
_QUALIFIER = re.compile(r"\([^)]*\)")
_ROUGE_SEPARATOR = re.compile(r"[^a-z0-9]+")
_METEOR_TOKEN = re.compile(r"\w+|[^\w\s]")

METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.9, 3.0, 0.5


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


def rouge_tokens(text: str) -> list[str]:
    return [t for t in _ROUGE_SEPARATOR.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (β = 1) of `prediction` against `reference`; 0 when either has no tokens."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def meteor_tokens(text: str) -> list[str]:
    return _METEOR_TOKEN.findall(text.lower())


def _align_stage(
    hypothesis: list[tuple[int, str]], reference: list[tuple[int, str]], key: Callable[[str], str]
) -> list[tuple[int, int]]:
    """One alignment stage; removes the matched words from both lists (the nltk scan order)."""
    matches = []
    ref_keys = [key(word) for _, word in reference]
    for i in reversed(range(len(hypothesis))):
        wanted = key(hypothesis[i][1])
        for j in reversed(range(len(reference))):
            if ref_keys[j] == wanted:
                matches.append((hypothesis[i][0], reference[j][0]))
                del hypothesis[i], reference[j], ref_keys[j]
                break
    return matches


def count_chunks(matches: Sequence[tuple[int, int]]) -> int:
    """Runs of matches (sorted by hypothesis position) adjacent in both the hypothesis and the reference."""
    if not matches:
        return 0
    chunks = 1
    for (h0, r0), (h1, r1) in zip(matches, matches[1:], strict=False):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


def meteor_no_synonyms(
    prediction: str,
    reference: str,
    stem: Callable[[str], str] | None = None,
    alpha: float = METEOR_ALPHA,
    beta: float = METEOR_BETA,
    gamma: float = METEOR_GAMMA,
) -> float:
    """METEOR with exact matching, then stem matching when `stem` is given; no synonym stage."""
    hyp = list(enumerate(meteor_tokens(prediction)))
    ref = list(enumerate(meteor_tokens(reference)))
    length_hyp, length_ref = len(hyp), len(ref)
    matches = _align_stage(hyp, ref, key=lambda w: w)
    if stem is not None:
        matches += _align_stage(hyp, ref, key=stem)
    m = len(matches)
    if m == 0:
        return 0.0
    precision, recall = m / length_hyp, m / length_ref
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (count_chunks(sorted(matches)) / m) ** beta
    return fmean * (1 - penalty)


@dataclass(frozen=True)
class MeteorScorer:
    """A METEOR implementation and the label its figures carry in reports."""

    label: str
    score: Callable[[str, str], float]  # (prediction, reference) → score


def meteor_scorer() -> MeteorScorer:
    """nltk's METEOR with WordNet synonyms when installed; else exact (+ Porter stem with nltk) matching."""
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        return MeteorScorer("METEOR (no synonyms, exact matches only: nltk not installed)", meteor_no_synonyms)
    try:
        from nltk.corpus import wordnet
        from nltk.translate.meteor_score import meteor_score

        wordnet.ensure_loaded()
    except (ImportError, LookupError):
        stemmer = PorterStemmer()
        return MeteorScorer(
            "METEOR (no synonyms: WordNet data not installed; exact + stem matches)",
            lambda prediction, reference: meteor_no_synonyms(prediction, reference, stem=stemmer.stem),
        )
    return MeteorScorer(
        "METEOR (nltk, WordNet synonyms)",
        lambda prediction, reference: float(meteor_score([meteor_tokens(reference)], meteor_tokens(prediction))),
    )
