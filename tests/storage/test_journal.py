"""The blob journal: what it keeps, when it lets go, and what it hands to recovery."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dicomlake.storage import journal as journal_module
from dicomlake.storage.journal import Journal


def test_keys_of_a_dead_process_are_left_over(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max, so never a live process
    (tmp_path / f"{socket.gethostname()}-{dead_pid}-0.keys").write_text("1/a/b/c.x.dcm\n1/a/b/d.y.dcm\n")
    (tmp_path / f"otherhost-{dead_pid}-0.keys").write_text("1/a/b/e.z.dcm\n")
    journal = Journal(tmp_path)
    leftovers = list(journal.leftovers())
    assert [(p.name, keys) for p, keys in leftovers] == [
        (f"{socket.gethostname()}-{dead_pid}-0.keys", ["1/a/b/c.x.dcm", "1/a/b/d.y.dcm"])
    ]


def test_a_journal_another_process_recovers_meanwhile_is_skipped(tmp_path: Path) -> None:
    dead = [2**22 + 12345, 2**22 + 12346]
    for pid in dead:
        (tmp_path / f"{socket.gethostname()}-{pid}-0.keys").write_text(f"1/a/b/{pid}.x.dcm\n")
    leftovers = Journal(tmp_path).leftovers()
    first_path, _ = next(leftovers)
    # Both files were listed; the second is removed (by another process's recovery) before it is read.
    (tmp_path / f"{socket.gethostname()}-{dead[1]}-0.keys").unlink()
    assert first_path.name.startswith(f"{socket.gethostname()}-{dead[0]}-")
    assert list(leftovers) == []


def test_own_keys_are_not_left_over_and_closing_removes_the_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with journal.recording(["1/s/se/i.u.dcm"]):
        assert list(journal.leftovers()) == []
        assert "1/s/se/i.u.dcm" in (tmp_path / f"{socket.gethostname()}-{os.getpid()}-0.keys").read_text()
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_a_full_generation_is_deleted_once_its_batches_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 10)
    journal = Journal(tmp_path)
    first = journal.recording(["1/s/se/first.u.dcm"])
    first.__enter__()
    with journal.recording(["1/s/se/second.u.dcm"]):
        assert len(list(tmp_path.iterdir())) == 2  # generation 0 still has a batch in flight
    first.__exit__(None, None, None)
    assert [p.name for p in tmp_path.iterdir()] == [f"{socket.gethostname()}-{os.getpid()}-1.keys"]
