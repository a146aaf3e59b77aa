"""The attention recorder (`erasure_core.families.attention`) computes the model's own attention, on Flux as on
Open-Sora (whose variant `tests/test_video_erasure.py` checks), and gives the block its processor back."""

from __future__ import annotations

import torch

from erasure_core.families.flux import FLUX


def test_recording_flux_attention_changes_nothing_and_is_undone(demo_engine) -> None:
    pipe, ops = demo_engine.pipe, FLUX.training
    cond = ops.encode_text(pipe, ["a red triangle", "a blue circle in a picture"])
    x = ops.noise(pipe, 2, torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 0.6)
    block = pipe.transformer.transformer_blocks[-1].attn
    own = block.processor
    with ops.capture_attention(pipe) as record:
        recorded = ops.velocity(pipe, x, sigma, cond)
    assert block.processor is own
    plain = ops.velocity(pipe, x, sigma, cond)
    assert torch.allclose(recorded, plain, atol=1e-4)  # interleaved RoPE, as Flux applies it
    n = cond.tokens.shape[1] + x.shape[1]
    probs = record["probs"]
    assert probs.shape[0] == 2 and probs.shape[2:] == (n, n)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-4)
