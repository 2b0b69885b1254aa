"""The parts one dicomlake process works with, opened from its settings: index database, blob store,
the buckets of imports, and a scratch directory for request bodies too large to keep in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomlake.config import Settings
from dicomlake.storage.blobs import BlobStore
from dicomlake.storage.buckets import Buckets
from dicomlake.storage.db import Database
from dicomlake.storage.journal import Journal


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    buckets: Buckets
    scratch_dir: Path

    def close(self) -> None:
        self.blobs.journal.close()
        self.db.dispose()


def open_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    db = Database(settings.resolved_database_url)
    db.create_schema()
    blobs = BlobStore(settings.resolved_blob_url, Journal(settings.data_dir / "journal"))
    return Services(settings=settings, db=db, blobs=blobs, buckets=Buckets(settings.data_dir), scratch_dir=scratch)
