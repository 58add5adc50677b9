"""Evaluation on annotated splits: predictions (resumable JSONL), metrics, JSON + Markdown reports.

`runner.evaluate(EvaluationSettings(...))` does it all; `mvgpt eval` is its command.
"""
