"""`dicomlake query` and `dicomlake bq` as subprocesses against a real server: the documented example query in each
output format, pages of results, datasets and tables made, listed, shown and removed, and errors as one line."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from cli_helpers import run, sqlite_server

from bigquery_rows import LATEST_STUDIES, SCHEMA, all_rows, expected_latest_studies
from conftest import Server, free_port, warehouse_of
from dicomlake.warehouse.embedded import TableRef

pytestmark = sqlite_server


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    """A project with the dataset `dicom` and its filled table `instances`."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    wh = warehouse_of(server)
    wh.create_dataset(name, "dicom")
    wh.append(TableRef(name, "dicom", "instances"), SCHEMA, all_rows())
    return name


def latest(project: str) -> str:
    return LATEST_STUDIES.format(table=f"{project}.dicom.instances")


def test_query_prints_the_latest_studies_as_a_table(server: Server, project: str) -> None:
    result = run(server, "query", latest(project), "--project", project)

    assert result.code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["StudyDateTime", "PatientID", "StudyInstanceUID", "InstanceCount"]
    assert [line.rsplit(None, 3)[1:] for line in lines] == [
        [patient, uid, str(count)] for _, patient, uid, count in expected_latest_studies()
    ]
    assert [line[:19] for line in lines] == [when for when, *_ in expected_latest_studies()]


def test_query_prints_json_like_bq_with_values_as_strings(server: Server, project: str) -> None:
    result = run(server, "query", latest(project), "--format=json", DICOMLAKE_PROJECT=project)

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"StudyDateTime": when, "PatientID": patient, "StudyInstanceUID": uid, "InstanceCount": str(count)}
        for when, patient, uid, count in expected_latest_studies()
    ]


def test_query_prints_csv_with_nested_values_as_json(server: Server, project: str) -> None:
    sql = (
        "SELECT SOPInstanceUID, PatientName.Alphabetic, PixelSpacing, LastUpdated FROM dicom.instances "
        "ORDER BY SOPInstanceUID LIMIT 2"
    )
    result = run(server, "query", sql, "--format", "csv", "--project", project)

    assert result.code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["SOPInstanceUID", "Alphabetic", "PixelSpacing", "LastUpdated"]
    first = sorted(all_rows(), key=lambda r: r["SOPInstanceUID"])[0]
    assert rows[1][0] == first["SOPInstanceUID"]
    assert json.loads(rows[1][1])["FamilyName"] == first["PatientName"]["Alphabetic"]["FamilyName"]
    assert json.loads(rows[1][2]) == ["0.703125", "0.703125"]
    assert rows[1][3] == "2024-03-01 12:00:00.250000"


def test_query_stops_at_max_rows_and_reports_changed_rows(server: Server, project: str) -> None:
    sql = "SELECT SOPInstanceUID FROM dicom.instances ORDER BY 1"
    result = run(server, "query", sql, "--project", project, "--max-rows", "3", "--format", "json")
    assert [r["SOPInstanceUID"] for r in json.loads(result.stdout)] == sorted(r["SOPInstanceUID"] for r in all_rows())[
        :3
    ]

    made = run(server, "query", "CREATE TABLE dicom.copy AS SELECT * FROM dicom.instances", "--project", project)
    deleted = run(server, "query", "DELETE FROM dicom.copy WHERE Modality = 'CT'", "--project", project)

    assert made.code == 0 and made.stdout == ""
    assert deleted.stdout == f"Number of affected rows: {len(all_rows())}\n"
    assert run(server, "bq", "rm", "-f", f"{project}:dicom.copy").code == 0


def test_query_errors_are_one_line_with_exit_code_2(server: Server, project: str) -> None:
    bad = run(server, "query", "SELECT FROM", "--project", project)
    assert bad.code == 2 and bad.stdout == ""
    assert bad.stderr == (
        "dicomlake: error: INVALID_ARGUMENT: Syntax error: Expected table name but got end of input at [1:12]\n"
    )
    missing = run(server, "query", "SELECT * FROM dicom.nope", "--project", project)
    assert missing.code == 2
    assert missing.stderr.splitlines() == [
        f"dicomlake: error: NOT_FOUND: Not found: Table {project}:dicom.nope was not found in location US"
    ]
    assert run(server, "query", "SELECT 1").stderr.startswith("dicomlake: error: no project given")
    unreachable = run(
        None, "query", "SELECT 1", "--project", project, DICOMLAKE_API_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    assert unreachable.code == 2 and "cannot reach the dicomlake server" in unreachable.stderr


def test_bq_makes_lists_shows_and_removes_datasets_and_tables(server: Server, project: str) -> None:
    assert run(server, "bq", "mk", "--project", project, "scratch").stdout == (
        f"Dataset '{project}:scratch' successfully created.\n"
    )
    assert run(server, "bq", "mk", f"{project}:other").code == 0
    again = run(server, "bq", "mk", f"{project}:other")
    assert (
        again.code == 2
        and again.stderr == f"dicomlake: error: ALREADY_EXISTS: Already Exists: Dataset {project}:other\n"
    )

    listed = run(server, "bq", "ls", "--project", project)
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["datasetId", "location"],
        ["dicom", "US"],
        ["other", "US"],
        ["scratch", "US"],
    ]
    tables = run(server, "bq", "ls", f"{project}:dicom")
    assert [line.split() for line in tables.stdout.splitlines()] == [["tableId", "Type"], ["instances", "TABLE"]]

    run(server, "query", "CREATE TABLE scratch.t AS SELECT 1 AS x", "--project", project)
    in_use = run(server, "bq", "rm", "-f", f"{project}:scratch")
    assert in_use.code == 2
    assert in_use.stderr == f"dicomlake: error: FAILED_PRECONDITION: Dataset {project}:scratch is still in use\n"
    assert run(server, "bq", "rm", "-r", "-f", f"{project}:scratch").code == 0
    assert run(server, "bq", "rm", "-f", "--project", project, "other").code == 0
    assert [line.split()[0] for line in run(server, "bq", "ls", "--project", project).stdout.splitlines()] == [
        "datasetId",
        "dicom",
    ]


def test_bq_show_prints_the_schema_as_a_tree_or_json(server: Server, project: str) -> None:
    shown = run(server, "bq", "show", f"{project}:dicom.instances")

    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Table {project}:dicom.instances"
    assert f"  Total rows: {len(all_rows())}" in lines
    schema = lines[lines.index("  Schema:") + 1 :]
    assert "  |- PatientName: record" in schema
    assert schema[schema.index("  |- PatientName: record") + 1] == "  |  |- Alphabetic: record"
    assert "  |  |  |- FamilyName: string" in schema
    assert "  |- PixelSpacing: string (repeated)" in schema
    assert "  |- StudyDate: date" in schema

    as_json = run(server, "bq", "show", "--schema", "--format=json", f"{project}:dicom.instances")
    assert [f["name"] for f in json.loads(as_json.stdout)] == [f["name"] for f in SCHEMA]
    missing = run(server, "bq", "show", f"{project}:dicom.nope")
    assert (
        missing.code == 2 and missing.stderr == f"dicomlake: error: NOT_FOUND: Not found: Table {project}:dicom.nope\n"
    )
