"""The models this deployment serves (OpenAI models shape): list, and one by id."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import PrincipalDep, RuntimeDep
from service.api.errors import ERROR_RESPONSES
from service.runtime.models import ServedModel
from service.schemas import ModelList, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(model: ServedModel) -> ModelObject:
    return ModelObject(id=model.name, created=model.created, output=model.output, ready=model.ready)


@router.get("", response_model=ModelList, responses=ERROR_RESPONSES)
def list_models(principal: PrincipalDep, runtime: RuntimeDep) -> ModelList:
    """The models this deployment serves; listed while they load, `ready` once generations are accepted."""
    return ModelList(data=[_public(m) for m in runtime.models()])


@router.get("/{model}", response_model=ModelObject, responses=ERROR_RESPONSES)
def get_model(model: str, principal: PrincipalDep, runtime: RuntimeDep) -> ModelObject:
    """One served model; 404 `model_not_found` for any other id."""
    return _public(runtime.model(model))
