"""Query jobs seen from every machine: two `dicomlake serve` processes with data dirs of their own share one
PostgreSQL index and one warehouse URL (a shared folder, or an S3-compatible store: moto on 127.0.0.1). A job
inserted through one machine is read (jobs.get, getQueryResults page by page with pageToken) and cancelled
through the other, with google-cloud-bigquery and the REST API; its record is a row of the index database and its
result an object under the warehouse URL, nothing in either data dir. On one machine with SQLite, expired jobs
go with their results."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from google.api_core.exceptions import Conflict
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from conftest import Server, bigquery_client, moto_s3, start_server, throwaway_postgres
from dicomlake.errors import NotFound
from dicomlake.warehouse import jobs
from dicomlake.warehouse.iceberg import IcebergWarehouse

BUCKET = "lake-jobs"
ROWS = 2500
NUMBERS = f"SELECT x, CONCAT('row ', CAST(x AS STRING)) AS label FROM UNNEST(GENERATE_ARRAY(1, {ROWS})) AS x ORDER BY x"
RUNAWAY = "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n+1 FROM r) SELECT COUNT(*) FROM r"


@dataclass
class Machines:
    a: Server
    b: Server
    database_url: str
    kind: str
    # The warehouse URL's folder, or the S3 client of its bucket.
    shared: Path | None
    s3: Any

    def result_objects(self) -> list[str]:
        """The files under the warehouse URL's `_jobs/`, relative to the URL."""
        if self.shared is not None:
            return sorted(str(p.relative_to(self.shared)) for p in (self.shared / "_jobs").rglob("*") if p.is_file())
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix="tables/_jobs/")
        return sorted(o["Key"].removeprefix("tables/") for o in listed.get("Contents", []))


@pytest.fixture(scope="module", params=["folder", "s3"])
def machines(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(throwaway_postgres("dicomlake_jobs_shared"))
        shared, s3 = None, None
        if request.param == "folder":
            shared = tmp_path_factory.mktemp("shared") / "tables"
            env = {"DICOMLAKE_WAREHOUSE_URL": shared.as_uri()}
        else:
            env, s3 = stack.enter_context(moto_s3(BUCKET))
            env |= {"DICOMLAKE_WAREHOUSE_URL": f"s3://{BUCKET}/tables"}
        servers = []
        for name in ("machine-a", "machine-b"):
            server = start_server(tmp_path_factory.mktemp(name), database_url, env)
            stack.callback(server.stop)
            servers.append(server)
        yield Machines(servers[0], servers[1], database_url, request.param, shared, s3)


def api(server: Server, project: str, path: str) -> str:
    return f"{server.url}/bigquery/v2/projects/{project}/{path}"


def on(client: bigquery.Client, server: Server) -> bigquery.Client:
    """A client of the same project, talking to another machine."""
    return bigquery.Client(
        project=client.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )


def wait_done(server: Server, project: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(api(server, project, f"jobs/{job_id}"), timeout=30)
        assert response.status_code == 200, response.text
        if response.json()["status"]["state"] == "DONE":
            return response.json()
        assert time.monotonic() < deadline, f"job {job_id} not done after {timeout} s: {response.json()}"
        time.sleep(0.05)


def test_a_job_of_one_machine_is_read_page_by_page_through_the_other(machines: Machines) -> None:
    first = bigquery_client(machines.a, "shared")
    second = on(first, machines.b)
    job_id = f"numbers_{uuid.uuid4().hex[:8]}"
    first.query(NUMBERS, job_id=job_id, job_retry=None)  # jobs.insert through machine A

    seen = second.get_job(job_id)  # jobs.get through machine B
    assert seen.job_id == job_id and seen.query == NUMBERS
    done = wait_done(machines.b, first.project, job_id)
    assert "errorResult" not in done["status"], done

    # getQueryResults through B, page by page with pageToken: the rows of the result, each once, in order.
    rows, token, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"maxResults": 1000}
        if token:
            params["pageToken"] = token
        page = requests.get(api(machines.b, first.project, f"queries/{job_id}"), params=params, timeout=30).json()
        assert page["jobComplete"] is True and page["totalRows"] == str(ROWS), page
        rows += [(int(r["f"][0]["v"]), r["f"][1]["v"]) for r in page["rows"]]
        pages += 1
        token = page.get("pageToken")
        if token is None:
            break
    assert pages == 3
    assert rows == [(x, f"row {x}") for x in range(1, ROWS + 1)]

    # The client pages alike through either machine.
    for client in (second, first):
        result = client.get_job(job_id).result(page_size=700)
        assert [(r["x"], r["label"]) for r in result] == rows

    # The record is a row of the shared index; the result lies under the warehouse URL, not in a data dir.
    engine = sa.create_engine(machines.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT done, cancel FROM dicomlake_query_jobs WHERE project = :p AND job_id = :j"),
                {"p": first.project, "j": job_id},
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in found] == [(True, False)]
    assert f"_jobs/{first.project}/{job_id}.arrow" in machines.result_objects()
    for server in (machines.a, machines.b):
        assert not list(server.data_dir.rglob(f"{job_id}*")), f"a file of the job in {server.data_dir}"

    # The same job id again, through the other machine: BigQuery's duplicate.
    with pytest.raises(Conflict):
        second.query("SELECT 1 AS x", job_id=job_id, job_retry=None)
    first.close()
    second.close()


def test_a_job_running_on_one_machine_is_cancelled_through_the_other(machines: Machines) -> None:
    project = f"cancel-{uuid.uuid4().hex[:10]}"
    job_id = f"runaway_{uuid.uuid4().hex[:8]}"
    body = {"jobReference": {"jobId": job_id}, "configuration": {"query": {"query": RUNAWAY, "useLegacySql": False}}}
    inserted = requests.post(api(machines.a, project, "jobs"), json=body, timeout=30)
    assert inserted.status_code == 200, inserted.text

    running = requests.get(api(machines.b, project, f"jobs/{job_id}"), timeout=30)
    assert running.status_code == 200, running.text
    assert running.json()["status"] == {"state": "RUNNING"}
    # Not done a moment later either: the query runs on machine A until it is cancelled.
    time.sleep(1)
    assert requests.get(api(machines.b, project, f"jobs/{job_id}"), timeout=30).json()["status"]["state"] == "RUNNING"

    cancelled_at = time.monotonic()
    cancelled = requests.post(api(machines.b, project, f"jobs/{job_id}/cancel"), timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["kind"] == "bigquery#jobCancelResponse"
    assert cancelled.json()["job"]["jobReference"]["jobId"] == job_id

    done = wait_done(machines.a, project, job_id, timeout=20)
    assert time.monotonic() - cancelled_at < 10
    assert done["status"]["errorResult"] == {
        "reason": "stopped",
        "message": "Job execution was cancelled: User requested cancellation",
    }
    assert wait_done(machines.b, project, job_id)["status"] == done["status"]
    failed = requests.get(api(machines.b, project, f"queries/{job_id}"), timeout=30)
    assert failed.status_code == 400 and failed.json()["error"]["errors"][0]["reason"] == "stopped"
    assert not [o for o in machines.result_objects() if job_id in o]


def test_an_unknown_job_is_not_found_on_either_machine(machines: Machines) -> None:
    for server in (machines.a, machines.b):
        for path in ("jobs/nope", "queries/nope", "jobs/nope/cancel"):
            method = requests.post if path.endswith("cancel") else requests.get
            response = method(api(server, "some-project", path), timeout=30)
            assert response.status_code == 404, response.text
            assert response.json()["error"]["errors"][0]["reason"] == "notFound"


# ---- one machine, SQLite --------------------------------------------------------------------------


def test_on_sqlite_a_job_is_a_row_of_the_index_and_its_result_is_under_the_tables(tmp_path: Path) -> None:
    server = start_server(tmp_path / "machine")
    try:
        client = bigquery_client(server, "alone")
        job_id = f"numbers_{uuid.uuid4().hex[:8]}"
        result = client.query(NUMBERS, job_id=job_id, job_retry=None).result(page_size=900)
        assert [(r["x"], r["label"]) for r in result] == [(x, f"row {x}") for x in range(1, ROWS + 1)]
        page = requests.get(
            api(server, client.project, f"queries/{job_id}"), params={"pageToken": "2400"}, timeout=30
        ).json()
        assert [int(r["f"][0]["v"]) for r in page["rows"]] == list(range(2401, ROWS + 1))
        assert "pageToken" not in page
        client.close()
    finally:
        server.stop()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'machine' / 'index.sqlite'}")
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT job_id, done FROM dicomlake_query_jobs")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in found] == [(job_id, 1)]
    results = tmp_path / "machine" / "tables" / "_jobs" / client.project / f"{job_id}.arrow"
    assert results.is_file()


def test_expired_jobs_go_with_their_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = IcebergWarehouse(f"sqlite:///{tmp_path / 'index.sqlite'}", (tmp_path / "tables").as_uri(), tmp_path / "wh")
    old = jobs.start(wh, "p", "SELECT 1 AS x")
    finish(wh, old)
    results = tmp_path / "tables" / "_jobs" / "p" / f"{old.job_id}.arrow"
    assert results.is_file()
    # A day later, for the process that accepts the next job.
    monkeypatch.setattr(jobs, "_expired_at", {})
    monkeypatch.setattr(jobs, "_now_ms", lambda: time.time_ns() // 1_000_000 + jobs.JOB_TTL_SECONDS * 1000 + 1000)
    new = jobs.start(wh, "p", "SELECT 2 AS x")
    monkeypatch.undo()
    with pytest.raises(NotFound):
        jobs.get(wh, "p", old.job_id)
    assert not results.exists()
    assert finish(wh, new).total_rows == 1


def finish(wh: IcebergWarehouse, job: jobs.Job) -> jobs.Job:
    deadline = time.monotonic() + 20
    while not job.done:
        assert time.monotonic() < deadline, f"job {job.job_id} not done"
        time.sleep(0.02)
        job = jobs.get(wh, job.project, job.job_id)
    assert job.error is None, job.error
    return job


def test_a_job_of_a_machine_not_seen_for_a_while_ends_with_an_error(tmp_path: Path) -> None:
    wh = IcebergWarehouse(f"sqlite:///{tmp_path / 'index.sqlite'}", (tmp_path / "tables").as_uri(), tmp_path / "wh")
    running = jobs.start(wh, "p", RUNAWAY, timeout_ms=3000)
    assert not jobs.get(wh, "p", running.job_id).done
    # As if another host ran it and had stopped marking it seen a while ago.
    stale = time.time_ns() // 1_000_000 - int(jobs.STALE_SECONDS * 1000) - 1000
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with engine.begin() as conn:
            conn.execute(
                jobs.records.update()
                .where(jobs.records.c.job_id == running.job_id)
                .values(owner="elsewhere:1", seen_ms=stale)
            )
    finally:
        engine.dispose()
    gone = jobs.get(wh, "p", running.job_id)
    assert gone.done and gone.error is not None and gone.error["reason"] == "backendError", gone.error
    # Its own process, still running it, records its end as usual.
    deadline = time.monotonic() + 20
    while (job := jobs.get(wh, "p", running.job_id)).error["reason"] != "timeout":  # type: ignore[index]
        assert time.monotonic() < deadline, job.error
        time.sleep(0.05)
