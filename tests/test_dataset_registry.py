import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevideogpt.config import QVED_TRAIN, DataConfig, resolve_datasets

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_qved(root: Path, *splits: str) -> None:
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / "dataset" / f"qved_{split}.json").write_text("[]")


def mobilegpt_mix_imported_in(cwd: Path) -> list:
    """`DataConfig["MobileGPT"]` as seen by a fresh interpreter started in `cwd` (the check runs at import)."""
    code = "import json; from mobilevideogpt.config import DataConfig; print(json.dumps(DataConfig['MobileGPT']))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_qved_auto_included_only_when_train_json_exists(tmp_path):
    assert mobilegpt_mix_imported_in(tmp_path) == []
    write_qved(tmp_path, "train")
    assert mobilegpt_mix_imported_in(tmp_path) == [QVED_TRAIN]


def test_registry_names():
    assert DataConfig["QVED"] == DataConfig["QVED_TRAIN"] == [QVED_TRAIN]
    for split in ("train", "val", "test"):
        (entry,) = DataConfig[f"QVED_{split.upper()}"]
        assert entry == {"annotation_path": f"dataset/qved_{split}.json"}


def test_resolve_names_against_root(tmp_path):
    write_qved(tmp_path, "train", "val")
    entries = resolve_datasets("QVED_TRAIN, QVED_VAL", root=tmp_path)
    assert [e.name for e in entries] == ["QVED_TRAIN", "QVED_VAL"]
    assert entries[0].annotation_path == tmp_path.resolve() / "dataset/qved_train.json"
    # Naming the same file twice keeps it once.
    assert len(resolve_datasets("QVED,QVED_TRAIN", root=tmp_path)) == 1


def test_resolve_default_root_is_cwd(tmp_path, monkeypatch):
    write_qved(tmp_path, "train")
    monkeypatch.chdir(tmp_path)
    (entry,) = resolve_datasets("QVED")
    assert entry.annotation_path == tmp_path.resolve() / "dataset/qved_train.json"


def test_resolve_direct_json_paths(tmp_path):
    (tmp_path / "mine.json").write_text("[]")
    (relative,) = resolve_datasets("mine.json", root=tmp_path)
    assert relative.annotation_path == tmp_path.resolve() / "mine.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (absolute,) = resolve_datasets(str(tmp_path / "mine.json"), root=elsewhere)
    assert absolute.annotation_path == tmp_path / "mine.json"


def test_registry_absolute_paths_kept(tmp_path):
    annotation = tmp_path / "a.json"
    annotation.write_text("[]")
    registry = {"MINE": [{"annotation_path": str(annotation)}]}
    (entry,) = resolve_datasets("MINE", root=tmp_path / "other", registry=registry)
    assert entry.annotation_path == annotation


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'FINETUNING'.*QVED_TRAIN"):
        resolve_datasets("FINETUNING", root=tmp_path)
    with pytest.raises(ValueError, match="no dataset given"):
        resolve_datasets(" , ", root=tmp_path)


def test_missing_file_error_names_path_and_fix(tmp_path):
    write_qved(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"qved_val\.json.*--val-ratio"):
        resolve_datasets("QVED_TRAIN,QVED_VAL", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        resolve_datasets("nothere.json", root=tmp_path)


def test_empty_mix_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="MobileGPT.*is empty.*qved_train.json"):
        resolve_datasets("MobileGPT", root=tmp_path, registry={"MobileGPT": []})
