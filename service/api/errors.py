"""The one table from typed errors to HTTP statuses, and the handlers that apply it.

Handlers, in order of precedence: framework errors (malformed JSON, schema validation, unknown routes) -> every
`ErasureError` by its most specific class in `STATUS` -> a catch-all that logs and answers 500 `internal_error`.
Every error body is `{"error": {"code": "<stable snake_case>", "message": "..."}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from erasure_core.errors import (
    AdapterNotFoundError,
    ArtifactError,
    ErasureError,
    ExpansionError,
    IncompatibleAdapterError,
    InvalidConfigError,
    InvalidLoraError,
    ModelLoadError,
    NoMatchingModuleError,
)
from service.api.disconnect import CLIENT_CLOSED, ClientDisconnected
from service.errors import (
    CapacityError,
    ErasureFailedError,
    ErasureInPolicyError,
    ErasureNotFoundError,
    ErasureNotReadyError,
    ForbiddenError,
    ImageTooLargeError,
    InvalidRequestError,
    ModelNotAvailableError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyConflictError,
    PolicyNotCoveredError,
    PolicyNotFoundError,
    PolicyUnavailableError,
    QueueUnavailableError,
    QuotaExceededError,
    ReportGridNotFoundError,
    ReportNotFoundError,
    StoreUnavailableError,
    TenantNotFoundError,
    UnauthorizedError,
    UploadError,
)
from service.schemas import ErrorResponse

logger = logging.getLogger(__name__)

STATUS: dict[type[ErasureError], int] = {
    InvalidRequestError: 422,
    InvalidConfigError: 422,  # and UnknownMethodError (code `unknown_method`)
    ModelNotAvailableError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    ErasureNotFoundError: 404,
    AdapterNotFoundError: 404,
    ModelNotFoundError: 404,
    ErasureNotReadyError: 409,
    ErasureInPolicyError: 409,
    PolicyConflictError: 409,
    PolicyNotFoundError: 404,
    TenantNotFoundError: 404,
    PolicyNotCoveredError: 409,
    PolicyUnavailableError: 503,
    IncompatibleAdapterError: 409,
    ArtifactError: 409,
    InvalidLoraError: 422,  # a LoRA given for import (`method: import`) is unusable
    PayloadTooLargeError: 413,
    UploadError: 422,  # an unusable uploaded image: invalid_base64, invalid_image, empty_upload, too_many_images, ...
    ImageTooLargeError: 413,  # an uploaded image over ERASURE_UPLOAD_MAX_IMAGE_BYTES or ERASURE_UPLOAD_MAX_SIDE
    OverloadedError: 429,
    QuotaExceededError: 429,
    ErasureFailedError: 500,
    NoMatchingModuleError: 500,
    ExpansionError: 502,
    NotReadyError: 503,
    CapacityError: 503,
    ModelLoadError: 503,
    QueueUnavailableError: 503,
    StoreUnavailableError: 503,
    ReportNotFoundError: 404,
    ReportGridNotFoundError: 404,
}

# Framework statuses that carry no typed error.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

# What every route documents: each status of the table, malformed JSON (400) and the catch-all (500).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in sorted({*STATUS.values(), 400, 422, 500})
}
# Every 429 (`overloaded`, `quota_exceeded`) says when to come back.
ERROR_RESPONSES[429]["headers"] = {
    "Retry-After": {"description": "Seconds until the request may be admitted.", "schema": {"type": "integer"}}
}


def status_of(error: ErasureError) -> int:
    """The HTTP status of a typed error: the entry of its most specific class in `STATUS`, else 500."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _erasure_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ErasureError)
    status = status_of(exc)
    if status >= 500 and not isinstance(exc, NotReadyError):  # not_ready is an expected state while loading
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, exc.code, exc)
    headers = {"Retry-After": "1"} if isinstance(exc, OverloadedError | NotReadyError) else None
    if isinstance(exc, QuotaExceededError):
        headers = {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, exc.code, str(exc), headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(400, "invalid_request", f"the request body is not valid JSON ({_describe(errors)})")
    return error_response(422, "invalid_request", _describe(errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
    # Keep the framework's headers: a 405 carries `Allow` (RFC 9110), which clients and the contract test read.
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """Nobody will read it: an empty answer with the status nginx uses for "client closed request"."""
    return Response(status_code=CLIENT_CLOSED)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error")


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ErasureError, _erasure_error)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
