"""`dicomlake serve --workers 2` under google-cloud-bigquery: either process may answer any request, so pages of
a job come from its one stored result, and both processes take turns on the project file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bigquery_rows import SCHEMA, all_rows
from conftest import start_server, warehouse_of
from dicomlake.warehouse.embedded import TableRef


def test_several_server_processes_share_tables_and_the_pages_of_each_others_jobs(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "workers", extra_env={"DICOMLAKE_WORKERS": "2"})
    try:
        bq = bigquery.Client(
            project="shared", credentials=AnonymousCredentials(), client_options={"api_endpoint": srv.url}
        )
        bq.create_dataset("dicom")
        warehouse_of(srv).append(TableRef("shared", "dicom", "instances"), SCHEMA, all_rows())
        everyone = sorted(r["SOPInstanceUID"] for r in all_rows())
        sql = "SELECT SOPInstanceUID FROM dicom.instances ORDER BY SOPInstanceUID"

        def one_round(n: int) -> list[str]:
            bq.query_and_wait(f"CREATE TABLE dicom.copy_{n} AS SELECT * FROM dicom.instances LIMIT {n}")
            return [r["SOPInstanceUID"] for r in bq.query_and_wait(sql, page_size=5)]

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one_round, range(1, 9))) == [everyone] * 8
        assert len(list(bq.list_tables("dicom"))) == 9
        bq.close()
    finally:
        srv.stop()
