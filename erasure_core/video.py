"""Generating and encoding short videos: `generate_video` over an `OpenSoraPipeline`, and mp4 / webp / gif encoders.

Frames are float tensors [F, 3, H, W] in [0, 1] throughout. Animated WebP and GIF go through Pillow; MP4 (H.264,
yuv420p) goes through PyAV (`av`), imported lazily so the rest works without it.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_FPS = 8


def generate_video(
    pipe: Any,
    prompt: str,
    seed: int = 0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    fps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    **kwargs: Any,
) -> torch.Tensor:
    """Generates one clip and returns its frames [F, 3, H, W] in [0, 1] (float32, CPU).

    Unset arguments take the loaded model's defaults: `num_frames` = `pipe.native_num_frames`, (`height`, `width`) =
    `pipe.native_size`; `steps` and `guidance_scale` are the pipeline's own defaults when None, and `fps` (the
    " {fps} FPS." prompt suffix the model was trained with) is the pipeline's default. Extra keyword arguments go to
    the pipeline call (e.g. `motion_score`, `text_oscillation`).
    """
    native_h, native_w = pipe.native_size
    call: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_frames": num_frames or pipe.native_num_frames,
        "height": height or native_h,
        "width": width or native_w,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "pt",
        **kwargs,
    }
    if steps is not None:
        call["num_inference_steps"] = steps
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    if fps is not None:
        call["fps"] = fps
    frames = pipe(**call).frames
    return frames[0].float().cpu().clamp(0, 1)


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
