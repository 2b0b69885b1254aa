"""What every client command shares, without the session's server: flags checked before any request,
the endpoint, access tokens, and a server that is not running, each failing with one line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run

from conftest import Server, free_port, start_server


@pytest.mark.parametrize(
    "args, message",
    [
        (["datasets", "list", "--location", "l"], "no project given: pass --project=PROJECT or set DICOMLAKE_PROJECT"),
        (["datasets", "describe", "d", "--project", "p"], "no location given: pass --location=LOCATION"),
        (["dicom-stores", "describe", "s", "--project", "p", "--location", "l"], "no dataset given: pass --dataset"),
        (["operations", "describe", "projects/p/operations/1", "--dataset", "d"], "is not a valid operation name"),
        (["dicom-stores", "update", "projects/p/locations/l/datasets/d/dicomStores/s"], "nothing to update: pass"),
    ],
)
def test_missing_flags_fail_with_one_line_before_any_request(args: list[str], message: str) -> None:
    # No server at all: the flags are checked first.
    result = run(None, *args, DICOMLAKE_API_ENDPOINT=f"http://127.0.0.1:{free_port()}")

    assert result.code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("dicomlake: error: ") and message in line


def test_a_server_that_is_not_running_is_one_line() -> None:
    port = free_port()

    result = run(
        None, "datasets", "list", "--project", "p", "--location", "l", "--api-endpoint", f"http://127.0.0.1:{port}"
    )

    assert result.code == 2
    assert result.stderr == (
        f"dicomlake: error: cannot reach the dicomlake server at http://127.0.0.1:{port} (connection refused): "
        "start it with `dicomlake serve`, or name it with --api-endpoint or DICOMLAKE_API_ENDPOINT\n"
    )


def test_an_endpoint_that_is_not_a_url_is_refused() -> None:
    result = run(None, "datasets", "list", "--project", "p", "--location", "l", "--api-endpoint", "127.0.0.1:8080")

    assert result.code == 2
    assert result.stderr == (
        "dicomlake: error: invalid --api-endpoint '127.0.0.1:8080': expected a URL like http://127.0.0.1:8080\n"
    )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that accepts only the bearer token `s3cret`."""
    srv = start_server(Path(tmp_path_factory.mktemp("guarded")), extra_env={"DICOMLAKE_AUTH_TOKENS": "s3cret"})
    yield srv
    srv.stop()


def test_access_token_from_the_flag_or_the_environment(guarded: Server) -> None:
    flags = ["--project", "p", "--location", "l"]

    refused = run(guarded, "datasets", "list", *flags)
    by_flag = run(guarded, "datasets", "list", *flags, "--access-token", "s3cret")
    by_env = run(guarded, "datasets", "list", *flags, DICOMLAKE_ACCESS_TOKEN="s3cret")

    assert refused.code == 2
    assert refused.stderr == (
        "dicomlake: error: UNAUTHENTICATED: missing or invalid bearer token: send Authorization: Bearer <token> "
        "(pass --access-token or set DICOMLAKE_ACCESS_TOKEN)\n"
    )
    assert by_flag.code == by_env.code == 0
    assert by_flag.stderr == by_env.stderr == "Listed 0 items.\n"


def test_logs_read_takes_the_filter_once() -> None:
    result = run(None, "logs", "read", 'logName="a"', "--filter", 'logName="b"', "--project", "p")

    assert result.code == 2
    assert result.stderr == "dicomlake: error: give the filter once: as LOG_FILTER or with --filter\n"
