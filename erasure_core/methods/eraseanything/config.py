"""EraseAnything++ hyperparameters: the published defaults, and a CPU-sized preset for the demo world."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Named presets: values a caller gets by sending {"preset": name}; options given alongside override them.
# "cpu" sizes a job for a CPU and a small model (the demo world): few Euler steps, a higher rate and ESD eta (the
# short run must still move the concept off), and the preservation terms this project adds (see `retain_images`,
# `lambda_preserve`), which keep the other concepts intact. Measured: triangle 0.97 -> 0.01, other shapes within 3
# points, 125 s on one CPU thread. That fixed run held only on the world it was fitted on; `adaptive: true` (opt-in,
# calibrate.py) adapts eta, rate, preservation and steps from what it measures on the model, with `steps` then the
# nominal count and 2 x steps the cap.
PRESETS: dict[str, dict[str, Any]] = {
    "published": {},
    "cpu": {  # measured on the demo world (tests/test_eraseanything.py; README "EraseAnything++ on a CPU")
        "steps": 300,
        "lr": 3e-3,
        "eta": 2.0,
        "sample_steps": 8,
        "batch_size": 1,
        "concept_images": 8,
        "anchor_in_prompt": True,
        "retain_images": "preserve",
        "preserve_images": 128,
        "preserve_batch": 16,
        "lambda_preserve": 300.0,
        "checkpoint_every": 25,
    },
}
# "cpu-video": the "cpu" preset for the video demo world (Open-Sora family), whose clips are sampled with guidance
# 7.5. With the image values the concept leaked back in later frames (triangle: 8% of first frames, 21% of last ones),
# so the later latent frames weigh 4x in the anchor-and-propagate ESD (`temporal_weight`) and the rate is doubled
# (1e-2 erased harder but cost diamond 40 points). Measured with bench/quality_video.py (README "Video erasure").
PRESETS["cpu-video"] = {**PRESETS["cpu"], "lr": 6e-3, "temporal_weight": 4.0}


class EraseAnythingConfig(BaseModel):
    """Published defaults (EraseAnything code / EraseAnything++ paper) unless noted.

    Attributes:
        preset: "published" (the papers' values), "cpu" or "cpu-video" (see PRESETS); explicit options override
            the preset.
        rank, alpha: LoRA rank and alpha (8, 8) on `target_set` (Flux: text-stream Q/K of double blocks).
        lr, weight_decay: AdamW (1e-3, 1e-5), constant rate, no warm-up; `steps` 200; `batch_size` 1.
        eta: ESD negative-guidance strength (1.0).
        anchor_in_prompt: where ESD's anchor velocity v0 comes from. False (published): the anchor prompt alone
            ("" unless the caller names an anchor). True (this project): the concept prompt with the concept word
            replaced by the anchor (the caller's; for objects otherwise "thing", "object" or "item", whichever the
            model draws most differently from the concept: `method.measured_anchor`), so the target removes only
            the concept and keeps the prompt's colour and context, which changes other prompts less.
        lambda_esd, lambda_attn, lambda_fm, lambda_nce: loss weights (1, 0.001, 0.1, 0.1).
        tau: InfoNCE temperature (0.07).
        sample_steps: Euler steps of the schedule x_t is sampled from (28).
        shuffle_p, synonym_p: prompt augmentation (0.9 word shuffle, 0.5 keyword -> synonym).
        eupmu_lr, eupmu_weight_decay, eupmu_eps: the EUPMU weight's Adam rate, decay and required rate (0.3, 0.01,
            0.003).
        concept_images: images of the concept generated with the base pipeline for the flow-matching loss.
        retain_images: what the flow-matching retain loss trains on. "concept" (published code): the concept's own
            images under the concept prompt. "preserve" (this project): base-model images of preserve prompts (the
            caller's `preserve` terms, then the model's preserve corpus) under their own prompts, so the retain
            term keeps other concepts instead of pulling the erased one back.
        preserve_images: how many preserve prompts get a base-model image (for "preserve" and `lambda_preserve`).
        preserve_batch: preserve-image rows per step in those terms.
        lambda_preserve: weight of a velocity-preservation retain term (this project, not in the papers): the
            LoRA's velocity for a noised preserve image under its prompt must match the frozen model's. 0: off.
        irrelevant: unrelated words for the contrastive loss (the paper asks GPT-4o; offline default list).
        frozen_teacher: v0/vp from the frozen base model (ESD) rather than the current model (EraseAnything code).
        checkpoint_every: steps between checkpoints (crash safety); at most `steps`, so a job can resume. Left out,
            it is the default (or the preset's) capped at `steps`.
        seed: the job's seed (LoRA init, sampling, prompt draws), 0 .. 2**63 - 1.
        resolution: square training size in pixels, a multiple of 16 (real Flux's latent packing) in 16 .. 2048.
            Left out: min(512, the model's native size): a real Flux trains at 512, the demo world at its own size.
        gradient_checkpointing: recompute activations in backward (diffusers' `enable_gradient_checkpointing`):
            less memory, slower, the same gradients. Left out: on for real models, off for the demo world.
        temporal_weight: video models only (a family whose training ops tell each token's latent frame): ESD is
            anchored on the first latent frame and enforced on the later ones with this weight (anchor-and-propagate,
            `losses.anchored_esd_loss`); 0 trains the first frame alone. Ignored for images (one frame).
        adaptive: the job chooses its strength from what it measures on the model (this project; `calibrate.py`):
            the anchor among neutral words the model draws least like the concept, ESD eta so the target lies
            `push` from the concept's velocity (never below `eta`), then every `check_every` steps the concept's
            survival and the preserve prompts' drift: it stops once survival <= `survival_target` (after
            `min_steps`), raises the rate (up to `max_lr_factor` x lr) and then lightens `lambda_preserve` while
            progress stalls with drift < `drift_max` / 4, and backs off (preservation x2, rate / 2) above
            `drift_max`; `max_steps` caps it (left out: 2 x `steps`). Opt-in (true) for EraseAnything++ on image
            models; None or false: the fixed run. Not the default yet: measured on four concepts only, it took a
            star from 0.33 to 0.06 but left the shapes world's prior shape (circle) at 0.50 (README).

    Every float must be finite: a request is refused at creation rather than failing (or training on NaN) later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: Literal["published", "cpu", "cpu-video"] = "published"
    rank: int = Field(default=8, ge=1, le=128)
    alpha: float = Field(default=8.0, gt=0, le=1024)
    target_set: str = "text_qk"
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-5, ge=0, le=1.0)
    steps: int = Field(default=200, ge=1, le=100_000)
    batch_size: int = Field(default=1, ge=1, le=64)
    eta: float = Field(default=1.0, ge=0, le=10)
    anchor_in_prompt: bool = False
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
    retain_images: Literal["concept", "preserve"] = "concept"
    preserve_images: int = Field(default=16, ge=1, le=256)
    preserve_batch: int = Field(default=4, ge=1, le=64)
    lambda_preserve: float = Field(default=0.0, ge=0)
    irrelevant: tuple[str, ...] = Field(default=("tree", "violin", "mountain"), min_length=1, max_length=8)
    frozen_teacher: bool = True
    checkpoint_every: int = Field(default=20, ge=1)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    resolution: int | None = Field(default=None, ge=16, le=2048, multiple_of=16)
    gradient_checkpointing: bool | None = None
    temporal_weight: float = Field(default=1.0, ge=0, le=100)
    adaptive: bool | None = None
    push: float = Field(default=0.8, gt=0, le=100)
    survival_target: float = Field(default=0.5, ge=0, le=1)
    check_every: int = Field(default=25, ge=1)
    min_steps: int = Field(default=50, ge=0)
    max_steps: int | None = Field(default=None, ge=1, le=100_000)
    drift_max: float = Field(default=0.002, gt=0)
    max_lr_factor: float = Field(default=4.0, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fills the preset's values under the options given (an unknown preset fails on the `preset` field), and
        caps a `checkpoint_every` the caller did not give at `steps`."""
        if not isinstance(data, dict):
            return data
        given = data
        if isinstance(data.get("preset"), str) and data["preset"] in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        steps = data.get("steps", cls.model_fields["steps"].default)
        if "checkpoint_every" not in given and type(steps) is int and steps >= 1:
            default = data.get("checkpoint_every", cls.model_fields["checkpoint_every"].default)
            data = {**data, "checkpoint_every": min(default, steps)}
        return data

    @model_validator(mode="after")
    def _check_checkpoint_every(self) -> EraseAnythingConfig:
        """A `checkpoint_every` above `steps` would never checkpoint before the end: the job could not resume."""
        if self.checkpoint_every > self.steps:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must not exceed steps ({self.steps}), or the job could "
                "not resume after a crash"
            )
        return self

    def for_model(self, native_size: tuple[int, int], demo: bool) -> EraseAnythingConfig:
        """This config with the model-dependent defaults filled in (see `resolution`, `gradient_checkpointing`)."""
        resolution = self.resolution or min(512, *native_size)
        checkpointing = (not demo) if self.gradient_checkpointing is None else self.gradient_checkpointing
        return self.model_copy(update={"resolution": resolution, "gradient_checkpointing": checkpointing})

    @property
    def uses_preserve_images(self) -> bool:
        return self.retain_images == "preserve" or self.lambda_preserve > 0
