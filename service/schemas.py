"""Request and response bodies (pydantic only, no FastAPI): the public shape of the API and of openapi.yaml."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from erasure_core.concepts import MAX_CONCEPTS, MAX_LIST, MAX_PHRASE_CHARS, ConceptKind
from erasure_core.errors import UnknownMethodError
from erasure_core.methods import get_method
from erasure_core.models import MODEL_NAMES, MODELS
from service.store import ErasureRecord, JobStatus

# The accepted model names come from the core's model table, so adding a model there adds it to the API.
if TYPE_CHECKING:
    ModelName = str
    VideoModelName = str
else:
    ModelName = Literal[MODEL_NAMES]
    VideoModelName = Literal[tuple(name for name, spec in MODELS.items() if spec.output == "video")]
# Options kept in the record (the job reads them) but not shown to callers: an imported LoRA's bytes (described by
# `metadata.params`: format, sha256, modules, rank) and the operator's import folder.
HIDDEN_OPTIONS = frozenset(
    {"lora_b64", "import_dir", "reference_images", "reference_masks", "positive_images", "positive_masks"}
)  # uploaded images too: the job reads them from the record; nobody is ever served them back
ErasureStatus = Literal["queued", "running", "ready", "failed", "cancelled"]
MAX_SEED = 2**63 - 1
# Text the app refuses when it has no non-space character (a prompt, a concept phrase): the spec says so too.
NON_BLANK = r"\S"
Phrase = Annotated[str, Field(min_length=1, max_length=MAX_PHRASE_CHARS, pattern=NON_BLANK)]


class RequestBody(BaseModel):
    """A request body: unknown fields refused, and every value of the JSON type its field's schema states."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_typed(cls, data: Any) -> Any:
        return _check_json_types(cls, data)


class ErasureCreate(RequestBody):
    """What to erase, from which model, and how."""

    concept: str = Field(
        min_length=1, max_length=MAX_PHRASE_CHARS, pattern=NON_BLANK, description="The concept to erase."
    )
    also: list[Phrase] = Field(
        default_factory=list,
        max_length=MAX_CONCEPTS - 1,
        description="Further concepts of the same kind removed by the same erasure (closed-form methods; "
        f"{MAX_CONCEPTS} in all).",
    )
    model: ModelName = "flux"
    method: str = Field(
        default="ice",
        min_length=1,
        max_length=64,
        description="Erasure method: `ice`, `uce`, `eraseanything`, `co-erasing` and `bi-erasing` (image-guided: "
        "see `reference_images`, `positive_images`), or `import` (an existing Flux LoRA given as "
        "`options.lora_b64` or `options.path` in the operator's ERASURE_IMPORT_DIR).",
    )
    kind: ConceptKind = "object"
    anchor: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PHRASE_CHARS,
        pattern=NON_BLANK,
        description="What the concept becomes.",
    )
    synonyms: list[Phrase] = Field(default_factory=list, max_length=MAX_LIST)
    expand: bool = Field(
        default=True,
        description="Mine phrasings the model itself draws as the concept (its reading of a lexicon, verified by its "
        "own velocities) and neighbours it draws differently, which the erasure then holds still; with the "
        "operator's LLM endpoint configured, also ask it (the model keeps what it draws as the concept). On by "
        "default; `false` erases exactly the named phrasings.",
    )
    preserve: list[Phrase] = Field(
        default_factory=list, max_length=MAX_LIST, description="Concepts that must not change."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Method hyperparameters, validated per method.")
    reference_images: list[str] | None = Field(
        default=None,
        description="Images of the concept for image-guided methods (`co-erasing`, `bi-erasing`): base64 PNG or "
        "JPEG, at most ERASURE_UPLOAD_MAX_IMAGES, each within ERASURE_UPLOAD_MAX_IMAGE_BYTES and "
        "ERASURE_UPLOAD_MAX_SIDE pixels. Left out, the job draws them with the base model. Never served back.",
    )
    reference_masks: list[str] | None = Field(
        default=None,
        description="Masks of the reference images (white = the concept), one per image and of its size. Left out, "
        "they come from the model's attention to the concept's words.",
    )
    positive_images: list[str] | None = Field(
        default=None,
        description="Images of the safe alternative (`bi-erasing`): base64 PNG or JPEG, the same limits. Left out, "
        "the job draws the anchor with the base model.",
    )
    positive_masks: list[str] | None = Field(
        default=None, description="Masks of the positive images (white = the anchor), one per image and of its size."
    )

    @field_validator("options")
    @classmethod
    def _finite_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """No method takes NaN or infinity (JSON `NaN` / `Infinity`, which Python's parser accepts)."""
        if not _finite(options):
            raise ValueError("options must not contain NaN or Infinity")
        return options

    @model_validator(mode="after")
    def _fits_the_method(self) -> ErasureCreate:
        """What the spec's per-method variant says: each option of its JSON type (the methods validate leniently:
        `false` would pass as 0, `"5"` as 5), and `also` within how many concepts the method erases at once."""
        try:
            method = get_method(self.method)
        except UnknownMethodError:
            return self  # refused as `unknown_method` when the erasure is created
        _check_json_types(method.config_cls, self.options, prefix="options.")
        if len(self.also) > method.max_concepts - 1:
            raise ValueError(
                f"method {self.method!r} erases at most {method.max_concepts} concept(s) per erasure "
                f"(`also` takes at most {method.max_concepts - 1})"
            )
        return self


def _check_json_types(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """Refuses a value whose JSON type its field's schema does not allow: pydantic's lax mode would take `true`
    or `"5"` for a number and `0` for `false`, which the published spec calls invalid."""
    if not isinstance(data, dict):
        return data
    properties = _properties(model)
    for key, value in data.items():
        allowed, given = _json_types(properties.get(key, {})), _json_type(value)
        if allowed and given not in allowed and not (given == "integer" and "number" in allowed):
            raise ValueError(f"{prefix}{key} must be {' or '.join(sorted(allowed))}, not {given}")
    return data


@functools.cache
def _properties(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema().get("properties", {})


def _json_types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property schema allows (empty: any)."""
    if "type" in schema:
        return {schema["type"]}
    branches = [_json_types(b) for b in schema.get("anyOf", [])]
    return set().union(*branches) if branches and all(branches) else set()


def _json_type(value: Any) -> str:
    """The JSON Schema type of a parsed JSON value (2.0 is an integer in JSON Schema)."""
    if isinstance(value, float) and value.is_integer():
        return "integer"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "object" if isinstance(value, dict) else "null"


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


class ErrorBody(BaseModel):
    code: str
    message: str


class Timings(BaseModel):
    queued_s: float | None = None
    compute_s: float | None = None
    total_s: float | None = None


class ErasurePublic(BaseModel):
    """An erasure as callers see it. `status` is `ready` once its artifact is stored and usable."""

    id: str
    object: Literal["erasure"] = "erasure"
    model: ModelName
    method: str
    status: ErasureStatus
    progress: float = Field(description="Fraction done, 0..1")
    step: int = Field(description="Training steps done (trained methods; 0 for closed-form ones)")
    total_steps: int | None = Field(description="Training steps in all (trained methods)")
    losses: dict[str, float] = Field(description="The latest training losses (trained methods)")
    eta_s: float | None = Field(description="Estimated seconds to completion while running")
    attempts: int = Field(description="Times a runner started the job (more than 1 after a worker crash)")
    resumed_from_step: int | None = Field(description="The checkpointed step the latest attempt resumed from")
    scope: Literal["tenant", "operator"]
    concept: dict[str, Any]
    options: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    timings: Timings
    metadata: dict[str, Any]
    error: ErrorBody | None

    @classmethod
    def from_record(cls, record: ErasureRecord, operator_tenant: str) -> ErasurePublic:
        status = "ready" if record.status == JobStatus.succeeded else record.status.value
        timings = Timings()
        if record.started_at is not None:
            timings.queued_s = round(record.started_at - record.created_at, 4)
        if record.finished_at is not None:
            timings.total_s = round(record.finished_at - record.created_at, 4)
            if record.started_at is not None:
                timings.compute_s = round(record.finished_at - record.started_at, 4)
        return cls.model_validate(
            {
                "id": record.id,
                "model": record.model,
                "method": record.method,
                "status": status,
                "progress": record.progress,
                "step": record.step,
                "total_steps": record.total_steps,
                "losses": record.losses,
                "eta_s": record.eta_s,
                "attempts": record.attempts,
                "resumed_from_step": record.resumed_from_step,
                "scope": "operator" if record.tenant == operator_tenant else "tenant",
                "concept": record.spec,
                "options": {k: v for k, v in record.options.items() if k not in HIDDEN_OPTIONS},
                "created_at": record.created_at,
                "started_at": record.started_at,
                "finished_at": record.finished_at,
                "timings": timings,
                "metadata": record.metadata,
                "error": record.error.model_dump() if record.error else None,
            }
        )


class ErasureList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ErasurePublic]


class ErasureDeleted(BaseModel):
    """DELETE's answer: a finished erasure is deleted; a queued or running job is cancelled (its record stays)."""

    id: str
    object: Literal["erasure"] = "erasure"
    deleted: bool = True
    status: Literal["deleted", "cancelled"] = "deleted"


class ImageGenerationRequest(RequestBody):
    """OpenAI-style image generation, plus the erasures to apply."""

    prompt: str = Field(
        min_length=1,
        pattern=NON_BLANK,
        description="Text prompt (not blank). Longer than the server's limit: 413 `payload_too_large`.",
    )
    model: ModelName = "flux"
    erasures: list[str] = Field(default_factory=list, description="Erasure ids to apply (policy may add more).")
    n: int = Field(default=1, ge=1, description="Number of images (seeds seed..seed+n-1); server limit applies.")
    size: str | None = Field(
        default=None, description="`WIDTHxHEIGHT`; omitted or `auto` (as in OpenAI's API): the model's native size."
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="First seed; random when omitted.")
    steps: int | None = Field(default=None, ge=1, description="Denoising steps; server limit applies.")
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)
    response_format: Literal["b64_json"] = Field(default="b64_json", description="Only `b64_json` (no hosted `url`s).")
    # OpenAI fields accepted for client compatibility. They do not change the images; any other OpenAI field
    # (`quality`, `style`, `background`, ...) is refused (422) rather than silently ignored.
    user: str | None = Field(default=None, description="OpenAI's end-user id: accepted and ignored.")
    safety_identifier: str | None = Field(default=None, description="OpenAI's end-user id: accepted and ignored.")
    output_format: Literal["png"] | None = Field(default=None, description="Only `png` (what the service returns).")
    stream: Literal[False] | None = Field(default=None, description="Only `false`: no streaming.")


class ImageData(BaseModel):
    b64_json: str


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageData]
    erasures: list[str] = Field(description="Erasures actually applied: requested plus mandatory, sorted.")
    seed: int = Field(description="The first seed used (image i used seed + i).")
    size: str


VideoFormat = Literal["mp4", "webp", "gif", "frames"]


class VideoGenerationRequest(RequestBody):
    """One clip from a prompt, with the erasures to apply (same erasure ids and policy as images)."""

    prompt: str = Field(
        min_length=1,
        pattern=NON_BLANK,
        description="Text prompt (not blank). Longer than the server's limit: 413 `payload_too_large`.",
    )
    model: VideoModelName = "open-sora"
    erasures: list[str] = Field(default_factory=list, description="Erasure ids to apply (policy may add more).")
    num_frames: int | None = Field(
        default=None,
        ge=1,
        description="Frames: 1 + a multiple of the model's VAE temporal ratio (4: 5, 9, 13, ...); default native.",
    )
    size: str | None = Field(default=None, description="`WIDTHxHEIGHT`; default: the model's native size.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed; random when omitted.")
    steps: int | None = Field(default=None, ge=1, description="Denoising steps; server limit applies.")
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Classifier-free guidance; default: the model's own (7.5)."
    )
    negative_prompt: str = Field(
        default="", description="What to steer away from. Longer than the prompt limit: 413 `payload_too_large`."
    )
    fps: int | None = Field(
        default=None, ge=1, description="Playback frame rate of the encoded clip; server limits and default apply."
    )
    response_format: VideoFormat = Field(
        default="mp4",
        description="`mp4` (H.264), animated `webp` or `gif` (one base64 item), or `frames` (one base64 PNG a frame).",
    )


class VideoData(BaseModel):
    b64_json: str
    format: Literal["mp4", "webp", "gif", "png"]


class VideoGenerationResponse(BaseModel):
    created: int
    data: list[VideoData] = Field(description="One encoded clip, or one PNG per frame for `frames`.")
    erasures: list[str] = Field(description="Erasures actually applied: requested plus mandatory, sorted.")
    seed: int
    size: str
    num_frames: int
    fps: int


class ModelObject(BaseModel):
    """A model this deployment serves (OpenAI models shape, plus what it generates and whether it is usable)."""

    id: str = Field(description="The name requests use as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time since which this deployment serves the model.")
    owned_by: str = "erasure-service"
    output: Literal["image", "video"] = Field(
        description="`image`: POST /v1/images/generations; `video`: POST /v1/videos/generations."
    )
    ready: bool = Field(description="Loaded and warmed up: generations and erasures are accepted.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]


class ErrorResponse(BaseModel):
    """Every error: a message, a stable snake_case code, and the HTTP status."""

    error: ErrorBody


# -- the operator's policy (`/v1/policies`) ----------------------------------------------------------------------

POLICY_TENANT_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"
MAX_POLICY_ERASURES = 64


class PolicyUpdate(BaseModel):
    """The erasures every generation of a tenant must run with (replaces what the API had set for it)."""

    model_config = ConfigDict(extra="forbid")

    erasures: list[str] = Field(min_length=1, max_length=MAX_POLICY_ERASURES, description="Erasure ids.")


class PolicyPublic(BaseModel):
    tenant: str = Field(description="A tenant, or `*` for every tenant.")
    erasures: list[str]
    source: Literal["settings", "api"] = Field(
        description="`settings`: ERASURE_MANDATORY_ERASURES (read-only); `api`: set through this API."
    )


class PolicyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PolicyPublic]


class PolicyDeleted(BaseModel):
    tenant: str
    deleted: bool = True


# -- erasure reports (service/api/reports.py) ----------------------------------------------------------------------

MAX_REPORT_SEEDS = 8
MAX_REPORT_ATTACK_STEPS = 400  # erasure_core.reports.MAX_ATTACK_STEPS


class ReportCreate(RequestBody):
    """What a report measures: fixed seeds per prompt, and the white-box attack's budget."""

    seeds: int = Field(default=2, ge=1, le=MAX_REPORT_SEEDS, description="Seeds per prompt (fixed: 0..seeds-1).")
    attack: bool = Field(default=True, description="Run the white-box soft-prompt attack on the erased model.")
    attack_steps: int = Field(
        default=60, ge=1, le=MAX_REPORT_ATTACK_STEPS, description="Optimisation steps of the attack."
    )


class ReportProgress(BaseModel):
    step: int = 0
    total: int = 0
    phase: str | None = None
    fraction: float = 0.0


class ReportPublic(BaseModel):
    """A report job: status and progress; once `ready`, the report (JSON) and its grid at `grid_url`."""

    id: str
    object: Literal["erasure.report"] = "erasure.report"
    erasure_id: str
    status: ErasureStatus
    progress: ReportProgress
    config: dict[str, Any]
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    grid_url: str | None
    report: dict[str, Any] | None
    error: ErrorBody | None


class ReportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReportPublic]
