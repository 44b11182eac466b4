"""What the KServe V2 tests share over both transports: tritonclient's BYTES arrays and its exceptions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException


def text_array(texts: list[str], shape: list[int] | None = None) -> np.ndarray:
    """A BYTES tensor as tritonclient users build it: an object array of shape [n, 1] (or `shape`)."""
    return np.array([[t] for t in texts], dtype=object) if shape is None else np.array(texts, dtype=object).reshape(shape)


def failure(call: Callable[[], Any]) -> tuple[str, str]:
    """The (status, message) of the InferenceServerException a call raises."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()
