"""The OpenAPI contract a deployment publishes, and the 405 answer for a method a path does not support.

FastAPI's generated spec says what the request models accept in general; a deployment refuses more: its limits
(`ERASURE_MAX_IMAGES`, `ERASURE_MAX_STEPS`, sizes, prompt length, ...), the models it serves, each method's options,
and whatever its routes raise. `build_openapi` post-processes the generated spec so that what it declares valid is
what this deployment accepts, and every status a route can answer is documented with the error body:
- errors are derived from the error table (`service.api.errors.STATUS`) and from each route's dependencies, so a new
  route or a new typed error is documented without a hand edit;
- limits and served models come from the settings and the served model list.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from erasure_core.methods import base as methods
from erasure_core.models import MODELS
from service.api.deps import get_principal, require_ready
from service.api.errors import STATUS, error_response
from service.pipelines import ModelDefaults
from service.settings import Settings

# Statuses the framework answers without a typed error: malformed JSON (400), a body over the limit (413), a
# request that fails validation (422), and the catch-all (500).
BODY_STATUSES = (400, 413, 422)
PARAM_STATUSES = (422,)
ALWAYS_STATUSES = (500,)
# Headers some error statuses always carry (see `service.api.errors`).
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds until a retry can succeed.", "schema": {"type": "integer"}}},
}
# The default side step when no pipeline is loaded (rendering openapi.yaml): Flux's VAE (8) x 2x2 latent packing.
DEFAULT_PACKING = 16
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


# A model's defaults once its pipeline is loaded (None before): the side step (`packing`) comes from there.
DefaultsOf = Callable[[str], ModelDefaults | None]


def build_openapi(app: FastAPI, limits: Settings, served: list[str], defaults: DefaultsOf) -> dict:
    """The spec of this deployment: `limits` are its settings, `served` its model names."""
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    _document_errors(spec, app)
    _exact_bounds(spec, app)
    _restrict_models(spec, served)
    _apply_limits(spec["components"]["schemas"], limits, served, defaults)
    _erasure_variants(spec, import_by_path=limits.import_dir is not None)
    return spec


def install_contract(app: FastAPI, limits: Settings, served: Callable[[], list[str]], defaults: DefaultsOf) -> None:
    """Publishes `build_openapi`'s spec at /openapi.json and answers 405 with `Allow`. The spec is kept once every
    served model is loaded (before that, side steps are the default and may still change)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        names = served()
        spec = build_openapi(app, limits, names, defaults)
        if all(defaults(name) is not None for name in names):
            app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(405, method_not_allowed)


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with `Allow` listing every method of every route on this path (Starlette lists only the last route's)."""
    assert isinstance(exc, StarletteHTTPException)
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.path_regex.match(request.url.path):
            allowed.update(route.methods or ())
    allowed.discard("HEAD")  # Starlette adds HEAD to GET routes; the spec documents GET
    headers = {"Allow": ", ".join(sorted(allowed))} if allowed else None
    return error_response(405, "method_not_allowed", f"{request.method} is not allowed here", headers)


# -- errors ------------------------------------------------------------------------------------------------------


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def route_statuses(route: Any) -> set[int]:
    """Every status `route` can answer with an error body. Authenticated routes reach the runtime, which can raise
    any typed error of the table; the others only what their dependencies and the framework raise."""
    calls = set(_calls(route.dependant))
    statuses = set(ALWAYS_STATUSES)
    if route.body_field is not None:
        statuses.update(BODY_STATUSES)
    if route.dependant.path_params or route.dependant.query_params:
        statuses.update(PARAM_STATUSES)
    if get_principal in calls:
        statuses.update(STATUS.values())
    if require_ready in calls:
        statuses.add(503)
    return statuses


def _codes(status: int) -> list[str]:
    return sorted({getattr(cls, "code", "") for cls, s in STATUS.items() if s == status} - {""})


def _document_errors(spec: dict, app: FastAPI) -> None:
    for route in iter_route_contexts(app.routes):  # routes of included routers with their prefixes
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = spec["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(route_statuses(route)):
                codes = ", ".join(f"`{c}`" for c in _codes(status)) or "see the message"
                entry = responses.setdefault(str(status), {"description": f"Error: {codes}"})
                # Copies: shared objects would come out of the YAML dump as anchors and aliases.
                entry["content"] = {"application/json": {"schema": dict(ERROR_REF)}}
                if status in ERROR_HEADERS:  # a route's own declaration wins
                    entry.setdefault("headers", copy.deepcopy(ERROR_HEADERS[status]))


# -- exact numbers ----------------------------------------------------------------------------------------------

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _copy_bounds(target: Any, source: Any) -> None:
    """FastAPI's spec model stores bounds as floats (2**63 - 1 becomes 9.223372036854776e18, which admits seeds the
    app refuses): take them back from the model's own JSON schema, which keeps integers exact."""
    if isinstance(target, dict) and isinstance(source, dict):
        for key in BOUNDS:
            if key in target and key in source:
                target[key] = source[key]
        for key, value in target.items():
            _copy_bounds(value, source.get(key))
    elif isinstance(target, list) and isinstance(source, list) and len(target) == len(source):
        for a, b in zip(target, source, strict=True):
            _copy_bounds(a, b)


def _exact_bounds(spec: dict, app: FastAPI) -> None:
    schemas = spec["components"]["schemas"]
    for route in iter_route_contexts(app.routes):
        body = getattr(route, "body_field", None)
        model = body.field_info.annotation if body is not None else None
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__name__ in schemas:
            _copy_bounds(schemas[model.__name__], model.model_json_schema())


# -- models and limits -------------------------------------------------------------------------------------------

GENERATION_BODIES = {"ImageGenerationRequest": "image", "VideoGenerationRequest": "video"}


def _set_enum(prop: dict, values: list[str]) -> None:
    prop.pop("const", None)
    prop["enum"] = values
    if prop.get("default") not in values:
        prop.pop("default", None)


def _restrict_models(spec: dict, names: list[str]) -> None:
    """Request bodies name only served models (of the right output); a generation route with none is left out."""
    schemas = spec["components"]["schemas"]
    _set_enum(schemas["ErasureCreate"]["properties"]["model"], names)
    for body, output in GENERATION_BODIES.items():
        models = [n for n in names if MODELS[n].output == output]
        if models:
            _set_enum(schemas[body]["properties"]["model"], models)
            continue
        for path, operations in list(spec["paths"].items()):
            for method, operation in list(operations.items()):
                ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                if ref == {"$ref": f"#/components/schemas/{body}"}:
                    del operations[method]
            if not operations:
                del spec["paths"][path]


def _non_null(prop: dict) -> dict:
    """The non-null branch of an optional property (`anyOf: [X, null]`), or the property itself."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return prop


def _size_pattern(low: int, high: int, step: int, auto: bool) -> str:
    sides = "|".join(str(v) for v in range(-(-low // step) * step, high + 1, step))
    return f"^({'auto|' if auto else ''}({sides})x({sides}))$"


def _packing(output: str, served: list[str], defaults: DefaultsOf) -> int:
    """The side step every served model of `output` accepts (their least common multiple)."""
    steps = [d.packing for n in served if MODELS[n].output == output and (d := defaults(n)) is not None]
    return math.lcm(*steps) if steps else DEFAULT_PACKING


def _apply_limits(schemas: dict, limits: Settings, served: list[str], defaults: DefaultsOf) -> None:
    for body, output in GENERATION_BODIES.items():
        if body not in schemas:
            continue
        packing = _packing(output, served, defaults)
        props = schemas[body]["properties"]
        for field in ("prompt", "negative_prompt"):
            if field in props:
                props[field]["maxLength"] = limits.max_prompt_chars
        props["erasures"]["maxItems"] = limits.max_erasures_per_request
        _non_null(props["steps"])["maximum"] = limits.max_steps
        pattern = _size_pattern(limits.min_image_side, limits.max_image_side, packing, body == "ImageGenerationRequest")
        _non_null(props["size"])["pattern"] = pattern
    if "ImageGenerationRequest" in schemas:
        schemas["ImageGenerationRequest"]["properties"]["n"]["maximum"] = limits.max_images
    if "VideoGenerationRequest" in schemas:
        props = schemas["VideoGenerationRequest"]["properties"]
        _non_null(props["fps"]).update(minimum=limits.min_fps, maximum=limits.max_fps)
        _non_null(props["num_frames"])["maximum"] = limits.max_video_frames


# -- erasure methods ---------------------------------------------------------------------------------------------


def _import_options(schema: dict, by_path: bool) -> None:
    """`method: import` takes exactly one of `lora_b64` and `path`; `path` only where the operator set an import
    folder, and `import_dir` never (the operator's)."""
    props = schema["properties"]
    props.pop("import_dir", None)
    for key in ("lora_b64", "path"):
        props[key] = _non_null(props[key])
    if by_path:
        schema["oneOf"] = [{"required": ["lora_b64"]}, {"required": ["path"]}]
    else:
        props.pop("path")
        schema["required"] = ["lora_b64"]


def _erasure_variants(spec: dict, import_by_path: bool) -> None:
    """POST /v1/erasures: one variant per registered method, its `options` the method's own config schema, its
    `also` bounded by how many concepts the method erases at once (the app refuses anything else)."""
    schemas = spec["components"]["schemas"]
    base = schemas.pop("ErasureCreate")
    default = base["properties"]["method"].get("default")
    variants = []
    for name, method in sorted(methods._REGISTRY.items()):
        options = method.config_cls.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(options.pop("$defs", {}))
        if name == "import":
            _import_options(options, import_by_path)
        schemas[method.config_cls.__name__] = options
        variant = copy.deepcopy(base)
        variant["title"] = f"ErasureCreate ({name})"
        props = variant["properties"]
        props["method"] = {"type": "string", "enum": [name], **({"default": name} if name == default else {})}
        props["options"] = {"$ref": f"#/components/schemas/{method.config_cls.__name__}"}
        props["also"]["maxItems"] = method.max_concepts - 1
        if name != default:
            variant["required"] = sorted({*variant.get("required", ()), "method"})
        schemas[f"ErasureCreate_{name}"] = variant
        variants.append({"$ref": f"#/components/schemas/ErasureCreate_{name}"})
    schemas["ErasureCreate"] = {"title": "ErasureCreate", "description": base.get("description", ""), "oneOf": variants}
