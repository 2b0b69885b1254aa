"""A waited `dicomlake dicom-stores import gcs` that is cancelled from another shell with
`dicomlake operations cancel`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import requests
from cli_helpers import cli_env, dataset_operations, many_files, new_store, run, store_flags

from conftest import start_server


def test_cancel_stops_an_import_another_shell_is_waiting_for(tmp_path: Path) -> None:
    # A server that runs no operations itself: the import waits, untouched, until a worker starts after the
    # cancel, so the cancel always comes first however fast imports are.
    server = start_server(tmp_path / "server", extra_env={"DICOMLAKE_OPERATION_THREADS": "0"})
    worker = None
    try:
        store = new_store(server)
        bucket = many_files(server, 20)
        waiting = subprocess.Popen(
            [sys.executable, "-m", "dicomlake", "dicom-stores", "import", "gcs", store.store, *store_flags(store)]
            + [f"--gcs-uri=gs://{bucket}/*"],
            env=cli_env(server),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(dataset_operations(store)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        name = dataset_operations(store)[-1]["name"]

        cancel = run(server, "operations", "cancel", name.rsplit("/", 1)[1], *store_flags(store), "--quiet")
        command = [sys.executable, "-m", "dicomlake", "worker", "--data-dir", str(server.data_dir)]
        worker = subprocess.Popen(command, env={**server.env, "DICOMLAKE_OPERATION_THREADS": "1"})
        stdout, stderr = waiting.communicate(timeout=120)

        assert cancel.code == 0 and cancel.stderr == f"Cancel request issued for [{name}].\n"
        assert waiting.returncode == 1 and stdout == ""
        assert re.search(rf"Waiting for operation \[{re.escape(name)}\] to complete\.\.\.failed\.\n", stderr)
        error = stderr.split("ERROR: (dicomlake.dicom-stores.import.gcs) ", 1)[1]
        assert json.loads(error) == {"code": 1, "message": "the operation was cancelled"}
        assert requests.get(server.api(name), timeout=30).json()["metadata"]["cancelRequested"] is True
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        server.stop()
