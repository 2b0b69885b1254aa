"""A per-process list of blob keys written ahead of their index commit, so that a crash in between
leaves a record of the blobs to check instead of unreferenced objects nobody knows about.

Appending a line costs far less than the index transaction it replaces. Each process writes its own
file, `<host>-<pid>-<generation>.keys`; a generation is deleted once every batch recorded in it has
finished, and the files of dead processes are what `leftovers()` hands to recovery."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import FileIO
from pathlib import Path

ROTATE_BYTES = 4 * 1024 * 1024


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self._generation = 0
        self._in_flight: dict[int, int] = {}
        self._file = self._open(0)

    def _path(self, generation: int, pid: int | None = None) -> Path:
        return self.directory / f"{self.host}-{pid or os.getpid()}-{generation}.keys"

    def _open(self, generation: int) -> FileIO:
        return open(self._path(generation), "ab", buffering=0)

    @contextmanager
    def recording(self, keys: list[str]) -> Iterator[None]:
        """Record `keys` before their blobs are written; forget them once the block is over (committed or
        cleaned up by the caller)."""
        if not keys:
            yield
            return
        with self._lock:
            if self._file.tell() > ROTATE_BYTES:
                self._file.close()
                self._generation += 1
                self._file = self._open(self._generation)
            generation = self._generation
            self._in_flight[generation] = self._in_flight.get(generation, 0) + 1
            # One unbuffered write: a killed process leaves whole lines up to here.
            self._file.write("".join(k + "\n" for k in keys).encode())
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[generation] -= 1
                if not self._in_flight[generation] and generation != self._generation:
                    del self._in_flight[generation]
                    self._path(generation).unlink(missing_ok=True)

    def close(self) -> None:
        """End of this process: its journal files are done with once nothing is in flight."""
        with self._lock:
            self._file.close()
            if not any(self._in_flight.values()):
                for generation in [self._generation, *self._in_flight]:
                    self._path(generation).unlink(missing_ok=True)

    def leftovers(self) -> Iterator[tuple[Path, list[str]]]:
        """Journal files of dead processes on this host, with the keys they recorded."""
        for path in sorted(self.directory.glob(f"{self.host}-*-*.keys")):
            pid = int(path.name[len(self.host) + 1 :].split("-")[0])
            if pid == os.getpid() or process_alive(pid):
                continue
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue  # another process starting at the same time recovered it first
            yield path, [line for line in text.splitlines() if line.endswith(".dcm")]


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that id is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
