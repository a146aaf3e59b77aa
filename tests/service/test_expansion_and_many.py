"""Over HTTP: the operator's LLM spy (settings only; its suggestions verified by the model), and one erasure of
many concepts; trained methods refuse several concepts before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.pipelines import PipelinePool
from service.settings import Settings
from tests.chat_server import ChatHandler

from .conftest import LiveServer


def test_the_operators_llm_suggests_and_the_model_decides(chat_server: str, tmp_path: Path, cache_dir: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, device="cpu", auth="off", cache_dir=cache_dir, llm_url=chat_server, llm_model="local"
    )
    server = LiveServer(settings, PipelinePool.load(settings)).start()
    ChatHandler.answer = '["rhombus", "lozenge", "dog", "banana"]'
    try:
        with server.client() as client:
            plain = client.post("/v1/erasures", json={"concept": "diamond", "expand": False}).json()
            expanded = client.post("/v1/erasures", json={"concept": "diamond"}).json()  # expansion is the default
    finally:
        ChatHandler.answer = '["orb", "round disc", "ring"]'
        server.stop()
    assert plain["status"] == expanded["status"] == "ready"
    assert plain["metadata"]["phrasings"] == ["diamond"], "without expand, the LLM is not asked"
    phrasings = expanded["metadata"]["phrasings"]
    assert {"rhombus", "lozenge"} <= set(phrasings) and not {"dog", "banana"} & set(phrasings), phrasings
    assert ChatHandler.requests[-1]["body"]["model"] == "local"


def test_a_caller_cannot_name_an_llm_url(open_server: LiveServer) -> None:
    with open_server.client() as client:
        answer = client.post("/v1/erasures", json={"concept": "circle", "llm_url": "http://attacker.example/v1"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"


def test_llm_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="llm_url"):
        Settings(auth="off", llm_url="file:///etc/passwd")


def test_one_erasure_of_many_concepts_and_trained_methods_refuse_them(open_server: LiveServer) -> None:
    also = ["square", "dog", "car", "lamp"]
    with open_server.client() as client:
        before = client.get("/v1/erasures").json()["data"]
        many = client.post("/v1/erasures", json={"concept": "triangle", "also": also})
        refused = client.post("/v1/erasures", json={"concept": "triangle", "also": also, "method": "eraseanything"})
        too_many = client.post("/v1/erasures", json={"concept": "triangle", "also": [f"w{i}" for i in range(100)]})
        after = client.get("/v1/erasures").json()["data"]
        images = client.post(
            "/v1/images/generations", json={"prompt": "a red square", "erasures": [many.json()["id"]], "n": 2}
        )
    assert many.status_code == 201 and many.json()["metadata"]["stats"]["concepts"] == 5
    assert refused.status_code == 422 and "at most 1 concept" in refused.json()["error"]["message"]
    assert too_many.status_code == 422
    assert len(after) == len(before) + 1, "refused requests write nothing"
    assert images.status_code == 200
