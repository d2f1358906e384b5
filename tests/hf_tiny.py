"""Tiny HuggingFace variants (a few thousand weights) so HF tests build and run in a fraction of a second.

Tests register them in :data:`flair_deploy.hf_models.HF_MODELS` with ``monkeypatch.setitem``; the
released variants keep their real sizes.
"""

from __future__ import annotations

import pytest

from flair_deploy.hf_models import HF_MODELS, HFVariant

TINY: dict[str, HFVariant] = {
    "test/mit-tiny": HFVariant(
        "segformer",
        "mit-tiny",
        "mit",
        {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 1, 1]}
        | {"decoder_hidden_size": 16},
    ),
    "test/upernet-swin-tiny": HFVariant(
        "upernet",
        "swin-tiny-test",
        "swin",
        {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4},
        {"hidden_size": 16},
    ),
    "test/upernet-convnext-tiny": HFVariant(
        "upernet",
        "convnext-tiny-test",
        "convnext",
        {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32]},
        {"hidden_size": 16},
    ),
}


def register_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the tiny variants buildable for the duration of one test."""
    for name, variant in TINY.items():
        monkeypatch.setitem(HF_MODELS, name, variant)
