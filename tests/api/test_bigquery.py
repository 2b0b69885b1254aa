"""The unmodified google-cloud-bigquery client against `dicomlake serve`, pointed at it with
`client_options={"api_endpoint": server.url}`: datasets, tables, views, the documented DICOM example queries,
paged results, jobs, and errors in BigQuery's shape."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bigquery_rows import (
    DICOMWEB_PATHS_OF_PATIENT,
    LAST_UPDATED,
    LATEST_STUDIES,
    SCHEMA,
    STUDIES,
    all_rows,
    expected_dicomweb_paths,
    expected_latest_studies,
)
from conftest import Server, warehouse_of
from dicomlake.warehouse.embedded import TableRef

# The warehouse is the same DuckDB whichever index the server uses: one backend is enough here.
pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    """A project of this module's own, with the dataset `dicom` and its table `instances` filled through the
    warehouse module, as an export does."""
    name = f"bq-{uuid.uuid4().hex[:10]}"
    wh = warehouse_of(server)
    wh.create_dataset(name, "dicom")
    wh.append(TableRef(name, "dicom", "instances"), SCHEMA, all_rows())
    return name


@pytest.fixture
def client(server: Server, project: str) -> Iterator[bigquery.Client]:
    bq = bigquery.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    yield bq
    bq.close()


def api(server: Server, project: str, path: str) -> str:
    return f"{server.url}/bigquery/v2/projects/{project}/{path}"


# ---- datasets and tables ----------------------------------------------------------------------


def test_datasets_are_created_listed_got_and_deleted(client: bigquery.Client) -> None:
    created = client.create_dataset(bigquery.Dataset(f"{client.project}.scratch"))
    assert created.dataset_id == "scratch" and created.location == "US"
    assert created.created is not None and abs(created.created - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert sorted(d.dataset_id for d in client.list_datasets()) == ["dicom", "scratch"]
    assert client.get_dataset("scratch").full_dataset_id == f"{client.project}:scratch"
    with pytest.raises(exceptions.Conflict, match=f"Already Exists: Dataset {client.project}:scratch"):
        client.create_dataset("scratch")
    assert client.create_dataset("scratch", exists_ok=True).dataset_id == "scratch"

    client.delete_dataset("scratch")

    assert [d.dataset_id for d in client.list_datasets()] == ["dicom"]
    with pytest.raises(exceptions.NotFound, match=f"Not found: Dataset {client.project}:scratch"):
        client.get_dataset("scratch")
    client.delete_dataset("scratch", not_found_ok=True)


def test_a_dataset_with_tables_is_deleted_only_with_its_contents(client: bigquery.Client) -> None:
    client.create_dataset("full")
    client.create_table(bigquery.Table(f"{client.project}.full.t", schema=[bigquery.SchemaField("A", "STRING")]))
    with pytest.raises(exceptions.BadRequest, match=f"Dataset {client.project}:full is still in use") as raised:
        client.delete_dataset("full")
    assert raised.value.errors[0]["reason"] == "resourceInUse"

    client.delete_dataset("full", delete_contents=True)

    assert "full" not in [d.dataset_id for d in client.list_datasets()]


def test_tables_list_and_get_give_the_dicom_schema_and_row_count(client: bigquery.Client) -> None:
    assert [(t.table_id, t.table_type) for t in client.list_tables("dicom")] == [("instances", "TABLE")]
    table = client.get_table(f"{client.project}.dicom.instances")
    assert table.num_rows == len(all_rows())
    assert [f.name for f in table.schema] == [f["name"] for f in SCHEMA]
    schema = {f.name: f for f in table.schema}
    assert (schema["StudyDate"].field_type, schema["LastUpdated"].field_type) == ("DATE", "TIMESTAMP")
    assert (schema["PixelSpacing"].field_type, schema["PixelSpacing"].mode) == ("STRING", "REPEATED")
    alphabetic = schema["PatientName"].fields[0]
    assert alphabetic.name == "Alphabetic" and [f.name for f in alphabetic.fields][:2] == ["FamilyName", "GivenName"]
    sequence = schema["ReferencedSeriesSequence"]
    assert (sequence.field_type, sequence.mode) == ("RECORD", "REPEATED")
    assert sequence.fields[1].name == "ReferencedInstanceSequence" and sequence.fields[1].mode == "REPEATED"
    with pytest.raises(exceptions.NotFound, match=f"Not found: Table {client.project}:dicom.nope"):
        client.get_table(f"{client.project}.dicom.nope")


def test_tables_and_views_made_with_the_client_can_be_queried_and_deleted(client: bigquery.Client) -> None:
    client.create_dataset("made")
    schema = [
        bigquery.SchemaField("SOPInstanceUID", "STRING"),
        bigquery.SchemaField("Codes", "RECORD", mode="REPEATED", fields=[bigquery.SchemaField("Value", "INTEGER")]),
    ]
    table = client.create_table(bigquery.Table(f"{client.project}.made.t", schema=schema))
    assert table.schema == schema and table.num_rows == 0
    view = bigquery.Table(f"{client.project}.made.latest")
    view.view_query = f"SELECT StudyInstanceUID, COUNT(*) AS n FROM `{client.project}.dicom.instances` GROUP BY 1"
    made = client.create_table(view)
    assert made.table_type == "VIEW" and made.view_query == view.view_query

    rows = client.query_and_wait("SELECT * FROM made.latest ORDER BY StudyInstanceUID")

    assert [(r["StudyInstanceUID"], r["n"]) for r in rows] == sorted((s.uid, s.instances) for s in STUDIES)
    client.delete_table(f"{client.project}.made.latest")
    client.delete_table(f"{client.project}.made.t")
    assert list(client.list_tables("made")) == []
    with pytest.raises(exceptions.NotFound):
        client.delete_table(f"{client.project}.made.t")


# ---- queries ----------------------------------------------------------------------------------


def test_the_dicomweb_paths_of_a_patient_example_runs_unchanged(client: bigquery.Client) -> None:
    rows = client.query_and_wait(DICOMWEB_PATHS_OF_PATIENT.format(table=f"{client.project}.dicom.instances"))
    assert sorted(r["DICOMwebPath"] for r in rows) == expected_dicomweb_paths()


def test_the_latest_studies_example_runs_unchanged(client: bigquery.Client) -> None:
    rows = list(client.query_and_wait(LATEST_STUDIES.format(table=f"{client.project}.dicom.instances")))
    assert [tuple(r.values()) for r in rows] == expected_latest_studies()
    assert isinstance(rows[0]["InstanceCount"], int)


def test_rows_give_records_as_dicts_repeated_values_as_lists_and_typed_scalars(client: bigquery.Client) -> None:
    first = min(STUDIES, key=lambda s: s.uid)
    (row,) = client.query_and_wait(
        "SELECT PatientName, ReferencedSeriesSequence, PixelSpacing, DroppedTags, StudyDate, StudyTime, LastUpdated, "
        "Rows, SpacingBetweenSlices, Rows > 256 AS Large FROM dicom.instances "
        f"WHERE SOPInstanceUID = '{first.sop_uid(1)}'"
    )
    assert row["PatientName"]["Alphabetic"]["FamilyName"] == first.family_name
    assert row["PatientName"]["Ideographic"] is None
    assert row["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"][0]["ReferencedSOPInstanceUID"] == (
        f"{first.uid}.9.1"
    )
    assert row["PixelSpacing"] == ["0.703125", "0.703125"] and row["DroppedTags"] == []
    assert (row["StudyDate"], row["StudyTime"], row["LastUpdated"]) == (first.date, first.time, LAST_UPDATED)
    assert (row["Rows"], row["SpacingBetweenSlices"], row["Large"]) == (512, 1.25, True)


def test_results_larger_than_a_page_arrive_whole_and_in_order(client: bigquery.Client) -> None:
    everyone = sorted(r["SOPInstanceUID"] for r in all_rows())
    sql = "SELECT SOPInstanceUID FROM dicom.instances ORDER BY SOPInstanceUID"

    assert [r["SOPInstanceUID"] for r in client.query_and_wait(sql, page_size=7)] == everyone
    result = client.query(sql).result(page_size=10)
    assert result.total_rows == len(everyone)
    assert [r["SOPInstanceUID"] for r in result] == everyone
    listed = client.list_rows(
        f"{client.project}.dicom.instances",
        page_size=9,
        selected_fields=[bigquery.SchemaField("SOPInstanceUID", "STRING")],
    )
    assert sorted(r["SOPInstanceUID"] for r in listed) == everyone
    assert client.query_and_wait(sql, max_results=5).to_arrow().column(0).to_pylist() == everyone[:5]


def test_a_query_job_is_found_again_by_its_id(client: bigquery.Client) -> None:
    job = client.query("SELECT COUNT(*) AS n FROM dicom.instances")
    assert next(iter(job.result()))["n"] == len(all_rows())

    again = client.get_job(job.job_id)

    assert again.state == "DONE" and again.query == job.query and again.error_result is None
    with pytest.raises(exceptions.NotFound, match="Not found: Job"):
        client.get_job("no-such-job")


def test_a_query_slower_than_timeout_ms_is_answered_later_by_get_query_results(server: Server, project: str) -> None:
    body = {"query": "SELECT COUNT(*) AS n FROM dicom.instances", "useLegacySql": False, "timeoutMs": 0}
    first = requests.post(api(server, project, "queries"), json=body, timeout=30).json()
    job_id = first["jobReference"]["jobId"]
    if not first["jobComplete"]:
        assert "rows" not in first
    later = requests.get(api(server, project, f"queries/{job_id}"), params={"timeoutMs": 10_000}, timeout=30).json()
    assert later["jobComplete"] is True and later["rows"] == [{"f": [{"v": str(len(all_rows()))}]}]
    assert later["schema"] == {"fields": [{"name": "n", "type": "INTEGER", "mode": "NULLABLE"}]}


# ---- errors -----------------------------------------------------------------------------------


def test_bad_sql_is_a_bad_request_with_the_message(client: bigquery.Client) -> None:
    with pytest.raises(
        exceptions.BadRequest, match=r"Syntax error: Expected table name but got WHERE at \[1:13\]"
    ) as raised:
        client.query_and_wait("SELECT FROM WHERE")
    assert raised.value.errors[0]["reason"] == "invalidQuery"
    with pytest.raises(exceptions.BadRequest, match='Referenced column "Nope" not found'):
        client.query("SELECT Nope FROM dicom.instances").result()


def test_unknown_tables_and_datasets_in_a_query_are_not_found(client: bigquery.Client) -> None:
    with pytest.raises(exceptions.NotFound, match=f"Not found: Table {client.project}:dicom.nope"):
        client.query_and_wait("SELECT * FROM dicom.nope")
    with pytest.raises(exceptions.NotFound, match=f"Not found: Dataset {client.project}:nope"):
        client.query_and_wait("SELECT * FROM nope.instances")


def test_legacy_sql_is_refused(client: bigquery.Client) -> None:
    config = bigquery.QueryJobConfig(use_legacy_sql=True)
    with pytest.raises(exceptions.BadRequest, match="legacy SQL is not supported"):
        client.query_and_wait(f"SELECT * FROM [{client.project}:dicom.instances]", job_config=config)


def test_errors_come_in_bigquerys_envelope(server: Server, project: str) -> None:
    bad = requests.post(api(server, project, "queries"), json={"query": "SELECT FROM"}, timeout=30)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["errors"] == [{"message": error["message"], "domain": "global", "reason": "invalidQuery"}]

    legacy = requests.post(
        api(server, project, "queries"), json={"query": "SELECT 1", "useLegacySql": True}, timeout=30
    )
    assert legacy.status_code == 400 and legacy.json()["error"]["errors"][0]["reason"] == "invalid"

    missing = requests.get(api(server, project, "datasets/nope/tables/t"), timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": 404,
        "message": f"Not found: Dataset {project}:nope",
        "errors": [{"message": f"Not found: Dataset {project}:nope", "domain": "global", "reason": "notFound"}],
        "status": "NOT_FOUND",
    }


def test_requests_waiting_for_a_long_job_leave_the_server_free(server: Server, project: str) -> None:
    """jobs.getQueryResults waits on the event loop: sixty clients waiting for a long query (more than the
    server's threads) do not hold up any other request."""
    runaway = "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) AS c FROM r"
    job_id = f"long_{uuid.uuid4().hex}"
    body = {
        "jobReference": {"jobId": job_id},
        "configuration": {"query": {"query": runaway, "useLegacySql": False}, "jobTimeoutMs": "60000"},
    }
    assert requests.post(api(server, project, "jobs"), json=body, timeout=30).status_code == 200
    results = api(server, project, f"queries/{job_id}?timeoutMs=20000&maxResults=0")

    def wait_for_results(_: int) -> int:
        with requests.Session() as session:
            return session.get(results, timeout=60).status_code

    with ThreadPoolExecutor(60) as pool:
        waiting = [pool.submit(wait_for_results, i) for i in range(60)]
        try:
            time.sleep(1.0)
            started = time.monotonic()
            listed = requests.get(api(server, project, "datasets"), timeout=30)
            assert listed.status_code == 200
            assert time.monotonic() - started < 2.0
        finally:
            cancelled = requests.post(api(server, project, f"jobs/{job_id}/cancel"), timeout=30)
            assert cancelled.status_code == 200
        # Each waited until the cancel, and then got the job's error.
        assert {w.result() for w in waiting} == {400}
    job = requests.get(api(server, project, f"jobs/{job_id}"), timeout=30).json()
    assert job["status"]["state"] == "DONE" and job["status"]["errorResult"]["reason"] == "stopped"
