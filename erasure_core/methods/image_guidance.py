"""Image guidance shared by Co-Erasing and Bi-Erasing: safe decoding, latents, concept masks and velocity targets.

Images reach a method as base64 PNG/JPEG strings (the service has already checked them against its own limits;
the Python API gets the same checks here, with the core's wider bounds). Decoding never trusts the file: the
header's width and height are checked before any pixel is decoded (a 20000x20000 PNG of a few KB would otherwise
allocate gigabytes), `verify()` checks the structure, and only then the pixels are loaded.

How image features enter the Flux MMDiT (see the methods' docstrings): as flow-matching targets in the latent space.
An image x0 of the concept, noised onto the rectified-flow path z = (1 - sigma) x0 + sigma eps, has the velocity
eps - x0: what a model that knows the image would predict there. That velocity is the image-conditioned prediction
the papers get from IP-Adapter tokens, without a projector to train. Text refinement keeps it only where the
image's latent tokens attend to the concept's text tokens (a soft mask from the frozen model's joint attention).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from erasure_core.errors import InvalidConfigError

IMAGE_FORMATS = ("PNG", "JPEG")
MAX_SIDE = 4096  # the core's own bound; the service sets a tighter one (ERASURE_UPLOAD_MAX_SIDE)
MAX_B64_CHARS = 16 * 2**20  # per image, before decoding


class ImageDecodeError(InvalidConfigError):
    """An image that cannot be used. `reason`: base64, format, too_large, damaged."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_base64(text: str, where: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(f"{where}: not valid base64 ({e})", "base64") from e
    if not data:
        raise ImageDecodeError(f"{where}: empty", "base64")
    return data


def open_image(data: bytes, where: str, max_side: int = MAX_SIDE, mode: str = "RGB") -> Any:
    """A decoded PIL image in `mode`, or ImageDecodeError. The header's size is checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (width, height) = probe.format, probe.size
            frames = getattr(probe, "n_frames", 1)
    except Image.DecompressionBombError as e:  # Pillow's own header check, far above any side we accept
        raise ImageDecodeError(f"{where}: declares too many pixels ({e})", "too_large") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{where}: not a PNG or JPEG image", "format") from e
    if fmt not in IMAGE_FORMATS:
        raise ImageDecodeError(f"{where}: {fmt} is not accepted (PNG or JPEG)", "format")
    if width > max_side or height > max_side or width < 1 or height < 1:
        raise ImageDecodeError(f"{where}: {width}x{height} exceeds {max_side}x{max_side} pixels", "too_large")
    if frames != 1:
        raise ImageDecodeError(f"{where}: an animated image ({frames} frames) is not accepted", "format")
    try:
        with Image.open(io.BytesIO(data)) as check:
            check.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{where}: damaged or truncated image ({e})", "damaged") from e


def to_png_b64(image: Any) -> str:
    """A decoded image as a canonical base64 PNG (no metadata, one frame)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def digest(images: Sequence[str]) -> dict[str, Any]:
    """What an artifact records of images: how many and a hash, never the pixels."""
    h = hashlib.sha256()
    for item in images:
        h.update(hashlib.sha256(item.encode("ascii")).digest())
    return {"count": len(images), "sha256": h.hexdigest() if images else None}


def pixels(images: Sequence[str], size: int, where: str, mode: str = "RGB") -> torch.Tensor:
    """Base64 images as [N, C, size, size] floats in [0, 1] (resized to the training size)."""
    import numpy as np

    out = []
    for i, text in enumerate(images):
        image = open_image(decode_base64(text, f"{where}[{i}]"), f"{where}[{i}]", mode=mode)
        array = np.asarray(image, dtype="float32") / 255.0
        tensor = torch.from_numpy(array.copy())
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        out.append(F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


@torch.no_grad()
def encode_latents(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] images in [0, 1] -> packed Flux latents [N, (H/2f)(W/2f), 4C], as FluxPipeline unpacks them
    (scaled by the VAE's shift and scale; the posterior's mode, so the same images give the same latents)."""
    vae = pipe.vae
    x = (images * 2 - 1).to(vae.device, vae.dtype)
    latents = vae.encode(x).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    n, c, h, w = latents.shape
    dtype = pipe.transformer.dtype
    return pipe._pack_latents(latents, n, c, h, w).to(pipe.transformer.device, dtype)


def token_masks(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """[N, 1, H, W] pixel masks in [0, 1] -> [N, tokens] per packed latent token (mean over its pixels)."""
    side = int(round(tokens**0.5))
    return F.adaptive_avg_pool2d(masks.float(), (side, side)).flatten(1).clamp(0, 1)


def attention_mask(
    probs: torch.Tensor, keyword_mask: torch.Tensor, n_text: int, floor: float, quantile: float = 1.0
) -> torch.Tensor:
    """Text-guided refinement: [B, N_img] in [0, 1], how much each image token attends to the concept's tokens.

    The attention the image queries pay to the keyword columns, mean over heads, scaled by each row's `quantile`
    (1.0: its maximum; lower: the top tokens all count fully, so one sharp peak does not dim the rest of the
    concept); values under `floor` count as background (0) and the rest are stretched to [floor, 1] -> [0, 1].

    Args:
        probs: [B, H, S, S] joint attention (text tokens first). keyword_mask: [B, S], True at the keyword keys.
    """
    cols = probs[:, :, n_text:, :] * keyword_mask[:, None, None, :].to(probs.dtype)
    relevance = cols.sum(-1).mean(1)  # [B, N_img]
    relevance = relevance / torch.quantile(relevance.float(), quantile, dim=1, keepdim=True).clamp_min(1e-12)
    return ((relevance - floor) / (1 - floor)).clamp(0, 1)


def refined_velocity(v_text: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The concept's velocity conditioned on text plus refined image features: the image's own flow (eps - x0)
    where its tokens belong to the concept (mask 1), the text-only prediction elsewhere. mask: [B, N_img]."""
    m = mask[:, :, None].to(v_text.dtype)
    return m * (noise - x0) + (1 - m) * v_text
