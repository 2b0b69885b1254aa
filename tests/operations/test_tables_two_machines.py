"""Two machines, one table: two `dicomlake serve` processes with data dirs of their own share one PostgreSQL index
and one S3-compatible object store (moto on 127.0.0.1) for blobs and Iceberg tables. A store streaming to a table
takes STOWs on both, one machine is SIGKILLed mid-stream and restarted, and the table, read through each machine's
BigQuery API and through pyiceberg on the shared catalog, holds exactly one CREATE row per acknowledged instance.
An export to a table from one machine while the other streams into another table of the same dataset works."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import pytest
import requests
import sqlalchemy
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from pydicom.uid import generate_uid

from conftest import (
    Server,
    Store,
    bigquery_client,
    dicom_file,
    eventually,
    make_store,
    moto_s3,
    start_server,
    stow,
    throwaway_postgres,
    wait_done,
)
from dicomlake.warehouse.stream_buffer import _lock_key

BLOBS, WAREHOUSE = "lake-blobs", "lake-warehouse"
KINDS = ("CT_small.dcm", "MR_small.dcm")
# Streamed rows reach the Iceberg files within FLUSH_SECONDS (10 s) of the stream loop's look (every 2 s); the
# bound leaves room for two busy cores.
SETTLE_SECONDS = 60.0
# A kill between STOWs may land in a flush: the flush lock goes with the killed process (see the last test).
AFTER_A_KILL_SECONDS = SETTLE_SECONDS


@dataclass
class Lake:
    """Two machines on one index and one object store, and a BigQuery dataset `lake` made through the first."""

    machines: tuple[Server, Server]
    database_url: str
    s3: dict[str, str]
    project: str

    def bigquery(self, server: Server) -> bigquery.Client:
        return bigquery.Client(
            project=self.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
        )

    def logs(self) -> str:
        return "\n".join(
            f"---- {m.data_dir.name}/server.log (last 4000 characters) ----\n"
            + (m.data_dir / "server.log").read_text(errors="replace")[-4000:]
            for m in self.machines
        )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(throwaway_postgres("dicomlake_two_machines"))
        s3, client = stack.enter_context(moto_s3(BLOBS, WAREHOUSE))
        env = s3 | {"DICOMLAKE_BLOB_URL": f"s3://{BLOBS}", "DICOMLAKE_WAREHOUSE_URL": f"s3://{WAREHOUSE}/tables"}
        machines = []
        for name in ("machine-a", "machine-b"):
            server = start_server(tmp_path_factory.mktemp(name), database_url, env)
            stack.callback(server.stop)
            machines.append(server)
        first = bigquery_client(machines[0], "two")
        first.create_dataset("lake")
        first.close()
        yield Lake((machines[0], machines[1]), database_url, s3, first.project)


def instances(count: int) -> list[tuple[str, bytes]]:
    """`count` distinct instances (SOPInstanceUID, bytes) made from the test files under new UIDs, ten a series."""
    sources = [pydicom.dcmread(dicom_file(name)) for name in KINDS]
    made = []
    study = series = ""
    for i in range(count):
        if i % 10 == 0:
            study, series = generate_uid(), generate_uid()
        ds = sources[i % len(sources)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        made.append((str(ds.SOPInstanceUID), out.getvalue()))
    return made


def streaming_store(lake: Lake, table: str) -> Store:
    store = make_store(lake.machines[0])
    configs = [{"bigqueryDestination": {"tableUri": f"bq://{lake.project}.lake.{table}"}}]
    response = requests.patch(
        store.url, params={"updateMask": "streamConfigs"}, json={"streamConfigs": configs}, timeout=30
    )
    assert response.status_code == 200, response.text
    return store


def on(store: Store, server: Server) -> Store:
    """The same store, addressed through another machine."""
    return Store(server, store.project, store.location, store.dataset, store.store)


def created_through_api(lake: Lake, server: Server, table: str, where: str = "Type = 'CREATE'") -> Counter[str]:
    sql = f"SELECT SOPInstanceUID, COUNT(*) AS n FROM `{lake.project}.lake.{table}` WHERE {where} GROUP BY 1"
    client = lake.bigquery(server)
    try:
        return Counter({row["SOPInstanceUID"]: row["n"] for row in client.query_and_wait(sql)})
    finally:
        client.close()


def created_through_pyiceberg(lake: Lake, table: str, only_created: bool = True) -> Counter[str]:
    """The CREATE rows of the table's Iceberg files, read as an outside engine would: pyiceberg on the shared
    catalog (it does not see the streaming buffer, only what was flushed)."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(
        "dicomlake",
        uri=lake.database_url.replace("postgresql://", "postgresql+psycopg://", 1),
        **{
            "s3.endpoint": lake.s3["AWS_ENDPOINT_URL"],
            "s3.access-key-id": lake.s3["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": lake.s3["AWS_SECRET_ACCESS_KEY"],
            "s3.region": lake.s3["AWS_REGION"],
        },
    )
    try:
        found = catalog.load_table(f"{lake.project}.lake.{table}")
        assert found.metadata_location.startswith(f"s3://{WAREHOUSE}/tables/"), found.metadata_location
        rows = found.scan(selected_fields=("SOPInstanceUID", "Type")).to_arrow().to_pylist()
    finally:
        catalog.engine.dispose()
    return Counter(r["SOPInstanceUID"] for r in rows if r["Type"] == "CREATE" or not only_created)


def settle(lake: Lake, check: Callable[[], Any], what: str, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until `check()` passes; on failure, say what and show both machines' logs."""
    try:
        eventually(check, timeout)
    except Exception as exc:
        raise AssertionError(f"{what}: {exc}\n{lake.logs()}") from None


def exactly_once(acknowledged: list[str]) -> Callable[[Counter[str]], None]:
    def check(found: Counter[str]) -> None:
        wanted = Counter(acknowledged)
        assert found == wanted, (
            f"{len(found)} SOPs in the table for {len(wanted)} acknowledged; "
            f"missing {sorted(wanted - found)[:5]}, extra or doubled {sorted((found - wanted).items())[:5]}"
        )

    return check


def test_rows_streamed_through_two_machines_one_killed_are_in_the_table_once(lake: Lake) -> None:
    first, second = lake.machines
    store = streaming_store(lake, "instances")
    acknowledged: list[str] = []
    for i, (sop, data) in enumerate(instances(60)):
        if i == 24:  # the last STOW went to the second machine: its stream events may be anywhere on their way
            second.stop(signal.SIGKILL)
        if i == 36:
            second.restart()
        machine = second if i % 2 and second.process.poll() is None else first
        stow(on(store, machine), data)
        acknowledged.append(sop)
    once = exactly_once(acknowledged)

    for machine in lake.machines:
        settle(
            lake,
            lambda machine=machine: once(created_through_api(lake, machine, "instances")),
            f"the BigQuery API of {machine.data_dir.name}",
        )
    settle(
        lake,
        lambda: once(created_through_pyiceberg(lake, "instances")),
        "pyiceberg on the shared catalog",
        AFTER_A_KILL_SECONDS,
    )
    for machine in lake.machines:  # once flushed, the BigQuery API reads the same rows from the Iceberg files
        once(created_through_api(lake, machine, "instances"))


def test_an_export_from_one_machine_while_the_other_streams_to_the_same_dataset(lake: Lake) -> None:
    first, second = lake.machines
    store = streaming_store(lake, "streamed")
    made = instances(40)
    for _, data in made[:16]:
        stow(store, data)
    stored = [sop for sop, _ in made[:16]]
    export_body = {
        "bigqueryDestination": {"tableUri": f"bq://{lake.project}.lake.exported", "writeDisposition": "WRITE_TRUNCATE"}
    }
    # A first export fills the table, so that the one during the stream has rows to truncate.
    started = requests.post(f"{on(store, second).url}:export", json=export_body, timeout=30)
    assert started.status_code == 200, started.text
    done = wait_done(second, started.json())
    assert "error" not in done, f"{done}\n{lake.logs()}"

    streaming_failed: list[BaseException] = []
    streamed_some = threading.Event()

    def keep_streaming() -> None:
        try:
            for n, (sop, data) in enumerate(made[16:]):
                stow(store, data)
                stored.append(sop)
                if n == 3:
                    streamed_some.set()
                time.sleep(0.05)
        except BaseException as exc:
            streaming_failed.append(exc)
        finally:
            streamed_some.set()

    streamer = threading.Thread(target=keep_streaming)
    streamer.start()
    try:
        streamed_some.wait(60)
        before_export = set(stored)
        started = requests.post(f"{on(store, second).url}:export", json=export_body, timeout=30)
        assert started.status_code == 200, started.text
        done = wait_done(second, started.json())
        streamed_meanwhile = len(stored) - len(before_export)
    finally:
        streamer.join(120)
    assert not streaming_failed, streaming_failed
    assert streamed_meanwhile > 0, "no STOW was acknowledged while the export ran: nothing ran at once"
    assert "error" not in done, f"{done}\n{lake.logs()}"

    exported = created_through_api(lake, first, "exported", where="true")  # every row, whatever its Type
    assert set(exported.values()) == {1}, f"an instance exported twice: {exported.most_common(3)}\n{lake.logs()}"
    assert before_export <= set(exported) <= set(stored)
    assert done["metadata"]["counter"] == {"success": str(len(exported))}
    assert created_through_api(lake, first, "exported") == exported  # and each a CREATE row
    assert created_through_api(lake, second, "exported", where="true") == exported
    assert created_through_pyiceberg(lake, "exported", only_created=False) == exported

    once = exactly_once(stored)
    settle(lake, lambda: once(created_through_api(lake, second, "streamed")), "the stream beside the export")
    settle(lake, lambda: once(created_through_pyiceberg(lake, "streamed")), "pyiceberg on the streamed table")


def test_a_machine_killed_while_it_flushes_holds_up_the_tables_files_only_briefly(lake: Lake) -> None:
    first, second = lake.machines
    store = streaming_store(lake, "flushing")
    table_id = f"{lake.project}.lake.flushing"
    acknowledged = []
    first.process.send_signal(signal.SIGSTOP)  # the second machine delivers and flushes alone
    try:
        for sop, data in instances(10):
            stow(on(store, second), data)
            acknowledged.append(sop)
        catalog = sqlalchemy.create_engine(lake.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            deadline = time.monotonic() + SETTLE_SECONDS
            with catalog.connect() as conn:
                while time.monotonic() < deadline:
                    # The flush lock: PostgreSQL advisory lock (1, key) of the flushing process's session.
                    held = conn.execute(
                        sqlalchemy.text(
                            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 1 AND objsubid = 2 "
                            "AND objid = :oid"
                        ),
                        {"oid": _lock_key(table_id) & 0xFFFFFFFF},
                    ).first()
                    conn.rollback()
                    if held is not None:
                        break
                    time.sleep(0.005)
                else:
                    raise RuntimeError(f"the second machine did not flush {table_id} within {SETTLE_SECONDS:g} s")
        finally:
            catalog.dispose()
        second.stop(signal.SIGKILL)
    finally:
        first.process.send_signal(signal.SIGCONT)
    try:
        # The first machine's stream loop takes the flushes over: within a flush interval and a short lease.
        settle(
            lake,
            lambda: exactly_once(acknowledged)(created_through_pyiceberg(lake, "flushing")),
            "pyiceberg after the flushing machine died",
            timeout=30,
        )
    finally:
        second.restart()
