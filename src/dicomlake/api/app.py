"""The ASGI application: routes of the resource API and DICOMweb, bearer-token access control, and
every error in Google's envelope `{"error": {"code", "message", "status"}}`."""

from __future__ import annotations

import gc
import hmac
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomlake.api import bigquery, dicomweb, resources, web
from dicomlake.api.middleware import CrossOrigin, ForwardedHeaders
from dicomlake.config import Settings
from dicomlake.errors import DicomlakeError
from dicomlake.services import Services, open_services
from dicomlake.startup import working

log = logging.getLogger("dicomlake")

_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "INVALID_ARGUMENT",
    409: "ALREADY_EXISTS",
    413: "OUT_OF_RANGE",
    415: "INVALID_ARGUMENT",
}


def error_response(
    http: int, message: str, status: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    body = {"error": {"code": http, "message": message, "status": status or _HTTP_STATUS.get(http, "UNKNOWN")}}
    return JSONResponse(body, status_code=http, headers=headers)


async def _dicomlake_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomlakeError)
    return error_response(exc.http, exc.message, exc.status)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else "no such resource or method on this server"
    return error_response(exc.status_code, str(message), headers=exc.headers)


class InternalErrors:
    """An exception no handler knows becomes a 500 in the error envelope, its traceback goes to the log, and
    the exception stops here: re-raised (as Starlette's own last handler does), the ASGI server would drop the
    keep-alive connection without `Connection: close` and the client's next request would meet a reset. Only
    a response already under way when it fails has to be cut short."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            response = error_response(500, f"internal error: {type(exc).__name__}", "INTERNAL")
            await response(scope, receive, send)


class BearerAuth:
    """Every request must carry `Authorization: Bearer <token>` with one of the configured tokens, but for the
    web UI's own pages, which hold no data."""

    def __init__(self, app: ASGIApp, tokens: frozenset[str]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or web.is_public(scope["method"], scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "missing or invalid bearer token: send Authorization: Bearer <token>",
            "UNAUTHENTICATED",
            headers={"WWW-Authenticate": 'Bearer realm="dicomlake"'},
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                token = token.strip()
                return scheme.lower() == b"bearer" and any(hmac.compare_digest(token, t) for t in self.tokens)
        return False


def create_app(settings: Settings, services: Services | None = None) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        nonlocal services
        if services is None:
            services = open_services(settings)
        app.state.services = services
        with working(services):
            # Everything loaded so far (pydicom's dictionaries above all) lives as long as the process: moved
            # out of the collector's sight, a full collection no longer walks it (QIDO p99 27 ms -> 3 ms
            # in-process).
            gc.collect()
            gc.freeze()
            yield

    app = Starlette(
        routes=web.routes() + resources.routes() + dicomweb.routes() + bigquery.routes(),
        exception_handlers={DicomlakeError: _dicomlake_error, HTTPException: _http_error},
        middleware=[Middleware(InternalErrors)],
        lifespan=lifespan,
    )
    tokens = settings.tokens
    # Outermost CORS, so that a preflight needs no token and a 401 still reaches the page that asked.
    wrapped: ASGIApp = BearerAuth(app, tokens) if tokens else app
    wrapped = ForwardedHeaders(wrapped, settings.forwarded_allow_ips)
    return CrossOrigin(wrapped, settings.cors_origins) if settings.cors_origins else wrapped


def app_from_environment() -> ASGIApp:
    """The application for a server process started by `dicomlake serve` (settings from DICOMLAKE_*)."""
    from dicomlake.config import load

    return create_app(load())
