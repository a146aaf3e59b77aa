"""The models this deployment serves, as `GET /v1/models` lists them (OpenAI models shape).

A deployment serves the models whose source is configured (`ERASURE_FLUX_MODEL`, `ERASURE_OPEN_SORA_MODEL`), or,
when the app was given an already loaded pool (tests), exactly the pool's models. They are listed while they load,
with `ready` false until the service is ready (loaded and warmed up).
"""

from __future__ import annotations

from dataclasses import dataclass

from erasure_core.engines.base import Output
from erasure_core.models import MODEL_NAMES, MODELS
from service.errors import ModelNotFoundError
from service.pipelines import PipelinePool
from service.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    """One served model: its public name, what it generates, whether it is usable now, and since when it is served."""

    name: str
    output: Output
    ready: bool
    created: int


class ModelCatalog:
    """Which models this deployment serves, from the settings and the pipeline pool."""

    def __init__(self, settings: Settings, pool: PipelinePool, preloaded: bool, created: int) -> None:
        self.settings = settings
        self.pool = pool
        self.preloaded = preloaded
        self.created = created

    def names(self) -> list[str]:
        """Served model names, in the model table's order."""
        if self.preloaded:
            served = set(self.pool.names)
        else:
            served = {m for m in MODEL_NAMES if self.settings.model_overrides(m).source} | set(self.pool.names)
        return [m for m in MODEL_NAMES if m in served]

    def list(self, service_ready: bool) -> list[ServedModel]:
        return [self._describe(name, service_ready) for name in self.names()]

    def get(self, name: str, service_ready: bool) -> ServedModel:
        """Raises ModelNotFoundError unless `name` is served here."""
        if name not in self.names():
            served = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"model {name!r} is not served by this deployment (served: {served})")
        return self._describe(name, service_ready)

    def _describe(self, name: str, service_ready: bool) -> ServedModel:
        ready = service_ready and name in self.pool.handles
        return ServedModel(name=name, output=MODELS[name].output, ready=ready, created=self.created)
