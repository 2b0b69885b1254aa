"""Start the servers under test as separate processes on loopback: dicomlake, and Orthanc with its
DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) on the same corpus and client code.

Both are durable unless a benchmark asks otherwise: dicomlake with DICOMLAKE_DURABILITY=full (its
default), Orthanc with SyncStorageArea true (its default since 1.7.4, set explicitly here). With `dimse`
both also listen for DIMSE: dicomlake's store answers to the called AE title DIMSE_AET (its label
`aetitle`), Orthanc to any called AE title, with Nagle's algorithm off (TCP_NODELAY=1, read by DCMTK)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DIMSE_AET = "BENCH"


@dataclass
class Target:
    name: str
    dicomweb: str  # base URL of the DICOMweb service
    pid: int
    dimse_port: int = 0  # 0: no DIMSE listener
    called_aet: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within 60 s")


def _wait_listening(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within 60 s")


@contextmanager
def dicomlake(
    workdir: Path,
    workers: int = 2,
    durability: str = "full",
    dimse: bool = False,
    database_url: str = "",
    warehouse_url: str = "",
) -> Iterator[Target]:
    """A dicomlake server on its own data dir, with store `bench`; its index in `database_url` and its tables at
    `warehouse_url` if given."""
    port = free_port()
    dimse_port = free_port() if dimse else 0
    data_dir = workdir / "dicomlake-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    with open(workdir / "dicomlake.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomlake",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                *(["--dimse-port", str(dimse_port)] if dimse else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "DICOMLAKE_DURABILITY": durability,
                **({"DICOMLAKE_DATABASE_URL": database_url} if database_url else {}),
                **({"DICOMLAKE_WAREHOUSE_URL": warehouse_url} if warehouse_url else {}),
            },
        )
    base = f"http://127.0.0.1:{port}/v1/projects/bench/locations/local/datasets"
    try:
        _wait(base, process, "dicomlake")
        requests.post(f"{base}?datasetId=bench", timeout=30).raise_for_status()
        store = {"labels": {"aetitle": DIMSE_AET.lower()}} if dimse else {}
        requests.post(f"{base}/bench/dicomStores?dicomStoreId=bench", json=store, timeout=30).raise_for_status()
        if dimse:
            _wait_listening(dimse_port, process, "dicomlake's DIMSE listener")
        name = "dicomlake" if durability == "full" else f"dicomlake-{durability}"
        yield Target(
            name, f"{base}/bench/dicomStores/bench/dicomWeb", process.pid, dimse_port, DIMSE_AET if dimse else ""
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def orthanc_available() -> bool:
    return Path(ORTHANC_BINARY).exists() and Path(ORTHANC_DICOMWEB_PLUGIN).exists()


@contextmanager
def orthanc(workdir: Path, dimse: bool = False) -> Iterator[Target]:
    port = free_port()
    dimse_port = free_port() if dimse else 0
    storage = workdir / "orthanc-data"
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        # Orthanc 1.10 cannot bind to loopback only; refusing remote clients keeps it private.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": dimse,
        # Any called AE title, and C-FIND from any calling one (Orthanc refuses unknown peers' queries).
        **(
            {"DicomPort": dimse_port, "DicomAet": "ORTHANC", "DicomCheckCalledAet": False, "DicomAlwaysAllowFind": True}
            if dimse
            else {}
        ),
        "StorageCompression": False,
        # fsync of every stored file: the default since Orthanc 1.7.4, stated so that a comparison with a
        # durable dicomlake is a fair one whatever the installed version.
        "SyncStorageArea": True,
        "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    with open(workdir / "orthanc.log", "wb") as log:
        # DCMTK, which Orthanc's DICOM server is built on, turns Nagle's algorithm off only when told so.
        env = {**os.environ, "TCP_NODELAY": "1"} if dimse else None
        process = subprocess.Popen([ORTHANC_BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(f"http://127.0.0.1:{port}/system", process, "Orthanc")
        if dimse:
            _wait_listening(dimse_port, process, "Orthanc's DICOM server")
        yield Target(
            "orthanc", f"http://127.0.0.1:{port}/dicom-web", process.pid, dimse_port, "ORTHANC" if dimse else ""
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


# What each target has done when it acknowledges a store, for the tables of docs/benchmarks.md. Orthanc's
# part is read from its system calls under strace (1.10.1): one fdatasync per stored file, none of the
# directories it creates, and none of its SQLite index (WAL mode, so synchronous=NORMAL or lower) per store.
DURABILITY = {
    "dicomlake": "full: files and new directories fsynced, SQLite WAL synchronous=FULL",
    "dicomlake-relaxed": "relaxed: no fsync, SQLite WAL synchronous=NORMAL",
    "orthanc": "SyncStorageArea true: files fdatasynced (not new directories), SQLite index WAL, not synced per store",
}


def each_target(results: dict, relaxed_too: bool = False, dimse: bool = False) -> Iterator[Target]:
    """dicomlake (and with `relaxed_too` dicomlake with DICOMLAKE_DURABILITY=relaxed), then Orthanc when
    installed, each started in turn in a scratch directory (with `dimse`, listening for DIMSE too); their
    versions and durability are recorded in `results`. All get the same corpus and client code from the
    caller's loop."""
    starts = [("dicomlake", lambda tmp: dicomlake(tmp, dimse=dimse))]
    if relaxed_too:
        starts.append(("dicomlake-relaxed", lambda tmp: dicomlake(tmp, durability="relaxed", dimse=dimse)))
    if orthanc_available():
        starts.append(("orthanc", lambda tmp: orthanc(tmp, dimse=dimse)))
    with tempfile.TemporaryDirectory() as tmp:
        for name, start in starts:
            with start(Path(tmp)) as target:
                results.setdefault("versions", {})[name] = version(name.split("-")[0])
                results.setdefault("durability", {})[name] = DURABILITY[name]
                yield target


def version(name: str) -> str:
    if name == "orthanc":
        out = subprocess.run([ORTHANC_BINARY, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "unknown"
    from dicomlake import __version__

    return __version__
