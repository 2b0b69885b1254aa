"""Helpers of the DIMSE tests: stores called by AE title and DCMTK's tools to talk to them (the server with its
listener on, `DimseServer` and the `dimse` fixture, are in tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass

import pytest
import requests

from conftest import DimseServer, Store, make_store, start_dimse_server, wait_listening  # noqa: F401 - re-exported

DCMTK = shutil.which("storescu") is not None
needs_dcmtk = pytest.mark.skipif(
    not DCMTK, reason="DCMTK is not installed (scripts/install-debian-tools.sh installs it)"
)


@dataclass
class AeStore:
    """A store and the AE title it answers to."""

    store: Store
    ae_title: str


def ae_store(dimse: DimseServer, ae_title: str | None = None, headers: dict[str, str] | None = None) -> AeStore:
    """A new store labelled `aetitle` (a random title unless given; label values are lower case)."""
    title = ae_title or f"t{uuid.uuid4().hex[:12]}"
    store = make_store(dimse.server, headers)
    response = requests.patch(
        f"{store.url}?updateMask=labels", json={"labels": {"aetitle": title.lower()}}, headers=headers, timeout=30
    )
    response.raise_for_status()
    return AeStore(store, title.upper())


def dcmtk(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a DCMTK tool; its exit code and output for the test to judge."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
