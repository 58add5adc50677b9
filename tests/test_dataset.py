import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mobilevideogpt.config import resolve_datasets
from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevideogpt.data.collator import VideoSFTCollator
from mobilevideogpt.data.dataset import (
    SampleTooLongError,
    SupervisedVideoDataset,
    UnusableDataError,
    truncate_sample,
)
from mobilevideogpt.processing import parse_conversation, tokenize_segments

T, SIZE = 4, 8  # tiny frame stacks keep the tests fast


class FakeDecodeError(RuntimeError):
    """Stands in for the decoder's VideoDecodeError (a RuntimeError subclass)."""


@dataclass
class FakeVideo:
    frames: torch.Tensor
    context_frames: torch.Tensor


class FakeLoader:
    """Deterministic frames derived from the file name; names containing 'bad' fail like a corrupt video."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, path, num_frames, image_size):
        self.calls.append(path)
        if "bad" in Path(path).name:
            raise FakeDecodeError(f"cannot decode {path}")
        value = float(sum(map(ord, Path(path).name)))
        frames = torch.full((num_frames, 3, image_size, image_size), value)
        return FakeVideo(frames, -frames)


def record(name, answer="keep the back straight", video=True):
    sample = {
        "conversations": [
            {"from": "human", "value": f"Analyze this {name} video and provide corrective feedback."},
            {"from": "gpt", "value": answer},
        ],
        "split": "train",
    }
    if video:
        sample["video"] = f"dataset/squats/{name}.mp4"
    return sample


def write_json(root: Path, records, name="dataset/qved_train.json") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def make_dataset(root, records, tokenizer, **kwargs):
    write_json(root, records)
    kwargs = {"num_frames": T, "image_size": SIZE, "num_visual_tokens": 10, "video_loader": FakeLoader(), **kwargs}
    return SupervisedVideoDataset(resolve_datasets("QVED_TRAIN", root=root), tokenizer, **kwargs)


def test_item_contents(tmp_path, qwen25_tokenizer):
    ds = make_dataset(tmp_path, [record("ok1"), record("text", video=False)], qwen25_tokenizer)
    item = ds[0]
    conversation = parse_conversation(record("ok1")["conversations"], "ok1.mp4")
    ids, labels = tokenize_segments(conversation.segments(), qwen25_tokenizer)
    assert item["input_ids"].dtype == item["labels"].dtype == torch.long
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    assert (item["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    assert item["images"].shape == item["context_images"].shape == (T, 3, SIZE, SIZE)
    assert torch.equal(item["context_images"], -item["images"])
    # The guide's `dataset/<class>/<file>` paths start from the parent of the annotation file's folder.
    assert ds.video_loader.calls == [str(tmp_path.resolve() / "dataset/squats/ok1.mp4")]
    text_only = ds[1]
    assert "images" not in text_only and IMAGE_TOKEN_INDEX not in text_only["input_ids"].tolist()


def test_absolute_video_path_kept(tmp_path, qwen25_tokenizer):
    sample = record("abs")
    sample["video"] = "/data/videos/abs.mp4"
    ds = make_dataset(tmp_path, [sample], qwen25_tokenizer)
    ds[0]
    assert ds.video_loader.calls == ["/data/videos/abs.mp4"]


def test_records_without_conversations_skipped_and_counted(tmp_path, qwen25_tokenizer, caplog):
    records = [record("ok1"), {"video": "dataset/squats/x.mp4"}, record("ok2"), {"conversations": []}]
    with caplog.at_level(logging.WARNING):
        ds = make_dataset(tmp_path, records, qwen25_tokenizer)
    assert len(ds) == 2
    assert ds.skipped["no_conversations"] == 2
    assert "qved_train.json: skipped 2 record(s)" in caplog.text and "[1, 3]" in caplog.text
    assert ds.skip_summary() == "2 of 4 samples skipped in this process (no_conversations: 2)"


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{", r"qved_train\.json: invalid JSON at line 1"),
        ('{"video": "a.mp4"}', r"qved_train\.json: expected a JSON list"),
        ('[{"conversations": []}, 3]', r"qved_train\.json, record 1: expected an object"),
        ('[{"video": 5, "conversations": [{"from": "human", "value": "q"}]}]', r"record 0: `video` must be"),
        (
            '[{"conversations": [{"from": "human", "value": "<video> q"}, {"from": "gpt", "value": "a"}]}]',
            r"record 0: .*no video",
        ),
        ('[{"conversations": [{"from": "robot", "value": "q"}]}]', r"record 0: turn 0: unknown conversation role"),
        ('[{"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}]}]', r"record 0: image samples"),
    ],
)
def test_bad_annotations_name_file_and_record(tmp_path, qwen25_tokenizer, content, message):
    path = tmp_path / "dataset/qved_train.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        SupervisedVideoDataset(resolve_datasets("QVED_TRAIN", root=tmp_path), qwen25_tokenizer, num_visual_tokens=10)


def test_failing_video_skipped_counted_and_replaced(tmp_path, qwen25_tokenizer, caplog):
    records = [record(n) for n in ("ok0", "bad1", "ok2", "ok3", "bad4")]
    ds = make_dataset(tmp_path, records, qwen25_tokenizer, seed=7)
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert "bad1.mp4" in caplog.text and "FakeDecodeError" in caplog.text
    assert ds.skipped["video_error"] >= 1
    replacement = item["images"][0, 0, 0, 0].item()
    assert replacement in {float(sum(map(ord, f"ok{i}.mp4"))) for i in (0, 2, 3)}
    # The replacement is fixed by (seed, index): a fresh dataset in another process/epoch picks the same one.
    again = make_dataset(tmp_path, records, qwen25_tokenizer, seed=7)
    assert again[1]["images"][0, 0, 0, 0].item() == replacement
    # A known-bad video is not decoded again.
    calls = len(ds.video_loader.calls)
    ds[1]
    assert ds.video_loader.calls.count(ds.records[1].video) == 1 and len(ds.video_loader.calls) == calls + 1
    for i in range(len(ds)):
        ds[i]
    assert ds.skipped["video_error"] == 2
    assert ds.skip_summary() == "2 of 5 samples skipped in this process (video_error: 2)"


def test_all_broken_raises_instead_of_looping(tmp_path, qwen25_tokenizer):
    ds = make_dataset(tmp_path, [record(f"bad{i}") for i in range(5)], qwen25_tokenizer)
    with pytest.raises(UnusableDataError, match=r"none of the 5 samples can be used \(last: .*bad\d.mp4.*video_error: 5"):
        ds[0]
    assert len(ds.video_loader.calls) == 5
    bounded = make_dataset(tmp_path, [record(f"bad{i}") for i in range(50)], qwen25_tokenizer, max_load_attempts=3)
    with pytest.raises(RuntimeError, match="3 samples in a row could not be used.*verify_qved_setup"):
        bounded[10]
    assert len(bounded.video_loader.calls) == 3


def test_programming_errors_are_not_swallowed(tmp_path, qwen25_tokenizer):
    def broken_loader(path, num_frames, image_size):
        raise TypeError("bug in the loader")

    ds = make_dataset(tmp_path, [record("ok0"), record("ok1")], qwen25_tokenizer, video_loader=broken_loader)
    with pytest.raises(TypeError, match="bug in the loader"):
        ds[0]


def test_wrong_frame_shape_is_an_error(tmp_path, qwen25_tokenizer):
    def short_loader(path, num_frames, image_size):
        frames = torch.zeros(num_frames - 1, 3, image_size, image_size)
        return FakeVideo(frames, frames)

    ds = make_dataset(tmp_path, [record("ok0")], qwen25_tokenizer, video_loader=short_loader)
    with pytest.raises(ValueError, match="frames of shape"):
        ds[0]


def test_truncation_counts_visual_tokens():
    V, IGN = IMAGE_TOKEN_INDEX, IGNORE_INDEX
    ids = [1, 2, V, 3, 4, 5, 6, 7]
    labels = [IGN, IGN, IGN, IGN, IGN, 5, 6, 7]
    # 8 text ids − 1 placeholder + 10 visual tokens = 17 in the LLM.
    assert truncate_sample(ids, labels, 17, 10) == (ids, labels)
    assert truncate_sample(ids, labels, 16, 10) == (ids[:7], labels[:7])
    assert truncate_sample(ids, labels, 15, 10) == (ids[:6], labels[:6])
    with pytest.raises(SampleTooLongError, match=r"need 15 tokens \(1 video × 10 visual tokens"):
        truncate_sample(ids, labels, 14, 10)
    # Text-only: only text tokens count.
    assert truncate_sample([1, 2, 3, 4], [IGN, 2, 3, 4], 2, 10) == ([1, 2], [IGN, 2])


def test_too_long_samples_are_skipped_or_cut_at_construction_and_counted(tmp_path, qwen25_tokenizer, caplog):
    ok = record("ok0")
    long = record("long1", answer="fine")
    long["conversations"][0]["value"] += " really" * 200
    tail = record("tail2", answer="word " * 500)
    with caplog.at_level(logging.WARNING):
        ds = make_dataset(tmp_path, [ok, long, tail], qwen25_tokenizer, model_max_length=200, num_visual_tokens=50)
    assert len(ds) == 2 and ds.skipped["too_long"] == 1 and ds.truncated == 1
    assert "1 sample(s) skipped: the prompt, video and first answer token do not fit model_max_length = 200" in caplog.text
    assert "qved_train.json#1 needs" in caplog.text
    assert "1 sample(s) have answers cut to fit model_max_length = 200 (first:" in caplog.text
    assert "answer(s) cut to fit model_max_length" in ds.skip_summary()
    # A long answer is cut at the end; the prompt and placeholder stay.
    item = ds[1]
    assert len(item["input_ids"]) == 200 - 49 and IMAGE_TOKEN_INDEX in item["input_ids"].tolist()
    assert (item["labels"][-10:] != IGNORE_INDEX).all()


def test_a_length_limit_no_sample_fits_is_an_early_error_naming_the_setting(tmp_path, qwen25_tokenizer):
    """MAXLEN=1: training says which setting to raise, in the units the user set it in (text tokens)."""
    with pytest.raises(UnusableDataError, match=r"every sample .* is longer than MAXLEN = 1 allows .* raise MAXLEN to at least \d+"):
        make_dataset(tmp_path, [record("ok0")], qwen25_tokenizer, model_max_length=2403, num_visual_tokens=2402,
                     length_setting=("MAXLEN", 2402))
    # Text-only data is fine with any length that holds it.
    make_dataset(tmp_path, [record("t", video=False)], qwen25_tokenizer, model_max_length=64, num_visual_tokens=2402)


def test_dataloader_with_workers_and_collator(tmp_path, qwen25_tokenizer):
    records = [record("ok0"), record("bad1"), record("text", video=False), record("ok3")]
    ds = make_dataset(tmp_path, records, qwen25_tokenizer)
    collate = VideoSFTCollator.from_tokenizer(qwen25_tokenizer, model_max_length=2048)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2]
    # bad1 was replaced inside a worker; every batch pairs one video with each placeholder.
    for batch in batches:
        assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum() == batch["images"].shape[0]
    assert batches[1]["images"].shape == (1, T, 3, SIZE, SIZE)  # text-only + ok3
    # Skips inside workers are counted there (documented), not in the main process.
    assert ds.skipped["video_error"] == 0
