"""Connections to a PostgreSQL index: reads without BEGIN/ROLLBACK, and pooled connections that the server closed
while they sat idle are replaced before use, not handed to a request."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from conftest import throwaway_postgres
from dicomlake.storage import db as db_module
from dicomlake.storage.db import Database


def test_reads_on_postgresql_open_no_transaction() -> None:
    with throwaway_postgres("dicomlake_reads") as url:
        db = Database(url)
        with db.read() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()
            in_transaction = conn.exec_driver_sql("SELECT now() <> statement_timestamp()").scalar_one()
        db.dispose()
    # now() is the start of the transaction: in autocommit every statement is its own.
    assert in_transaction is False


def test_a_connection_closed_by_the_server_while_idle_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with throwaway_postgres("dicomlake_idle") as url:
        db = Database(url)
        with db.read() as conn:
            first = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(url, autocommit=True) as other:  # what a server restart does to the idle connection
            other.execute("SELECT pg_terminate_backend(%s)", (first,))
        monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)
        pids = set()
        for _ in range(3):  # whichever pooled connection comes out, the read succeeds
            with db.read() as conn:
                pids.add(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        db.dispose()
    assert first not in pids


def test_a_connection_used_a_moment_ago_is_not_pinged(monkeypatch: pytest.MonkeyPatch) -> None:
    pings = []
    with throwaway_postgres("dicomlake_ping") as url:
        db = Database(url)
        monkeypatch.setattr(db.engine.dialect, "do_ping", lambda conn: pings.append(conn) or True)
        for _ in range(5):
            with db.read() as conn:
                conn.exec_driver_sql("SELECT 1")
        monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)
        with db.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        db.dispose()
    assert len(pings) == 1
