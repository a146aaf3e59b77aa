"""Dependencies: the runtime, the calling principal, and readiness, as `Annotated` types for thin routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.runtime.state import ServiceRuntime
from service.runtime.tenancy import Principal


def get_runtime(request: Request) -> ServiceRuntime:
    return request.app.state.runtime


RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]


_bearer = HTTPBearer(auto_error=False, description="An API key (required when the server has keys configured).")


def get_principal(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from `Authorization: Bearer <key>` (ignored when auth is off)."""
    return runtime.tenancy.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_ready(runtime: RuntimeDep) -> ServiceRuntime:
    runtime.check_ready()
    return runtime


ReadyRuntimeDep = Annotated[ServiceRuntime, Depends(require_ready)]
