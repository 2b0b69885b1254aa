"""The S3 path end to end against an S3-compatible server (moto) on 127.0.0.1: a dicomlake server whose
blobs live in S3 imports `s3://` objects, serves them, and exports them back to `s3://`."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import obstore
import pydicom
import pytest
import requests
from moto.server import ThreadedMotoServer
from obstore.store import S3Store

from conftest import Server, Store, dicom_file, make_store, s3_env, start_server, wait_done

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for bucket in ("dicomlake-blobs", "hospital-archive"):
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=10)
    yield endpoint
    moto.stop()


@pytest.fixture(scope="module")
def s3_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = s3_env(s3_endpoint) | {"DICOMLAKE_BLOB_URL": "s3://dicomlake-blobs"}
    server = start_server(tmp_path_factory.mktemp("s3-server"), extra_env=env)
    yield server
    server.stop()


def s3_store(endpoint: str, bucket: str = "hospital-archive") -> S3Store:
    env = s3_env(endpoint)
    return S3Store(
        bucket,
        endpoint=endpoint,
        region=env["AWS_REGION"],
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True},
    )


def test_import_from_s3_serve_from_s3_blobs_and_export_to_s3(s3_endpoint: str, s3_server: Server) -> None:
    bucket = s3_store(s3_endpoint)
    for name in FILES:
        obstore.put(bucket, f"incoming/2024/{name}", dicom_file(name).read_bytes())
    obstore.put(bucket, "incoming/2024/readme.txt", b"not DICOM")
    store: Store = make_store(s3_server)

    started = requests.post(
        f"{store.url}:import", json={"gcsSource": {"uri": "s3://hospital-archive/incoming/**"}}, timeout=30
    )
    imported = wait_done(s3_server, started.json())

    assert imported["metadata"]["counter"] == {"success": "3", "failure": "1"}
    blobs = s3_store(s3_endpoint, "dicomlake-blobs")
    assert len([m for batch in obstore.list(blobs) for m in batch]) == len(FILES)
    ct = requests.get(f"{store.dicomweb}/instances", params={"SOPInstanceUID": sop("CT_small.dcm")}, timeout=30)
    assert ct.status_code == 200

    body = {"gcsDestination": {"uriPrefix": "s3://hospital-archive/exported"}}
    exported = wait_done(s3_server, requests.post(f"{store.url}:export", json=body, timeout=30).json())

    assert exported["metadata"]["counter"] == {"success": "3"}
    objects = {m["path"]: m for batch in obstore.list(bucket, "exported") for m in batch}
    assert len(objects) == len(FILES)
    for name in FILES:
        (path,) = [p for p in objects if p.endswith(f"/{sop(name)}.dcm")]
        assert bytes(obstore.get(bucket, path).bytes()) == dicom_file(name).read_bytes()


def sop(name: str) -> str:
    return str(pydicom.dcmread(dicom_file(name), stop_before_pixels=True).SOPInstanceUID)


def test_import_from_a_missing_s3_bucket_ends_with_not_found(s3_endpoint: str, s3_server: Server) -> None:
    store = make_store(s3_server)
    started = requests.post(
        f"{store.url}:import", json={"gcsSource": {"uri": "s3://no-such-bucket-at-all/x/**"}}, timeout=30
    )
    assert started.status_code == 200, started.text
    operation = wait_done(s3_server, started.json())
    assert operation["error"]["code"] == 5, operation
    assert "no-such-bucket-at-all" in operation["error"]["message"]
