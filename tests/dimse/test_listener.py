"""The listener as an operator meets it: who may associate, what `serve` refuses to start with, instances that
stream into tables like any other, and a listener killed mid-association that loses nothing it acknowledged."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from dimse_helpers import DimseServer, ae_store, dcmtk, needs_dcmtk, start_dimse_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from conftest import dicom_file, free_port

MR = dicom_file("MR_small.dcm")
TOKEN = "dimse-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _mr(study: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(MR)
    ds.StudyInstanceUID = study or ds.StudyInstanceUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _associate(port: int, called: str, calling: str = "PYNETDICOM"):
    ae = AE(calling)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


# ---- who may associate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """A server with access tokens: only the listed peers may call."""
    srv = start_dimse_server(
        tmp_path_factory.mktemp("guarded"),
        peers=[("MODALITY", "127.0.0.1", 104), ("FARAWAY", "192.0.2.1", 104)],
        extra_env={"DICOMLAKE_AUTH_TOKENS": TOKEN},
    )
    yield srv
    srv.server.stop()


def test_with_tokens_a_listed_peer_may_store(guarded: DimseServer) -> None:
    target = ae_store(guarded, headers=AUTH)
    assoc = _associate(guarded.port, target.ae_title, "MODALITY")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(_mr()).Status == 0x0000
    finally:
        assoc.release()


@pytest.mark.parametrize("calling", ["STRANGER", "FARAWAY"])
def test_with_tokens_an_unlisted_caller_or_one_from_another_address_is_rejected(
    guarded: DimseServer, calling: str
) -> None:
    target = ae_store(guarded, headers=AUTH)
    assoc = _associate(guarded.port, target.ae_title, calling)
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 3)
    log = (guarded.server.data_dir / "server.log").read_text()
    assert f"calling AE '{calling}'" in log


# ---- serve's own checks ------------------------------------------------------------------------------


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    command = [sys.executable, "-m", "dicomlake", "serve", "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("MODALITY 127.0.0.1\n", "expected 'AE_TITLE host port'"),
        ("MODALITY 127.0.0.1 99999\n", "port must be between 1 and 65535"),
        ("THIS_TITLE_IS_TOO_LONG 127.0.0.1 104\n", "AE title must be 1 to 16"),
        ("A 127.0.0.1 104\na 127.0.0.1 105\n", "listed twice"),
    ],
)
def test_a_bad_peers_file_stops_serve_with_one_line(tmp_path: Path, lines: str, message: str) -> None:
    peers = tmp_path / "peers.txt"
    peers.write_text(lines)
    done = _serve(tmp_path, "--port", str(free_port()), "--dimse-port", str(free_port()), "--dimse-peers", str(peers))
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_dimse_port_in_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, "--port", str(free_port()), "--dimse-port", str(port))
    assert done.returncode == 2
    assert f"cannot listen for DIMSE on 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_dimse_port_must_differ_from_the_http_port(tmp_path: Path) -> None:
    port = str(free_port())
    done = _serve(tmp_path, "--port", port, "--dimse-port", port)
    assert done.returncode == 2
    assert "must differ" in done.stderr


# ---- like any other instance ------------------------------------------------------------------------


@needs_dcmtk
def test_instances_stored_by_c_store_stream_into_the_stores_tables(tmp_path: Path) -> None:
    srv = start_dimse_server(tmp_path / "srv")
    try:
        project = f"dm-{uuid.uuid4().hex[:8]}"
        bq = bigquery.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.server.url}
        )
        bq.create_dataset("stream")
        target = ae_store(srv)
        config = {"streamConfigs": [{"bigqueryDestination": {"tableUri": f"bq://{project}.stream.instances"}}]}
        response = requests.patch(f"{target.store.url}?updateMask=streamConfigs", json=config, timeout=30)
        assert response.status_code == 200, response.text
        done = dcmtk("storescu", "-aec", target.ae_title, "127.0.0.1", str(srv.port), str(MR))
        assert done.returncode == 0, done.stderr
        sop = pydicom.dcmread(MR, stop_before_pixels=True).SOPInstanceUID
        deadline = time.monotonic() + 20
        rows: list = []
        while time.monotonic() < deadline and not rows:
            sql = f"SELECT SOPInstanceUID, Type, PatientName FROM `{project}.stream.instances`"
            try:
                rows = [tuple(r.values()) for r in bq.query_and_wait(sql)]
            except Exception:
                rows = []
            time.sleep(0.1)
        assert [(r[0], r[1]) for r in rows] == [(sop, "CREATE")]
        bq.close()
    finally:
        srv.server.stop()


def test_http_keeps_answering_while_associations_run(dimse_with_store) -> None:
    srv, target = dimse_with_store
    stop = threading.Event()
    stored: list[int] = []
    errors: list[BaseException] = []

    def send() -> None:
        assoc = _associate(srv.port, target.ae_title)
        try:
            while not stop.is_set():
                stored.append(assoc.send_c_store(_mr()).Status)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            assoc.release()

    thread = threading.Thread(target=send)
    thread.start()
    slowest = 0.0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline or len(stored) < 50:
            started = time.monotonic()
            # 204 until the first instance commits, 200 after.
            assert requests.get(f"{target.store.dicomweb}/studies", timeout=10).status_code in (200, 204)
            slowest = max(slowest, time.monotonic() - started)
            assert time.monotonic() < deadline + 30, f"only {len(stored)} instances stored"
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert set(stored) == {0x0000}
    assert slowest < 1.0


@pytest.fixture
def dimse_with_store(tmp_path: Path):
    srv = start_dimse_server(tmp_path / "srv")
    yield srv, ae_store(srv)
    srv.server.stop()


# ---- a listener killed mid-association ----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def test_sigkill_mid_association_loses_nothing_acknowledged_and_leaves_no_half_instance(
    dimse_with_store,
) -> None:
    srv, target = dimse_with_store
    study = generate_uid()
    acknowledged: list[pydicom.Dataset] = []
    sent: list[pydicom.Dataset] = []
    assoc = _associate(srv.port, target.ae_title)
    assert assoc.is_established
    killed = False
    try:
        for _ in range(400):
            ds = _mr(study)
            sent.append(ds)
            status = assoc.send_c_store(ds)
            if status and status.Status == 0x0000:
                acknowledged.append(ds)
            else:
                break
            if len(acknowledged) == 150 and not killed:
                # Every process of the server at once, as a power cut would: the HTTP side, and the listener
                # processes while one of them is inside this association.
                for child in _children(srv.server.process.pid):
                    os.kill(child, signal.SIGKILL)
                os.kill(srv.server.process.pid, signal.SIGKILL)
                killed = True
    finally:
        if assoc.is_established:
            assoc.abort()
    assert killed and len(acknowledged) >= 150
    srv.server.process.wait()
    srv.restart()
    for ds in acknowledged:
        url = f"{target.store.dicomweb}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        response = requests.get(url, headers={"Accept": 'application/dicom; transfer-syntax="*"'}, timeout=30)
        assert response.status_code == 200, ds.SOPInstanceUID
        assert pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID == ds.SOPInstanceUID
    listed = requests.get(f"{target.store.dicomweb}/studies/{study}/instances?limit=1000", timeout=30).json()
    stored = {item["00080018"]["Value"][0] for item in listed}
    assert {ds.SOPInstanceUID for ds in acknowledged} <= stored
    assert stored <= {ds.SOPInstanceUID for ds in sent}
    # No blob without its row: every file under the store's blob folder is an instance the index lists.
    blobs = list((srv.server.data_dir / "blobs").rglob("*.dcm"))
    assert len(blobs) == len(stored)


def test_associations_leave_no_descriptors_behind(dimse_with_store) -> None:
    srv, target = dimse_with_store

    def open_descriptors() -> int:
        return sum(len(list(Path(f"/proc/{child}/fd").iterdir())) for child in _children(srv.server.process.pid))

    def echo(called: str) -> None:
        assoc = _associate(srv.port, called)
        if assoc.is_established:
            assoc.send_c_echo()
            assoc.release()

    echo(target.ae_title)
    before = open_descriptors()
    for _ in range(60):
        echo(target.ae_title)
        echo("NO_SUCH_STORE")
    time.sleep(0.5)
    assert open_descriptors() <= before + 4
