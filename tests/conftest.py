"""Shared fixtures: the embedded model (converted once into the project cache) and a tiny random
Llama on its tokenizer (what configs/tiny.yaml points at)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    from selfreward.models import convert_embedded

    return convert_embedded(CACHE)


@pytest.fixture(scope="session")
def tiny_model(embedded_model: Path) -> Path:
    from selfreward.models import build_tiny_model

    return build_tiny_model(CACHE / "models" / "tiny", embedded_model)


def vllm_installed() -> bool:
    from selfreward.generation import vllm_available

    return vllm_available()


requires_vllm = pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed")


@pytest.fixture
def trl_lm_head_default() -> Iterator[Any]:
    """`trl.trainer.utils` with TRL's own choice of LM-head positions (every one on CPU) for the test, whatever an
    earlier test's stage installed (`models.lm_head_on_labelled_positions_only` is process-wide); put back after."""
    import trl.trainer.utils as trl_utils

    from selfreward.models import trl_lm_head_default

    with trl_lm_head_default():
        yield trl_utils
