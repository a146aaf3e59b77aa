"""The clip encoders of `erasure_core.media`: animated GIF and WebP (Pillow), MP4 (PyAV) decode back frame for frame."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from erasure_core.media import to_gif_bytes, to_mp4_bytes, to_webp_bytes
from erasure_core.worlds.clips import sample_clips

FRAMES = 9


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """One moving-shape clip: consecutive frames differ (encoders may merge identical frames)."""
    return sample_clips(1, seed=3).frames[0]


def _pil_frames(data: bytes) -> list[Image.Image]:
    image = Image.open(io.BytesIO(data))
    out = []
    for i in range(image.n_frames):
        image.seek(i)
        out.append(image.convert("RGB"))
    return out


def test_gif_round_trip(frames: torch.Tensor) -> None:
    data = to_gif_bytes(frames, fps=8)
    assert data[:6] in (b"GIF87a", b"GIF89a")
    decoded = _pil_frames(data)
    assert len(decoded) == FRAMES
    assert decoded[0].size == (32, 32)
    # GIF stores delays in centiseconds: 1000 / 8 = 125 ms is written as 12 or 13 cs.
    assert abs(Image.open(io.BytesIO(data)).info["duration"] - 125) <= 10


def test_webp_round_trip_is_lossless(frames: torch.Tensor) -> None:
    data = to_webp_bytes(frames, fps=8)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    decoded = _pil_frames(data)
    assert len(decoded) == FRAMES
    expected = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    for image, want in zip(decoded, expected, strict=True):
        got = torch.from_numpy(np.asarray(image).copy())
        assert (got.int() - want.int()).abs().max() <= 1


def test_mp4_round_trip(frames: torch.Tensor) -> None:
    av = pytest.importorskip("av")
    data = to_mp4_bytes(frames, fps=8)
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        rate = stream.average_rate
    assert len(decoded) == FRAMES
    assert decoded[0].shape == (32, 32, 3)
    assert float(rate) == pytest.approx(8.0)
    # Lossy, but close: mean absolute error under 10 of 255 per channel.
    expected = (frames.clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    error = sum(abs(d.astype(float) - e).mean() for d, e in zip(decoded, expected, strict=True)) / FRAMES
    assert error < 10.0


def test_odd_sides_and_bad_shapes() -> None:
    odd = torch.rand(3, 3, 17, 15)
    assert len(_pil_frames(to_gif_bytes(odd))) == 3
    if pytest.importorskip("av"):
        assert to_mp4_bytes(odd)[4:8] == b"ftyp"
    with pytest.raises(ValueError):
        to_gif_bytes(torch.rand(3, 32, 32))
