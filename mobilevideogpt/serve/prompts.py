"""The prompts the page offers: one per QVED exercise class (the training prompt), a generic one, or free text."""

from __future__ import annotations

from ..qved import QVED_EXERCISES, exercise_name


def exercise_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the page's exercise menu: the generic prompt first, then the QVED classes."""
    return [("Any exercise (generic prompt)", ""), *((exercise_name(e), e) for e in QVED_EXERCISES)]
