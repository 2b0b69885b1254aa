"""Helpers of the DIMSE tests: a server with its DIMSE listener on, stores called by AE title, and DCMTK's tools to talk to it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import Server, Store, free_port, make_store, start_server

DCMTK = shutil.which("storescu") is not None
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="DCMTK is not installed (scripts/install-debian-tools.sh installs it)")


@dataclass
class DimseServer:
    server: Server
    port: int
    peers_file: Path

    def restart(self) -> None:
        self.server.restart()
        wait_listening(self.port)


@dataclass
class AeStore:
    """A store and the AE title it answers to."""

    store: Store
    ae_title: str


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on DIMSE port {port} after {timeout} s")


def start_dimse_server(
    data_dir: Path, peers: list[tuple[str, str, int]] = (), extra_env: dict[str, str] | None = None, database_url=""
) -> DimseServer:
    """A server with `DICOMLAKE_DIMSE_PORT` set and a peers file listing `peers` (AE title, host, port)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    peers_file = data_dir / "peers.txt"
    peers_file.write_text("".join(f"{ae} {host} {port}\n" for ae, host, port in peers))
    port = free_port()
    env = {"DICOMLAKE_DIMSE_PORT": str(port), "DICOMLAKE_DIMSE_PEERS": str(peers_file), **(extra_env or {})}
    server = start_server(data_dir, database_url, env)
    wait_listening(port)
    return DimseServer(server, port, peers_file)


def ae_store(dimse: DimseServer, ae_title: str | None = None, headers: dict[str, str] | None = None) -> AeStore:
    """A new store labelled `aetitle` (a random title unless given; label values are lower case)."""
    title = ae_title or f"t{uuid.uuid4().hex[:12]}"
    store = make_store(dimse.server, headers)
    response = requests.patch(
        f"{store.url}?updateMask=labels", json={"labels": {"aetitle": title.lower()}}, headers=headers, timeout=30
    )
    response.raise_for_status()
    return AeStore(store, title.upper())


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    """A server listening for DIMSE, without tokens (any calling AE may associate on loopback)."""
    srv = start_dimse_server(tmp_path_factory.mktemp("dimse"))
    yield srv
    srv.server.stop()


def dcmtk(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a DCMTK tool; its exit code and output for the test to judge."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
