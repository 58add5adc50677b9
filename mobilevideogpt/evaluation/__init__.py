"""Evaluation on QVED splits: predictions (resumable JSONL), metrics, JSON + Markdown reports.

Run it with `bash scripts/eval_qved.sh` or `python -m mobilevideogpt.evaluation --help`.
"""

from .metrics import exercise_match, exercise_of, meteor_no_synonyms, meteor_scorer, rouge_l

__all__ = ["exercise_match", "exercise_of", "meteor_no_synonyms", "meteor_scorer", "rouge_l"]
