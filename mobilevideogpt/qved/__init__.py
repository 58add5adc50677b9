"""QVED, the exercise-feedback dataset this project finetunes on: its classes, prompts and file names.

QVED's answers read "<exercise> - <feedback>" ("tricep stretch (right arm) - User is holding the stretch"); its
training prompt names the exercise ("Analyze this squats video and provide corrective feedback."), and the same
prompt with "exercise" in place of a class name is the generic question that names none.
"""

from __future__ import annotations

import os
from pathlib import Path

# The guide's six exercise classes (its sample dataset: 5 videos each). Real QVED releases have others.
QVED_EXERCISES = (
    "knee_circles",
    "opposite_arm_and_leg_lifts_on_knees",
    "pushups_on_knees",
    "squat_jump",
    "squats",
    "tricep_stretch",
)
# Every exercise class known: the guide's six and the current QVED release's fourteen (the QVED fork's
# `utils/exercise_motion_overview.json`).
QVED_CLASSES = frozenset(QVED_EXERCISES) | frozenset(
    {
        "alternating_single_leg_glutes_bridge",
        "cat-cow_pose",
        "elbow_plank",
        "glute_hamstring_walkout",
        "glutes_bridge",
        "heel_lift",
        "high_plank",
        "lunges_leg_out_in_front",
        "pushups",
        "side_plank",
        "toe_touch",
    }
)
PROMPT_TEMPLATE = "Analyze this {exercise} video and provide corrective feedback."
GENERIC_EXERCISE = "exercise"
SPLITS = ("train", "val", "test")
SPLIT_FILES = {split: f"qved_{split}.json" for split in SPLITS}


def exercise_name(exercise_class: str) -> str:
    """The class folder name as the prompts and answers write it (underscores as spaces)."""
    return exercise_class.replace("_", " ").strip()


def exercise_prompt(exercise: str | None = None) -> str:
    """The QVED training prompt for `exercise`, or the generic one (naming no exercise) when it is None."""
    return PROMPT_TEMPLATE.format(exercise=exercise_name(exercise or GENERIC_EXERCISE))


def exercise_from_path(video_path: str | os.PathLike) -> str | None:
    """The exercise named by the video's folder when it is a known QVED class (`squats/x.mp4` → "squats")."""
    folder = Path(video_path).parent.name
    return exercise_name(folder) if folder in QVED_CLASSES else None
