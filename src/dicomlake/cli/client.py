"""The HTTP client of the gcloud-style commands: the v1 API of a running server, with Google's error envelope
and an unreachable server each turned into one readable line (exit code 2)."""

from __future__ import annotations

import functools
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from dicomlake.cli.common import fail

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


class ApiError(Exception):
    """A request the server refused, or that never reached it; the message is one readable line."""


@dataclass(frozen=True)
class Client:
    endpoint: str
    token: str | None = None
    timeout: float = 60

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("GET", path, params)

    def post(
        self, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.request("POST", path, params, {} if body is None else body)

    def patch(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("PATCH", path, params, body)

    def delete(self, path: str) -> dict[str, Any]:
        return self.request("DELETE", path)

    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """`method` on `{endpoint}/v1/{path}`; the JSON answer, or fail() with the reason."""
        try:
            return self.call(method, path, params, body)
        except ApiError as exc:
            fail(str(exc))

    def call(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """As request(), raising ApiError instead of exiting."""
        url = f"{self.endpoint}/v1/{urllib.parse.quote(path, safe='/:')}"
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data, headers, method=method), timeout=self.timeout
            ) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(error_line(exc.code, exc.read())) from None
        except urllib.error.URLError as exc:
            raise ApiError(self._unreachable(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(self._unreachable(exc)) from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ApiError(f"the server at {self.endpoint} did not answer JSON to {method} {url}") from None

    def _unreachable(self, reason: object) -> str:
        text = reason.strerror.lower() if isinstance(reason, OSError) and reason.strerror else str(reason)
        return (
            f"cannot reach the dicomlake server at {self.endpoint} ({text or type(reason).__name__}): "
            "start it with `dicomlake serve`, or name it with --api-endpoint or DICOMLAKE_API_ENDPOINT"
        )


def error_line(http_status: int, body: bytes) -> str:
    """`STATUS: message` from Google's error envelope, or what can be said without one."""
    try:
        error = json.loads(body)["error"]
        line = f"{error.get('status', http_status)}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        line = f"HTTP {http_status}" + (f": {text[0]}" if text else "")
    if http_status == 401:
        line += " (pass --access-token or set DICOMLAKE_ACCESS_TOKEN)"
    return line


def pass_client(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --api-endpoint and --access-token to a command, which receives them as `client`."""

    @click.option(
        "--api-endpoint",
        envvar="DICOMLAKE_API_ENDPOINT",
        default=DEFAULT_ENDPOINT,
        show_default=True,
        help="The dicomlake server (env DICOMLAKE_API_ENDPOINT).",
    )
    @click.option(
        "--access-token",
        envvar="DICOMLAKE_ACCESS_TOKEN",
        help="Bearer token for the server (env DICOMLAKE_ACCESS_TOKEN).",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, api_endpoint: str, access_token: str | None, **kwargs: Any) -> Any:
        endpoint = api_endpoint.rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            fail(f"invalid --api-endpoint {api_endpoint!r}: expected a URL like {DEFAULT_ENDPOINT}")
        return command(*args, client=Client(endpoint, access_token or None), **kwargs)

    return wrapper
