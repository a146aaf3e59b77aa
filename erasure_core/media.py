"""Encoding what the engines generate: one image as PNG, clips as mp4 / webp / gif.

Images are float tensors [3, H, W] and frames [F, 3, H, W], in [0, 1] throughout. PNG, animated WebP and GIF go
through Pillow; MP4 (H.264, yuv420p) goes through PyAV (`av`), imported lazily so the rest works without it.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_FPS = 8


def to_png_bytes(image: torch.Tensor) -> bytes:
    """Encodes one image [3, H, W] in [0, 1] as PNG."""
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[F, 3, H, W] in [0, 1] -> uint8 array [F, H, W, 3]."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must have shape [F, 3, H, W], got {tuple(frames.shape)}")
    array = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).contiguous().numpy()


def _pil_frames(frames: torch.Tensor) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(frame) for frame in _to_uint8(frames)]


def to_gif_bytes(frames: torch.Tensor, fps: int = DEFAULT_FPS, loop: int = 0) -> bytes:
    """Encodes frames [F, 3, H, W] in [0, 1] as an animated GIF (looping forever by default)."""
    images = _pil_frames(frames)
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=loop,
        disposal=1,
        optimize=False,
    )
    return buffer.getvalue()


def to_webp_bytes(frames: torch.Tensor, fps: int = DEFAULT_FPS, lossless: bool = True, loop: int = 0) -> bytes:
    """Encodes frames [F, 3, H, W] in [0, 1] as an animated WebP (lossless by default)."""
    images = _pil_frames(frames)
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=loop,
        lossless=lossless,
        quality=90,
        minimize_size=False,
        allow_mixed=False,
    )
    return buffer.getvalue()


def to_mp4_bytes(frames: torch.Tensor, fps: int = DEFAULT_FPS, crf: int = 18) -> bytes:
    """Encodes frames [F, 3, H, W] in [0, 1] as H.264 MP4 (yuv420p; odd sides are padded by one black pixel).

    Raises:
        ImportError: PyAV (`pip install av`) is not installed.
    """
    import av

    array = _to_uint8(frames)
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:  # yuv420p needs even sides
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
