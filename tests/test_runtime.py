"""Device and dtype resolution."""

from __future__ import annotations

import pytest
import torch

from mobilevideogpt.errors import ModelLoadError
from mobilevideogpt.runtime import resolve_device, resolve_dtype


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp16") == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int3")
    if torch.cuda.is_available():
        cuda = resolve_device("auto")
        assert cuda.type == "cuda"
        assert resolve_dtype("auto", cuda) in (torch.bfloat16, torch.float16)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
