"""Scoring live feedback as QEVD does ("Live Fitness Coaching as a Testbed for Situated Interaction",
NeurIPS 2024): timing by T-F-Score, text quality by METEOR and ROUGE-L on the feedback matched in time.

Matching: a predicted and a reference feedback may be paired when their times differ by at most `tolerance_s`
(3 s, QEVD's window), each used at most once. Among all such one-to-one matchings, the one with the most
pairs is taken, and among those the one with the smallest total time difference (an optimal assignment).
In one dimension an optimal matching never crosses (if p₁ < p₂ were paired with r₁ > r₂, swapping the
partners keeps both pairs within the tolerance and does not increase the total distance), so it is found
exactly by dynamic programming over the two time-sorted lists, O(predictions × references).

T-F-Score: precision = matched / predictions, recall = matched / references, F = their harmonic mean.
With no references and no predictions all three are 1 (nothing to say, nothing said); a side with no items
and the other with some gives 0. METEOR and ROUGE-L are averaged over the matched pairs, with the clip
evaluation's implementations (`mobilevideogpt.evaluation.metrics.meteor_scorer` and `rouge_l`), and are None
when nothing matched. Sessions are pooled by summing matches and counts (micro average).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mobilevideogpt.evaluation.metrics import meteor_scorer, rouge_l
from mobilevideogpt.live.labels import Feedback

DEFAULT_TOLERANCE_S = 3.0


@dataclass(frozen=True)
class MatchedPair:
    predicted: Feedback
    reference: Feedback
    meteor: float
    rouge_l: float

    @property
    def time_error_s(self) -> float:
        """Predicted time − reference time (positive: the feedback came late)."""
        return self.predicted.time - self.reference.time

    def to_json(self) -> dict[str, Any]:
        return {
            "predicted_time": self.predicted.time,
            "reference_time": self.reference.time,
            "time_error_s": self.time_error_s,
            "predicted": self.predicted.text,
            "reference": self.reference.text,
            "meteor": self.meteor,
            "rouge_l": self.rouge_l,
        }


def match_feedback(
    predicted: Sequence[Feedback], reference: Sequence[Feedback], tolerance_s: float = DEFAULT_TOLERANCE_S
) -> list[tuple[int, int]]:
    """Optimal one-to-one matching within `tolerance_s` (see the module docstring): (predicted index,
    reference index) pairs in time order; indices refer to the sequences as given."""
    if tolerance_s < 0:
        raise ValueError(f"the matching tolerance must be >= 0 seconds, got {tolerance_s}")
    p_order = sorted(range(len(predicted)), key=lambda i: predicted[i].time)
    r_order = sorted(range(len(reference)), key=lambda j: reference[j].time)
    p_times = [predicted[i].time for i in p_order]
    r_times = [reference[j].time for j in r_order]
    n, m = len(p_times), len(r_times)
    # best[i][j]: (matches, −total distance) using the first i predictions and the first j references.
    best = [[(0, 0.0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = [best[i - 1][j], best[i][j - 1]]
            distance = abs(p_times[i - 1] - r_times[j - 1])
            if distance <= tolerance_s:
                matches, negative = best[i - 1][j - 1]
                options.append((matches + 1, negative - distance))
            best[i][j] = max(options)
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        distance = abs(p_times[i - 1] - r_times[j - 1])
        if distance <= tolerance_s:
            matches, negative = best[i - 1][j - 1]
            if best[i][j] == (matches + 1, negative - distance):
                pairs.append((p_order[i - 1], r_order[j - 1]))
                i, j = i - 1, j - 1
                continue
        if best[i][j] == best[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _ratio(numerator: int, denominator: int, empty: float) -> float:
    return numerator / denominator if denominator else empty


@dataclass
class LiveScore:
    """T-F-Score figures and text scores of matched feedback, for one session or pooled."""

    predictions: int
    references: int
    pairs: list[MatchedPair] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return len(self.pairs)

    @property
    def precision(self) -> float:
        return _ratio(self.matched, self.predictions, 1.0 if self.references == 0 else 0.0)

    @property
    def recall(self) -> float:
        return _ratio(self.matched, self.references, 1.0 if self.predictions == 0 else 0.0)

    @property
    def f_score(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def _mean(self, values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    @property
    def meteor(self) -> float | None:
        return self._mean([pair.meteor for pair in self.pairs])

    @property
    def rouge_l(self) -> float | None:
        return self._mean([pair.rouge_l for pair in self.pairs])

    @property
    def mean_abs_time_error_s(self) -> float | None:
        return self._mean([abs(pair.time_error_s) for pair in self.pairs])

    def to_json(self, with_pairs: bool = True) -> dict[str, Any]:
        out = {
            "predictions": self.predictions,
            "references": self.references,
            "matched": self.matched,
            "precision": self.precision,
            "recall": self.recall,
            "t_f_score": self.f_score,
            "meteor": self.meteor,
            "rouge_l": self.rouge_l,
            "mean_abs_time_error_s": self.mean_abs_time_error_s,
        }
        if with_pairs:
            out["pairs"] = [pair.to_json() for pair in self.pairs]
        return out


def score_session(
    predicted: Sequence[Feedback],
    reference: Sequence[Feedback],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    meteor: Callable[[str, str], float] | None = None,
) -> LiveScore:
    """Match in time, then score each pair's text (`meteor` defaults to `meteor_scorer().score`)."""
    meteor = meteor or meteor_scorer().score
    pairs = [
        MatchedPair(
            predicted[i],
            reference[j],
            meteor(predicted[i].text, reference[j].text),
            rouge_l(predicted[i].text, reference[j].text),
        )
        for i, j in match_feedback(predicted, reference, tolerance_s)
    ]
    return LiveScore(len(predicted), len(reference), pairs)


def pool(scores: Sequence[LiveScore]) -> LiveScore:
    """All sessions as one: matches and counts summed (micro average)."""
    return LiveScore(
        sum(s.predictions for s in scores),
        sum(s.references for s in scores),
        [pair for s in scores for pair in s.pairs],
    )
