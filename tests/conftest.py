"""Shared fixtures: the assembled demo world, its engine and its judge, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("ERASURE_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("erasure-cache")


@pytest.fixture(scope="session")
def demo_dir(cache_dir: Path) -> Path:
    from erasure_core.worlds.flux_world import assemble_flux_world

    return assemble_flux_world(cache_dir)


@pytest.fixture(scope="session")
def demo_engine(demo_dir: Path):
    from erasure_core.models import load_engine

    return load_engine("flux", "demo", device="cpu", cache_dir=demo_dir.parent)


@pytest.fixture(scope="session")
def judge():
    from erasure_core.worlds.judge import load_judge

    return load_judge()


@pytest.fixture()
def chat_server():
    """A local OpenAI-compatible chat endpoint (tests/chat_server.py); yields its base URL."""
    from tests.chat_server import serve_chat

    server, url = serve_chat()
    yield url
    server.shutdown()
