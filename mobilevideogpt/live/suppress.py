"""What is worth saying: no silence answers, and no repeat of the last feedback.

Overlapping windows see mostly the same moments, so a model answers the same thing several windows in a
row. A new answer is emitted only when its similarity to the last emitted feedback is below a threshold.

Similarity is ROUGE-L F1 (`mobilevideogpt.evaluation.metrics.rouge_l`: the longest common subsequence of
lower-cased word tokens, as the clip evaluation scores text): word order matters, which a bag of words would
miss, and a rewording that keeps most of the words in order ("Keep your back straight" → "Keep your back
straight, chest up": 0.8) counts as the same feedback, while another instruction for the same exercise
("squats - Keep your heels on the floor" vs "squats - Keep your knees behind your toes": 0.43) is new.

Windows in which the model has nothing to say answer `NO_FEEDBACK_ANSWER` (the answer window samples are
trained with); such answers, and empty ones, are never emitted and leave the last feedback in place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mobilevideogpt.evaluation.metrics import rouge_l
from mobilevideogpt.live.defaults import DEFAULT_THRESHOLD

NO_FEEDBACK_ANSWER = "No feedback."

_SILENCE = re.compile(r"[^a-z]+")


def is_silence(text: str) -> bool:
    """True for an empty answer or the no-feedback answer (any case and punctuation)."""
    words = _SILENCE.sub(" ", text.lower()).split()
    return not words or words == _SILENCE.sub(" ", NO_FEEDBACK_ANSWER.lower()).split()


@dataclass(frozen=True)
class Decision:
    emit: bool
    reason: str  # "new" | "repeat" | "silence"
    similarity: float | None  # to the last emitted feedback; None when there is none (or for silence)


class Suppressor:
    """Emit an answer when it is not silence and `similarity(answer, last emitted) < threshold`.

    threshold 1.0 suppresses only exact repeats (same words in the same order); lower values suppress
    rewordings too. Raises ValueError outside (0, 1].
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, similarity: Callable[[str, str], float] = rouge_l) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"the similarity threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.similarity = similarity
        self.last: str | None = None

    def check(self, text: str) -> Decision:
        """Decide about one answer; an emitted answer becomes the new reference for repeats."""
        if is_silence(text):
            return Decision(False, "silence", None)
        if self.last is None:
            self.last = text
            return Decision(True, "new", None)
        similarity = self.similarity(text, self.last)
        if similarity >= self.threshold:
            return Decision(False, "repeat", similarity)
        self.last = text
        return Decision(True, "new", similarity)
