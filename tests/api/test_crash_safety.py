"""A server SIGKILLed in the middle of a large STOW loses nothing it acknowledged and keeps nothing
half-done: after a restart every instance is either whole and retrievable or absent, and the index and
the blob directory agree."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import Server, dicom_file, make_store, start_server, throwaway_postgres

INSTANCES = 400


def _instances(study: str, series: str) -> list[tuple[str, bytes]]:
    source = pydicom.dcmread(dicom_file("CT_small.dcm"))
    out = []
    for number in range(INSTANCES):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.StudyInstanceUID, source.SeriesInstanceUID = study, series
        source.InstanceNumber = number + 1
        buffer = io.BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        out.append((source.SOPInstanceUID, buffer.getvalue()))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def killable_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    with contextlib.ExitStack() as stack:
        database_url = (
            stack.enter_context(throwaway_postgres("dicomlake_crash")) if request.param == "postgresql" else ""
        )
        server = start_server(tmp_path / "data", database_url)
        yield server
        server.stop()


def test_sigkill_during_stow_leaves_every_instance_whole_or_absent(killable_server: Server) -> None:
    server = killable_server
    store = make_store(server)
    study, series = generate_uid(), generate_uid()
    items = _instances(study, series)
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for index, (_, data) in enumerate(items):
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            if index % 20 == 19:
                time.sleep(0.05)  # keep the upload going long enough to be cut in the middle
        yield f"--{boundary}--\r\n".encode()

    def upload() -> None:
        with contextlib.suppress(requests.RequestException):  # the server dies under this request
            requests.post(
                f"{store.dicomweb}/studies",
                data=body(),
                timeout=120,
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            )

    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 60
    metrics_url = f"{store.url}:getDICOMStoreMetrics"
    while time.monotonic() < deadline:
        count = int(requests.get(metrics_url, timeout=10).json()["instanceCount"])
        if count >= INSTANCES // 4:
            break
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    thread.join(timeout=60)
    assert 0 < count < INSTANCES, "the kill must land in the middle of the upload"

    server.restart()
    present = 0
    for sop_uid, data in items:
        response = requests.get(
            f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop_uid}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=30,
        )
        assert response.status_code in (200, 404), response.text
        if response.status_code == 200:
            assert response.content == data
            present += 1
    assert present >= count
    metrics = requests.get(metrics_url, timeout=10).json()
    assert int(metrics["instanceCount"]) == present
    blob_files = [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blob_files) == present, "every blob belongs to an indexed instance and vice versa"

    # The store keeps working after the crash: the rest of the study can be sent again.
    missing = [data for sop_uid, data in items[present:]]
    for data in missing[:5]:
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=data,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        )
        assert response.status_code in (200, 409)
