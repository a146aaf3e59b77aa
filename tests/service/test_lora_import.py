"""`method: import` over real HTTP: an existing Flux LoRA becomes an ordinary erasure.

An ICE erasure exported as a diffusers LoRA and imported back generates the same images; a kohya-format LoRA built
here from random factors applies exactly as the same deltas attached directly; bad inputs are refused with a 4xx
and a stable code, and write nothing.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.engines import GenerationParams
from erasure_core.media import to_png_bytes
from service.settings import Settings

from .conftest import LiveServer

STEPS = 4
PROMPT = "a red triangle"
SEED = 7
RANK = 4


@pytest.fixture(scope="module")
def import_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory, import_dir: Path
) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("import-data"), import_dir=import_dir, max_body_bytes=4 * 1024**2)
    yield server
    server.stop()


def generate(client: httpx.Client, erasures: list[str], n: int = 2) -> list[str]:
    body = {"prompt": PROMPT, "seed": SEED, "n": n, "steps": STEPS, "erasures": erasures}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    return [item["b64_json"] for item in response.json()["data"]]


def create(client: httpx.Client, options: dict, concept: str = "triangle") -> httpx.Response:
    return client.post("/v1/erasures", json={"concept": concept, "method": "import", "options": options})


def b64(tensors: dict[str, torch.Tensor]) -> str:
    return base64.b64encode(save(tensors)).decode("ascii")


def kohya_lora(transformer: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, LowRankDelta]]:
    """A kohya-format LoRA on every double block's attention projections, and the deltas it stands for."""
    gen = torch.Generator().manual_seed(0)
    hidden = transformer.transformer_blocks[0].attn.to_q.in_features
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, LowRankDelta] = {}
    parts = {
        "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        "img_attn_proj": ("attn.to_out.0",),
        "txt_attn_proj": ("attn.to_add_out",),
    }
    for i in range(len(transformer.transformer_blocks)):
        for part, targets in parts.items():
            names = [f"transformer_blocks.{i}.{t}" for t in targets]
            outs = [transformer.get_submodule(n).out_features for n in names]
            assert all(transformer.get_submodule(n).in_features == hidden for n in names)
            down = torch.randn(RANK, hidden, generator=gen) / math.sqrt(hidden)
            up = torch.randn(sum(outs), RANK, generator=gen) * 0.3
            key = f"lora_unet_double_blocks_{i}_{part}"
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(2.0)
            for name, rows in zip(names, torch.split(up, outs), strict=True):
                deltas[name] = LowRankDelta(down, rows.contiguous(), 2.0 / RANK)
    return tensors, deltas


def test_import_dir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ERASURE_IMPORT_DIR"):
        Settings(auth="off", import_dir=tmp_path / "absent")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_ice_export_round_trips_through_import(server: LiveServer) -> None:
    with server.client() as client:
        made = client.post("/v1/erasures", json={"concept": "triangle", "synonyms": ["pyramid"], "method": "ice"})
        assert made.status_code == 201, made.text
        ice_id = made.json()["id"]
        lora = client.get(f"/v1/erasures/{ice_id}/lora")
        assert lora.status_code == 200
        imported = create(client, {"lora_b64": base64.b64encode(lora.content).decode("ascii")})
        assert imported.status_code == 201, imported.text
        record = imported.json()
        assert record["status"] == "ready" and record["method"] == "import"
        params = record["metadata"]["params"]
        assert params["format"] == "peft" and params["source"] == "inline" and "lora_b64" not in params
        assert record["options"] == {"path": None}  # the LoRA's bytes stay in the record, not in answers
        base = generate(client, [])
        original = generate(client, [ice_id])
        again = generate(client, [record["id"]])
        assert original != base
        assert again == original  # byte-identical PNGs
        # It composes and exports like any other erasure.
        assert client.get(f"/v1/erasures/{record['id']}/lora").status_code == 200
        both = client.post(
            "/v1/images/generations",
            json={"prompt": PROMPT, "seed": SEED, "steps": STEPS, "erasures": [ice_id, record["id"]]},
        )
        assert both.status_code == 200 and both.json()["erasures"] == sorted([ice_id, record["id"]])


def test_kohya_lora_applies_like_its_deltas(server: LiveServer, import_dir: Path) -> None:
    handle = server.runtime.pool.get("flux")
    engine = handle.engine
    tensors, deltas = kohya_lora(engine.pipe.transformer)
    (import_dir / "kohya.safetensors").write_bytes(save(tensors))
    with server.client() as client:
        inline = create(client, {"lora_b64": b64(tensors)}, concept="noise")
        by_path = create(client, {"path": "kohya.safetensors"}, concept="noise")
        assert inline.status_code == 201, inline.text
        assert by_path.status_code == 201, by_path.text
        assert inline.json()["metadata"]["params"]["format"] == "kohya"
        assert by_path.json()["metadata"]["params"]["modules"] == len(deltas)
        assert by_path.json()["options"] == {"path": "kohya.safetensors"}  # not the operator's folder
        assert "import_dir" not in by_path.json()["metadata"]["params"]
        base = generate(client, [])
        imported = generate(client, [inline.json()["id"]])
        from_path = generate(client, [by_path.json()["id"]])
    assert imported != base
    assert from_path == imported
    direct = ErasureArtifact(deltas, {"base_model": {"layer_hash": engine.layer_hash}})
    params = GenerationParams(
        steps=STEPS, guidance_scale=3.5, height=32, width=32, max_sequence_length=handle.defaults.max_sequence_length
    )
    with handle.lock:
        engine.attach("direct-kohya", direct)
        try:
            images = engine.generate([PROMPT] * 2, [SEED, SEED + 1], params, erasures=["direct-kohya"])
        finally:
            engine.detach("direct-kohya")
            engine.activate(())
    assert [base64.b64encode(to_png_bytes(image)).decode("ascii") for image in images] == imported


def _bad_inputs(import_dir: Path, outside: Path) -> dict[str, tuple[dict, str, str]]:
    """name -> (options, expected code, a word the message must contain)."""
    a = torch.randn(RANK, 128)
    b = torch.randn(128 * 3, RANK)
    (outside / "escape.safetensors").write_bytes(save({"x.lora_A.weight": a}))
    (import_dir / "model.bin").write_bytes(b"\x80\x04pickled")
    link = import_dir / "link.safetensors"
    if not link.exists():
        link.symlink_to(outside / "escape.safetensors")
    nan = torch.randn(128, RANK)
    nan[3, 1] = float("nan")
    return {
        "not base64": ({"lora_b64": "this is *not* base64!"}, "invalid_lora", "base64"),
        "not safetensors": (
            {"lora_b64": base64.b64encode(b"hello, not a LoRA file").decode()},
            "invalid_lora",
            "safetensors",
        ),
        "unknown module": (
            {"lora_b64": b64({"transformer.nope.lora_A.weight": a, "transformer.nope.lora_B.weight": b[:128]})},
            "invalid_lora",
            "transformer.nope.lora_A.weight",
        ),
        "wrong shape": (
            {
                "lora_b64": b64(
                    {
                        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(RANK, 99),
                        "transformer_blocks.0.attn.to_q.lora_B.weight": b[:128],
                    }
                )
            },
            "invalid_lora",
            "transformer_blocks.0.attn.to_q.lora_A.weight",
        ),
        "kohya wrong rows": (
            {
                "lora_b64": b64(
                    {
                        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": a,
                        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": b[:200],
                    }
                )
            },
            "invalid_lora",
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
        ),
        "unsupported kohya key": (
            {
                "lora_b64": b64(
                    {
                        "lora_unet_final_layer_linear.lora_down.weight": a,
                        "lora_unet_final_layer_linear.lora_up.weight": b[:64],
                    }
                )
            },
            "invalid_lora",
            "lora_unet_final_layer_linear",
        ),
        "nan": (
            {
                "lora_b64": b64(
                    {
                        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a,
                        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": nan,
                    }
                )
            },
            "invalid_lora",
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
        ),
        "path escapes": ({"path": "../" + outside.name + "/escape.safetensors"}, "invalid_request", "import folder"),
        "symlink escapes": ({"path": "link.safetensors"}, "invalid_request", "outside the import folder"),
        "bin path": ({"path": "model.bin"}, "invalid_request", ".safetensors"),
        "missing file": ({"path": "absent.safetensors"}, "invalid_request", "no such file"),
        "caller sets the folder": (
            {"path": "escape.safetensors", "import_dir": str(outside)},
            "invalid_request",
            "import_dir",
        ),
        "both sources": ({"path": "kohya.safetensors", "lora_b64": "AAAA"}, "invalid_request", "exactly one"),
    }


def test_bad_imports_are_refused_and_write_nothing(server: LiveServer, import_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cases = _bad_inputs(import_dir, outside)
    data_dir = server.settings.data_dir
    with server.client() as client:
        before_list = client.get("/v1/erasures").json()["data"]
        before_files = files_under(data_dir)
        for name, (options, code, word) in cases.items():
            response = create(client, options)
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            error = response.json()["error"]
            assert error["code"] == code, (name, error)
            assert word in error["message"], (name, error)
        assert client.get("/v1/erasures").json()["data"] == before_list
    assert files_under(data_dir) == before_files
