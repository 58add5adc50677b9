"""The served models (serve/models.py): both are loaded with the same placement options."""

from __future__ import annotations

import pytest

from mobilevideogpt.engine import int8_matmul
from mobilevideogpt.serve.models import load_models


@pytest.mark.skipif(int8_matmul.problem() is not None, reason=f"no fbgemm here: {int8_matmul.problem()}")
def test_model_and_compare_share_quantize_and_budget(mvgpt_fast_checkpoint, mvgpt_trained_run):
    served = load_models(str(mvgpt_fast_checkpoint), str(mvgpt_trained_run), "cpu", "auto", 600, "w8a8")
    assert [model.role for model in served] == ["model", "compare"]
    for model in served:
        assert model.chat.plan.int8_matmul and model.chat.plan.llm_weights == "int8"
        assert model.chat.visual_tokens == 600
    with pytest.raises(ValueError, match="same model"):
        load_models(str(mvgpt_fast_checkpoint), str(mvgpt_fast_checkpoint), "cpu", "auto")
