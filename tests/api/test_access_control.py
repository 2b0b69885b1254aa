"""Bearer-token access control and the refusal to expose an unauthenticated store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from conftest import make_store, start_server


def test_with_tokens_every_request_needs_a_valid_bearer_token(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_env={"DICOMLAKE_AUTH_TOKENS": "s3cret,other"})
    try:
        datasets = server.api("projects/p/locations/l/datasets")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = requests.get(datasets, headers=headers, timeout=10)
            assert response.status_code == 401
            assert response.json()["error"]["status"] == "UNAUTHENTICATED"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        good = {"Authorization": "Bearer other"}
        store = make_store(server, headers=good)
        assert requests.get(f"{store.dicomweb}/studies", timeout=10).status_code == 401
        assert requests.get(f"{store.dicomweb}/studies", headers=good, timeout=10).status_code == 204
    finally:
        server.stop()


def test_tokens_file_is_read(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token a line\nfrom-file\n")
    server = start_server(tmp_path / "data", extra_env={"DICOMLAKE_AUTH_TOKENS_FILE": str(tokens)})
    try:
        url = server.api("projects/p/locations/l/datasets")
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer from-file"}, timeout=10).status_code == 200
    finally:
        server.stop()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomlake", "serve", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    result = _serve("--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without access tokens" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    result = _serve("--data-dir", str(tmp_path), "--auth-tokens-file", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dicomlake: error: cannot read auth tokens file")
    assert len(result.stderr.strip().splitlines()) == 1
