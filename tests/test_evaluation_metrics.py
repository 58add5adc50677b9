"""Text metrics from maintained libraries (rouge-score, NLTK METEOR with WordNet, MiniLM), checked by hand."""

from __future__ import annotations

import pytest

from mobilevideogpt.evaluation.bertscore import bertscore_f1
from mobilevideogpt.evaluation.metrics import exercise_match, exercise_of, meteor_scorer, meteor_tokens, rouge_l
from mobilevideogpt.evaluation.report import exercise_confusion, per_class_means
from mobilevideogpt.evaluation.similarity import sentence_similarity
from mobilevideogpt.evaluation.wordnet import load_wordnet


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Case and punctuation are separators only: [keep your back straight] vs [keep back straight];
    # LCS 3, P = 3/4, R = 1, F = 2·(3/4)·1 / (7/4) = 6/7.
    assert rouge_l("Keep your BACK straight!", "keep back straight") == pytest.approx(6 / 7)
    # Order matters: one token in common order, P = R = 1/3.
    assert rouge_l("straight back keep", "keep back straight") == pytest.approx(1 / 3)
    assert rouge_l("", "keep back straight") == 0.0
    assert rouge_l("a b", "c d") == 0.0


def test_meteor_hand_computed():
    scorer = meteor_scorer()
    # 5 matches, P = 1, R = 5/6, Fmean = (5/6) / (0.9 + 0.1·5/6); 2 chunks ("the cat" | "on the mat"):
    # penalty = 0.5·(2/5)^3 = 0.032.
    fmean = (5 / 6) / (0.9 + 0.1 * 5 / 6)
    assert scorer.score("the cat on the mat", "the cat sat on the mat") == pytest.approx(fmean * (1 - 0.032))
    # Identical 4-token texts: one chunk of 4, penalty 0.5·(1/4)^3.
    assert scorer.score("keep your back straight", "Keep your back straight") == pytest.approx(1 - 0.5 / 64)
    # Every word matched but no two adjacent in both texts: 5 chunks of 5 matches, penalty 0.5.
    assert scorer.score("mat the on cat the", "the cat on the mat") == pytest.approx(0.5)
    # Stems match ("knees"/"knee", "bend"/"bends"): one chunk of 2.
    assert scorer.score("knees bend", "knee bends") == pytest.approx(1 - 0.5 / 8)
    assert scorer.score("", "anything") == 0.0
    assert meteor_tokens("Keep your back straight.") == ["keep", "your", "back", "straight", "."]


def test_meteor_uses_wordnet_synonyms():
    """'hold' and 'keep' share a WordNet synset: with synonyms all 4 words match in one chunk (penalty
    0.5·(1/4)^3); without, 3 of 4 match in two chunks."""
    wordnet, where = load_wordnet()
    assert wordnet is not None, f"WordNet is missing ({where}): run the set-up command (Debian's wordnet-base)"
    scorer = meteor_scorer()
    assert "WordNet" in scorer.label and "no synonyms" not in scorer.label
    assert scorer.score("hold your back straight", "keep your back straight") == pytest.approx(1 - 0.5 / 64)
    assert scorer.score("go lower", "go down") == pytest.approx(1 - 0.5 / 8)


def test_sentence_similarity_orders_meaning():
    result = sentence_similarity(
        ["keep your back straight", "keep your back straight", "keep your back straight"],
        ["keep your back straight", "hold your spine upright", "the pizza was delicious"],
    )
    same, paraphrase, unrelated = result.scores
    assert same == pytest.approx(1.0, abs=1e-5)
    assert same > paraphrase > unrelated and paraphrase > 0.5 > unrelated
    assert "MiniLM" in result.note


def test_exercise_identification_rules():
    assert exercise_of("tricep stretch (right arm) - User is holding the stretch") == "tricep stretch (right arm)"
    assert exercise_of("Cat-Cow  Pose - Round your back") == "cat-cow pose"  # hyphen inside the name
    assert exercise_of("knee_circles - fine") == "knee circles"
    assert exercise_of("No separator here") is None
    same_side = exercise_match("Tricep Stretch (right arm) - hold", "tricep stretch (right arm) - User is holding")
    other_side = exercise_match("tricep stretch (left arm) - hold", "tricep stretch (right arm) - User is holding")
    wrong = exercise_match("squats - go lower", "squat jump - land softly")
    unnamed = exercise_match("Go lower", "squats - go lower")
    assert same_side.exact and same_side.base
    assert not other_side.exact and other_side.base
    assert not wrong.exact and not wrong.base
    assert unnamed.scorable and not unnamed.exact and not unnamed.base
    assert not exercise_match("squats - x", "free text reference").scorable


def _row(reference: str, predicted: str | None, base: bool, rouge: float) -> dict:
    return {"exercise_reference": reference, "exercise_predicted": predicted, "exercise_base": base,
            "rouge_l": rouge, "meteor": rouge / 2}  # fmt: skip


def test_confusion_matrix_and_per_class_means():
    rows = [
        _row("squats", "squats", True, 0.8),
        _row("squats", "squat jump", False, 0.2),
        _row("tricep stretch (right arm)", "tricep stretch (left arm)", True, 0.6),
        _row("tricep stretch (left arm)", None, False, 0.0),
        _row("squat jump", "pushups", False, 0.1),
    ]
    confusion = exercise_confusion(rows)
    assert confusion["classes"] == ["squat jump", "squats", "tricep stretch"]
    assert confusion["predicted"] == ["squat jump", "squats", "tricep stretch", "(none)", "(other)"]
    assert confusion["counts"] == [[0, 0, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0]]
    means = per_class_means(rows)
    assert means["squats"]["n"] == 2 and means["squats"]["rouge_l"] == pytest.approx(0.5)
    assert means["squats"]["exercise_accuracy"] == {"value": 0.5, "correct": 1, "n": 2}
    assert means["tricep stretch"]["meteor"] == pytest.approx(0.15)
    assert means["squat jump"]["sentence_similarity"] is None


def test_bertscore_never_downloads():
    result = bertscore_f1(["squats - go lower"], ["squats - go lower"], model="nobody/not-a-local-model")
    assert result.f1 is None and result.note.startswith("BERTScore skipped")
