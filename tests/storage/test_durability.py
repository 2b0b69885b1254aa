"""Acknowledged means durable, read from the system calls of a real server: under `strace`, a STOW of
several instances syncs every blob file and the directories that gained an entry (side by side, in any
order), then commits the index with one sync of SQLite's write-ahead log, and only then sends its
answer. Relaxed durability syncs nothing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import Server, dicom_file, free_port, make_store
from dicomlake.storage.db import Database

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None,
    reason="strace is not installed (scripts/install-debian-tools.sh installs it: apt-get install strace)",
)

INSTANCES = 5
TRACED = "fsync,fdatasync,sendto,sendmsg,write,writev"


@dataclass
class Call:
    """One traced system call: its name, its first argument as strace shows it (with -yy: the file
    descriptor's path or socket), the rest of the line, and where its entry and exit are in the trace."""

    name: str
    target: str
    rest: str
    entered: int
    returned: int


# "123 fsync(7</d/blobs/1/a/b/c.dcm>) = 0", "123 fsync(7</d/index.sqlite-wal> <unfinished ...>",
# "123 <... fsync resumed>) = 0"
_CALL = re.compile(r"^(\d+) +(\w+)\((\d+<[^>]*>+)(.*)$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. (\w+) resumed>")


def parse_trace(lines: list[str]) -> list[Call]:
    calls: list[Call] = []
    open_calls: dict[tuple[str, str], Call] = {}
    for index, line in enumerate(lines):
        resumed = _RESUMED.match(line)
        if resumed:
            call = open_calls.pop((resumed.group(1), resumed.group(2)), None)
            if call is not None:
                call.returned = index
                call.rest += line
            continue
        match = _CALL.match(line)
        if not match:
            continue
        pid, name, target, rest = match.groups()
        call = Call(name, target, rest, index, index)
        if rest.endswith("<unfinished ...>"):
            open_calls[(pid, name)] = call
        calls.append(call)
    return calls


def start_traced_server(data_dir: Path, trace: Path, durability: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    env["DICOMLAKE_DURABILITY"] = durability
    port = free_port()
    data_dir.mkdir(parents=True)
    command = [
        *("strace", "-f", "-qq", "-yy", "-s", "32", "--seccomp-bpf", "-e", f"trace={TRACED}", "-o", str(trace)),
        *(sys.executable, "-m", "dicomlake", "serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--data-dir", str(data_dir), "--log-level", "warning"),
    ]
    with open(data_dir / "server.log", "ab") as log:
        # A group of its own: SIGTERM to strace alone detaches it and leaves the server running.
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", data_dir, "", process, env, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"traced server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            requests.get(server.api("projects/p/locations/l/datasets"), timeout=1)
            return server
        except requests.ConnectionError:
            time.sleep(0.2)
    stop_traced(server)
    pytest.fail("traced server did not start within 60 s")


def stop_traced(server: Server) -> None:
    """The server and strace, both."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    server.stop()


def traced_stow(tmp_path: Path, durability: str) -> tuple[Server, list[Call], list[Path]]:
    """A STOW of INSTANCES new instances (one new series each) to a traced server; the calls made from the
    start of the STOW to its answer, and the blob files it wrote."""
    trace = tmp_path / "trace.txt"
    server = start_traced_server(tmp_path / "data", trace, durability)
    try:
        store = make_store(server)
        parts = []
        for _ in range(INSTANCES):
            ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
            ds.SeriesInstanceUID = pydicom.uid.generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            out = pydicom.filebase.DicomBytesIO()
            ds.save_as(out, enforce_file_format=True)
            parts.append(out.getvalue())
        boundary = "durability-test"
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
        )
        time.sleep(0.5)  # let the store's creation reach the trace before the mark
        mark = len(trace.read_text().splitlines())
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=body + f"--{boundary}--\r\n".encode(),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            timeout=120,
        )
        assert response.status_code == 200, response.text
    finally:
        stop_traced(server)
    calls = parse_trace(trace.read_text().splitlines()[mark:])
    answers = [c for c in calls if "TCP:" in c.target and '"HTTP/1.1 200' in c.rest]
    assert answers, "the STOW's answer is not in the trace"
    blobs = sorted((server.data_dir / "blobs").rglob("*.dcm"))
    assert len(blobs) == INSTANCES
    return server, [c for c in calls if c.entered <= answers[0].entered], blobs


def syncs_of(calls: list[Call], path: Path) -> list[Call]:
    return [c for c in calls if c.name in ("fsync", "fdatasync") and c.target.endswith(f"<{path}>")]


@needs_strace
def test_stow_syncs_every_blob_and_its_directory_then_commits_once_then_answers(tmp_path: Path) -> None:
    server, calls, blobs = traced_stow(tmp_path, "full")
    answer = calls[-1]
    wal = server.data_dir.resolve() / "index.sqlite-wal"
    commits = syncs_of(calls, wal)
    assert len(commits) == 1, f"{len(commits)} syncs of the write-ahead log during the STOW, one commit expected"
    (commit,) = commits
    assert commit.returned < answer.entered, "the answer was sent before the index commit was synced"
    for blob in blobs:
        resolved = blob.resolve()
        (blob_sync,) = syncs_of(calls, resolved)
        (directory_sync,) = syncs_of(calls, resolved.parent)
        assert blob_sync.returned < commit.entered and directory_sync.returned < commit.entered, blob
    # Each new series directory went into its study's directory: that entry is synced before the commit too.
    (study_sync,) = syncs_of(calls, blobs[0].resolve().parent.parent)
    assert study_sync.returned < commit.entered


@needs_strace
def test_relaxed_durability_syncs_nothing(tmp_path: Path) -> None:
    server, calls, blobs = traced_stow(tmp_path, "relaxed")
    synced = [c for c in calls if c.name in ("fsync", "fdatasync")]
    assert not synced, [c.target for c in synced]


@pytest.mark.parametrize(("durable", "expected"), [(True, "on"), (False, "off")])
def test_postgresql_commits_are_synchronous_unless_relaxed(
    postgres_database: str, durable: bool, expected: str
) -> None:
    db = Database(postgres_database, durable)
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == expected
    finally:
        db.dispose()


@pytest.mark.parametrize(("durable", "expected"), [(True, 2), (False, 1)])  # FULL, NORMAL
def test_sqlite_syncs_its_log_at_every_commit_unless_relaxed(tmp_path: Path, durable: bool, expected: int) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}", durable)
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == expected
    finally:
        db.dispose()
