"""Co-Erasing's training loop: EraseAnything++'s (text erasure + preservation) with an image-guided forget term.

Each step adds to EraseAnything++'s forget loss (see `eraseanything.trainer`)
    lambda_image * || v_theta(z, c_txt) - [ v0 - eta_image (v_txt+img - v0) ] ||^2
on a reference image x0 of the concept noised onto the flow path, z = (1 - sigma) x0 + sigma eps, where
    v0           the frozen model's velocity for the prompt with the concept replaced by the anchor,
    v_txt+img    the concept's velocity conditioned on text plus refined image features:
                 M * (eps - x0) + (1 - M) * v_frozen(z, c_txt)   (`image_guidance.refined_velocity`),
    M            per latent token, how much it belongs to the concept: the uploaded mask, or the frozen model's
                 attention from the image's tokens to the concept's text tokens (text-guided refinement).
Reference latents, their prompts and masks are computed once, deterministically, at the start of every run, so a
resumed run trains on the same images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from erasure_core.families.flux_training import TextCondition
from erasure_core.methods import image_guidance as ig
from erasure_core.methods.co_erasing.config import CoErasingConfig
from erasure_core.methods.eraseanything import losses
from erasure_core.methods.eraseanything.trainer import Batch, EraseAnythingTrainer, _cat

logger = logging.getLogger(__name__)
MASK_SEED_OFFSET = 7919  # the masks' probe noise: its own stream, so it does not shift the training draws


@dataclass
class ImageBranch:
    """Images of one branch with what conditions them: packed latents [N, T, C], the prompt each image stands
    for, that prompt with the concept replaced by the anchor, and per-token masks [N, T] in [0, 1]."""

    latents: torch.Tensor
    cond: TextCondition
    anchor: TextCondition
    masks: torch.Tensor
    source: str  # "uploaded" or "generated"


class CoErasingTrainer(EraseAnythingTrainer):
    """EraseAnything++'s trainer with Co-Erasing's image-guided negative guidance in the forget loss."""

    def __init__(self, *args: Any, anchor_word: str, neutral_prompts: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.cfg, CoErasingConfig)
        self.icfg: CoErasingConfig = self.cfg
        self.anchor_word, self.neutral_prompts = anchor_word, neutral_prompts
        self.side = self.size or self.ops.native_size(self.pipe)[0]
        self.negative = self._reference_branch()
        logger.info("co-erasing: %d %s reference images", len(self.negative.latents), self.negative.source)

    # ---- data -------------------------------------------------------------------------------------------------
    def _anchor_prompts(self, prompts: list[str]) -> list[str]:
        """Each prompt with the concept replaced by the anchor word (or the lone anchor prompt, as EraseAnything++
        does when `anchor_in_prompt` is off)."""
        if self.anchor_cond is None:
            return [p.replace(self.keyword, self.anchor) for p in prompts]
        return [self.anchor] * len(prompts)

    def _uploaded(self, images: tuple[str, ...], where: str) -> tuple[torch.Tensor, list[str]]:
        """Uploaded images as latents, each paired with a neutral prompt of the concept (cycling)."""
        latents = ig.encode_latents(self.pipe, ig.pixels(images, self.side, where))
        return latents, [self.neutral_prompts[i % len(self.neutral_prompts)] for i in range(len(images))]

    def _reference_branch(self) -> ImageBranch:
        cfg = self.icfg
        if cfg.reference_images:
            latents, prompts = self._uploaded(cfg.reference_images, "reference_images")
            cond, source = self.ops.encode_text(self.pipe, prompts), "uploaded"
        else:  # the images EraseAnything++ already generated from the concept's prompts
            prompts = [self.prompts[i % len(self.prompts)] for i in range(cfg.concept_images)]
            latents, cond, source = self.concept_latents, self.concept_cond, "generated"
        anchor = self.ops.encode_text(self.pipe, self._anchor_prompts(prompts))
        masks = self._masks(cfg.reference_masks, latents, cond, [self.keyword] * len(prompts), "reference_masks")
        return ImageBranch(latents, cond, anchor, masks, source)

    def _masks(
        self, uploaded: tuple[str, ...], latents: torch.Tensor, cond: TextCondition, words: list[str], where: str
    ) -> torch.Tensor:
        """Per-token masks [N, T]: uploaded, else the model's attention to `words` (refine="attention"), else 1."""
        if uploaded:
            return ig.token_masks(ig.pixels(uploaded, self.side, where, mode="L"), latents.shape[1]).to(latents)
        if self.icfg.refine == "none":
            return torch.ones(latents.shape[:2]).to(latents)
        return self._attention_masks(latents, cond, words)

    @torch.no_grad()
    def _attention_masks(self, latents: torch.Tensor, cond: TextCondition, words: list[str]) -> torch.Tensor:
        cfg = self.icfg
        g = torch.Generator().manual_seed(cfg.seed + MASK_SEED_OFFSET)
        noise = torch.randn(latents.shape, generator=g).to(latents)
        sigma = torch.full((len(latents),), cfg.mask_sigma).to(latents)
        z = (1 - cfg.mask_sigma) * latents + cfg.mask_sigma * noise
        with self.lora.switched(False), self.ops.capture_attention(self.pipe, cfg.mask_block) as record:
            self._velocity(z, sigma, cond)
        keyword = self._keyword_mask(cond, words)
        return ig.attention_mask(record["probs"], keyword, cond.tokens.shape[1], cfg.mask_floor, cfg.mask_quantile)

    def image_stats(self) -> dict[str, Any]:
        """What the artifact's stats say of the images: how many, uploaded or generated, the mean mask."""
        b = self.negative
        return {"reference_images": len(b.latents), "reference_source": b.source, "reference_mask_mean": _mean(b.masks)}

    # ---- losses -----------------------------------------------------------------------------------------------
    def _forget(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super()._forget(batch)
        if self.icfg.lambda_image > 0:
            image = self._negative_loss(self.negative)
            loss = loss + self.icfg.lambda_image * image
            logs["image"] = image.item()
        return loss, logs

    def _negative_loss(self, branch: ImageBranch) -> torch.Tensor:
        """Co-Erasing's negative guidance, conditioned on text plus the refined image features."""
        rows = self._noised(branch.latents, self.icfg.image_batch, on_schedule=True)
        cond, anchor = branch.cond.index(rows.idx), branch.anchor.index(rows.idx)
        z, n = rows.x_t, len(rows.idx)
        with torch.no_grad(), self.lora.switched(not self.cfg.frozen_teacher):
            both = self._velocity(z.repeat(2, 1, 1), rows.sigma.repeat(2), _cat([anchor, cond]))
            v0, v_text = both.chunk(2)
        v_concept = ig.refined_velocity(v_text, rows.noise, rows.x0, branch.masks[rows.idx])
        vn = self._velocity(z, rows.sigma, cond)
        assert vn.shape[0] == n
        return F.mse_loss(vn, losses.esd_target(v0, v_concept, self.icfg.eta_image).detach())


def _mean(masks: torch.Tensor) -> float:
    return round(float(masks.float().mean()), 4)
