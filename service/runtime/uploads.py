"""Images uploaded with an erasure request: checked, decoded safely and turned into the job's options.

Image-guided methods (`co-erasing`, `bi-erasing`) take `reference_images` (and `reference_masks`) and `bi-erasing`
also `positive_images` (and `positive_masks`), as base64 PNG or JPEG. Each list is bounded in count, each image in
decoded bytes and in pixels; the pixel size is read from the header before anything is decoded (a small file can
declare 20000x20000), the structure is verified, and only then are the pixels loaded. Each image is re-encoded as
a plain PNG (no metadata, one frame) and kept in the record's options, which the API never shows
(`schemas.HIDDEN_OPTIONS`): the job, and a resumed job, reads the same images from there, owned by the tenant like
the rest of the record and deleted with it.

Everything here runs before anything is written, so a refused upload leaves no record and queues no job.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from erasure_core.methods import image_guidance as ig
from service.errors import (
    EmptyUploadError,
    ImageTooLargeError,
    InvalidBase64Error,
    InvalidImageError,
    MaskMismatchError,
    TooManyImagesError,
    UploadNotSupportedError,
)

# Upload field -> the mask field that goes with it.
IMAGE_FIELDS = {"reference_images": "reference_masks", "positive_images": "positive_masks"}
UPLOAD_FIELDS = (*IMAGE_FIELDS, *IMAGE_FIELDS.values())
_REASONS = {"base64": InvalidBase64Error, "format": InvalidImageError, "damaged": InvalidImageError}


@dataclass(frozen=True)
class UploadLimits:
    max_images: int
    max_image_bytes: int
    max_side: int


def _decode(text: str, where: str, limits: UploadLimits, mode: str) -> Any:
    """One base64 image -> a decoded PIL image, or the upload error that says why not."""
    # Checked before decoding the base64 itself: 4 characters carry 3 bytes.
    if len(text) > 4 * (limits.max_image_bytes // 3 + 1):
        raise ImageTooLargeError(f"{where}: larger than {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidBase64Error(f"{where}: not valid base64 ({e})") from e
    if not data:
        raise InvalidImageError(f"{where}: empty")
    if len(data) > limits.max_image_bytes:
        raise ImageTooLargeError(f"{where}: {len(data)} bytes, more than {limits.max_image_bytes}")
    try:
        return ig.open_image(data, where, max_side=limits.max_side, mode=mode)
    except ig.ImageDecodeError as e:
        if e.reason == "too_large":
            raise ImageTooLargeError(str(e)) from e
        raise _REASONS.get(e.reason, InvalidImageError)(str(e)) from e


def _decode_list(field: str, items: list[str], limits: UploadLimits, mode: str) -> list[Any]:
    if not items:
        raise EmptyUploadError(f"{field}: an empty list; leave the field out to let the job draw its own images")
    if len(items) > limits.max_images:
        raise TooManyImagesError(
            f"{field}: {len(items)} images, at most {limits.max_images} (ERASURE_UPLOAD_MAX_IMAGES)"
        )
    return [_decode(text, f"{field}[{i}]", limits, mode) for i, text in enumerate(items)]


def _check_masks(field: str, images: list[Any], masks: list[Any]) -> None:
    if len(masks) != len(images):
        raise MaskMismatchError(f"{field}: {len(masks)} masks for {len(images)} images (one mask per image)")
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if mask.size != image.size:
            raise MaskMismatchError(
                f"{field}[{i}]: a {mask.size[0]}x{mask.size[1]} mask for a {image.size[0]}x{image.size[1]} image"
            )


def upload_options(
    method: str,
    accepted: tuple[str, ...],
    uploads: dict[str, list[str] | None],
    options: dict[str, Any],
    limits: UploadLimits,
) -> dict[str, Any]:
    """The options the job gets: the caller's, plus the checked uploads as canonical base64 PNGs.

    Args:
        method: the method's name (for messages). accepted: the upload fields its config takes.
        uploads: field -> the request's list (None: not given). options: the request's options.

    Raises an `UploadError` (4xx, one stable code per kind of problem) for anything unusable.
    """
    smuggled = sorted(set(options) & set(UPLOAD_FIELDS))
    if smuggled:
        raise UploadNotSupportedError(f"options.{smuggled[0]}: give images as the request's `{smuggled[0]}` field")
    given = {k: v for k, v in uploads.items() if v is not None}
    unsupported = sorted(set(given) - set(accepted))
    if unsupported:
        raise UploadNotSupportedError(f"{unsupported[0]}: method {method!r} takes no such images")
    out = dict(options)
    for field, mask_field in IMAGE_FIELDS.items():
        images = _decode_list(field, given[field], limits, "RGB") if field in given else []
        if mask_field in given:
            masks = _decode_list(mask_field, given[mask_field], limits, "L")
            _check_masks(mask_field, images, masks)
            out[mask_field] = [ig.to_png_b64(m) for m in masks]
        if images:
            out[field] = [ig.to_png_b64(i) for i in images]
    return out


def accepted_uploads(config_cls: type) -> tuple[str, ...]:
    """The upload fields a method's config takes (those of `UPLOAD_FIELDS` among its fields)."""
    fields = getattr(config_cls, "model_fields", {})
    return tuple(f for f in UPLOAD_FIELDS if f in fields)
