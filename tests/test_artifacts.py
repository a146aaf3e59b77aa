"""The erasure artifact: round trip, integrity checks, atomic writes, LoRA export layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from erasure_core.artifacts import (
    ErasureArtifact,
    LowRankDelta,
    artifact_from_bytes,
    load_artifact,
    save_artifact,
)
from erasure_core.errors import ArtifactError


def _artifact() -> ErasureArtifact:
    g = torch.Generator().manual_seed(0)
    deltas = {
        "context_embedder": LowRankDelta(torch.randn(4, 16, generator=g), torch.randn(8, 4, generator=g)),
        "time_text_embed.text_embedder.linear_1": LowRankDelta(
            torch.randn(2, 16, generator=g), torch.randn(8, 2, generator=g), 0.5
        ),
    }
    return ErasureArtifact(deltas, {"method": "ice", "family": "flux", "concept": {"concept": "circle"}})


def test_round_trip_keeps_weights_metadata_and_hash(tmp_path: Path) -> None:
    artifact = _artifact()
    path = save_artifact(artifact, tmp_path / "a.erasure")
    loaded = load_artifact(path)
    assert loaded.content_hash() == artifact.content_hash()
    assert loaded.metadata["concept"] == {"concept": "circle"}
    for name, delta in artifact.deltas.items():
        assert torch.equal(loaded.deltas[name].dense(), delta.dense())
    assert artifact_from_bytes(artifact.to_bytes()).content_hash() == artifact.content_hash()
    assert [p.name for p in tmp_path.iterdir()] == ["a.erasure"]  # no temporary file left behind


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = save_artifact(_artifact(), tmp_path / "a.erasure")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_tampered_weights_fail_the_content_hash(tmp_path: Path) -> None:
    artifact = _artifact()
    header = artifact.header()
    tensors = artifact.tensors()
    tensors["context_embedder.lora_A"] = tensors["context_embedder.lora_A"] + 1
    save_file(tensors, str(tmp_path / "t.erasure"), metadata=header)
    with pytest.raises(ArtifactError, match="content hash"):
        load_artifact(tmp_path / "t.erasure")


def test_plain_safetensors_and_pickles_are_not_erasures(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ArtifactError, match="not an erasure"):
        load_artifact(tmp_path / "plain.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "x.pt")


def test_undescribed_tensors_are_rejected(tmp_path: Path) -> None:
    artifact = _artifact()
    tensors = artifact.tensors() | {"extra": torch.zeros(1)}
    save_file(tensors, str(tmp_path / "x.erasure"), metadata=artifact.header())
    with pytest.raises(ArtifactError, match="does not describe"):
        load_artifact(tmp_path / "x.erasure")


def test_lora_export_folds_scale_into_b() -> None:
    artifact = _artifact()
    lora = artifact.to_diffusers_lora()
    key = "transformer.time_text_embed.text_embedder.linear_1"
    dense = lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"]
    assert torch.allclose(dense, artifact.deltas["time_text_embed.text_embedder.linear_1"].dense())
    assert json.loads(artifact.header()["erasure"])["scales"]["time_text_embed.text_embedder.linear_1"] == 0.5
