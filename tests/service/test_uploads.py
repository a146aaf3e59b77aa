"""Images uploaded with an image-guided erasure: bad ones get a 4xx with a stable code and change nothing; good ones
reach the job (over real HTTP, the embedded runner) and are never served back."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import LiveServer

ER = "/v1/erasures"
MAX_IMAGES, MAX_BYTES = 8, 8192
FAST = {"steps": 2, "sample_steps": 2, "concept_images": 2, "checkpoint_every": 1, "image_batch": 2}


def _png(image: Any, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def renders(n: int, shape: str = "triangle", size: int = 32) -> list[str]:
    """n renders of a shape in rotating colours and positions, as base64 PNGs (what a caller would upload)."""
    import numpy as np
    from PIL import Image

    from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES, render

    g = torch.Generator().manual_seed(3)
    kinds = torch.full((n,), SHAPES.index(shape))
    colors = torch.arange(n) % len(COLOR_NAMES)
    centers = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * size / 4
    radii = size * (0.25 + 0.1 * torch.rand(n, generator=g))
    images = render(kinds, colors, centers, radii, torch.zeros(n), size)
    out = []
    for image in images:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append(_b64(_png(Image.fromarray(array))))
    return out


def _mask(size: int) -> str:
    from PIL import Image

    return _b64(_png(Image.new("L", (size, size), 255)))


def _huge_header_png(side: int = 20000) -> bytes:
    """A valid PNG signature and IHDR declaring side x side pixels, followed by a tiny IDAT: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _gif() -> bytes:
    from PIL import Image

    return _png(Image.new("RGB", (8, 8)), fmt="GIF")


def _animated_png() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    return _png(frames[0], save_all=True, append_images=frames[1:])


def _noisy_png(side: int) -> bytes:
    from PIL import Image

    return _png(Image.frombytes("RGB", (side, side), bytes(torch.randint(0, 256, (side * side * 3,)).tolist())))


GOOD = renders(3)
TRUNCATED = base64.b64decode(GOOD[0])[:40]
BODY = {"concept": "triangle", "method": "co-erasing", "options": FAST}

# (name, extra body, status, code): each a request that must be refused before anything is written.
BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("not an image", {"reference_images": [_b64(b"hello, I am text")]}, 422, "invalid_image"),
    ("truncated file", {"reference_images": [_b64(TRUNCATED)]}, 422, "invalid_image"),
    ("20000x20000 header", {"reference_images": [_b64(_huge_header_png())]}, 413, "image_too_large"),
    ("5000x5000 header", {"reference_images": [_b64(_huge_header_png(5000))]}, 413, "image_too_large"),
    ("too many images", {"reference_images": GOOD[:1] * (MAX_IMAGES + 1)}, 422, "too_many_images"),
    (
        "mask of the wrong size",
        {"reference_images": GOOD[:2], "reference_masks": [_mask(16)] * 2},
        422,
        "mask_mismatch",
    ),
    ("one mask for two images", {"reference_images": GOOD[:2], "reference_masks": [_mask(32)]}, 422, "mask_mismatch"),
    ("masks without images", {"reference_masks": [_mask(32)]}, 422, "mask_mismatch"),
    ("wrong base64", {"reference_images": ["not base64 at all!"]}, 422, "invalid_base64"),
    ("empty list", {"reference_images": []}, 422, "empty_upload"),
    ("a GIF", {"reference_images": [_b64(_gif())]}, 422, "invalid_image"),
    ("an animated PNG", {"reference_images": [_b64(_animated_png())]}, 422, "invalid_image"),
    ("over the byte limit", {"reference_images": [_b64(_noisy_png(64))]}, 413, "image_too_large"),
    ("not a list", {"reference_images": GOOD[0]}, 422, "invalid_request"),
    ("positive images for co-erasing", {"positive_images": GOOD[:1]}, 422, "upload_not_supported"),
    (
        "images for a text-only method",
        {"method": "ice", "options": {}, "reference_images": GOOD[:1]},
        422,
        "upload_not_supported",
    ),
    ("images through options", {"options": {**FAST, "reference_images": GOOD[:1]}}, 422, "upload_not_supported"),
]


@pytest.fixture(scope="module")
def server(start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(
        tmp_path_factory.mktemp("uploads"), upload_max_images=MAX_IMAGES, upload_max_image_bytes=MAX_BYTES
    )
    yield server
    server.stop()


def _stored(server: LiveServer) -> list[Path]:
    return sorted((server.settings.data_dir / "records").glob("*.json"))


@pytest.mark.parametrize(("name", "extra", "status", "code"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_upload_is_refused_and_changes_nothing(
    server: LiveServer, name: str, extra: dict[str, Any], status: int, code: str
) -> None:
    before = _stored(server)
    with server.client() as client:
        listed = client.get(ER).json()["data"]
        response = client.post(ER, json={**BODY, **extra})
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["code"] == code, (name, response.text)
        assert client.get(ER).json()["data"] == listed, name
    assert _stored(server) == before, name


def test_uploaded_images_reach_the_job_and_are_never_served_back(server: LiveServer) -> None:
    """8 renders of the shape uploaded by the caller (with masks) train the LoRA; the record, the list and the
    artifact's metadata show a count and a hash, never the images."""
    images = renders(8)
    body = {
        **BODY,
        "method": "bi-erasing",
        "reference_images": images,
        "reference_masks": [_mask(32)] * 8,
        "positive_images": renders(2, shape="circle"),
    }
    with server.client() as client:
        response = client.post(ER, json=body)
        assert response.status_code == 202, response.text
        erasure = response.json()
        deadline = time.monotonic() + 240
        while erasure["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.3)
            erasure = client.get(f"{ER}/{erasure['id']}").json()
        assert erasure["status"] == "ready", erasure
        stats = erasure["metadata"]["stats"]
        assert (stats["reference_images"], stats["reference_source"]) == (8, "uploaded")
        assert (stats["positive_images"], stats["positive_source"]) == (2, "uploaded")
        assert stats["reference_mask_mean"] == 1.0  # the uploaded all-white masks, not the attention's
        params = erasure["metadata"]["params"]
        assert params["reference_images"]["count"] == 8 and len(params["reference_images"]["sha256"]) == 64
        shown = client.get(ER).text + client.get(f"{ER}/{erasure['id']}").text
        assert images[0][:40] not in shown and 'reference_images": [' not in shown
        assert "reference_images" not in erasure["options"]
        lora = client.get(f"{ER}/{erasure['id']}/lora")
        assert lora.status_code == 200 and images[0][:40].encode() not in lora.content


def test_a_jpeg_upload_is_accepted(server: LiveServer) -> None:
    from PIL import Image

    jpeg = _b64(_png(Image.new("RGB", (32, 32), (200, 30, 30)), fmt="JPEG"))
    with server.client() as client:
        response = client.post(ER, json={**BODY, "reference_images": [jpeg]})
        assert response.status_code == 202, response.text
        client.delete(f"{ER}/{response.json()['id']}")
