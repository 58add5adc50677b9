"""QVED conversion (`python utils/qved_from_fine_labels.py` = `mvgpt convert`): exact output, path matching, bad
records, splits without leakage."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevideogpt.cli import run_command
from mobilevideogpt.data.paths import resolve_annotation_video
from mobilevideogpt.qved.convert import QvedInputError, QvedSample, convert, feedback_text, source_group, split_samples
from mobilevideogpt.qved.paths import dataset_relpath


def main(argv: list[str]) -> int:
    return run_command("convert", argv)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "utils" / "qved_from_fine_labels.py"


def _make_dataset(root: Path, videos: list[str], ground_truth, manifest=None) -> Path:
    """`root/dataset` with placeholder video files (conversion never decodes them)."""
    dataset = root / "dataset"
    for relpath in videos:
        (dataset / relpath).parent.mkdir(parents=True, exist_ok=True)
        (dataset / relpath).write_bytes(b"\0")
    if manifest is None:
        manifest = {f"dataset/{v}": v.split("/")[0] for v in videos}
    dataset.mkdir(parents=True, exist_ok=True)
    for name, data in (("ground_truth.json", ground_truth), ("manifest.json", manifest)):
        text = data if isinstance(data, str) else json.dumps(data)
        (dataset / name).write_text(text)
    return dataset


def _run(dataset: Path, **kwargs):
    messages, warnings = [], []
    result = convert(dataset, log=messages.append, warn=warnings.append, **kwargs)
    return result, messages, warnings


def _read(path: Path):
    return json.loads(path.read_text())


def test_good_data_gives_exactly_the_guides_format(tmp_path):
    dataset = _make_dataset(
        tmp_path,
        ["tricep_stretch/00002012.mp4", "squats/00093026.mp4"],
        [
            {
                "video_path": "./tricep_stretch/00002012.mp4",
                "labels": ["tricep stretch (right arm) - holding"],
                "labels_descriptive": "tricep stretch (right arm) - User is holding the stretch",
                "other_field": 7,
            },
            {
                "video_path": "squats/00093026.mp4",
                "labels": ["squats - Keep your back straight"],
                "labels_descriptive": "",
            },
        ],
    )
    result, messages, warnings = _run(dataset)
    assert warnings == [] and result.kept == 2 and result.skipped == 0
    assert _read(dataset / "qved_train.json") == [
        {
            "video": "dataset/squats/00093026.mp4",
            "conversations": [
                {"from": "human", "value": "Analyze this squats video and provide corrective feedback."},
                {"from": "gpt", "value": "squats - Keep your back straight"},
            ],
            "split": "train",
        },
        {
            "video": "dataset/tricep_stretch/00002012.mp4",
            "conversations": [
                {"from": "human", "value": "Analyze this tricep stretch video and provide corrective feedback."},
                {"from": "gpt", "value": "tricep stretch (right arm) - User is holding the stretch"},
            ],
            "split": "train",
        },
    ]
    assert not (dataset / "qved_val.json").exists() and not (dataset / "qved_test.json").exists()
    assert any("kept 2 of 2 records, skipped 0" in m for m in messages)


def test_answer_rule():
    assert feedback_text({"labels_descriptive": "a - b", "labels": ["x - y"]}) == "a - b"
    assert feedback_text({"labels_descriptive": ["a - b", " ", "a - c"]}) == "a - b\na - c"
    assert feedback_text({"labels_descriptive": "  ", "labels": ["x - y", "x - z"]}) == "x - y\nx - z"
    assert feedback_text({"labels": "x - y"}) == "x - y"
    assert feedback_text({"labels": [], "labels_descriptive": None}) == ""
    assert feedback_text({"labels": [3, None]}) == ""


def test_sample_dataset_conversion_is_idempotent(sample_dataset_copy):
    before = (sample_dataset_copy / "qved_train.json").read_bytes()
    result, _, warnings = _run(sample_dataset_copy)
    assert warnings == [] and result.kept == 30
    assert (sample_dataset_copy / "qved_train.json").read_bytes() == before
    _run(sample_dataset_copy)
    assert (sample_dataset_copy / "qved_train.json").read_bytes() == before


def test_path_spellings_and_duplicate_basenames(tmp_path):
    # The same file name in two classes: the published basename lookup mixed these up.
    videos = ["squats/00000001.mp4", "squat_jump/00000001.mp4", "squats/00000002.mp4", "squats/00000003.mp4"]
    dataset_abs = (tmp_path / "dataset").resolve()
    ground_truth = [
        {"video_path": "./squat_jump/00000001.mp4", "labels": ["squat jump - land softly"]},
        {"video_path": "dataset/squats/00000001.mp4", "labels": ["squats - go lower"]},
        {"video_path": "00000002.mp4", "labels": ["squats - unique bare name"]},
        {"video_path": str(dataset_abs / "squats" / "00000003.mp4"), "labels": ["squats - absolute path"]},
        {"video_path": "00000001.mp4", "labels": ["ambiguous bare name"]},
    ]
    dataset = _make_dataset(tmp_path, videos, ground_truth)
    result, _, warnings = _run(dataset)
    answers = {r["video"]: r["conversations"][1]["value"] for r in result.splits["train"]}
    assert answers == {
        "dataset/squat_jump/00000001.mp4": "squat jump - land softly",
        "dataset/squats/00000001.mp4": "squats - go lower",
        "dataset/squats/00000002.mp4": "squats - unique bare name",
        "dataset/squats/00000003.mp4": "squats - absolute path",
    }
    assert len(warnings) == 1 and "record 4" in warnings[0] and "ambiguous" in warnings[0]


def test_bad_records_are_warned_once_each_and_skipped(tmp_path):
    videos = ["squats/00000001.mp4", "squats/00000002.mp4"]
    manifest = {
        "dataset/squats/00000001.mp4": "squats",
        "dataset/squats/00000002.mp4": "squats",
        "dataset/squats/00000009.mp4": "squats",  # listed but not on disk
        "dataset/squats/00000003.mp4": "pushups",  # class disagrees with its folder
    }
    ground_truth = [
        {"video_path": "./squats/00000001.mp4", "labels": ["squats - fine"]},
        {"video_path": "./pushups/00000001.mp4", "labels": ["not in manifest"]},
        {"video_path": "./squats/00000009.mp4", "labels": ["missing file"]},
        {"video_path": "./squats/00000002.mp4", "labels": [], "labels_descriptive": ""},
        {"video_path": "../../etc/passwd", "labels": ["escape"]},
        {"video_path": "/etc/passwd", "labels": ["absolute escape"]},
        "not a record",
        {"labels": ["no path"]},
        {"video_path": "./squats/00000001.mp4", "labels": ["squats - fine"]},
    ]
    dataset = _make_dataset(tmp_path, videos, ground_truth, manifest)
    result, messages, warnings = _run(dataset)
    assert result.kept == 1 and result.skipped == 8 and result.total_records == 9
    record_warnings = [w for w in warnings if "ground_truth.json record" in w]
    expected = {
        1: "not in manifest",
        2: "video file missing",
        3: "empty 'labels_descriptive' and 'labels'",
        4: "escapes the dataset folder",
        5: "escapes the dataset folder",
        6: "not a JSON object",
        7: "no 'video_path'",
        8: "duplicate",
    }
    assert len(record_warnings) == len(expected)
    for number, reason in expected.items():
        assert any(f"record {number}" in w and reason in w and w.endswith("skipped") for w in record_warnings), number
    assert any("says class 'pushups'" in w for w in warnings)
    assert any("kept 1 of 9 records, skipped 8" in m for m in messages)


def test_unusable_input_files_raise_one_clear_error(tmp_path):
    dataset = _make_dataset(tmp_path, ["squats/00000001.mp4"], "[{not json")
    with pytest.raises(QvedInputError, match=r"ground_truth.json is not valid JSON \(line 1"):
        _run(dataset)
    (dataset / "ground_truth.json").write_text('{"video_path": "x"}')
    with pytest.raises(QvedInputError, match="must be a JSON list"):
        _run(dataset)
    (dataset / "ground_truth.json").write_text('[{"video_path": "./squats/00000001.mp4", "labels": []}]')
    with pytest.raises(QvedInputError, match="none of the 1 records"):
        _run(dataset)
    (dataset / "manifest.json").write_text("[]")
    with pytest.raises(QvedInputError, match="manifest.json must be a JSON object"):
        _run(dataset)
    (dataset / "manifest.json").unlink()
    with pytest.raises(QvedInputError, match="manifest not found"):
        _run(dataset)
    assert not (dataset / "qved_train.json").exists()


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    dataset = _make_dataset(tmp_path, ["squats/00000001.mp4"], "[{not json")
    assert main(["--dataset-dir", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "ground_truth.json" in err
    assert main(["--dataset-dir", str(tmp_path / "nowhere")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["--dataset-dir", str(dataset), "--val-ratio", "0.6", "--test-ratio", "0.5"]) == 2


def _augmented_dataset(root: Path) -> Path:
    """4 exercises × 6 source videos; some with augmented copies `<stem>_<n>.mp4`."""
    videos, ground_truth = [], []
    for exercise in ("squats", "pushups_on_knees", "knee_circles", "tricep_stretch"):
        for index in range(6):
            stems = [f"{index:08d}"] + [f"{index:08d}_{n}" for n in range(index % 3)]
            for stem in stems:
                videos.append(f"{exercise}/{stem}.mp4")
                ground_truth.append(
                    {"video_path": f"./{exercise}/{stem}.mp4", "labels": [f"{exercise} - feedback {stem}"]}
                )
    return _make_dataset(root, videos, ground_truth)


def _groups(records: list[dict]) -> set[tuple[str, str]]:
    return {source_group(r["video"].split("/", 1)[1]) for r in records}


def test_splits_are_stratified_deterministic_and_never_leak(tmp_path):
    dataset = _augmented_dataset(tmp_path)
    result, messages, warnings = _run(dataset, val_ratio=0.2, test_ratio=0.2, seed=7)
    assert warnings == []
    files = {split: _read(dataset / f"qved_{split}.json") for split in ("train", "val", "test")}
    assert files == result.splits
    assert sum(len(records) for records in files.values()) == result.kept == 48
    for split, records in files.items():
        assert all(r["split"] == split for r in records)
    # No source video (original or augmented copy) in two splits.
    train, val, test = (_groups(files[s]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    # Stratified: every exercise has round(6 * 0.2) = 1 source group in val and in test, 4 in train.
    for exercise in ("squats", "pushups_on_knees", "knee_circles", "tricep_stretch"):
        assert [sum(g[0] == exercise for g in groups) for groups in (train, val, test)] == [4, 1, 1]
    # Deterministic, and independent of record order.
    before = {s: (dataset / f"qved_{s}.json").read_bytes() for s in files}
    ground_truth = _read(dataset / "ground_truth.json")
    random.Random(0).shuffle(ground_truth)
    (dataset / "ground_truth.json").write_text(json.dumps(ground_truth))
    _run(dataset, val_ratio=0.2, test_ratio=0.2, seed=7)
    assert {s: (dataset / f"qved_{s}.json").read_bytes() for s in files} == before
    other_seeds = [_run(dataset, val_ratio=0.2, test_ratio=0.2, seed=s)[0].splits["test"] for s in (1, 2, 3)]
    assert any(split != files["test"] for split in other_seeds)


def test_source_groups_collect_augmented_copies():
    assert source_group("squats/00000001.mp4") == ("squats", "00000001")
    assert source_group("squats/00000001_3.mp4") == ("squats", "00000001")
    assert source_group("squats/clip_01_2.mp4") == source_group("squats/clip_01.mp4")
    assert source_group("squats/00000001.mp4") != source_group("squat_jump/00000001.mp4")


def test_small_classes_keep_at_least_one_training_video():
    samples = [QvedSample(f"squats/{i}.mp4", "squats", "a") for i in range(2)]
    samples.append(QvedSample("lunges/0.mp4", "lunges", "b"))
    splits = split_samples(samples, val_ratio=0.4, test_ratio=0.4, seed=0)
    assert {s.exercise_class for s in splits["train"]} == {"squats", "lunges"}
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == 3


def test_stale_split_files_are_pointed_out(tmp_path):
    dataset = _augmented_dataset(tmp_path)
    _run(dataset, val_ratio=0.2, test_ratio=0.2)
    _, _, warnings = _run(dataset)
    assert any("qved_val.json was not rewritten" in w for w in warnings)


def test_script_defaults_to_the_dataset_folder_and_has_help(sample_dataset_copy):
    project = sample_dataset_copy.parent
    (sample_dataset_copy / "qved_train.json").unlink()
    run = subprocess.run([sys.executable, str(SCRIPT)], cwd=project, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "kept 30 of 30 records" in run.stdout
    assert len(_read(sample_dataset_copy / "qved_train.json")) == 30
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    for flag in (
        "--dataset-dir",
        "--ground-truth",
        "--manifest",
        "--output-dir",
        "--val-ratio",
        "--test-ratio",
        "--seed",
    ):
        assert flag in help_run.stdout


def test_output_dir_elsewhere_keeps_video_paths_resolvable(sample_dataset_copy, tmp_path):
    output_dir = tmp_path / "annotations"
    result, _, _ = _run(sample_dataset_copy, output_dir=output_dir, val_ratio=0.2)
    annotation = output_dir / "qved_val.json"
    records = _read(annotation)
    assert len(records) == 6 and records == result.splits["val"]
    for record in records:
        assert record["video"].startswith("dataset/")
        assert (
            resolve_annotation_video(record["video"], annotation)
            == sample_dataset_copy / record["video"][len("dataset/") :]
        )


def test_path_normalisation_and_resolution(tmp_path):
    dataset = tmp_path / "mydata"
    (dataset / "squats").mkdir(parents=True)
    (dataset / "squats" / "a.mp4").write_bytes(b"\0")
    for spelling in (
        "squats/a.mp4",
        "./squats/a.mp4",
        "dataset/squats/a.mp4",
        "mydata/squats/a.mp4",
        " .\\squats\\a.mp4 ",
        str(dataset / "squats" / "a.mp4"),
        "squats/../squats/a.mp4",
    ):
        assert dataset_relpath(spelling, dataset) == "squats/a.mp4", spelling
    for escaping in ("../a.mp4", "squats/../../a.mp4", "/etc/passwd", "", "  ", "."):
        assert dataset_relpath(escaping, dataset) is None, escaping
    annotation = dataset / "qved_train.json"
    assert resolve_annotation_video("mydata/squats/a.mp4", annotation) == dataset / "squats" / "a.mp4"
    assert resolve_annotation_video("squats/a.mp4", annotation) == dataset / "squats" / "a.mp4"  # published form
    assert resolve_annotation_video("mydata/squats/zz.mp4", annotation) == dataset / "squats" / "zz.mp4"


def test_a_share_of_training_prompts_can_name_no_exercise(sample_dataset_copy):
    generic = "Analyze this exercise video and provide corrective feedback."
    _run(sample_dataset_copy, test_ratio=0.2, generic_prompt_ratio=0.5)
    train = _read(sample_dataset_copy / "qved_train.json")
    asked = [record["conversations"][0]["value"] for record in train]
    share = asked.count(generic) / len(asked)
    assert 0.25 <= share <= 0.75  # 24 videos, each a fair draw
    # The answer still names the exercise; the test split keeps the guide's prompt.
    assert all(" - " in record["conversations"][1]["value"] for record in train)
    assert generic not in {r["conversations"][0]["value"] for r in _read(sample_dataset_copy / "qved_test.json")}
    _run(sample_dataset_copy, test_ratio=0.2, generic_prompt_ratio=0.5)
    assert _read(sample_dataset_copy / "qved_train.json") == train  # the same draw every time
    _run(sample_dataset_copy, test_ratio=0.2)
    assert generic not in {r["conversations"][0]["value"] for r in _read(sample_dataset_copy / "qved_train.json")}
