"""EraseAnything++ hyperparameters: the published defaults, and a CPU-sized preset for the demo world."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EraseAnythingConfig(BaseModel):
    """Published defaults (EraseAnything code / EraseAnything++ paper) unless noted.

    Attributes:
        rank, alpha: LoRA rank and alpha (8, 8) on `target_set` (Flux: text-stream Q/K of double blocks).
        lr, weight_decay: AdamW (1e-3, 1e-5), constant rate, no warm-up; `steps` 200; `batch_size` 1.
        eta: ESD negative-guidance strength (1.0).
        lambda_esd, lambda_attn, lambda_fm, lambda_nce: loss weights (1, 0.001, 0.1, 0.1).
        tau: InfoNCE temperature (0.07).
        sample_steps: Euler steps of the schedule x_t is sampled from (28).
        shuffle_p, synonym_p: prompt augmentation (0.9 word shuffle, 0.5 keyword -> synonym).
        eupmu_lr, eupmu_weight_decay, eupmu_eps: the EUPMU weight's Adam rate, decay and required rate (0.3, 0.01,
            0.003).
        concept_images: images of the concept generated with the base pipeline for the flow-matching loss.
        irrelevant: unrelated words for the contrastive loss (the paper asks GPT-4o; offline default list).
        frozen_teacher: v0/vp from the frozen base model (ESD) rather than the current model (EraseAnything code).
        checkpoint_every: steps between checkpoints (crash safety).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=8, ge=1, le=128)
    alpha: float = Field(default=8.0, gt=0, le=1024)
    target_set: str = "text_qk"
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-5, ge=0, le=1.0)
    steps: int = Field(default=200, ge=1, le=100_000)
    batch_size: int = Field(default=1, ge=1, le=64)
    eta: float = Field(default=1.0, ge=0, le=10)
    lambda_esd: float = Field(default=1.0, ge=0)
    lambda_attn: float = Field(default=0.001, ge=0)
    lambda_fm: float = Field(default=0.1, ge=0)
    lambda_nce: float = Field(default=0.1, ge=0)
    tau: float = Field(default=0.07, gt=0, le=10)
    sample_steps: int = Field(default=28, ge=1, le=100)
    shuffle_p: float = Field(default=0.9, ge=0, le=1)
    synonym_p: float = Field(default=0.5, ge=0, le=1)
    eupmu_lr: float = Field(default=0.3, gt=0)
    eupmu_weight_decay: float = Field(default=0.01, ge=0)
    eupmu_eps: float = Field(default=0.003, ge=0)
    concept_images: int = Field(default=8, ge=1, le=256)
    irrelevant: tuple[str, ...] = Field(default=("tree", "violin", "mountain"), min_length=1, max_length=8)
    frozen_teacher: bool = True
    checkpoint_every: int = Field(default=20, ge=1)
    seed: int = 0
