"""`POST {store}:import` from a bucket folder (gs://NAME = <data dir>/buckets/NAME): wildcard forms,
counters, stored instances, log entries, invalid requests, cancel, and resuming after a crash."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import (
    Server,
    Store,
    dicom_file,
    make_store,
    new_bucket,
    start_server,
    throwaway_postgres,
    wait_done,
    write,
)

LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"
IMPORT_RESPONSE = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"}


def with_new_uids(path: Path) -> tuple[bytes, str]:
    """The file's bytes with fresh Study/Series/SOP Instance UIDs, and the new SOPInstanceUID."""
    ds = pydicom.dcmread(path)
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), sop


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def bucket(store: Store) -> tuple[str, dict[str, str | None]]:
    """A bucket with DICOM files, copies under new UIDs, broken files and a duplicate, in nested folders.
    Maps each object name to the SOPInstanceUID it holds, or None when it must fail."""
    name, root = new_bucket(store.server)
    ct, mr = dicom_file("CT_small.dcm"), dicom_file("MR_small.dcm")
    objects: dict[str, str | None] = {}

    def put(object_name: str, data: bytes, sop: str | None) -> None:
        write(root / object_name, data)
        objects[object_name] = sop

    put("dir/Example1.dcm", ct.read_bytes(), sop_of(ct))
    put("dir/Example2.dcm", mr.read_bytes(), sop_of(mr))
    put("dir/Example.dcm", *with_new_uids(ct))
    put("dir/Example01.dcm", *with_new_uids(mr))
    put("dir/notes.txt", b"not a DICOM file\n", None)
    put("dir/broken.dcm", ct.read_bytes()[: ct.stat().st_size // 2], None)
    put("dir/empty.dcm", b"", None)
    put("dir/sub/deep/Example3.dcm", *with_new_uids(ct))
    # The same instance as Example1.dcm: skipped, and counted as a success.
    put("dir/sub/dup.dcm", ct.read_bytes(), sop_of(ct))
    put("other/Example9.dcm", *with_new_uids(ct))
    return name, objects


def start_import(store: Store, uri: str, **extra: object) -> dict:
    response = requests.post(f"{store.url}:import", json={"gcsSource": {"uri": uri}, **extra}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def stored_sops(store: Store) -> list[str]:
    response = requests.get(f"{store.dicomweb}/instances?limit=5000&includefield=00080018", timeout=30)
    if response.status_code == 204:
        return []
    return [item["00080018"]["Value"][0] for item in response.json()]


def log_entries(server: Server, operation: dict) -> list[dict]:
    response = requests.get(server.url + operation["metadata"]["logsUrl"], timeout=30)
    assert response.status_code == 200, response.text
    return response.json().get("entries", [])


def counter(operation: dict) -> dict[str, str]:
    return operation["metadata"].get("counter", {})


@pytest.mark.parametrize(
    ("pattern", "selected"),
    [
        ("dir/**", lambda n: n.startswith("dir/")),
        ("dir/**.dcm", lambda n: n.startswith("dir/") and n.endswith(".dcm")),
        ("dir/*.dcm", lambda n: n.startswith("dir/") and n.count("/") == 1 and n.endswith(".dcm")),
        ("dir/Example?.dcm", lambda n: n in ("dir/Example1.dcm", "dir/Example2.dcm")),
        ("dir/Example*.dcm", lambda n: n.startswith("dir/Example") and n.count("/") == 1),
        ("dir/sub/deep/Example3.dcm", lambda n: n == "dir/sub/deep/Example3.dcm"),
    ],
)
def test_import_stores_matching_objects_and_logs_each_failure(store: Store, bucket, pattern, selected) -> None:
    name, objects = bucket
    chosen = {n: sop for n, sop in objects.items() if selected(n)}
    failed = sorted(f"gs://{name}/{n}" for n, sop in chosen.items() if sop is None)
    succeeded = len(chosen) - len(failed)

    operation = start_import(store, f"gs://{name}/{pattern}")
    assert not operation.get("done")
    assert operation["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    done = wait_done(store.server, operation)

    assert done["response"] == IMPORT_RESPONSE and "error" not in done
    expected_counter = {k: str(v) for k, v in (("success", succeeded), ("failure", len(failed))) if v}
    assert counter(done) == expected_counter
    assert "endTime" in done["metadata"]
    assert sorted(stored_sops(store)) == sorted({sop for sop in chosen.values() if sop})

    entries = log_entries(store.server, done)
    assert sorted(e["jsonPayload"]["source"] for e in entries) == failed
    for entry in entries:
        assert entry["jsonPayload"]["@type"] == LOG_TYPE
        assert entry["jsonPayload"]["error"]["code"] == 3
        assert entry["jsonPayload"]["source"] in entry["jsonPayload"]["error"]["message"]
        assert entry["logName"] == f"projects/{store.project}/logs/healthcare.googleapis.com%2Fimport_dicom"
        assert entry["operation"] == {"id": done["name"], "producer": "healthcare.googleapis.com/ImportDicomData"}
        assert entry["resource"] == {
            "type": "healthcare_dicom_store",
            "labels": {
                "project_id": store.project,
                "location": store.location,
                "dataset_id": store.dataset,
                "dicom_store_id": store.store,
            },
        }
        assert entry["severity"] == "ERROR" and entry["timestamp"]


def test_import_skips_duplicate_instances(store: Store, bucket) -> None:
    name, objects = bucket
    first = wait_done(store.server, start_import(store, f"gs://{name}/dir/*.dcm"))
    again = wait_done(store.server, start_import(store, f"gs://{name}/dir/*.dcm"))
    assert counter(again) == counter(first) == {"success": "4", "failure": "2"}
    assert len(stored_sops(store)) == 4


def test_log_filter_by_log_name_and_operation(store: Store, bucket) -> None:
    name, _ = bucket
    done = wait_done(store.server, start_import(store, f"gs://{name}/dir/**"))
    log_name = f"projects/{store.project}/logs/healthcare.googleapis.com%2Fimport_dicom"
    query = f'logName="{log_name}" AND operation.id="{done["name"]}"'
    response = requests.get(store.server.api(f"projects/{store.project}/logs"), params={"filter": query}, timeout=30)
    assert len(response.json()["entries"]) == 3
    other = requests.get(
        store.server.api(f"projects/{store.project}/logs"),
        params={"filter": f'operation.id="{done["name"]}0"'},
        timeout=30,
    )
    assert other.json() == {}
    bad = requests.get(
        store.server.api(f"projects/{store.project}/logs"), params={"filter": "severity>=ERROR"}, timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "body",
    [
        {"gcsSource": {"uri": "gs://{bucket}/dir/**/x.dcm"}},
        {"gcsSource": {"uri": "gs://{bucket}/d*r/**"}},
        {"gcsSource": {"uri": "gs://{bucket}"}},
        {"gcsSource": {"uri": "http://{bucket}/x"}},
        {"gcsSource": {"uri": "gs://no-such-bucket-here/x/**"}},
        {"gcsSource": {}},
        {"gcsSource": {"uri": "gs://{bucket}/dir/**"}, "blobStorageSettings": {"blobStorageClass": "COLD"}},
    ],
)
def test_invalid_import_request_is_refused_and_creates_nothing(store: Store, bucket, body) -> None:
    name, _ = bucket
    raw = json.dumps(body).replace("{bucket}", name)
    response = requests.post(f"{store.url}:import", data=raw, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    operations = requests.get(store.server.api(f"{store.dataset_name}/operations"), timeout=30).json()
    assert all("ImportDicomData" not in op["metadata"]["apiMethodName"] for op in operations.get("operations", []))


def test_import_with_storage_class(store: Store, bucket) -> None:
    name, _ = bucket
    body = {"blobStorageSettings": {"blobStorageClass": "ARCHIVE"}}
    done = wait_done(store.server, start_import(store, f"gs://{name}/dir/Example?.dcm", **body))
    assert counter(done) == {"success": "2"}


def many_files(folder: Path, count: int) -> set[str]:
    """`count` distinct instances (CT_small under new UIDs) in nested folders; their SOPInstanceUIDs."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    sops = set()
    for n in range(count):
        sop = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        path = folder / f"part{n % 7}" / f"{n:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        sops.add(sop)
    return sops


def test_cancel_ends_operation_with_cancelled(store: Store) -> None:
    name, folder = new_bucket(store.server)
    many_files(folder, 600)
    operation = start_import(store, f"gs://{name}/**")
    response = requests.post(store.server.api(operation["name"] + ":cancel"), timeout=30)
    assert response.status_code == 200 and response.json() == {}
    done = wait_done(store.server, operation)
    assert done["error"]["code"] == 1 and "response" not in done
    assert done["metadata"]["cancelRequested"] is True
    # Shards in hand when the cancel came are finished and counted; nothing more is stored.
    assert int(counter(done).get("success", 0)) == len(stored_sops(store)) < 600


def test_cancel_of_finished_operation_changes_nothing(store: Store, bucket) -> None:
    name, _ = bucket
    done = wait_done(store.server, start_import(store, f"gs://{name}/dir/Example?.dcm"))
    assert requests.post(store.server.api(done["name"] + ":cancel"), timeout=30).json() == {}
    assert requests.get(store.server.api(done["name"]), timeout=30).json() == done


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL database for this test alone: every process on a database resolves gs:// in its own data
    dir, so the session's server must not pick up (and fail) the imports of the servers started here."""
    with throwaway_postgres("dicomlake_import") as url:
        yield url


def _backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    return request.getfixturevalue("own_postgres") if backend == "postgresql" else ""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_import_resumes_after_server_is_killed(request, tmp_path: Path, backend: str) -> None:
    server = start_server(
        tmp_path / "server", _backend_url(request, backend), {"DICOMLAKE_OPERATION_LEASE_SECONDS": "2"}
    )
    try:
        store = make_store(server)
        name, folder = new_bucket(server)
        sops = many_files(folder, 2000)
        for n in range(5):
            write(folder / "junk" / f"{n}.dcm", b"junk")
        operation = start_import(store, f"gs://{name}/**")
        while not counter(current := requests.get(server.api(operation["name"]), timeout=30).json()):
            time.sleep(0.02)
        server.stop(signal.SIGKILL)
        # Killed with shards done, in hand and still pending.
        assert not current.get("done") and "pending" in counter(current)
        server.restart()
        done = wait_done(server, operation)
        assert done["response"] == IMPORT_RESPONSE
        assert counter(done) == {"success": "2000", "failure": "5"}
        stored = stored_sops(store)
        assert len(stored) == len(set(stored)) == 2000 and set(stored) == sops
        entries = log_entries(server, done)
        assert sorted(e["jsonPayload"]["source"] for e in entries) == [f"gs://{name}/junk/{n}.dcm" for n in range(5)]
        # Nothing half-stored: one whole blob per instance, no staging files left, and the bytes as imported.
        blobs = [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 2000 and not [p for p in blobs if "#" in p.name]
        for path in sorted(folder.glob("part3/*.dcm"))[:20]:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            url = f"{store.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            response = requests.get(
                url + ds.SOPInstanceUID, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30
            )
            assert response.content == path.read_bytes()
    finally:
        server.stop()


def test_two_workers_share_one_import(request, tmp_path: Path) -> None:
    database_url = request.getfixturevalue("own_postgres")
    # The server only answers requests; the two `dicomlake worker` processes do the import.
    server = start_server(tmp_path / "server", database_url, {"DICOMLAKE_OPERATION_THREADS": "0"})
    workers = []
    try:
        store = make_store(server)
        name, folder = new_bucket(server)
        sops = many_files(folder, 1000)
        env = {**server.env, "DICOMLAKE_OPERATION_THREADS": "1"}
        command = [sys.executable, "-m", "dicomlake", "worker", "--data-dir", str(server.data_dir)]
        workers = [subprocess.Popen(command, env=env) for _ in range(2)]
        operation = start_import(store, f"gs://{name}/**")
        done = wait_done(server, operation)
        assert done.get("response") == IMPORT_RESPONSE and counter(done) == {"success": "1000"}, done
        stored = stored_sops(store)
        assert len(stored) == len(set(stored)) == 1000 and set(stored) == sops
        import psycopg

        operation_pk = int(done["name"].rsplit("/", 1)[1])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT state, claimed_by, success FROM operation_shards WHERE operation_pk = %s", (operation_pk,)
            ).fetchall()
        assert len(rows) == 5 and all(state == "done" for state, _, _ in rows)
        assert sum(success for _, _, success in rows) == 1000
        assert {claimed_by.split(":")[1] for _, claimed_by, _ in rows} == {str(w.pid) for w in workers}
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        server.stop()
