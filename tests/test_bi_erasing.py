"""Bi-Erasing on the demo world: the positive branch is drawn (or uploaded) and mask-filtered, both branches train,
and a crashed job resumes to the same adapter. Quality bars: `python bench/image_guided.py` (see test_co_erasing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from erasure_core.checkpoints import FileCheckpoints
from erasure_core.concepts import ConceptSpec
from erasure_core.methods import get_method
from erasure_core.methods.bi_erasing.config import BiErasingConfig
from tests.test_co_erasing import TINY, render_b64


def test_presets_and_validation() -> None:
    cfg = BiErasingConfig(preset="cpu")
    assert cfg.anchor_in_prompt and cfg.lambda_positive == 1.0 and cfg.image_batch == 4
    assert BiErasingConfig().anchor_in_prompt  # the positive images are drawn from the anchor inside the prompts
    with pytest.raises(ValueError, match="one mask per positive image"):
        BiErasingConfig(positive_images=tuple(render_b64(2)), positive_masks=tuple(render_b64(1)))
    assert get_method("bi-erasing").trained and get_method("bi-erasing").max_concepts == 1


def test_generated_anchor_images_with_attention_masks(demo_engine: Any) -> None:
    """Nothing uploaded: the base model draws the concept and the anchor; the masks come from its attention."""
    logs: list[dict[str, float]] = []
    artifact = demo_engine.erase(
        ConceptSpec(concept="triangle", anchor="circle"),
        method="bi-erasing",
        options={"preset": "cpu", **TINY, "steps": 2},
        progress=lambda step, total, losses: logs.append(losses),
    )
    stats = artifact.metadata["stats"]
    assert (stats["positive_source"], stats["reference_source"]) == ("generated", "generated")
    assert 0 < stats["positive_mask_mean"] < 1 and 0 < stats["reference_mask_mean"] < 1
    assert all("positive" in entry and "image" in entry for entry in logs)


def test_uploaded_branches_resume_exactly(demo_engine: Any, tmp_path: Path) -> None:
    options = {
        "preset": "cpu",
        **TINY,
        "reference_images": render_b64(2),
        "positive_images": render_b64(2, shape="circle"),
        "positive_masks": render_b64(2, shape="circle"),  # any image works as a mask (its luminance)
    }
    spec = ConceptSpec(concept="triangle", anchor="circle")
    straight = demo_engine.erase(spec, method="bi-erasing", options=options)
    params = straight.metadata["params"]
    assert params["positive_images"]["count"] == 2 and params["positive_masks"]["count"] == 2
    assert straight.metadata["stats"]["positive_source"] == "uploaded"

    ckpt = FileCheckpoints(tmp_path / "ckpt.safetensors")

    class Crash(Exception):
        pass

    def crash_after_two(step: int, total: int, logs: dict) -> None:
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        demo_engine.erase(spec, method="bi-erasing", options=options, progress=crash_after_two, checkpoints=ckpt)
    resumed = demo_engine.erase(spec, method="bi-erasing", options=options, checkpoints=ckpt)
    for name, delta in straight.deltas.items():
        assert torch.allclose(delta.B, resumed.deltas[name].B, atol=1e-6), name
