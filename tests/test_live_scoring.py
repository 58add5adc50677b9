"""T-F-Score and time-matched text scores; suppression of repeats."""

from __future__ import annotations

import itertools
import random

import pytest

from mobilevideogpt.evaluation.metrics import meteor_scorer, rouge_l
from mobilevideogpt.live.labels import Feedback
from mobilevideogpt.live.scoring import match_feedback, pool, score_session
from mobilevideogpt.live.suppress import NO_FEEDBACK_ANSWER, Suppressor, is_silence

REFERENCES = [
    Feedback(10.0, "squats - Keep your back straight"),
    Feedback(20.0, "squats - Go lower, thighs parallel to the floor"),
    Feedback(30.0, "pushups on knees - Lower your chest closer to the floor"),
]


def test_perfect_prediction_scores_one():
    score = score_session([Feedback(r.time + 1.5, r.text) for r in REFERENCES], REFERENCES)
    assert (score.precision, score.recall, score.f_score) == (1.0, 1.0, 1.0)
    assert score.rouge_l == 1.0
    assert score.meteor == pytest.approx(1.0, abs=2e-3)  # METEOR's fragmentation penalty keeps it just below 1
    assert score.mean_abs_time_error_s == pytest.approx(1.5)


def test_empty_prediction_scores_zero_and_nothing_against_nothing_scores_one():
    empty = score_session([], REFERENCES)
    assert (empty.precision, empty.recall, empty.f_score) == (0.0, 0.0, 0.0)
    assert empty.meteor is None and empty.rouge_l is None
    quiet = score_session([], [])
    assert quiet.f_score == 1.0
    chatty = score_session([Feedback(1.0, "anything")], [])
    assert (chatty.precision, chatty.f_score) == (0.0, 0.0)


def test_partial_case_computed_by_hand():
    predicted = [
        Feedback(12.0, "squats - Keep your back straight"),  # 2 s after the first reference: matched
        Feedback(24.0, "squats - Go lower"),  # 4 s after the second: too late
        Feedback(29.0, "Lower your chest"),  # 1 s before the third: matched
        Feedback(50.0, "Good form"),  # nothing near
    ]
    score = score_session(predicted, REFERENCES)
    assert score.matched == 2
    assert score.precision == 0.5 and score.recall == pytest.approx(2 / 3)
    assert score.f_score == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 0.5714
    # ROUGE-L of the pairs: 1.0, and "lower your chest" against the 10-token reference: P = 3/3, R = 3/10.
    assert score.rouge_l == pytest.approx((1.0 + 2 * 1 * 0.3 / (1 + 0.3)) / 2)  # 0.7308
    meteor = meteor_scorer().score
    expected_meteor = (meteor(predicted[0].text, REFERENCES[0].text) + meteor(predicted[2].text, REFERENCES[2].text)) / 2
    assert score.meteor == pytest.approx(expected_meteor)
    assert [(p["predicted_time"], p["reference_time"]) for p in score.to_json()["pairs"]] == [(12.0, 10.0), (29.0, 30.0)]


def test_tolerance_is_inclusive_and_matching_is_one_to_one():
    assert score_session([Feedback(13.0, "x")], [Feedback(10.0, "x")]).matched == 1
    assert score_session([Feedback(13.01, "x")], [Feedback(10.0, "x")]).matched == 0
    # Two predictions near one reference: one match, the other prediction is a false positive.
    two = score_session([Feedback(9.0, "a"), Feedback(10.5, "a")], [Feedback(10.0, "a")])
    assert (two.matched, two.precision, two.recall) == (1, 0.5, 1.0)
    assert two.pairs[0].predicted.time == 10.5  # the closer one


def test_matching_finds_the_most_pairs_where_nearest_first_would_not():
    # Nearest-first would pair 2.5 with 4.0 (1.5 s) and leave 6.0 and 0.0 unmatched.
    predicted = [Feedback(2.5, "a"), Feedback(6.0, "b")]
    reference = [Feedback(0.0, "a"), Feedback(4.0, "b")]
    assert match_feedback(predicted, reference) == [(0, 0), (1, 1)]


def _brute_force(p_times, r_times, tolerance):
    best = (0, 0.0)
    for size in range(min(len(p_times), len(r_times)), 0, -1):
        for ps in itertools.combinations(range(len(p_times)), size):
            for rs in itertools.permutations(range(len(r_times)), size):
                distances = [abs(p_times[i] - r_times[j]) for i, j in zip(ps, rs)]
                if max(distances) <= tolerance:
                    best = max(best, (size, -sum(distances)))
        if best[0]:
            return best
    return best


def test_matching_is_an_optimal_assignment():
    rng = random.Random(0)
    for _ in range(150):
        p_times = sorted(round(rng.uniform(0, 20), 1) for _ in range(rng.randint(0, 5)))
        r_times = sorted(round(rng.uniform(0, 20), 1) for _ in range(rng.randint(0, 5)))
        shuffled = p_times[:]
        rng.shuffle(shuffled)
        pairs = match_feedback([Feedback(t, "") for t in shuffled], [Feedback(t, "") for t in r_times], 3.0)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        distances = [abs(shuffled[i] - r_times[j]) for i, j in pairs]
        assert all(d <= 3.0 for d in distances)
        expected = _brute_force(shuffled, r_times, 3.0)
        assert len(pairs) == expected[0]
        assert sum(distances) == pytest.approx(-expected[1])


def test_pooling_sums_counts():
    a = score_session([Feedback(1.0, "a")], [Feedback(1.0, "a")])
    b = score_session([Feedback(5.0, "b"), Feedback(40.0, "c")], [Feedback(5.0, "b"), Feedback(60.0, "d")])
    pooled = pool([a, b])
    assert (pooled.predictions, pooled.references, pooled.matched) == (3, 3, 2)
    assert pooled.f_score == pytest.approx(2 / 3)


def test_suppression_emits_only_what_is_new():
    suppressor = Suppressor(threshold=0.7)
    said = []
    for text in [
        NO_FEEDBACK_ANSWER,
        "squats - Keep your back straight",
        "squats - Keep your back straight",  # repeat
        "squats - keep your back straight!",  # same words: repeat
        "no feedback",  # silence, keeps the last feedback
        "squats - Keep your back straight",  # still a repeat after silence
        "squats - Keep your heels on the floor",  # ROUGE-L 0.43 to the last: new
        "",
    ]:
        decision = suppressor.check(text)
        if decision.emit:
            said.append(text)
    assert said == ["squats - Keep your back straight", "squats - Keep your heels on the floor"]
    decision = Suppressor(0.7)
    decision.check("Keep your back straight")
    reworded = decision.check("Keep your back straight, chest up")
    assert (reworded.emit, reworded.reason) == (False, "repeat")
    assert reworded.similarity == pytest.approx(rouge_l("Keep your back straight, chest up", "Keep your back straight"))


def test_threshold_one_drops_exact_repeats_only_and_bad_thresholds_are_refused():
    strict = Suppressor(threshold=1.0)
    assert strict.check("Keep your back straight").emit
    assert not strict.check("keep your back straight").emit
    assert strict.check("Keep your back straight, chest up").emit
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            Suppressor(bad)
    assert is_silence("No feedback.") and is_silence("  ") and not is_silence("No feedback needed, good form")
