"""Bi-Erasing's training loop: Co-Erasing's (negative branch) plus a positive branch that pulls toward the anchor.

The forget loss gains
    lambda_positive * || v_theta(z+, c_txt) - [ M+ * (eps - x0+) + (1 - M+) * v_frozen(z+, c_anchor) ] ||^2
on an image x0+ of the anchor noised onto the flow path, z+ = (1 - sigma) x0+ + sigma eps: under the concept's
prompt the model must follow the anchor image where its tokens belong to the anchor (M+, uploaded or from the
frozen model's attention to the anchor's tokens) and the anchor prompt's own prediction elsewhere. Both branches
are mask-filtered, so the background of either image set does not drive the update.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from erasure_core.methods import image_guidance as ig
from erasure_core.methods.bi_erasing.config import BiErasingConfig
from erasure_core.methods.co_erasing.trainer import CoErasingTrainer, ImageBranch, _mean
from erasure_core.methods.eraseanything.trainer import Batch

logger = logging.getLogger(__name__)


class BiErasingTrainer(CoErasingTrainer):
    """Co-Erasing's trainer with Bi-Erasing's positive branch in the forget loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.cfg, BiErasingConfig)
        self.bcfg: BiErasingConfig = self.cfg
        self.positive = self._positive_branch()
        logger.info("bi-erasing: %d %s positive images", len(self.positive.latents), self.positive.source)

    def _positive_branch(self) -> ImageBranch:
        cfg = self.bcfg
        if cfg.positive_images:
            latents, prompts = self._uploaded(cfg.positive_images, "positive_images")
            source = "uploaded"
            anchor = self.ops.encode_text(self.pipe, [p.replace(self.keyword, self.anchor_word) for p in prompts])
        else:  # the base model's own drawings of the anchor, in the concept's prompts
            prompts = [self.prompts[i % len(self.prompts)] for i in range(cfg.concept_images)]
            anchor, latents = self._base_images([p.replace(self.keyword, self.anchor_word) for p in prompts])
            source = "generated"
        cond = self.ops.encode_text(self.pipe, prompts)
        words = [self.anchor_word] * len(prompts)
        masks = self._masks(cfg.positive_masks, latents, anchor, words, "positive_masks")
        # ImageBranch.cond is what the trained model is asked (the concept's prompt); .anchor what it must give.
        return ImageBranch(latents, cond, anchor, masks, source)

    def image_stats(self) -> dict[str, Any]:
        p = self.positive
        return {
            **super().image_stats(),
            "positive_images": len(p.latents),
            "positive_source": p.source,
            "positive_mask_mean": _mean(p.masks),
        }

    def _forget(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super()._forget(batch)
        if self.bcfg.lambda_positive > 0:
            positive = self._positive_loss(self.positive)
            loss = loss + self.bcfg.lambda_positive * positive
            logs["positive"] = positive.item()
        return loss, logs

    def _positive_loss(self, branch: ImageBranch) -> torch.Tensor:
        rows = self._noised(branch.latents, self.bcfg.image_batch, on_schedule=True)
        cond, anchor = branch.cond.index(rows.idx), branch.anchor.index(rows.idx)
        with torch.no_grad(), self.lora.switched(False):
            v_anchor = self._velocity(rows.x_t, rows.sigma, anchor)
        target = ig.refined_velocity(v_anchor, rows.noise, rows.x0, branch.masks[rows.idx])
        return F.mse_loss(self._velocity(rows.x_t, rows.sigma, cond), target.detach())
