"""The web UI: plain HTML, CSS and JavaScript shipped in the package (`dicomlake/web/`), served at `/` with
its assets under `/ui/`. The pages hold no data; they call the same APIs as every other client, with the
token the user gives them, so they are the one thing served without a bearer token."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Paths a browser may load without a token (GET and HEAD only).
PUBLIC_PREFIXES = ("/ui/",)
PUBLIC_PATHS = frozenset({"/", "/index.html", "/ui", "/favicon.ico"})


def _index(_request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _to_index(_request: Request) -> Response:
    return RedirectResponse("/", status_code=308)


def routes() -> list[BaseRoute]:
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Route("/index.html", _to_index, methods=["GET", "HEAD"]),
        Route("/ui", _to_index, methods=["GET", "HEAD"]),
        Mount("/ui", app=StaticFiles(directory=WEB_DIR, check_dir=False), name="ui"),
    ]


def is_public(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))
