"""`dicomlake dicom-stores import gcs` and `dicomlake logs read` against a real server importing from a
bucket folder (gs://NAME = <data dir>/buckets/NAME): waiting with and without a terminal, --async, the
failure summary and the log entries it points at."""

from __future__ import annotations

import json
import re
import shlex

import requests
import yaml
from cli_helpers import bucket_with_files, new_store, run, run_on_terminal, sqlite_server, store_flags

from conftest import Server, Store, wait_done

pytestmark = sqlite_server

IMPORT_METHOD = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"


def instance_count(store: Store) -> int:
    response = requests.get(f"{store.dicomweb}/instances", timeout=30)
    return 0 if response.status_code == 204 else len(response.json())


def waited(stderr: str, store: Store) -> str:
    """The operation name in the two lines a waited import prints, which must be exactly those lines first."""
    match = re.match(
        rf"Request issued for: \[{store.store}\]\n"
        rf"Waiting for operation \[({re.escape(store.dataset_name)}/operations/\d+)\] to complete\.\.\.done\.\n",
        stderr,
    )
    assert match, stderr
    return match.group(1)


def import_gcs(store: Store, uri: str, *extra: str) -> tuple[int, str, str]:
    result = run(
        store.server, "dicom-stores", "import", "gcs", store.store, *store_flags(store), "--gcs-uri", uri, *extra
    )
    return result.code, result.stdout, result.stderr


def test_import_waits_for_the_operation_and_prints_the_store(server: Server) -> None:
    store = new_store(server, labels={"site": "north"})
    bucket, _ = bucket_with_files(server)

    code, stdout, stderr = import_gcs(store, f"gs://{bucket}/dir/**.dcm")

    assert code == 0
    name = waited(stderr, store)
    assert stderr.count("\n") == 2  # no line per poll when stderr is not a terminal
    assert stdout == f"labels:\n  site: north\nname: {store.name}\n"
    assert instance_count(store) == 2
    operation = requests.get(server.api(name), timeout=30).json()
    assert operation["done"] and operation["metadata"]["counter"] == {"success": "2"}


def test_import_with_a_storage_class_in_any_case(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server)

    code, _, _ = import_gcs(store, f"gs://{bucket}/dir/*", "--blob-storage-class", "nearline")
    refused = run(
        server, "dicom-stores", "import", "gcs", store.store, "--gcs-uri=gs://x/y", "--blob-storage-class=COLD"
    )

    assert code == 0 and instance_count(store) == 2
    assert refused.code == 2 and "'COLD' is not one of" in refused.stderr


def test_import_with_failures_warns_and_names_the_command_that_shows_why(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server, broken=1)

    code, stdout, stderr = import_gcs(store, f"gs://{bucket}/dir/*")

    assert code == 0 and yaml.safe_load(stdout) == {"name": store.name}
    name = waited(stderr, store)
    warning = stderr.splitlines()[2]
    hint = f"dicomlake logs read --project={store.project} --filter 'operation.id=\"{name}\"'"
    assert warning == f"WARNING: 1 of 3 files failed to import; see why with: {hint}"

    logs = run(server, *shlex.split(hint)[1:])

    assert logs.code == 0
    entry = yaml.safe_load(logs.stdout)
    assert entry["jsonPayload"] == {
        "@type": LOG_TYPE,
        "source": f"gs://{bucket}/dir/broken0.dcm",
        "error": {"code": 3, "message": entry["jsonPayload"]["error"]["message"]},
    }
    assert "not a storable DICOM file" in entry["jsonPayload"]["error"]["message"]
    assert entry["logName"] == f"projects/{store.project}/logs/healthcare.googleapis.com%2Fimport_dicom"
    assert entry["operation"] == {"id": name, "producer": "healthcare.googleapis.com/ImportDicomData"}
    assert entry["severity"] == "ERROR"


def test_import_async_prints_the_operation_and_where_to_check_it(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server)

    code, stdout, stderr = import_gcs(store, f"gs://{bucket}/dir/*", "--async")

    assert code == 0
    operation = yaml.safe_load(stdout)
    assert operation["name"].startswith(f"{store.dataset_name}/operations/")
    assert operation["metadata"]["apiMethodName"] == IMPORT_METHOD
    assert "done" not in operation
    assert stderr == f"Request issued for: [{store.store}]\nCheck operation [{operation['name']}] for status.\n"
    assert wait_done(server, operation)["metadata"]["counter"] == {"success": "2"}


def test_import_async_as_json(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server)

    code, stdout, _ = import_gcs(store, f"gs://{bucket}/dir/*", "--async", "--format=json")

    assert code == 0 and json.loads(stdout)["metadata"]["apiMethodName"] == IMPORT_METHOD


def test_import_on_a_terminal_shows_a_progress_bar_then_the_done_line(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server)

    result = run_on_terminal(
        server, "dicom-stores", "import", "gcs", store.store, *store_flags(store), f"--gcs-uri=gs://{bucket}/dir/*"
    )

    assert result.code == 0 and yaml.safe_load(result.stdout) == {"name": store.name}
    issued, shown = result.stderr.split("\n", 1)
    assert issued == f"Request issued for: [{store.store}]"
    bars, final = shown.rsplit("\r\x1b[K", 1)
    assert re.fullmatch(r"(\r\[[#.]+\]  \d+/(\d+|\?) files  \d+\.\d/s  ETA (\d+:\d\d|--:--))+", bars), bars
    assert re.fullmatch(r"Waiting for operation \[.+/operations/\d+\] to complete\.\.\.done\.\n", final), final


def test_a_bad_uri_is_refused_with_one_line(server: Server) -> None:
    store = new_store(server)

    code, stdout, stderr = import_gcs(store, "http://example.com/x.dcm")

    assert code == 2 and stdout == ""
    assert stderr.startswith("dicomlake: error: INVALID_ARGUMENT: invalid URI 'http://example.com/x.dcm'")
    assert stderr.count("\n") == 1


def test_import_into_an_unknown_store_is_not_found(server: Server) -> None:
    store = new_store(server)

    result = run(server, "dicom-stores", "import", "gcs", "nope", *store_flags(store), "--gcs-uri=gs://bucket/x")

    assert result.code == 2
    assert (
        result.stderr == f"dicomlake: error: NOT_FOUND: DICOM store {store.dataset_name}/dicomStores/nope not found\n"
    )


# ---- logs read ---------------------------------------------------------------------------------


def test_logs_read_by_log_name_newest_first_with_limit_and_order(server: Server) -> None:
    store = new_store(server)
    bucket, _ = bucket_with_files(server, broken=2)
    import_gcs(store, f"gs://{bucket}/dir/*")
    log_name = f"projects/{store.project}/logs/healthcare.googleapis.com%2Fimport_dicom"
    query = f'logName="{log_name}"'

    newest = run(server, "logs", "read", query, "--project", store.project, "--limit=1")
    oldest_first = run(
        server, "logs", "read", "--filter", query, "--order=asc", "--format=json", "--project", store.project
    )
    every = run(server, "logs", "read", query, "--project", store.project)

    sources = [e["jsonPayload"]["source"] for e in json.loads(oldest_first.stdout)]
    assert sources == [f"gs://{bucket}/dir/broken0.dcm", f"gs://{bucket}/dir/broken1.dcm"]
    assert yaml.safe_load(newest.stdout)["jsonPayload"]["source"] == sources[1]
    documents = every.stdout.split("---\n")
    assert [yaml.safe_load(d)["jsonPayload"]["source"] for d in documents] == sources[::-1]


def test_logs_read_without_matches_prints_nothing(server: Server) -> None:
    store = new_store(server)

    result = run(server, "logs", "read", "--project", store.project, "--filter", 'operation.id="nothing"')

    assert result.code == 0 and result.stdout == "" and result.stderr == ""


def test_logs_read_with_an_unsupported_filter_is_one_line(server: Server) -> None:
    result = run(server, "logs", "read", "--project", "p", "--filter", "severity>=ERROR")

    assert result.code == 2
    assert result.stderr.startswith("dicomlake: error: INVALID_ARGUMENT: unsupported log filter term 'severity>=ERROR'")
