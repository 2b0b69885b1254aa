"""HTTP concerns in front of every route: errors in Google's envelope `{"error": {"code", "message",
"status"}}` (an unknown exception too), bearer tokens, the request as the client made it when a trusted
proxy forwards it (`Forwarded`, `X-Forwarded-*`), and CORS for browser viewers served from another
origin."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomlake.api import web

log = logging.getLogger("dicomlake")

# A host[:port] a proxy may name; anything else (paths, credentials, spaces) is ignored, so that a
# forwarded value can never reshape the URLs built from it.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


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


class ForwardedHeaders:
    """When the connection comes from a trusted proxy, take the scheme, host and client address the proxy
    saw from `Forwarded` (RFC 7239), else from `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port`
    and `X-Forwarded-For`. RetrieveURLs and BulkDataURIs are built from them. From anyone else the headers
    are ignored. Where a proxy lists several values (a chain of proxies), the first is the original
    request's."""

    def __init__(self, app: ASGIApp, trusted: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in trusted
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted if t != "*"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._trusts(scope.get("client")):
            _apply(scope)
        await self.app(scope, receive, send)

    def _trusts(self, client: tuple[str, int] | None) -> bool:
        if self.any:
            return True
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _apply(scope: Scope) -> None:
    headers = Headers(scope=scope)
    proto, host, port, client = _from_forwarded(headers.get("forwarded", ""))
    if not (proto or host or client):
        proto = _first(headers.get("x-forwarded-proto", "")).lower()
        host = _first(headers.get("x-forwarded-host", ""))
        port = _first(headers.get("x-forwarded-port", ""))
        client = _first(headers.get("x-forwarded-for", ""))
    if proto in ("http", "https"):
        scope["scheme"] = proto
    if host and _AUTHORITY.fullmatch(host):
        has_port = re.search(r":[0-9]+$", host) is not None and not host.endswith("]")
        if port.isdigit() and not has_port and int(port) != (443 if scope["scheme"] == "https" else 80):
            host = f"{host}:{port}"
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"host"] + [(b"host", host.encode())]
        # The address the connection reached says nothing about the name the client used.
        scope["server"] = None
    if client:
        client = client.strip('"')
        if client.startswith("["):
            client = client[1:].split("]", 1)[0]
        with contextlib.suppress(ValueError):
            scope["client"] = (str(ipaddress.ip_address(client)), 0)


def _first(value: str) -> str:
    return value.split(",", 1)[0].strip()


def _from_forwarded(value: str) -> tuple[str, str, str, str]:
    """proto, host, port (always empty: RFC 7239 puts it in host) and for of the first element."""
    fields: dict[str, str] = {}
    for pair in _first(value).split(";"):
        name, _, raw = pair.partition("=")
        fields[name.strip().lower()] = raw.strip().strip('"')
    return fields.get("proto", "").lower(), fields.get("host", ""), "", fields.get("for", "")


# Headers a browser script may read: the content type and length of every answer, where a created or
# moved resource is, STOW's warnings and the challenge of a 401.
EXPOSED_HEADERS = [
    "Content-Type",
    "Content-Length",
    "Content-Location",
    "Content-Disposition",
    "Location",
    "Warning",
    "ETag",
    "Link",
    "WWW-Authenticate",
]


class CrossOrigin(CORSMiddleware):
    """CORS for the listed origins (or `*`): every route answers a preflight, any request header may be
    sent (Authorization and the DICOMweb Accept values that make a browser ask first), the useful response
    headers are exposed. Tokens travel in a header, never in cookies, so credentials stay off. A refused
    preflight answers in the API's error shape."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=7200,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode()
        origin = request_headers.get("origin", "")
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}
        return error_response(403, f"{reason} (origin {origin!r}; see --cors-origins)", "PERMISSION_DENIED", headers)
