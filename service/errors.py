"""Typed errors raised by the service's logic. `service.api.errors` maps each to an HTTP status in one table.

They extend `erasure_core.errors.ErasureError`, so every error a caller can see has one stable `code`.
"""

from __future__ import annotations

from erasure_core.errors import ErasureError


class ServiceError(ErasureError):
    code = "service_error"


class InvalidRequestError(ServiceError, ValueError):
    """The request is well-formed JSON but asks for something out of range or inconsistent."""

    code = "invalid_request"


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"


class ErasureNotFoundError(ServiceError):
    """Unknown, malformed or another tenant's erasure id (the three are indistinguishable on purpose)."""

    code = "erasure_not_found"


class ErasureNotReadyError(ServiceError):
    """The erasure exists but is queued, running, failed or cancelled."""

    code = "erasure_not_ready"


class ErasureInPolicyError(ServiceError):
    """The erasure cannot be deleted: the operator's mandatory policy names it."""

    code = "erasure_in_policy"


class ModelNotAvailableError(ServiceError):
    """The request names a model this deployment does not serve."""

    code = "model_not_available"


class ModelNotFoundError(ServiceError):
    """`GET /v1/models/{model}` names a model this deployment does not serve (or no model at all)."""

    code = "model_not_found"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ForbiddenError(ServiceError):
    code = "forbidden"


class OverloadedError(ServiceError):
    """The generation queue is full; retry later."""

    code = "overloaded"


class NotReadyError(ServiceError):
    """Pipelines are still loading or warming up (or failed to load)."""

    code = "not_ready"


class CapacityError(ServiceError):
    """One erasure set needs more adapter memory than the cache budget allows, even with nothing else resident."""

    code = "capacity_exceeded"


class ErasureFailedError(ServiceError):
    """Computing an erasure failed."""

    code = "erasure_failed"


class QueueUnavailableError(ServiceError):
    """The Redis job queue cannot be reached: trained (queued) erasures cannot be accepted right now."""

    code = "queue_unavailable"


class StoreUnavailableError(ServiceError):
    """The erasure store's Redis (`ERASURE_STORE=redis`) cannot be reached: nothing was read or written."""

    code = "store_unavailable"


class PolicyNotFoundError(ServiceError):
    """`DELETE /v1/policies/{tenant}` names a tenant with no API-managed policy."""

    code = "policy_not_found"


class PolicyConflictError(ServiceError):
    """An erasure's anchor is a concept the caller's mandatory policy removes: it would draw what the policy
    removes from a prompt the policy does not cover."""

    code = "anchor_in_policy"


class QuotaExceededError(ServiceError):
    """The tenant is over one of its quotas; `retry_after` says in how many seconds to try again."""

    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class PolicyNotCoveredError(ServiceError):
    """The mandatory policy removes a concept from another model's outputs but has no erasure of it for the model
    asked for: the request is refused rather than run without it."""

    code = "policy_not_covered"


class PolicyUnavailableError(ServiceError):
    """The mandatory policy cannot be read (or changed) right now: nothing runs without it."""

    code = "policy_unavailable"


class TenantNotFoundError(ServiceError):
    """A policy names a tenant no API key belongs to (a typo would silently apply to nobody)."""

    code = "tenant_not_found"


class UploadError(InvalidRequestError):
    """An uploaded image (reference, positive or mask) that cannot be used; each subclass has its own code."""

    code = "invalid_upload"


class InvalidBase64Error(UploadError):
    code = "invalid_base64"


class InvalidImageError(UploadError):
    """Not a PNG or JPEG, damaged, truncated or animated."""

    code = "invalid_image"


class EmptyUploadError(UploadError):
    code = "empty_upload"


class TooManyImagesError(UploadError):
    code = "too_many_images"


class MaskMismatchError(UploadError):
    """Masks not one per image, or a mask of another size than its image."""

    code = "mask_mismatch"


class UploadNotSupportedError(UploadError):
    """Images given to a method that does not take them (or set through `options`)."""

    code = "upload_not_supported"


class ImageTooLargeError(PayloadTooLargeError):
    """An image over the byte limit, or whose header declares more pixels than allowed (checked before decoding)."""

    code = "image_too_large"


class ReportNotFoundError(ServiceError):
    """Unknown, malformed or another tenant's report id, or one of another erasure."""

    code = "report_not_found"


class ReportGridNotFoundError(ServiceError):
    """The report exists but has no grid yet (queued, running, failed or cancelled)."""

    code = "report_grid_not_found"
