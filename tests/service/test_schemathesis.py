"""The app behaves as its OpenAPI spec says: Schemathesis fuzzes every operation of a live server, auth on.

The server is built as `erasure serve` builds it (`create_app`, uvicorn, real HTTP, the demo Flux world, jobs on the
real Redis under a key prefix of its own, so trained jobs queue and never run here). It serves the spec of its own
deployment: the limits it enforces (`n`, `steps`, sizes, ...) come from its settings, which this test sets small so
that every schema-valid generation is cheap, and Schemathesis reads that spec from `/openapi.json`.

Every check runs (server errors, status codes and content types documented, response bodies and headers matching
their schemas, schema-valid data accepted, schema-invalid data refused, 405 with `Allow` for unsupported methods),
with a fixed seed and a bounded number of examples per operation so CI is reproducible and short.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import APIRouter

from service.api.deps import PrincipalDep
from service.api.errors import STATUS
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import LiveServer

logger = logging.getLogger(__name__)

REDIS_URL = os.environ.get("ERASURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
OPERATOR_KEY = "op-" + "k" * 29
ALICE_KEY = "alice-" + "a" * 26
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 10
# DELETE of a queued or running job cancels it and keeps its record (`cancelled`, README): a later GET answers 200,
# which Schemathesis's use-after-free check flags. By design: a client polling the job learns it was cancelled.
CANCELLED_RECORD_GAP = "GET /v1/erasures/{erasure_id}"
STATEFUL_STEPS = 6
# Schemathesis's default refusals, plus 413 (a prompt over ERASURE_MAX_PROMPT_CHARS, documented as 413).
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
# An erasure with `expand: true` mines phrasings from the text encoder (seconds each on a CPU): fewer examples there.
SLOW_OPERATIONS = {"POST /v1/erasures": 6}

# Small server limits: the spec the server publishes carries them, so Schemathesis only generates cheap requests.
LIMITS: dict[str, Any] = {
    "max_images": 2,
    "max_steps": 2,
    "default_steps": 1,
    "min_image_side": 16,
    "max_image_side": 64,
    "max_prompt_chars": 200,
    "max_erasures_per_request": 4,
}


@pytest.fixture(scope="module")
def fuzz_server(start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server with API keys (the operator's and alice's) and jobs on Redis under a prefix removed afterwards."""
    prefix = f"erasure-st-{secrets.token_hex(4)}-"
    conn = redis.Redis.from_url(REDIS_URL)
    conn.ping()
    server = start_server(
        tmp_path_factory.mktemp("st-data"),
        api_keys={OPERATOR_KEY: "operator", ALICE_KEY: "alice"},
        redis_url=REDIS_URL,
        queue_prefix=prefix,
        **LIMITS,
    )
    yield server
    server.stop()
    for pattern in (f"{prefix}*", f"rq:*{prefix}*"):
        for key in conn.scan_iter(pattern):
            conn.delete(key)
    for record in Path(server.settings.data_dir, "records").glob("er_*.json"):
        for key in conn.scan_iter(f"rq:*{record.stem}*"):
            conn.delete(key)


def _config(path: Path) -> Path:
    """schemathesis.toml: a fixed seed, deterministic generation, every check, bounded examples and steps."""
    lines = [
        "seed = 20261127",
        "request-timeout = 120",
        "[generation]",
        f"max-examples = {EXAMPLES}",
        "deterministic = true",
        "[phases.stateful]",
        f"max-steps = {STATEFUL_STEPS}",
        "[checks]",
        "enabled = true",
        # A schema-invalid body is refused; a prompt over the limit is refused as 413 `payload_too_large` (documented).
        "[checks.negative_data_rejection]",
        f"expected-statuses = {json.dumps(REFUSALS)}",
    ]
    for name, count in SLOW_OPERATIONS.items():
        lines += ["[[operations]]", f'include-name = "{name}"', f"generation.max-examples = {count}"]
    # One check is off for one operation, by design (test_a_cancelled_job_stays_readable_until_deleted below):
    # DELETE of a queued or running job cancels it and its record stays readable, `cancelled`, until deleted.
    lines += ["[[operations]]", f'include-name = "{CANCELLED_RECORD_GAP}"', "checks.use_after_free.enabled = false"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_app_behaves_as_its_spec_says(fuzz_server: LiveServer, tmp_path: Path) -> None:
    """`st run` against the live server's own /openapi.json, as the issue's run was made (auth on, all checks)."""
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(_config(tmp_path / "schemathesis.toml")),
        "run",
        f"{fuzz_server.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {OPERATOR_KEY}",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    logger.info("schemathesis ran in %.1f s", time.monotonic() - started)
    summary = result.stdout[-20000:]
    logger.info("schemathesis summary:\n%s", summary[-3000:])
    assert result.returncode == 0, summary
    assert "No issues found" in summary or " passed" in summary, summary


def test_a_policy_for_an_unknown_tenant_is_not_found(fuzz_server: LiveServer) -> None:
    """The spec accepts any tenant name in the path; one no key belongs to is a documented 404, not a 422."""
    with fuzz_server.client(OPERATOR_KEY) as client:
        made = client.post("/v1/erasures", json={"concept": "circle"})
        assert made.status_code == 201, made.text
        answer = client.put("/v1/policies/nobody", json={"erasures": [made.json()["id"]]})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "tenant_not_found", answer.text


def test_a_cancelled_job_stays_readable_until_deleted(fuzz_server: LiveServer) -> None:
    """The one check turned off (use-after-free, for GET of an erasure): by design DELETE of a queued job cancels
    it and keeps its record, `cancelled`, so a client polling it learns what happened; a second DELETE removes it."""
    with fuzz_server.client(OPERATOR_KEY) as client:
        made = client.post("/v1/erasures", json={"concept": "circle", "method": "eraseanything"})
        assert made.status_code == 202, made.text
        erasure_id = made.json()["id"]
        assert client.delete(f"/v1/erasures/{erasure_id}").json()["status"] == "cancelled"
        assert client.get(f"/v1/erasures/{erasure_id}").json()["status"] == "cancelled"
        assert client.delete(f"/v1/erasures/{erasure_id}").json()["deleted"] is True
        assert client.get(f"/v1/erasures/{erasure_id}").status_code == 404


def test_an_erasure_onto_itself_is_refused(fuzz_server: LiveServer) -> None:
    """Found by Schemathesis: `{"concept": "circle", "anchor": "circle"}` answered 500; it erases nothing and is
    refused (422) like any other inconsistent request, before anything is written."""
    with fuzz_server.client(OPERATOR_KEY) as client:
        before = len(client.get("/v1/erasures").json()["data"])
        for anchor in ("circle", " Circle "):
            answer = client.post("/v1/erasures", json={"concept": "circle", "anchor": anchor})
            assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request", answer.text
        assert len(client.get("/v1/erasures").json()["data"]) == before


def test_a_new_route_gets_its_error_statuses_without_a_hand_edit() -> None:
    """Error statuses come from the error table and the route's dependencies, not from each decorator."""
    router = APIRouter()

    @router.get("/v1/new-thing")
    def new_thing(principal: PrincipalDep) -> dict[str, str]:
        return {}

    app = create_app(Settings(auth="off"))
    app.include_router(router)
    responses = app.openapi()["paths"]["/v1/new-thing"]["get"]["responses"]
    assert {str(s) for s in STATUS.values()} <= set(responses)
    assert responses["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "Retry-After" in responses["429"]["headers"]
    health = app.openapi()["paths"]["/healthz"]["get"]["responses"]
    assert "401" not in health and "500" in health  # outside auth: only what can happen there
