"""The official OpenAI Python client against a live server: models, image generation, erasures via `extra_body`."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from service.errors import ModelNotFoundError
from service.pipelines import PipelinePool
from service.runtime.models import ModelCatalog
from service.settings import Settings

from .conftest import LiveServer

KEY = "openai-client-key-0123456789"


def client_for(server: LiveServer, key: str = "unused") -> openai.OpenAI:
    # The client insists on an API key even when the server has auth off; any value is fine then.
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, timeout=120.0, max_retries=0)


def generate(client: openai.OpenAI, extra: dict[str, Any], n: int = 2, **fields: Any) -> ImagesResponse:
    """`client.images.generate` as the issue's example calls it, with service-only fields in `extra_body`."""
    fields = {"model": "flux", "prompt": "a red circle", "n": n, "response_format": "b64_json", **fields}
    return client.images.generate(extra_body=extra, **fields)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The service's `{"code", "message"}` (the client unwraps the `error` object)."""
    assert isinstance(exc.body, dict), exc.body
    return exc.body


def png_bytes(images: ImagesResponse) -> list[bytes]:
    assert images.data is not None
    raw = [base64.b64decode(item.b64_json or "") for item in images.data]
    for data in raw:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size == (32, 32)
            image.load()
    return raw


@pytest.fixture(scope="module")
def keyed_server(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("openai-keyed"), api_keys={KEY: "alice"})
    yield server
    server.stop()


def test_models_list_and_retrieve(open_server: LiveServer) -> None:
    client = client_for(open_server)
    models = client.models.list()
    assert [m.id for m in models.data] == ["flux"]
    flux = models.data[0]
    assert flux.object == "model" and flux.owned_by == "erasure-service" and isinstance(flux.created, int)
    assert flux.model_extra == {"output": "image", "ready": True}

    retrieved = client.models.retrieve("flux")
    assert retrieved.id == "flux" and retrieved.created == flux.created

    for unknown in ("gpt-image-1", "open-sora"):  # open-sora exists in the model table but is not served here
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(unknown)
        assert caught.value.status_code == 404
        assert error_of(caught.value) == {"code": "model_not_found", "message": error_of(caught.value)["message"]}
        assert unknown in error_of(caught.value)["message"]


def test_generate_images_with_and_without_an_erasure(open_server: LiveServer) -> None:
    client = client_for(open_server)
    extra = {"seed": 3, "steps": 4}
    plain = client.images.generate(
        model="flux", prompt="a red circle", n=2, response_format="b64_json", extra_body={"seed": 3, "steps": 4}
    )
    plain_pngs = png_bytes(plain)
    assert len(plain_pngs) == 2 and plain_pngs[0] != plain_pngs[1]  # seeds 3 and 4
    assert plain.model_extra is not None and plain.model_extra["seed"] == 3 and plain.model_extra["erasures"] == []
    assert png_bytes(generate(client, extra)) == plain_pngs  # deterministic per seed

    with httpx.Client(base_url=open_server.base_url, timeout=120.0) as http:
        response = http.post("/v1/erasures", json={"concept": "circle"})
    assert response.status_code == 201, response.text
    erasure = response.json()["id"]

    erased = generate(client, {**extra, "erasures": [erasure]})
    erased_pngs = png_bytes(erased)
    assert erased.model_extra is not None and erased.model_extra["erasures"] == [erasure]
    assert len(erased_pngs) == 2
    assert all(a != b for a, b in zip(erased_pngs, plain_pngs, strict=True))

    with pytest.raises(openai.NotFoundError) as caught:
        generate(client, {**extra, "erasures": ["er_doesnotexist"]})
    assert error_of(caught.value)["code"] == "erasure_not_found"


def test_openai_only_fields(open_server: LiveServer) -> None:
    """Fields that do not change the images are accepted and ignored; the others are refused, not ignored."""
    client = client_for(open_server)
    extra = {"seed": 5, "steps": 2}
    base = png_bytes(generate(client, extra, n=1))
    same = generate(
        client,
        extra,
        n=1,
        user="end-user-42",
        safety_identifier="hashed-user",
        output_format="png",
        stream=False,
        size="auto",
    )
    assert png_bytes(same) == base and same.size == "32x32"
    assert png_bytes(generate(client, extra, n=1, size="32x32")) == base

    refused = (
        {"quality": "hd"},
        {"style": "vivid"},
        {"background": "transparent"},
        {"output_format": "jpeg"},
        {"response_format": "url"},
        {"size": "1024x"},  # sizes are validated as before: WIDTHxHEIGHT within the server's limits
        {"size": "8x8"},
        {"size": "33x32"},
    )
    for fields in refused:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            generate(client, extra, n=1, **fields)
        assert error_of(caught.value)["code"] == "invalid_request", fields
        assert next(iter(fields)) in error_of(caught.value)["message"] or "width" in error_of(caught.value)["message"]


def test_keyed_server(keyed_server: LiveServer) -> None:
    for bad in ("wrong-key-0123456789abcdef", "x"):
        with pytest.raises(openai.AuthenticationError) as caught:
            client_for(keyed_server, bad).models.list()
        assert error_of(caught.value)["code"] == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            generate(client_for(keyed_server, bad), {"seed": 1, "steps": 1})

    client = client_for(keyed_server, KEY)
    assert [m.id for m in client.models.list()] == ["flux"]
    assert client.models.retrieve("flux").owned_by == "erasure-service"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    assert len(png_bytes(generate(client, {"seed": 3, "steps": 4}))) == 2


def test_catalog_lists_configured_models_while_they_load(tmp_path: Path) -> None:
    """Before loading, a deployment lists the models it is configured to serve, not ready; a preloaded pool
    (tests) is served exactly."""
    settings = Settings(data_dir=tmp_path, auth="off", open_sora_model="demo")
    catalog = ModelCatalog(settings, PipelinePool(), preloaded=False, created=7)
    assert [(m.name, m.output, m.ready, m.created) for m in catalog.list(service_ready=False)] == [
        ("flux", "image", False, 7),
        ("open-sora", "video", False, 7),
    ]
    assert not catalog.get("open-sora", service_ready=True).ready  # configured but not loaded
    assert ModelCatalog(settings, PipelinePool(), preloaded=True, created=7).names() == []
    with pytest.raises(ModelNotFoundError):
        catalog.get("sdxl", service_ready=True)
