"""Several processes on one project file, as `serve --workers` and `dicomlake worker` are: DuckDB lets one process
open it at a time, so calls wait their turn, and a file held for too long gives a clear error."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dicomlake.errors import NotFound, Unavailable
from dicomlake.warehouse import embedded
from dicomlake.warehouse.embedded import TableRef, Warehouse

T = TableRef("my-project", "dicom", "instances")

APPENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dicomlake.warehouse import embedded
    wh = embedded.Warehouse(Path(sys.argv[1]))
    name, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ref = embedded.TableRef("my-project", "dicom", "instances")
    fields = [{"name": "SOPInstanceUID", "type": "STRING"}, {"name": name, "type": "INTEGER"}]
    for b in range(batches):
        rows = [{"SOPInstanceUID": f"{name}.{b}.{i}", name: i} for i in range(size)]
        embedded.append(wh, ref, fields, rows)
    """
)

HOLDER = textwrap.dedent(
    """
    import sys, duckdb
    conn = duckdb.connect(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.read()
    conn.close()
    """
)


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse.in_data_dir(tmp_path)
    embedded.create_dataset(warehouse, "my-project", "dicom")
    return warehouse


def test_two_processes_appending_at_once_lose_no_row_and_both_widen_the_table(wh: Warehouse) -> None:
    batches, size = 12, 100
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(wh.root), column, str(batches), str(size)])
        for column in ("FirstWriter", "SecondWriter")
    ]
    # Meanwhile this process reads, taking its turns on the file too.
    counts = []
    while any(w.poll() is None for w in writers):
        with contextlib.suppress(NotFound):
            counts.append(embedded.row_count(wh, T))
        time.sleep(0.05)
    assert [w.wait() for w in writers] == [0, 0]

    assert embedded.row_count(wh, T) == 2 * batches * size
    assert counts == sorted(counts)
    names = [f["name"] for f in embedded.get_table(wh, T).fields]
    assert sorted(names) == ["FirstWriter", "SOPInstanceUID", "SecondWriter"]


def test_a_file_held_longer_than_the_lock_timeout_is_unavailable_then_usable_again(
    wh: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(wh.file("my-project"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        monkeypatch.setattr(embedded, "LOCK_TIMEOUT", 0.3)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="stayed locked by another dicomlake process for 0.3 s"):
            embedded.get_dataset(wh, "my-project", "dicom")
        assert 0.3 <= time.monotonic() - started < 5

        monkeypatch.setattr(embedded, "LOCK_TIMEOUT", 30)
        releaser = time.monotonic()
        assert holder.stdin is not None
        holder.stdin.close()
        assert embedded.get_dataset(wh, "my-project", "dicom").dataset == "dicom"
        assert time.monotonic() - releaser < 10
    finally:
        holder.kill()
        holder.wait()
