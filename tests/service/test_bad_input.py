"""Every kind of bad input gets a clear 4xx with its stable code, and changes nothing."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import LiveServer

GEN = "/v1/images/generations"
ER = "/v1/erasures"
UNKNOWN = "er_" + "0" * 24
OK = {"prompt": "a red circle", "steps": 2}

# (name, method, path, json body or raw bytes, expected status, expected code)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    ("malformed json (generation)", "POST", GEN, b'{"prompt": "a red', 400, "invalid_request"),
    ("malformed json (erasure)", "POST", ER, b"{concept: circle}", 400, "invalid_request"),
    ("body is not an object", "POST", GEN, ["a red circle"], 422, "invalid_request"),
    ("missing prompt", "POST", GEN, {"n": 1}, 422, "invalid_request"),
    ("prompt of wrong type", "POST", GEN, {"prompt": 5}, 422, "invalid_request"),
    ("n of wrong type", "POST", GEN, {**OK, "n": "two"}, 422, "invalid_request"),
    ("erasures not a list", "POST", GEN, {**OK, "erasures": UNKNOWN}, 422, "invalid_request"),
    ("unknown field", "POST", GEN, {**OK, "quality": "hd"}, 422, "invalid_request"),
    ("n = 0", "POST", GEN, {**OK, "n": 0}, 422, "invalid_request"),
    ("n above the limit", "POST", GEN, {**OK, "n": 9}, 422, "invalid_request"),
    ("steps = 0", "POST", GEN, {**OK, "steps": 0}, 422, "invalid_request"),
    ("steps above the limit", "POST", GEN, {**OK, "steps": 101}, 422, "invalid_request"),
    ("size not WxH", "POST", GEN, {**OK, "size": "large"}, 422, "invalid_request"),
    ("size not a multiple of the packing", "POST", GEN, {**OK, "size": "34x32"}, 422, "invalid_request"),
    ("size too small", "POST", GEN, {**OK, "size": "4x4"}, 422, "invalid_request"),
    ("size too large", "POST", GEN, {**OK, "size": "4096x32"}, 422, "invalid_request"),
    ("negative seed", "POST", GEN, {**OK, "seed": -1}, 422, "invalid_request"),
    ("seed too large", "POST", GEN, {**OK, "seed": 2**64}, 422, "invalid_request"),
    ("negative guidance", "POST", GEN, {**OK, "guidance_scale": -1}, 422, "invalid_request"),
    ("url response format", "POST", GEN, {**OK, "response_format": "url"}, 422, "invalid_request"),
    ("blank prompt", "POST", GEN, {"prompt": "   "}, 422, "invalid_request"),
    ("oversized prompt", "POST", GEN, {"prompt": "a" * 2001}, 413, "payload_too_large"),
    ("oversized body", "POST", GEN, {"prompt": "a", "pad": "x" * 300_000}, 413, "payload_too_large"),
    ("unknown model", "POST", GEN, {**OK, "model": "sdxl"}, 422, "invalid_request"),
    ("model not served", "POST", GEN, {**OK, "model": "open-sora"}, 400, "model_not_available"),
    ("unknown erasure id", "POST", GEN, {**OK, "erasures": [UNKNOWN]}, 404, "erasure_not_found"),
    ("malformed erasure id", "POST", GEN, {**OK, "erasures": ["../../etc/passwd"]}, 404, "erasure_not_found"),
    ("too many erasures", "POST", GEN, {**OK, "erasures": [UNKNOWN] * 17}, 422, "invalid_request"),
    ("missing concept", "POST", ER, {"synonyms": ["disk"]}, 422, "invalid_request"),
    ("empty concept", "POST", ER, {"concept": ""}, 422, "invalid_request"),
    ("blank concept", "POST", ER, {"concept": "   "}, 422, "invalid_request"),
    ("concept of wrong type", "POST", ER, {"concept": ["circle"]}, 422, "invalid_request"),
    ("synonyms of wrong type", "POST", ER, {"concept": "circle", "synonyms": "disk"}, 422, "invalid_request"),
    ("unknown kind", "POST", ER, {"concept": "circle", "kind": "mood"}, 422, "invalid_request"),
    ("unknown method", "POST", ER, {"concept": "circle", "method": "magic"}, 422, "unknown_method"),
    ("option out of range", "POST", ER, {"concept": "circle", "options": {"lam": -1}}, 422, "invalid_request"),
    ("unknown option", "POST", ER, {"concept": "circle", "options": {"speed": 9}}, 422, "invalid_request"),
    ("options of wrong type", "POST", ER, {"concept": "circle", "options": [1]}, 422, "invalid_request"),
    (
        "erasure for an unserved model",
        "POST",
        ER,
        {"concept": "circle", "model": "open-sora"},
        400,
        "model_not_available",
    ),
    ("oversized concept body", "POST", ER, {"concept": "c", "preserve": ["x" * 150] * 2000}, 413, "payload_too_large"),
    ("get unknown id", "GET", f"{ER}/{UNKNOWN}", None, 404, "erasure_not_found"),
    ("get malformed id", "GET", f"{ER}/not-an-id", None, 404, "erasure_not_found"),
    ("get id with a trailing newline", "GET", f"{ER}/{UNKNOWN}%0A", None, 404, "erasure_not_found"),
    ("delete id with a trailing newline", "DELETE", f"{ER}/{UNKNOWN}%0A", None, 404, "erasure_not_found"),
    ("delete unknown id", "DELETE", f"{ER}/{UNKNOWN}", None, 404, "erasure_not_found"),
    ("lora of unknown id", "GET", f"{ER}/{UNKNOWN}/lora", None, 404, "erasure_not_found"),
    ("unknown route", "GET", "/v1/nothing", None, 404, "not_found"),
    ("wrong method", "PUT", ER, {"concept": "circle"}, 405, "method_not_allowed"),
]


def _snapshot(server: LiveServer) -> tuple[Any, ...]:
    data_dir = Path(server.settings.data_dir)
    files = sorted((str(p.relative_to(data_dir)), p.stat().st_mtime_ns) for p in data_dir.rglob("*") if p.is_file())
    runtime = server.runtime
    metrics = runtime.metrics
    return (
        files,
        [r.id for r in runtime.store.list()],
        metrics.generations.value(model="flux"),
        runtime.managers["flux"].resident,
        metrics.erasures.value(method="ice", outcome="succeeded"),
    )


@pytest.mark.parametrize("name,method,path,body,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    open_server: LiveServer, name: str, method: str, path: str, body: Any, status: int, code: str
) -> None:
    before = _snapshot(open_server)
    with open_server.client() as client:
        if isinstance(body, bytes):
            response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
        else:
            response = client.request(method, path, json=body)
    assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
    error = response.json()["error"]
    assert error["code"] == code, f"{name}: {error}"
    assert error["message"], f"{name}: the error must say what is wrong"
    assert _snapshot(open_server) == before, f"{name}: a rejected request changed the server's state"


# Trained-method options that used to be accepted (202 queued) and fail later: each must be refused at creation.
FAST = '"concept_images": 1, "sample_steps": 2, "steps": 4'
BAD_TRAINED_OPTIONS = {
    "unknown target set": '{"target_set": "nope"}',
    "infinite rate": '{"lr": Infinity}',
    "NaN weight": '{"lambda_esd": NaN}',
    "infinite unbounded weight": '{"lambda_preserve": Infinity}',
    "negative infinite weight": '{"eupmu_lr": -Infinity}',
    "seed beyond 64 bits": '{"seed": 18446744073709551616}',
    "negative seed": '{"seed": -1}',
    "checkpoint_every 0": '{"checkpoint_every": 0}',
    "checkpoint_every above steps": '{"checkpoint_every": 5}',
}


@pytest.mark.parametrize("options", BAD_TRAINED_OPTIONS.values(), ids=BAD_TRAINED_OPTIONS.keys())
def test_trained_options_are_checked_at_creation(open_server: LiveServer, options: str) -> None:
    """422 before anything is written or queued: the list stays the same and no record or checkpoint appears."""
    merged = options.replace("{", "{" + FAST + ", ", 1)
    body = f'{{"concept": "circle", "method": "eraseanything", "options": {merged}}}'.encode()
    before = _snapshot(open_server)
    with open_server.client() as client:
        listed = client.get(ER).json()["data"]
        response = client.post(ER, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, f"{options}: {response.status_code} {response.text}"
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["message"], error
        assert client.get(ER).json()["data"] == listed
    assert _snapshot(open_server) == before


def test_a_valid_trained_job_is_still_accepted(open_server: LiveServer) -> None:
    """The checks above do not refuse good options: a tiny job with the defaults' checkpoint_every is queued."""
    body = {"concept": "circle", "method": "eraseanything", "options": {"steps": 1, "concept_images": 1}}
    with open_server.client() as client:
        response = client.post(ER, json={**body, "options": {**body["options"], "sample_steps": 2}})
        assert response.status_code == 202, response.text
        assert response.json()["options"]["checkpoint_every"] == 1  # the default, capped at steps
        erasure_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"{ER}/{erasure_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.2)
        assert client.get(f"{ER}/{erasure_id}").json()["status"] == "ready"
        assert client.delete(f"{ER}/{erasure_id}").status_code == 200


def test_unknown_request_methods_share_one_metrics_label(open_server: LiveServer) -> None:
    """Arbitrary HTTP methods must not grow the metrics without bound: they are counted as "other"."""
    with open_server.client() as client:
        for method in ("FOOBAR", "FOOBAZ"):
            response = client.request(method, "/healthz")
            assert response.status_code in (400, 404, 405), response.text
        text = client.get("/metrics").text
    methods = set(re.findall(r'erasure_http_requests_total\{method="([^"]*)"', text))
    assert "FOOBAR" not in text and "FOOBAZ" not in text
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"}
    assert "other" in methods


def test_streamed_oversized_body_is_refused(open_server: LiveServer) -> None:
    def chunks():  # no Content-Length: the limit must hold while streaming
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 10_000
        yield b'"}'

    with open_server.client() as client:
        response = client.post(GEN, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_valid_request_still_works_after_the_walk(open_server: LiveServer) -> None:
    with open_server.client() as client:
        response = client.post(GEN, json=OK)
    assert response.status_code == 200 and len(response.json()["data"]) == 1
