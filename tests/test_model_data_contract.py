"""The data pipeline's batches drive the model: collated QVED samples → splice → forward and generate."""

import torch
import transformers

import mobilevideogpt  # noqa: F401  (registers the auto classes)
from mobilevideogpt.config import resolve_datasets
from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevideogpt.data.collator import VideoSFTCollator
from mobilevideogpt.data.dataset import SupervisedVideoDataset


def test_collated_sample_batch_splices_and_runs(sample_dataset_dir, mvgpt_tiny_checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(mvgpt_tiny_checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(mvgpt_tiny_checkpoint)
    visual = model.config.visual_tokens_per_video
    dataset = SupervisedVideoDataset(
        resolve_datasets("QVED_TRAIN", root=sample_dataset_dir.parent),
        tokenizer,
        model_max_length=visual + 256,
        num_visual_tokens=visual,
    )
    batch = VideoSFTCollator.from_tokenizer(tokenizer, visual + 256)([dataset[0], dataset[1]])
    assert batch["images"].shape == batch["context_images"].shape == (2, 16, 3, 224, 224)

    with torch.no_grad():
        spliced = model.model.prepare_multimodal_inputs(
            batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"], batch["context_images"]
        )
    lengths = batch["attention_mask"].sum(1)
    assert spliced.attention_mask.sum(1).tolist() == (lengths + visual - 1).tolist()
    for i in range(2):
        ids, labels = batch["input_ids"][i, : lengths[i]], batch["labels"][i, : lengths[i]]
        slot = int((ids == IMAGE_TOKEN_INDEX).nonzero())
        want = torch.cat([labels[:slot], torch.full((visual,), IGNORE_INDEX), labels[slot + 1 :]])
        assert torch.equal(spliced.labels[i, : len(want)], want)  # right padding kept, answers aligned
        assert bool((want != IGNORE_INDEX).any())

    # Full logits would be (2, ~2.5k, 151936) floats; the last positions are enough to run the whole path.
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=2)
    assert out.logits.shape == (2, 2, 151936)  # Qwen2.5's padded vocabulary
    assert bool(torch.isfinite(out.logits).all())
