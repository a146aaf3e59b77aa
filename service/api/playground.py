"""The playground page at `/` and its static assets (plain HTML/JS/CSS under service/static/, no build step, nothing
fetched from elsewhere). Outside the OpenAPI contract: the page is a client of the API, not part of it.

Assets are served by name from a fixed list read at import (no paths, so nothing outside the folder can be asked
for), through ordinary routes, so an unsupported method gets the service's usual 405 with `Allow`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
ASSETS = {p.name: MEDIA_TYPES[p.suffix] for p in STATIC_DIR.iterdir() if p.suffix in MEDIA_TYPES}
# The page holds an API key in sessionStorage: no inline scripts, no other origins, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Assets change with the service version only; a short cache keeps a reload after an upgrade correct.
ASSET_HEADERS = {"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(status_code=404)
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers=ASSET_HEADERS)
