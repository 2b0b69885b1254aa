"""`dicomlake serve` runs the HTTP API on the embedded defaults (a SQLite index and a blob directory
inside --data-dir) unless told otherwise by flags or DICOMLAKE_* variables; `dicomlake worker` runs
long-running operations only, next to servers on the same index."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import click

from dicomlake.cli.common import fail as _fail
from dicomlake.config import ConfigError, Settings, convert, load
from dicomlake.dimse.peers import Peers
from dicomlake.dimse.processes import ListenerProcesses


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1; env DICOMLAKE_HOST).")
@click.option("--port", type=int, help="Port to listen on (default 8080; env DICOMLAKE_PORT).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Directory for the embedded index, blobs and buckets (default ./dicomlake-data).",
)
@click.option("--database-url", help="Index database, e.g. postgresql://host/db (default: SQLite in the data dir).")
@click.option("--blob-url", help="Blob store URL: file://, s3://, gs:// (default: a directory in the data dir).")
@click.option(
    "--auth-tokens-file",
    type=click.Path(path_type=Path),
    help="File with one accepted bearer token per line (env DICOMLAKE_AUTH_TOKENS takes a comma list).",
)
@click.option(
    "--insecure", is_flag=True, default=None, help="Allow listening on a non-loopback address without access tokens."
)
@click.option("--workers", type=int, help="Server processes (default 1; env DICOMLAKE_WORKERS).")
@click.option(
    "--dimse-port", type=int, help="Also listen for DIMSE on this port (default: none; env DICOMLAKE_DIMSE_PORT)."
)
@click.option(
    "--dimse-peers",
    type=click.Path(path_type=Path),
    help="File of the DIMSE peers, 'AE_TITLE host port' per line (env DICOMLAKE_DIMSE_PEERS).",
)
@click.option(
    "--cors-origins",
    help="Comma-separated origins whose pages may call the APIs (e.g. a viewer's), or * (env DICOMLAKE_CORS_ORIGINS).",
)
@click.option(
    "--forwarded-allow-ips",
    help="Comma-separated proxy addresses whose X-Forwarded-*/Forwarded headers are believed (default loopback).",
)
@click.option(
    "--bigquery-url",
    help="Send bq:// exports and streams to this BigQuery API, e.g. https://bigquery.googleapis.com "
    "(default: the embedded tables; env DICOMLAKE_BIGQUERY_URL).",
)
@click.option(
    "--warehouse-url",
    help="Where the tables' Iceberg files go: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or duckdb for "
    "the DuckDB files of the data dir (env DICOMLAKE_WAREHOUSE_URL).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity.")
def serve(**flags: object) -> None:
    """Run the DICOMweb and Healthcare API server."""
    try:
        for name in ("cors_origins", "forwarded_allow_ips", "bigquery_url", "warehouse_url"):
            if flags[name] is not None:
                flags[name] = convert(name, str(flags[name]))
        settings = load(**flags)
        settings.check_bind()
        settings.tokens  # noqa: B018 - read the tokens file now, so a bad path fails before binding
        Peers.read(settings.dimse_peers)  # a bad peers file fails here, before anything listens
        _run(settings)
    except ConfigError as exc:
        _fail(str(exc))


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory, as given to `dicomlake serve`.")
@click.option("--database-url", help="Index database, as given to `dicomlake serve`.")
@click.option("--blob-url", help="Blob store URL, as given to `dicomlake serve`.")
@click.option("--operation-threads", type=int, help="Worker threads (default 2; env DICOMLAKE_OPERATION_THREADS).")
@click.option(
    "--bigquery-url",
    help="Send bq:// exports and streams to this BigQuery API, e.g. https://bigquery.googleapis.com "
    "(default: the embedded tables; env DICOMLAKE_BIGQUERY_URL).",
)
@click.option(
    "--warehouse-url",
    help="Where the tables' Iceberg files go: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or duckdb for "
    "the DuckDB files of the data dir (env DICOMLAKE_WAREHOUSE_URL).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity.")
def worker(**flags: object) -> None:
    """Run long-running operations and stream delivery until stopped, sharing them with every other worker and
    server."""
    from dicomlake.services import open_services
    from dicomlake.startup import working

    try:
        for name in ("bigquery_url", "warehouse_url"):
            if flags[name] is not None:
                flags[name] = convert(name, str(flags[name]))
        settings = load(**flags)
    except ConfigError as exc:
        _fail(str(exc))
        return
    if settings.operation_threads < 1:
        _fail(f"operation threads must be at least 1, got {settings.operation_threads}")
    _log_to_stderr(settings)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with working(open_services(settings)):
        stopping.wait()


def _run(settings: Settings) -> None:
    import uvicorn

    from dicomlake.services import open_services

    _log_to_stderr(settings)
    # Create the schema once here, so that worker processes never race to create it.
    open_services(settings).close()
    listeners = ListenerProcesses(settings) if settings.dimse_port else None
    if listeners is not None:
        listeners.start()
    _export(settings)
    try:
        uvicorn.run(
            "dicomlake.api.app:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            timeout_keep_alive=30,
            # Forwarded headers are read by the application (api/middleware.py), with X-Forwarded-Host.
            proxy_headers=False,
        )
    finally:
        if listeners is not None:
            listeners.stop()


def _log_to_stderr(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _export(settings: Settings) -> None:
    """Hand the resolved settings to the server processes through their environment."""
    os.environ["DICOMLAKE_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ["DICOMLAKE_DATABASE_URL"] = settings.resolved_database_url
    os.environ["DICOMLAKE_BLOB_URL"] = settings.resolved_blob_url
    if settings.tokens:
        os.environ["DICOMLAKE_AUTH_TOKENS"] = ",".join(sorted(settings.tokens))
    os.environ["DICOMLAKE_CORS_ORIGINS"] = ",".join(settings.cors_origins)
    os.environ["DICOMLAKE_FORWARDED_ALLOW_IPS"] = ",".join(settings.forwarded_allow_ips)
    os.environ["DICOMLAKE_BIGQUERY_URL"] = settings.bigquery_url
    os.environ["DICOMLAKE_WAREHOUSE_URL"] = settings.resolved_warehouse_url
