"""Shared fixtures: a real `dicomlake serve` process on 127.0.0.1 for each index backend (SQLite always,
PostgreSQL when one is reachable), a fresh dataset and DICOM store per test, and the real test files."""

from __future__ import annotations

import glob
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.credentials
import googleapiclient.discovery
import pydicom.data
import pytest
import requests

POSTGRES_URL = os.environ.get("DICOMLAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> str | None:
    """None when PostgreSQL answers at POSTGRES_URL, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: skip, and say why
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}".splitlines()[0]


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards; skips the test with the reason when none answers."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that point dicomlake (and boto3) at an S3-compatible endpoint with moto's credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


@contextmanager
def moto_s3(*buckets: str) -> Iterator[tuple[dict[str, str], Any]]:
    """An S3-compatible object store on 127.0.0.1 (moto's server) holding `buckets`, stopped afterwards: the
    variables for dicomlake (`s3_env`) and a boto3 client of it."""
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        env = s3_env(f"http://{host}:{port}")
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env, client
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session."""
    with throwaway_postgres("dicomlake_test") as url:
        yield url


@dataclass
class Server:
    url: str
    data_dir: Path
    database_url: str
    process: subprocess.Popen
    env: dict[str, str]
    port: int

    def api(self, path: str = "") -> str:
        return f"{self.url}/v1/{path}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.process = _spawn(self.env, self.port, self.data_dir)
        _wait_ready(self)


def _spawn(env: dict[str, str], port: int, data_dir: Path) -> subprocess.Popen:
    with open(data_dir / "server.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomlake",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited: {(server.data_dir / 'server.log').read_text()[-2000:]}")
        try:
            requests.get(
                server.api("projects/p/locations/l/datasets"),
                timeout=1,
                headers={"Authorization": f"Bearer {server.env.get('DICOMLAKE_AUTH_TOKENS', '')}"},
            )
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy starting to answer
            time.sleep(0.1)
    raise RuntimeError("server did not start within 30 s")


def start_server(data_dir: Path, database_url: str = "", extra_env: dict[str, str] | None = None) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    if database_url:
        env["DICOMLAKE_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(f"http://127.0.0.1:{port}", data_dir, database_url, _spawn(env, port, data_dir), env, port)
    _wait_ready(server)
    return server


def warehouse_of(server: Server) -> Any:
    """The tables of a running server, opened in the test's process as another dicomlake process would."""
    from dicomlake.config import Settings
    from dicomlake.services import open_warehouse

    settings = Settings(
        data_dir=server.data_dir,
        database_url=server.database_url,
        warehouse_url=server.env.get("DICOMLAKE_WAREHOUSE_URL", ""),
    )
    return open_warehouse(settings)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def new_bucket(server: Server) -> tuple[str, Path]:
    """A new embedded bucket: gs://NAME is the folder <data dir>/buckets/NAME of the server."""
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    folder = server.data_dir / "buckets" / name
    folder.mkdir(parents=True)
    return name, folder


def wait_done(server: Server, operation: dict, timeout: float = 120) -> dict:
    """Poll a long-running operation until it is done; its final JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = requests.get(server.api(operation["name"]), timeout=30).json()
        if current.get("done"):
            return current
        time.sleep(0.05)
    raise AssertionError(f"operation not done within {timeout} s: {current}")


def wait_all_done(store: Store, timeout: float = 60) -> None:
    """Wait until every operation of the store's dataset (e.g. a DICOMweb DELETE of a study) is done."""
    url = store.server.api(f"{store.dataset_name}/operations")
    for operation in requests.get(url, timeout=30).json().get("operations", []):
        wait_done(store.server, operation, timeout)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running server; every test that uses it runs once per index backend."""
    database_url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else ""
    srv = start_server(tmp_path_factory.mktemp(f"server-{request.param}"), database_url)
    yield srv
    srv.stop()


@dataclass
class Store:
    """A fresh dataset and DICOM store on a running server."""

    server: Server
    project: str
    location: str
    dataset: str
    store: str

    @property
    def dataset_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/datasets/{self.dataset}"

    @property
    def name(self) -> str:
        return f"{self.dataset_name}/dicomStores/{self.store}"

    @property
    def url(self) -> str:
        return self.server.api(self.name)

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicomWeb"


def stow(store: Store, data: bytes, headers: dict[str, str] | None = None) -> None:
    """STOW-RS one instance as application/dicom; the test fails unless it is stored."""
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=data,
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json", **(headers or {})},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def eventually(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """`check()`'s result once it stops raising (an assertion, a table not there yet); its error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def bigquery_client(server: Server, prefix: str) -> Any:
    """google-cloud-bigquery on the server's BigQuery API, in a project of the test's own."""
    from google.cloud import bigquery

    return bigquery.Client(
        project=f"{prefix}-{uuid.uuid4().hex[:10]}",
        credentials=google.auth.credentials.AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )


def make_store(server: Server, headers: dict[str, str] | None = None) -> Store:
    suffix = uuid.uuid4().hex[:10]
    store = Store(server, "test-project", "us-central1", f"ds_{suffix}", f"store_{suffix}")
    base = server.api(f"projects/{store.project}/locations/{store.location}/datasets")
    requests.post(f"{base}?datasetId={store.dataset}", headers=headers, timeout=30).raise_for_status()
    requests.post(
        f"{base}/{store.dataset}/dicomStores?dicomStoreId={store.store}", json={}, headers=headers, timeout=30
    ).raise_for_status()
    return store


@pytest.fixture
def store(server: Server) -> Store:
    return make_store(server)


# ---- real DICOM files -----------------------------------------------------------------------------


def _pydicom_data_files() -> list[Path]:
    base = Path(pydicom.data.__file__).parent
    files = [Path(p) for p in glob.glob(str(base / "test_files" / "**" / "*"), recursive=True)]
    files += [Path(p) for p in glob.glob(str(base / "charset_files" / "*"))]
    spec = importlib.util.find_spec("data_store")
    if spec and spec.origin:
        files += [Path(p) for p in glob.glob(str(Path(spec.origin).parent / "data" / "*"))]
    return files


def all_dicom_files() -> list[Path]:
    """Every file shipped by pydicom and pydicom-data and every highdicom test file, DICOM or not."""
    files = _pydicom_data_files() + [Path(p) for p in glob.glob(str(SHARED_TESTDATA / "highdicom" / "*.dcm"))]
    return sorted({p for p in files if p.is_file()})


def dicom_file(name: str) -> Path:
    """A named pydicom test file (never triggers a download)."""
    for path in _pydicom_data_files():
        if path.name == name:
            return path
    highdicom = SHARED_TESTDATA / "highdicom" / name
    if highdicom.exists():
        return highdicom
    raise FileNotFoundError(name)


# ---- a server listening for DIMSE (the DIMSE tests' own helpers are in tests/dimse/dimse_helpers.py) -------


@dataclass
class DimseServer:
    server: Server
    port: int
    peers_file: Path

    def restart(self) -> None:
        self.server.restart()
        wait_listening(self.port)


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


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    """A server listening for DIMSE, without tokens (any calling AE may associate on loopback)."""
    srv = start_dimse_server(tmp_path_factory.mktemp("dimse"))
    yield srv
    srv.server.stop()


@pytest.fixture(scope="module")
def healthcare(server: Server) -> Iterator[Any]:
    # No static_discovery argument: without a discoveryServiceUrl the client already uses the
    # document shipped in googleapiclient/discovery_cache/documents/healthcare.v1.json (no network).
    client = googleapiclient.discovery.build(
        "healthcare",
        "v1",
        client_options={"api_endpoint": server.url},
        credentials=google.auth.credentials.AnonymousCredentials(),
        cache_discovery=False,
    )
    yield client
    client.close()
