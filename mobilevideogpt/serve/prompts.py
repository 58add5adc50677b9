"""The prompts the page offers: one per QVED exercise class (the training prompt), a generic one, or free text."""

from __future__ import annotations

from ..data.qved import PROMPT_TEMPLATE, QVED_EXERCISES

GENERIC_EXERCISE = "exercise"


def exercise_label(exercise: str) -> str:
    """`pushups_on_knees` → "pushups on knees" (how the training prompts name a class)."""
    return exercise.replace("_", " ").strip()


def exercise_prompt(exercise: str | None) -> str:
    """The QVED training prompt for a class, or its generic form for None."""
    return PROMPT_TEMPLATE.format(exercise=exercise_label(exercise) if exercise else GENERIC_EXERCISE)


def exercise_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the page's exercise menu: the generic prompt first, then the QVED classes."""
    return [("Any exercise (generic prompt)", ""), *((exercise_label(e), e) for e in QVED_EXERCISES)]
