"""Bi-Erasing (Chen, Li, Wang, arXiv 2512.13039) on a rectified-flow transformer, as a trained job method.

The paper adds to Co-Erasing-style image guidance a second, decoupled image branch: images of a safe alternative
pull the concept toward benign content while the concept's images push away, so the erasure replaces the concept
instead of leaving a void; masks keep each image's background out of both branches.

Here (see `co_erasing.method` for how images enter the Flux MMDiT): the negative branch is Co-Erasing's term; the
positive branch trains the concept's prompt, on an anchor image's flow path, to give the anchor image's velocity
inside the anchor's mask and the frozen anchor prompt's velocity outside it (`bi_erasing.trainer`). Positive images
are uploaded (`positive_images`) or drawn by the base pipeline from the concept's prompts with the anchor in its
place: the caller's `anchor`, else the neutral word ("thing", "object", "item") or mined neighbour the model draws
most differently from the concept (`eraseanything.method.measured_anchor`). Masks are uploaded or come from the
frozen model's attention to the concept's (negative) and the anchor's (positive) tokens; no external segmenter. The
paper's IP-Adapter channels and its exact loss weights are not reproduced (its code is not public).
"""

from __future__ import annotations

from typing import ClassVar

from erasure_core.methods.bi_erasing.config import BiErasingConfig
from erasure_core.methods.bi_erasing.trainer import BiErasingTrainer
from erasure_core.methods.co_erasing.method import CoErasing
from erasure_core.methods.co_erasing.trainer import CoErasingTrainer


class BiErasing(CoErasing):
    """Bi-Erasing: Co-Erasing's negative branch plus a positive branch toward the anchor."""

    name = "bi-erasing"
    config_cls = BiErasingConfig
    trainer_cls: ClassVar[type[CoErasingTrainer]] = BiErasingTrainer
