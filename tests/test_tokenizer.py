from mobilevideogpt.tokenizer import QWEN25_LEN, build_qwen25_tokenizer


def test_qwen25_ids_and_specials(tmp_path):
    tok = build_qwen25_tokenizer()
    assert len(tok) == QWEN25_LEN
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.convert_tokens_to_ids("<|file_sep|>") == 151664
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    text = "<|im_start|>user\nAnalyze this squats video.<|im_end|>\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == 151644 and 151645 in ids
    assert tok.decode(ids) == text
    # Survives save/load, as the tiny checkpoints rely on.
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert len(again) == QWEN25_LEN
    assert again(text, add_special_tokens=False).input_ids == ids
    assert again.eos_token_id == 151645
