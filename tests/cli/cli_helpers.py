"""Running `dicomlake` as a real subprocess against a test server, with pipes or on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import Server, Store, dicom_file, new_bucket, write

# The CLI is an HTTP client and does the same whichever index the server runs on (tests/api and
# tests/operations pin both), so its tests use the SQLite server only, in half the time.
sqlite_server = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def cli_env(server: Server | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    if server is not None:
        env["DICOMLAKE_API_ENDPOINT"] = server.url
    return env | extra


def run(server: Server | None, *args: str, **env: str) -> Result:
    """`dicomlake ARGS` with stdin, stdout and stderr not terminals (as in a script)."""
    done = subprocess.run(
        [sys.executable, "-m", "dicomlake", *args],
        env=cli_env(server, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def run_on_terminal(server: Server, *args: str, typed: str = "") -> Result:
    """`dicomlake ARGS` with stdin and stderr on a pseudo-terminal (what `typed` is typed into) and stdout a
    pipe; `stderr` holds everything the terminal showed, typed text echoed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomlake", *args],
        env=cli_env(server),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    if typed:
        os.write(controller, typed.encode())
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout = process.stdout.read() if process.stdout else b""
    code = process.wait(timeout=120)
    return Result(code, stdout.decode(), shown.decode().replace("\r\n", "\n"))


def new_store(server: Server, **config: object) -> Store:
    """A dataset and DICOM store (with `config` as its body) in a project of its own, so that lists and
    log queries see only what the test made."""
    suffix = uuid.uuid4().hex[:10]
    store = Store(server, f"project-{suffix}", "us-central1", f"ds_{suffix}", f"store_{suffix}")
    base = server.api(f"projects/{store.project}/locations/{store.location}/datasets")
    requests.post(f"{base}?datasetId={store.dataset}", timeout=30).raise_for_status()
    requests.post(
        f"{base}/{store.dataset}/dicomStores?dicomStoreId={store.store}", json=config, timeout=30
    ).raise_for_status()
    return store


def store_flags(store: Store) -> list[str]:
    return ["--dataset", store.dataset, "--location", store.location, "--project", store.project]


def bucket_with_files(server: Server, broken: int = 0) -> tuple[str, Path]:
    """A new bucket holding CT_small.dcm and MR_small.dcm under dir/, and `broken` files that are not DICOM."""
    name, root = new_bucket(server)
    for source in ("CT_small.dcm", "MR_small.dcm"):
        write(root / "dir" / source, dicom_file(source).read_bytes())
    for n in range(broken):
        write(root / "dir" / f"broken{n}.dcm", b"not a DICOM file")
    return name, root


def dataset_operations(store: Store) -> list[dict]:
    return requests.get(store.server.api(f"{store.dataset_name}/operations"), timeout=30).json()["operations"]


def many_files(server: Server, count: int) -> str:
    """A bucket of `count` distinct instances (CT_small under new UIDs); its name."""
    name, folder = new_bucket(server)
    data = dicom_file("CT_small.dcm").read_bytes()
    # The file's five UIDs (study, series, SOP instance twice, frame of reference) all end in .12322;
    # a suffix of the same length keeps every element's length and makes each copy a new instance.
    assert data.count(b".12322") == 5
    for n in range(count):
        write(folder / f"{n:05d}.dcm", data.replace(b".12322", f".{10000 + n}".encode()))
    return name
