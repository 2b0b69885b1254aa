"""CORS for browser viewers on another origin, and URLs built from what a trusted proxy forwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import Server, Store, dicom_file, make_store, start_server

VIEWER = "http://viewer.example.org:3000"
TOKEN = "cors-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MR = dicom_file("MR_small.dcm")
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"


def _stow(store: Store, headers: dict[str, str] | None = None) -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + MR.read_bytes() + b"\r\n--b--\r\n"
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b', **(headers or {})},
        timeout=30,
    )
    response.raise_for_status()


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("cors"),
        extra_env={"DICOMLAKE_CORS_ORIGINS": f"{VIEWER},https://other.example.org", "DICOMLAKE_AUTH_TOKENS": TOKEN},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cors_store(cors_server: Server) -> Store:
    store = make_store(cors_server, headers=AUTH)
    _stow(store, AUTH)
    return store


def _preflight(url: str, origin: str = VIEWER, headers: str = "authorization,accept") -> requests.Response:
    return requests.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def test_a_preflight_is_answered_on_every_route_without_a_token(cors_server: Server, cors_store: Store) -> None:
    instance = f"{cors_store.dicomweb}/studies/1.2/series/3.4/instances/5.6"
    for url in (
        f"{cors_store.dicomweb}/studies",
        f"{instance}/metadata",
        f"{instance}/frames/1",
        cors_server.api("projects/p/locations/l/datasets"),
        f"{cors_server.url}/bigquery/v2/projects/p/queries",
    ):
        response = _preflight(url, headers="authorization,accept,content-type")
        assert response.status_code == 200, url
        assert response.headers["Access-Control-Allow-Origin"] == VIEWER
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "accept", "content-type"} <= {h.strip() for h in allowed.split(",")}
        assert "GET" in response.headers["Access-Control-Allow-Methods"]
        assert "DELETE" in response.headers["Access-Control-Allow-Methods"]


def test_answers_to_a_listed_origin_carry_cors_headers_errors_included(cors_store: Store) -> None:
    origin = {"Origin": VIEWER}
    studies = requests.get(f"{cors_store.dicomweb}/studies", headers={**origin, **AUTH}, timeout=10)
    assert studies.status_code == 200
    assert studies.headers["Access-Control-Allow-Origin"] == VIEWER
    exposed = studies.headers["Access-Control-Expose-Headers"]
    for name in ("Content-Type", "Content-Location", "Warning", "WWW-Authenticate"):
        assert name in exposed
    assert "Origin" in studies.headers["Vary"]
    # A page without the token must be able to read the 401 to ask for one.
    refused = requests.get(f"{cors_store.dicomweb}/studies", headers=origin, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == VIEWER
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"


def test_an_unlisted_origin_is_refused_in_the_api_error_shape(cors_store: Store) -> None:
    response = _preflight(f"{cors_store.dicomweb}/studies", origin="http://evil.example.com")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert "http://evil.example.com" in error["message"]
    assert "Access-Control-Allow-Origin" not in response.headers
    plain = requests.get(f"{cors_store.dicomweb}/studies", headers={"Origin": "http://evil.example.com", **AUTH})
    assert plain.status_code == 200
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_without_the_setting_there_is_no_cors(store: Store) -> None:
    response = _preflight(f"{store.dicomweb}/studies")
    assert response.status_code == 405
    assert response.json()["error"]["status"] == "METHOD_NOT_ALLOWED"
    plain = requests.get(f"{store.dicomweb}/studies", headers={"Origin": VIEWER}, timeout=10)
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_a_star_allows_any_origin(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_env={"DICOMLAKE_CORS_ORIGINS": "*"})
    try:
        response = _preflight(server.api("projects/p/locations/l/datasets"), origin="http://anything.test:1")
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        server.stop()


def _retrieve_url(store: Store, headers: dict[str, str]) -> str:
    """The BulkDataURI of MR_small's pixel data, built from the request's scheme and host."""
    metadata = requests.get(f"{store.dicomweb}/studies/{MR_STUDY}/metadata", headers={**AUTH, **headers}, timeout=10)
    metadata.raise_for_status()
    return metadata.json()[0]["7FE00010"]["BulkDataURI"]


def test_urls_follow_x_forwarded_host_and_proto_from_a_trusted_proxy(cors_store: Store) -> None:
    path = cors_store.dicomweb.split("://", 1)[1].split("/", 1)[1]
    url = _retrieve_url(cors_store, {"X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Proto": "https"})
    assert url.startswith(f"https://pacs.example.org/{path}/studies/{MR_STUDY}/series/")
    url = _retrieve_url(cors_store, {"X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Port": "8443"})
    assert url.startswith(f"http://pacs.example.org:8443/{path}/studies/")
    url = _retrieve_url(cors_store, {"Forwarded": 'for=10.1.2.3;proto=https;host="dicom.example.org:9443"'})
    assert url.startswith(f"https://dicom.example.org:9443/{path}/studies/")
    # The first proxy of a chain saw the client's request.
    url = _retrieve_url(cors_store, {"X-Forwarded-Host": "outer.example.org, inner.local"})
    assert url.startswith("http://outer.example.org/")
    # A value that is not a host is ignored, never pasted into URLs.
    url = _retrieve_url(cors_store, {"X-Forwarded-Host": "evil.example.org/x?y", "X-Forwarded-Proto": "gopher"})
    assert url.startswith(cors_store.server.url + "/")
    # The proxy's URL leads back to the same data.
    direct = _retrieve_url(cors_store, {})
    assert requests.get(direct, headers=AUTH, timeout=10).status_code == 200


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_env={"DICOMLAKE_FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    try:
        store = make_store(server)
        _stow(store)
        url = _retrieve_url(store, {"X-Forwarded-Host": "pacs.example.org", "Forwarded": "host=pacs.example.org"})
        assert url.startswith(server.url + "/")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--cors-origins", "ftp://viewer", "DICOMLAKE_CORS_ORIGINS takes origins like"),
        ("--cors-origins", "http://viewer/path", "DICOMLAKE_CORS_ORIGINS takes origins like"),
        ("--forwarded-allow-ips", "proxy.local", "DICOMLAKE_FORWARDED_ALLOW_IPS takes addresses"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomlake", "serve", "--data-dir", str(tmp_path), flag, value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
