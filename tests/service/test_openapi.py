"""openapi.yaml must be exactly the app's generated spec (regenerate with `python -m service.openapi`)."""

from __future__ import annotations

from service.openapi import DEFAULT_PATH, render


def test_openapi_yaml_matches_the_app() -> None:
    assert DEFAULT_PATH.is_file(), "openapi.yaml is missing: run `python -m service.openapi`"
    assert DEFAULT_PATH.read_text() == render(), "openapi.yaml drifted from the app: run `python -m service.openapi`"


def test_spec_documents_every_route() -> None:
    import yaml

    spec = yaml.safe_load(render())
    assert set(spec["paths"]) == {
        "/v1/erasures",
        "/v1/erasures/{erasure_id}",
        "/v1/erasures/{erasure_id}/lora",
        "/v1/erasures/{erasure_id}/reports",
        "/v1/erasures/{erasure_id}/reports/{report_id}",
        "/v1/erasures/{erasure_id}/reports/{report_id}/grid.png",
        "/v1/images/generations",
        "/v1/videos/generations",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/policies",
        "/v1/policies/{tenant}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
