"""Buckets stay buckets: invalid object names are a 400 that creates no operation; symbolic links, FIFOs and
folders reached through links in a bucket folder are neither followed nor read, for import and export;
file:// reaches only the roots listed in DICOMLAKE_FILE_ROOTS; filter files' errors say which line and what
is wrong, never what the file holds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from test_import import with_new_uids

from conftest import Server, Store, dicom_file, make_store, new_bucket, start_server, stow, wait_done, write

SECRET = b"root:x:0:0:the-secret-line-of-passwd:/root:/bin/bash\n"


def fresh(name: str) -> tuple[bytes, tuple[str, str, str]]:
    """A real DICOM test file under new UIDs, and its (study, series, instance)."""
    data, _ = with_new_uids(dicom_file(name))
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return data, (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a folder file:// may use, a folder outside every bucket and root that nothing may reach)."""
    return tmp_path_factory.mktemp("file-root"), tmp_path_factory.mktemp("outside")


@pytest.fixture(scope="module")
def confined(tmp_path_factory: pytest.TempPathFactory, roots: tuple[Path, Path]) -> Iterator[Server]:
    """A server that allows file:// under one root."""
    srv = start_server(tmp_path_factory.mktemp("confined"), extra_env={"DICOMLAKE_FILE_ROOTS": str(roots[0])})
    yield srv
    srv.stop()


@pytest.fixture
def store(confined: Server) -> Store:
    return make_store(confined)


def post(store: Store, verb: str, body: dict) -> requests.Response:
    return requests.post(f"{store.url}:{verb}", json=body, timeout=30)


def operations(store: Store) -> list[str]:
    """The import and export operations of the store's dataset."""
    listed = requests.get(store.server.api(f"{store.dataset_name}/operations"), timeout=30).json()
    methods = [op["metadata"]["apiMethodName"] for op in listed.get("operations", [])]
    return [m for m in methods if "ImportDicomData" in m or "ExportDicomData" in m]


def run(store: Store, verb: str, body: dict) -> dict:
    response = post(store, verb, body)
    assert response.status_code == 200, response.text
    return wait_done(store.server, response.json())


def log_entries(store: Store, operation: dict) -> list[dict]:
    response = requests.get(store.server.url + operation["metadata"]["logsUrl"], timeout=30)
    return response.json().get("entries", [])


def stored_sops(store: Store) -> set[str]:
    response = requests.get(f"{store.dicomweb}/instances?includefield=00080018", timeout=30)
    return set() if response.status_code == 204 else {i["00080018"]["Value"][0] for i in response.json()}


def refused(response: requests.Response, store: Store, *words: str) -> str:
    """The 400 INVALID_ARGUMENT message; asserts that no operation was created."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    for word in words:
        assert word in error["message"]
    assert operations(store) == []
    return error["message"]


# ---- object names --------------------------------------------------------------------------------

BAD_NAMES = {
    "../../../etc/passwd": "'..' path segment",
    "./a.dcm": "'.' path segment",
    "a#1/": "'#'",
    "a" * 5000: "5000 bytes long",
    "dir//a.dcm": "empty path segment",
    "dir/a\nb.dcm": "control character",
    "dir/a\x00.dcm": "control character",
    "dir/[ab].dcm": "'[' and ']'",
    "b" * 256 + "/a.dcm": "longer than 255 bytes",
    ".well-known/acme-challenge/x.dcm": "reserved",
}


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: n[:30])
def test_an_invalid_import_source_name_is_400_and_creates_nothing(store: Store, name: str) -> None:
    bucket, _ = new_bucket(store.server)
    refused(post(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/{name}"}}), store, BAD_NAMES[name])


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: n[:30])
def test_an_invalid_export_prefix_is_400_and_creates_nothing(store: Store, name: str) -> None:
    bucket, folder = new_bucket(store.server)
    message = refused(post(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/{name}"}}), store)
    assert "invalid object name" in message and len(message) < 400
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["../filter.txt", "a#1.txt", "f" * 2000, "dir/*.txt"], ids=lambda n: n[:30])
@pytest.mark.parametrize("destination", ["gcs", "bq"])
def test_an_invalid_filter_file_name_is_400_and_creates_nothing(store: Store, name: str, destination: str) -> None:
    bucket, _ = new_bucket(store.server)
    target = (
        {"gcsDestination": {"uriPrefix": f"gs://{bucket}/out"}}
        if destination == "gcs"
        else {"bigqueryDestination": {"tableUri": "bq://p.d.t"}}
    )
    body = target | {"filterConfig": {"resourcePathsGcsUri": f"gs://{bucket}/{name}"}}
    refused(post(store, "export", body), store, "invalid object name")


def test_wildcards_are_names_only_in_an_import_source(store: Store) -> None:
    bucket, _ = new_bucket(store.server)
    refused(post(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/out*"}}), store, "'*'")
    refused(post(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/out?"}}), store, "'?'")
    assert post(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/d?r/*.dcm"}}).status_code == 200


def test_an_export_prefix_leaves_room_for_the_names_an_export_appends(store: Store) -> None:
    bucket, _ = new_bucket(store.server)
    long_prefix = "/".join(["p" * 200] * 4) + "/" + "q" * 30  # 834 bytes: fine for one object, not for an export
    refused(post(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/{long_prefix}"}}), store, "room")
    assert post(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/{long_prefix}"}}).status_code == 200


def test_s3_names_follow_the_same_rules(store: Store) -> None:
    refused(post(store, "import", {"gcsSource": {"uri": "s3://bucket/../x.dcm"}}), store, "'..'")
    refused(post(store, "export", {"gcsDestination": {"uriPrefix": "s3://bucket/a#1/"}}), store, "'#'")


def test_a_trailing_slash_and_unicode_are_valid_export_prefixes(store: Store) -> None:
    bucket, folder = new_bucket(store.server)
    data, (study, series, sop) = fresh("CT_small.dcm")
    stow(store, data)
    for prefix in ("out/", "Ünïcode and spaces/é"):
        done = run(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/{prefix}"}})
        assert done["metadata"]["counter"] == {"success": "1"}
        assert (folder / prefix / study / series / f"{sop}.dcm").read_bytes() == data


# ---- links, FIFOs and devices in local buckets --------------------------------------------------


def test_import_reads_no_link_fifo_or_device_and_logs_each_as_failed_precondition(
    store: Store, roots: tuple[Path, Path]
) -> None:
    bucket, folder = new_bucket(store.server)
    outside = roots[1] / generate_uid()
    inside, (_, _, sop) = fresh("CT_small.dcm")
    secret_file, (_, _, secret_sop) = fresh("MR_small.dcm")
    secret_tree, (_, _, tree_sop) = fresh("CT_small.dcm")
    write(folder / "dir/real.dcm", inside)
    write(outside / "secret.dcm", secret_file)
    write(outside / "tree/deep.dcm", secret_tree)
    (folder / "dir/link.dcm").symlink_to(outside / "secret.dcm")
    (folder / "dir/tree").symlink_to(outside / "tree", target_is_directory=True)
    os.mkfifo(folder / "dir/pipe.dcm")
    (folder / "dir/null.dcm").symlink_to("/dev/null")

    done = run(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/dir/**"}})

    assert done["metadata"]["counter"] == {"success": "1", "failure": "4"}
    assert stored_sops(store) == {sop}
    assert secret_sop not in stored_sops(store) and tree_sop not in stored_sops(store)
    entries = {e["jsonPayload"]["source"]: e["jsonPayload"]["error"] for e in log_entries(store, done)}
    skipped = {f"gs://{bucket}/dir/{n}" for n in ("link.dcm", "tree", "pipe.dcm", "null.dcm")}
    assert set(entries) == skipped
    assert {error["code"] for error in entries.values()} == {9}
    assert "symbolic link" in entries[f"gs://{bucket}/dir/link.dcm"]["message"]
    assert "FIFO" in entries[f"gs://{bucket}/dir/pipe.dcm"]["message"]


def test_import_does_not_enter_a_folder_that_is_a_link(store: Store, roots: tuple[Path, Path]) -> None:
    bucket, folder = new_bucket(store.server)
    outside = roots[1] / generate_uid()
    data, (_, _, sop) = fresh("CT_small.dcm")
    write(outside / "a.dcm", data)
    (folder / "linked").symlink_to(outside, target_is_directory=True)

    whole = run(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/linked/**"}})
    assert whole["error"]["code"] == 9 and "symbolic link" in whole["error"]["message"]
    one = run(store, "import", {"gcsSource": {"uri": f"gs://{bucket}/linked/a.dcm"}})
    assert one["metadata"]["counter"] == {"failure": "1"}
    assert [e["jsonPayload"]["error"]["code"] for e in log_entries(store, one)] == [9]
    assert sop not in stored_sops(store)


def test_export_writes_nothing_through_a_link(store: Store, roots: tuple[Path, Path]) -> None:
    bucket, folder = new_bucket(store.server)
    outside = roots[1] / generate_uid()
    outside.mkdir()
    data, (study, series, sop) = fresh("CT_small.dcm")
    stow(store, data)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    victim = outside / "victim.txt"
    victim.write_bytes(SECRET)
    write(folder / "out" / study / series / "placeholder", b"")
    (folder / "out" / study / series / f"{sop}.dcm").symlink_to(victim)

    through_folder = run(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/linked/x"}})
    assert through_folder["metadata"]["counter"] == {"failure": "1"}
    assert [e["jsonPayload"]["error"]["code"] for e in log_entries(store, through_folder)] == [9]
    assert [p.name for p in outside.iterdir()] == ["victim.txt"]

    over_a_link = run(store, "export", {"gcsDestination": {"uriPrefix": f"gs://{bucket}/out"}})
    assert over_a_link["metadata"]["counter"] == {"success": "1"}
    written = folder / "out" / study / series / f"{sop}.dcm"
    assert not written.is_symlink() and written.read_bytes() == data
    assert victim.read_bytes() == SECRET
    assert sorted(p.name for p in written.parent.iterdir()) == sorted([f"{sop}.dcm", "placeholder"])


# ---- file:// roots -----------------------------------------------------------------------------


def test_file_uris_are_refused_where_no_root_is_listed(server: Server) -> None:
    store = make_store(server)
    bucket, _ = new_bucket(server)
    for verb, body in [
        ("import", {"gcsSource": {"uri": "file:///etc/**"}}),
        ("export", {"gcsDestination": {"uriPrefix": "file:///tmp/out"}}),
        (
            "export",
            {
                "gcsDestination": {"uriPrefix": f"gs://{bucket}/out"},
                "filterConfig": {"resourcePathsGcsUri": "file:///etc/passwd"},
            },
        ),
    ]:
        refused(post(store, verb, body), store, "DICOMLAKE_FILE_ROOTS", "not allowed")


def test_file_uris_reach_only_the_listed_roots(store: Store, roots: tuple[Path, Path]) -> None:
    root, outside = roots
    data, (study, series, sop) = fresh("CT_small.dcm")
    write(root / "in" / "a.dcm", data)
    write(outside / "b.dcm", fresh("MR_small.dcm")[0])
    bucket, _ = new_bucket(store.server)
    for verb, body in [
        ("import", {"gcsSource": {"uri": f"file://{outside}/**"}}),
        ("import", {"gcsSource": {"uri": f"file://{root}/../{outside.name}/**"}}),
        ("export", {"gcsDestination": {"uriPrefix": f"file://{outside}/out"}}),
        ("export", {"gcsDestination": {"uriPrefix": f"file://{root}-sibling/out"}}),
        (
            "export",
            {
                "gcsDestination": {"uriPrefix": f"gs://{bucket}/out"},
                "filterConfig": {"resourcePathsGcsUri": "file:///etc/passwd"},
            },
        ),
    ]:
        response = post(store, verb, body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert "DICOMLAKE_FILE_ROOTS" in response.json()["error"]["message"] or "'..'" in response.text
    assert operations(store) == []

    imported = run(store, "import", {"gcsSource": {"uri": f"file://{root}/in/**"}})
    assert imported["metadata"]["counter"] == {"success": "1"}
    assert stored_sops(store) == {sop}
    exported = run(store, "export", {"gcsDestination": {"uriPrefix": f"file://{root}/out/"}})
    assert exported["metadata"]["counter"] == {"success": "1"}
    assert (root / "out" / study / series / f"{sop}.dcm").read_bytes() == data


@pytest.mark.parametrize("where", ["data dir", "inside the data dir", "around the data dir", "blob folder"])
def test_a_root_overlapping_the_data_or_blob_dir_stops_the_server_with_exit_2(tmp_path: Path, where: str) -> None:
    data_dir, blobs = tmp_path / "data", tmp_path / "blobs"
    root = {
        "data dir": data_dir,
        "inside the data dir": data_dir / "buckets",
        "around the data dir": tmp_path,
        "blob folder": blobs / "x",
    }[where]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
    env |= {"DICOMLAKE_FILE_ROOTS": f"/srv/elsewhere:{root}", "DICOMLAKE_BLOB_URL": blobs.as_uri()}
    result = subprocess.run(
        [sys.executable, "-m", "dicomlake", "serve", "--data-dir", str(data_dir), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "DICOMLAKE_FILE_ROOTS" in result.stderr and "overlaps" in result.stderr


def test_a_relative_root_stops_the_server_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")} | {"DICOMLAKE_FILE_ROOTS": "rel"}
    result = subprocess.run(
        [sys.executable, "-m", "dicomlake", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "absolute" in result.stderr


# ---- filter files ------------------------------------------------------------------------------


def filtered_export(store: Store, filter_uri: str, destination: str = "gcs") -> dict:
    bucket, _ = new_bucket(store.server)
    target = (
        {"gcsDestination": {"uriPrefix": f"gs://{bucket}/out"}}
        if destination == "gcs"
        else {"bigqueryDestination": {"tableUri": f"bq://{store.project}.{store.dataset}.t", "force": True}}
    )
    if destination == "bq":
        response = requests.post(
            f"{store.server.url}/bigquery/v2/projects/{store.project}/datasets",
            json={"datasetReference": {"datasetId": store.dataset}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return run(store, "export", target | {"filterConfig": {"resourcePathsGcsUri": filter_uri}})


@pytest.mark.parametrize("destination", ["gcs", "bq"])
def test_a_file_that_is_not_a_filter_file_is_never_quoted(
    store: Store, roots: tuple[Path, Path], destination: str
) -> None:
    root = roots[0]
    write(root / "passwd", SECRET * 3)
    done = filtered_export(store, f"file://{root}/passwd", destination)
    assert done["error"]["code"] == 3
    assert "line 1 of filter file" in done["error"]["message"]
    assert "root" not in done["error"]["message"].replace(str(root), "")
    assert "secret" not in done["error"]["message"]


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        (b"/studies/1.2.3\n/studies/1.2.x-secret\n", 2, "StudyInstanceUID is not a UID"),
        (b"/studies/1.2.3/series/" + b"9" * 65 + b"\n", 1, "SeriesInstanceUID is not a UID"),
        (b"\n\n/studies/1.2/instances/secret\n", 3, "not a resource path"),
        (b"/studies/1.2\n" + b"secret" * 200_000, 2, "longer than 1024 bytes"),
        (b"\x89PNG secret \x00\xff" * 10, 1, "not a resource path"),
    ],
)
def test_a_bad_filter_line_is_named_by_number_and_fault_only(
    store: Store, content: bytes, line: int, what: str
) -> None:
    bucket, folder = new_bucket(store.server)
    write(folder / "filter.txt", content)
    done = filtered_export(store, f"gs://{bucket}/filter.txt")
    message = done["error"]["message"]
    assert done["error"]["code"] == 3
    assert f"line {line} of " in message and what in message
    assert "secret" not in message and "PNG" not in message and "9" * 20 not in message


def test_filter_file_uids_are_normalized(store: Store) -> None:
    data, (study, series, sop) = fresh("CT_small.dcm")
    stow(store, data)
    bucket, folder = new_bucket(store.server)
    write(folder / "filter.txt", f"/studies/{study}\x00/series/{series} /instances/{sop}\x00\r\n".encode())
    done = filtered_export(store, f"gs://{bucket}/filter.txt")
    assert "error" not in done and done["metadata"]["counter"] == {"success": "1"}


def test_a_filter_file_that_is_a_link_is_not_read(store: Store, roots: tuple[Path, Path]) -> None:
    bucket, folder = new_bucket(store.server)
    target = roots[1] / f"{generate_uid()}.txt"
    target.write_bytes(b"/studies/1.2.3\n")
    (folder / "filter.txt").symlink_to(target)
    done = filtered_export(store, f"gs://{bucket}/filter.txt")
    assert done["error"]["code"] == 9 and "symbolic link" in done["error"]["message"]
