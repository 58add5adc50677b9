import pytest
import torch

from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevideogpt.data.collator import VideoSFTCollator

PAD, V, IGN = 151643, IMAGE_TOKEN_INDEX, IGNORE_INDEX
T, SIZE = 2, 4


def video(value):
    return torch.full((T, 3, SIZE, SIZE), float(value))


def item(ids, labels, frames_value=None):
    sample = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if frames_value is not None:
        sample["images"] = video(frames_value)
        sample["context_images"] = -video(frames_value)
    return sample


def test_padding_and_mask_from_true_lengths():
    # The second sample's last real token is the pad id itself: the mask must still cover it.
    batch = VideoSFTCollator(PAD, 64)([item([1, 2, 3], [IGN, 2, 3]), item([4, PAD], [IGN, PAD])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, PAD, PAD]]
    assert batch["labels"].tolist() == [[IGN, 2, 3], [IGN, PAD, IGN]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["attention_mask"].dtype == batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["images"] is None and batch["context_images"] is None


def test_truncation_to_model_max_length():
    batch = VideoSFTCollator(PAD, 4)([item([V, 1, 2, 3, 4, 5], [IGN, IGN, 2, 3, 4, 5], 1), item([7], [7])])
    assert batch["input_ids"].tolist() == [[V, 1, 2, 3], [7, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[IGN, IGN, 2, 3], [7, IGN, IGN, IGN]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_mixed_batch_stacks_videos_in_order_without_dummy_placeholders():
    instances = [
        item([1, V, 2], [IGN, IGN, 2], frames_value=10),
        item([3, 4], [IGN, 4]),
        item([V, 5, 6, 7], [IGN, IGN, 6, 7], frames_value=20),
    ]
    batch = VideoSFTCollator(PAD, 64)(instances)
    assert batch["images"].shape == batch["context_images"].shape == (2, T, 3, SIZE, SIZE)
    assert batch["images"][:, 0, 0, 0, 0].tolist() == [10.0, 20.0]
    assert batch["context_images"][:, 0, 0, 0, 0].tolist() == [-10.0, -20.0]
    # The text-only sample is left exactly as it was: no placeholder inserted.
    assert batch["input_ids"][1].tolist() == [3, 4, PAD, PAD]
    assert (batch["input_ids"] == V).sum(dim=1).tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "instances, max_len, message",
    [
        ([item([1, 2], [IGN, 2], frames_value=1)], 64, "0 placeholder run.*one video"),
        ([item([V, 2], [IGN, 2])], 64, "1 placeholder run.*no video"),
        ([item([V, 1, V], [IGN, IGN, IGN], frames_value=1)], 64, "2 placeholder run"),
        ([item([1, 2, V], [IGN, 2, IGN], frames_value=1)], 2, "after truncation to 2"),
        ([item([1, 2], [IGN])], 64, "differ"),
    ],
)
def test_inconsistent_items_are_errors(instances, max_len, message):
    with pytest.raises(ValueError, match=message):
        VideoSFTCollator(PAD, max_len)(instances)


def test_video_shapes_must_match():
    other = item([V, 1], [IGN, 1])
    other["images"] = other["context_images"] = torch.zeros(T + 1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="share a shape"):
        VideoSFTCollator(PAD, 64)([item([V, 1], [IGN, 1], frames_value=1), other])


def test_from_tokenizer(qwen25_tokenizer):
    collator = VideoSFTCollator.from_tokenizer(qwen25_tokenizer, 2048)
    assert collator.pad_token_id == qwen25_tokenizer.pad_token_id == PAD
    with pytest.raises(ValueError, match="pad_token_id"):
        VideoSFTCollator(None, 8)
