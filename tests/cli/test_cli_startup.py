"""`dicomlake worker` starts as `dicomlake serve` does: the blobs a dead process of this host wrote but never
committed are removed before any work begins, and the blobs of stored instances are kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from cli_helpers import run

from conftest import dicom_file, make_store, start_server

# A process that records two keys in its journal, writes the blob of the second, and is killed before any
# index commit: what a server or worker SIGKILLed in the middle of a STOW or an import leaves behind.
_DIE_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from dicomlake.config import load
from dicomlake.services import open_services

services = open_services(load(data_dir=Path(sys.argv[1])))
with services.blobs.journal.recording([sys.argv[2], sys.argv[3]]):
    services.blobs.put(sys.argv[3], b"never committed")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_worker_removes_orphan_blobs_and_keeps_stored_ones(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        store = make_store(server)
        data = dicom_file("CT_small.dcm").read_bytes()
        response = requests.post(
            f"{store.dicomweb}/studies", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
        )
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    blobs = server.data_dir / "blobs"
    [stored] = [p for p in blobs.rglob("*.dcm")]
    stored_key = stored.relative_to(blobs).as_posix()
    store_pk, study, series, _ = stored_key.split("/")
    orphan_key = f"{store_pk}/{study}/{series}/1.2.3.4.5.0123456789abcdef.dcm"

    dying = subprocess.run(
        [sys.executable, "-c", _DIE_MID_WRITE, str(server.data_dir), stored_key, orphan_key], env=server.env
    )
    assert dying.returncode == -signal.SIGKILL
    journal = server.data_dir / "journal"
    assert (blobs / orphan_key).read_bytes() == b"never committed"
    assert [p for p in journal.iterdir() if orphan_key in p.read_text()], "the dead process left its journal"

    worker = subprocess.Popen(
        [sys.executable, "-m", "dicomlake", "worker", "--data-dir", str(server.data_dir), "--log-level", "warning"],
        env=server.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (blobs / orphan_key).exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.poll() is None, "the worker keeps running after recovery"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert not (blobs / orphan_key).exists()
    assert "removed 1 blobs of instances that were never committed" in stderr
    assert stored.read_bytes() == data
    assert list(journal.iterdir()) == [], "the dead process's journal is done with, and so is the worker's"

    server.restart()
    try:
        sop_uid = stored.name.rsplit(".", 2)[0]
        response = requests.get(
            f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop_uid}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=30,
        )
        assert response.status_code == 200
        assert response.content == data
    finally:
        server.stop()


def test_worker_refuses_zero_operation_threads_in_one_line(tmp_path: Path) -> None:
    result = run(None, "worker", "--data-dir", str(tmp_path / "data"), "--operation-threads", "0")
    assert result.code == 2
    assert result.stderr == "dicomlake: error: operation threads must be at least 1, got 0\n"
