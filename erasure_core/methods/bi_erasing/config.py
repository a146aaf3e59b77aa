"""Bi-Erasing hyperparameters: Co-Erasing's plus the positive (anchor) branch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from erasure_core.methods.co_erasing.config import PRESETS as CO_PRESETS
from erasure_core.methods.co_erasing.config import CoErasingConfig, ImageList, _images_field
from erasure_core.methods.image_guidance import MAX_B64_CHARS

PRESETS: dict[str, dict[str, Any]] = {
    "published": {"anchor_in_prompt": True},
    "cpu": {**CO_PRESETS["cpu"], "anchor_in_prompt": True},
}


class BiErasingConfig(CoErasingConfig):
    """Co-Erasing's options (see `CoErasingConfig`) and Bi-Erasing's positive branch.

    Attributes:
        positive_images: base64 images of the safe alternative (the anchor). Empty: `concept_images` images the
            base pipeline draws for the concept's prompts with the concept replaced by the anchor.
        positive_masks: optional masks of the positive images (white = the anchor), one per image, same size.
            Empty: the model's attention to the anchor's tokens.
        lambda_positive: weight of the positive ("pull") loss: on an anchor image's flow path, the concept prompt
            must give the anchor's refined velocity.
        anchor_in_prompt: on by default here: the anchor replaces the concept inside its prompts (the positive
            images are drawn from those prompts).
    """

    preset: Literal["published", "cpu"] = "published"
    anchor_in_prompt: bool = True
    positive_images: ImageList = _images_field("base64 images of the anchor (set by the service from uploads)")
    positive_masks: ImageList = _images_field("base64 masks of the positive images (white = the anchor)")
    lambda_positive: float = Field(default=1.0, ge=0)

    @classmethod
    def presets(cls) -> dict[str, dict[str, Any]]:
        return PRESETS

    @model_validator(mode="after")
    def _check_positive(self) -> BiErasingConfig:
        for name in ("positive_images", "positive_masks"):
            if any(len(item) > MAX_B64_CHARS for item in getattr(self, name)):
                raise ValueError(f"{name}: an image exceeds {MAX_B64_CHARS} base64 characters")
        if self.positive_masks and len(self.positive_masks) != len(self.positive_images):
            raise ValueError("positive_masks needs one mask per positive image")
        return self

    @property
    def image_fields(self) -> tuple[str, ...]:
        return ("reference_images", "reference_masks", "positive_images", "positive_masks")
