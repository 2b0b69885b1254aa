"""Instances: store (parse, blob, one index transaction), look up, read back and delete.

An instance exists from the moment its index row commits. Its blob is written and made durable first,
under a key no other upload uses (built from its validated UIDs and 128 random bits), after the key is
recorded in the blob store's journal; a crash in between
leaves a journal line that `recover()` follows to remove the orphan, never a row without a blob
or a half-written blob."""

from __future__ import annotations

import mmap
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dicomlake.dicom.flatten import DROPPED_AT_INGEST, NUMBER_TEXT
from dicomlake.dicom.parse import DicomParseError, ParsedInstance, parse
from dicomlake.dicom.tags import SERIES_ATTRIBUTES, STUDY_ATTRIBUTES
from dicomlake.dicom.uids import InvalidUid, normalize_uid
from dicomlake.errors import NotFound
from dicomlake.storage.blobs import BlobStore, UnsafeKey, check_key
from dicomlake.storage.db import Database, instances, series, stream_events, studies
from dicomlake.store.catalog import StoreRef

# DICOM PS3.18 / PS3.4 failure reasons used in STOW responses.
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xA901
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")


@dataclass(frozen=True)
class Stored:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None


@dataclass(frozen=True)
class Failed:
    sop_class_uid: str | None
    sop_uid: str | None
    reason: int
    detail: str
    duplicate: bool = False


@dataclass(frozen=True)
class InstanceRow:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str
    number_of_frames: int
    blob_key: str
    blob_size: int
    storage_class: str
    metadata: str


def store_instance(
    db: Database,
    blobs: BlobStore,
    store: StoreRef,
    data: bytes | mmap.mmap,
    expected_study: str | None = None,
    storage_class: str = "STANDARD",
) -> Stored | Failed:
    """Store one Part 10 instance byte-exact; a failure says why and changes nothing.

    Group commit: instances that threads of this process store into the same store while another batch of
    theirs is being stored go together as the next batch, with one set of syncs and one index commit (several
    DIMSE associations, each waiting for its answer before it sends the next instance). A thread alone waits
    for nobody. Each instance is still stored or refused on its own."""
    entry = _Entry(data)
    key = (id(db), id(blobs), store.pk, expected_study, storage_class)
    with _groups_lock:
        _queued.setdefault(key, []).append(entry)
        entry.leads = key not in _running
        _running.add(key)
    if not entry.leads:
        entry.done.wait()
    if entry.leads:  # this thread stores what is queued (its own instance among it), then hands over
        with _groups_lock:
            batch = _queued.pop(key)
        try:
            _store_batch(db, blobs, store, batch, expected_study, storage_class)
        finally:
            with _groups_lock:
                waiting = _queued.get(key)
                if waiting:
                    waiting[0].leads = True
                    waiting[0].done.set()
                else:
                    _running.discard(key)
    if entry.error is not None:
        raise entry.error
    assert entry.result is not None
    return entry.result


class _Entry:
    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.leads = False
        self.done = threading.Event()
        self.result: Stored | Failed | None = None
        self.error: BaseException | None = None


_groups_lock = threading.Lock()
# Per (database, blob store, store, expected study, storage class): the instances waiting for the next batch,
# and whether a batch is being stored.
_queued: dict[tuple[Any, ...], list[_Entry]] = {}
_running: set[tuple[Any, ...]] = set()


def _store_batch(
    db: Database,
    blobs: BlobStore,
    store: StoreRef,
    batch: list[_Entry],
    expected_study: str | None,
    storage_class: str,
) -> None:
    try:
        try:
            results = store_instances(db, blobs, store, [e.data for e in batch], expected_study, storage_class)
            for e, result in zip(batch, results, strict=True):
                e.result = result
        except Exception:
            if len(batch) == 1:
                raise
            # What failed may be one instance's: each alone, as if it had come alone.
            for e in batch:
                try:
                    e.result = store_instances(db, blobs, store, [e.data], expected_study, storage_class)[0]
                except Exception as exc:
                    e.error = exc
    except BaseException as exc:
        for e in batch:
            e.error = e.error or exc
        raise
    finally:
        for e in batch:
            if not e.leads:
                e.done.set()


@dataclass
class _Pending:
    index: int
    parsed: ParsedInstance
    data: bytes | mmap.mmap  # a large STOW part is a mapped scratch file
    key: str
    uids: dict[str, Any]


def store_instances(
    db: Database,
    blobs: BlobStore,
    store: StoreRef,
    datas: Sequence[bytes | mmap.mmap],
    expected_study: str | None = None,
    storage_class: str = "STANDARD",
) -> list[Stored | Failed]:
    """Store several instances with two index transactions in all (not two each); one result per input,
    in order. Each instance is stored or refused on its own, exactly as if sent alone."""
    results: list[Stored | Failed | None] = [None] * len(datas)
    pending: list[_Pending] = []
    for index, data in enumerate(datas):
        outcome = _check(data, expected_study)
        if isinstance(outcome, Failed):
            results[index] = outcome
            continue
        key = f"{store.pk}/{outcome.study_uid}/{outcome.series_uid}/{outcome.sop_uid}.{os.urandom(16).hex()}.dcm"
        uids = {
            "store_pk": store.pk,
            "study_uid": outcome.study_uid,
            "series_uid": outcome.series_uid,
            "sop_uid": outcome.sop_uid,
        }
        pending.append(_Pending(index, outcome, data, key, uids))
    accepted: list[_Pending] = []
    seen: set[tuple[str, str, str]] = set()
    # Duplicates are refused before any blob is written; the unique key settles the rare race.
    with db.read() as conn:
        for item in pending:
            triple = (item.parsed.study_uid, item.parsed.series_uid, item.parsed.sop_uid)
            if triple in seen or conn.execute(_EXISTS, _where(item.uids)).first() is not None:
                results[item.index] = _duplicate(item.parsed)
                continue
            seen.add(triple)
            accepted.append(item)
    if not accepted:  # nothing new: no blob to write, no transaction to open
        return [r for r in results if r is not None]
    with blobs.journal.recording([item.key for item in accepted]):
        try:
            # Every blob of the batch is durable before the one commit that makes the batch visible.
            blobs.put_many([(item.key, item.data) for item in accepted])
            with db.write() as conn:
                _insert(conn, db, store, accepted, storage_class)
        except IntegrityError:
            # Another request stored one of these UID triples after our check: settle them one by one.
            for item in accepted:
                results[item.index] = _commit_one(db, blobs, store, item, storage_class)
            accepted = []
        except BaseException:
            for item in accepted:
                blobs.discard(item.key)
            raise
    for item in accepted:
        p = item.parsed
        results[item.index] = Stored(p.study_uid, p.series_uid, p.sop_uid, p.sop_class_uid)
    return [r for r in results if r is not None]


def _file_meta(parsed: ParsedInstance) -> dict[str, Any]:
    """What the `file_meta` column keeps for the flattener: the group 0002 elements, the sequences the parser
    left out of the metadata for their size (they become DroppedTags in tables), and the text of DS and IS values
    their JSON numbers do not write back (tables show the text)."""
    if not parsed.dropped and not parsed.number_text:
        return parsed.file_meta
    meta = dict(parsed.file_meta)
    if parsed.dropped:
        meta[DROPPED_AT_INGEST] = parsed.dropped
    if parsed.number_text:
        meta[NUMBER_TEXT] = parsed.number_text
    return meta


def _check(data: bytes | mmap.mmap, expected_study: str | None) -> ParsedInstance | Failed:
    try:
        parsed = parse(data)
    except DicomParseError as exc:
        return Failed(None, None, CANNOT_UNDERSTAND, str(exc))
    # The UIDs name the instance in URLs and its blob key: refused unless each is a UI value.
    try:
        sop_uid = normalize_uid(parsed.sop_uid, "SOPInstanceUID")
    except InvalidUid as exc:
        return Failed(parsed.sop_class_uid, None, CANNOT_UNDERSTAND, str(exc))
    try:
        parsed.study_uid = normalize_uid(parsed.study_uid, "StudyInstanceUID")
        parsed.series_uid = normalize_uid(parsed.series_uid, "SeriesInstanceUID")
    except InvalidUid as exc:
        return Failed(parsed.sop_class_uid, sop_uid, CANNOT_UNDERSTAND, str(exc))
    parsed.sop_uid = sop_uid
    if expected_study is not None and parsed.study_uid != expected_study:
        return Failed(
            parsed.sop_class_uid,
            parsed.sop_uid,
            STUDY_UID_MISMATCH,
            f"StudyInstanceUID {parsed.study_uid} does not match the study {expected_study} in the request URL",
        )
    return parsed


def _commit_one(db: Database, blobs: BlobStore, store: StoreRef, item: _Pending, storage_class: str) -> Stored | Failed:
    try:
        with db.write() as conn:
            _insert(conn, db, store, [item], storage_class)
    except IntegrityError:
        blobs.discard(item.key)
        return _duplicate(item.parsed)
    p = item.parsed
    return Stored(p.study_uid, p.series_uid, p.sop_uid, p.sop_class_uid)


def _duplicate(parsed: ParsedInstance) -> Failed:
    return Failed(
        parsed.sop_class_uid,
        parsed.sop_uid,
        PROCESSING_FAILURE,
        f"instance {parsed.study_uid}/{parsed.series_uid}/{parsed.sop_uid} already exists",
        duplicate=True,
    )


# Statements built once: building SQLAlchemy constructs per instance costs more than running them.
_P = sa.bindparam
_EXISTS = sa.select(sa.literal(1)).where(
    instances.c.store_pk == _P("w_store"),
    instances.c.study_uid == _P("w_study"),
    instances.c.series_uid == _P("w_series"),
    instances.c.sop_uid == _P("w_sop"),
)
_BLOB_OF = sa.select(instances.c.blob_key).where(
    instances.c.store_pk == _P("w_store"),
    instances.c.study_uid == _P("w_study"),
    instances.c.series_uid == _P("w_series"),
    instances.c.sop_uid == _P("w_sop"),
)
_INSERT_INSTANCE = instances.insert()
_INSERT_EVENT = stream_events.insert()
_COUNT_SERIES_INSTANCE = (
    series.update()
    .where(
        series.c.store_pk == _P("w_store"), series.c.study_uid == _P("w_study"), series.c.series_uid == _P("w_series")
    )
    .values(instance_count=series.c.instance_count + _P("n"))
)
_COUNT_STUDY_INSTANCE = (
    studies.update()
    .where(studies.c.store_pk == _P("w_store"), studies.c.study_uid == _P("w_study"))
    .values(instance_count=studies.c.instance_count + _P("n"), series_count=studies.c.series_count + _P("new_series"))
)
_MODALITIES_OF = sa.select(studies.c.modalities).where(
    studies.c.store_pk == _P("w_store"), studies.c.study_uid == _P("w_study")
)
_SET_MODALITIES = (
    studies.update()
    .where(studies.c.store_pk == _P("w_store"), studies.c.study_uid == _P("w_study"))
    .values(modalities=_P("modalities"))
)
_INSERT_IGNORE: dict[tuple[bool, str], sa.Insert] = {}


def _where(uids: dict[str, Any]) -> dict[str, Any]:
    return {
        "w_store": uids["store_pk"],
        "w_study": uids["study_uid"],
        "w_series": uids["series_uid"],
        "w_sop": uids["sop_uid"],
    }


def _insert_ignore(db: Database, table: sa.Table, returning: sa.Column | None = None) -> sa.Insert:
    statement = _INSERT_IGNORE.get((db.is_sqlite, table.name))
    if statement is None:
        statement = db.insert_ignore(table)
        if returning is not None:
            statement = statement.returning(returning)
        _INSERT_IGNORE[(db.is_sqlite, table.name)] = statement
    return statement


def _insert(conn: sa.Connection, db: Database, store: StoreRef, items: list[_Pending], storage_class: str) -> None:
    """Index rows for a batch of new instances: one multi-row insert for the instances, then one upsert
    and one count update per series and per study they belong to; a CREATE stream event each when the
    store streams to tables."""
    now = time.time()
    documents = [orjson.dumps(item.parsed.metadata) for item in items]
    rows = [
        {
            **item.uids,
            "sop_class_uid": item.parsed.sop_class_uid,
            "transfer_syntax_uid": item.parsed.transfer_syntax_uid,
            "instance_number": item.parsed.instance_number,
            "number_of_frames": item.parsed.number_of_frames,
            "blob_key": item.key,
            "blob_size": len(item.data),
            "storage_class": storage_class,
            "metadata": document.decode(),
            "metadata_size": len(document),
            "file_meta": orjson.dumps(_file_meta(item.parsed)).decode(),
            "created": now,
        }
        for item, document in zip(items, documents, strict=True)
    ]
    conn.execute(_INSERT_INSTANCE, rows)
    if store.streams:
        db.added_stream_events(conn)
        conn.execute(
            _INSERT_EVENT,
            [
                {
                    "store_pk": store.pk,
                    "type": "CREATE",
                    "study_uid": row["study_uid"],
                    "series_uid": row["series_uid"],
                    "sop_uid": row["sop_uid"],
                    "last_updated": now,
                    "storage_class": storage_class,
                    "blob_size": row["blob_size"],
                    "metadata": row["metadata"],
                    "file_meta": row["file_meta"],
                }
                for row in rows
            ],
        )
    by_series: dict[tuple[str, str], list[_Pending]] = {}
    for item in items:
        by_series.setdefault((item.parsed.study_uid, item.parsed.series_uid), []).append(item)
    # Per study: its first item, new instances, new series, and the modalities of the new series.
    by_study: dict[str, tuple[_Pending, int, int, set[str]]] = {}
    for (study_uid, _), members in by_series.items():
        first = members[0]
        meta = first.parsed.metadata
        # RETURNING, because PostgreSQL reports no rowcount for INSERT ... ON CONFLICT DO NOTHING.
        new_series = (
            conn.execute(
                _insert_ignore(db, series, series.c.series_uid),
                {
                    "store_pk": first.uids["store_pk"],
                    "study_uid": study_uid,
                    "series_uid": first.parsed.series_uid,
                    "modality": _first(meta, "00080060"),
                    "series_number": _text(_first(meta, "00200011")),
                    "series_description": _first(meta, "0008103E"),
                    "instance_count": 0,
                    "attributes": _subset(meta, SERIES_ATTRIBUTES),
                    "created": now,
                },
            ).first()
            is not None
        )
        conn.execute(_COUNT_SERIES_INSTANCE, {**_where(first.uids), "n": len(members)})
        head, count, added_series, modalities = by_study.get(study_uid, (first, 0, 0, set()))
        modality = _first(meta, "00080060")
        if new_series and modality:
            modalities.add(modality)
        by_study[study_uid] = (head, count + len(members), added_series + new_series, modalities)
    for study_uid, (first, count, added_series, added) in by_study.items():
        meta = first.parsed.metadata
        conn.execute(
            _insert_ignore(db, studies),
            {
                "store_pk": first.uids["store_pk"],
                "study_uid": study_uid,
                **person_name_columns("patient_name", _first(meta, "00100010")),
                **person_name_columns("referring_physician_name", _first(meta, "00080090")),
                "patient_id": _first(meta, "00100020"),
                "accession_number": _first(meta, "00080050"),
                "study_date": _date(_first(meta, "00080020")),
                "study_time": _first(meta, "00080030"),
                "study_id": _first(meta, "00200010"),
                "study_description": _first(meta, "00081030"),
                "series_count": 0,
                "instance_count": 0,
                "attributes": _subset(meta, STUDY_ATTRIBUTES),
                "created": now,
            },
        )
        where = _where(first.uids)
        conn.execute(_COUNT_STUDY_INSTANCE, {**where, "n": count, "new_series": added_series})
        if added:
            current = conn.execute(_MODALITIES_OF, where).scalar()
            known = set(current.split("\\")) if current else set()
            if not added <= known:
                conn.execute(_SET_MODALITIES, {**where, "modalities": "\\".join(sorted(known | added))})


def _first(meta: dict[str, Any], key: str) -> Any:
    element = meta.get(key)
    if not element:
        return None
    values = element.get("Value")
    return values[0] if values else None


def _date(value: Any) -> str | None:
    """YYYYMMDD for range matching; the pre-1993 form YYYY.MM.DD is accepted, anything else is not indexed."""
    if not isinstance(value, str):
        return None
    digits = value.replace(".", "")
    return digits if len(digits) == 8 and digits.isdigit() else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _subset(meta: dict[str, Any], keys: frozenset[str]) -> str:
    return orjson.dumps({k: v for k, v in meta.items() if k in keys}).decode()


_TOKEN_SPLIT = re.compile(r"[^\w]+")


def normalise_name(text: str) -> str:
    """Lower case without accents, so 'Müller' and 'muller' compare equal."""
    decomposed = unicodedata.normalize("NFKD", text)
    # Recomposed afterwards, so that one Hangul syllable stays one character for '?' to match.
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c))).lower()


def name_tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_SPLIT.split(normalise_name(text).replace("_", " ")) if t]


def person_name_columns(prefix: str, value: Any) -> dict[str, str | None]:
    groups = value if isinstance(value, dict) else {}
    columns: dict[str, str | None] = {}
    tokens: list[str] = []
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        text = groups.get(group)
        columns[f"{prefix}_{group.lower()}"] = normalise_name(text) if text else None
        if text:
            tokens.extend(name_tokens(text))
    columns[f"{prefix}_tokens"] = f" {' '.join(tokens)} " if tokens else None
    return columns


# ---- reading ----------------------------------------------------------------------------------

KEY_COLUMNS = (instances.c.study_uid, instances.c.series_uid, instances.c.sop_uid)
# The columns of an InstanceRow, in its order (metadata last).
ROW_COLUMNS = (
    instances.c.study_uid,
    instances.c.series_uid,
    instances.c.sop_uid,
    instances.c.sop_class_uid,
    instances.c.transfer_syntax_uid,
    instances.c.number_of_frames,
    instances.c.blob_key,
    instances.c.blob_size,
    instances.c.storage_class,
    instances.c.metadata,
)


def find(
    db: Database,
    store: StoreRef,
    study: str,
    series_uid: str | None = None,
    sop: str | None = None,
    with_metadata: bool = True,
) -> list[InstanceRow]:
    """The instances of a study, series or one instance, in a stable order; NotFound if there are none."""
    columns = ROW_COLUMNS if with_metadata else ROW_COLUMNS[:-1] + (sa.literal("").label("metadata"),)
    query = sa.select(*columns).where(instances.c.store_pk == store.pk, instances.c.study_uid == study)
    if series_uid is not None:
        query = query.where(instances.c.series_uid == series_uid)
    if sop is not None:
        query = query.where(instances.c.sop_uid == sop)
    query = query.order_by(instances.c.series_uid, instances.c.instance_number, instances.c.sop_uid)
    with db.read() as conn:
        rows = [InstanceRow(*row) for row in conn.execute(query)]
    if not rows:
        raise NotFound(_describe(study, series_uid, sop) + " not found")
    return rows


def _describe(study: str, series_uid: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"instance {study}/{series_uid}/{sop}"
    if series_uid is not None:
        return f"series {study}/{series_uid}"
    return f"study {study}"


def delete(
    db: Database, blobs: BlobStore, store: StoreRef, study: str, series_uid: str | None = None, sop: str | None = None
) -> int:
    """Delete a study, series or instance; returns how many instances went. NotFound if none matched."""
    found = keys_of(db, store, study, series_uid, sop)
    if not found:
        raise NotFound(_describe(study, series_uid, sop) + " not found")
    return delete_keys(db, blobs, store, found)


Key = tuple[str, str, str]  # (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) within one store


def keys_of(
    db: Database, store: StoreRef, study: str, series_uid: str | None = None, sop: str | None = None
) -> list[Key]:
    """The UID triples of a study's, series' or one instance's instances, in key order."""
    where = [instances.c.store_pk == store.pk, instances.c.study_uid == study]
    if series_uid is not None:
        where.append(instances.c.series_uid == series_uid)
    if sop is not None:
        where.append(instances.c.sop_uid == sop)
    with db.read() as conn:
        return [tuple(row) for row in conn.execute(sa.select(*KEY_COLUMNS).where(*where).order_by(*KEY_COLUMNS))]


def select_by_keys(store: StoreRef, keys: list[Key], *extra: sa.ColumnElement[Any]) -> sa.Select:
    """The instances of `keys` (and maybe a few more with the same SOPInstanceUID in other series: filter
    on the triple), found through the (store, SOPInstanceUID) index: a row-value IN is a full scan in SQLite."""
    return sa.select(*KEY_COLUMNS, instances.c.blob_key, *extra).where(
        instances.c.store_pk == store.pk, instances.c.sop_uid.in_({k[2] for k in keys})
    )


def delete_keys(db: Database, blobs: BlobStore, store: StoreRef, keys: list[Key]) -> int:
    """Delete the instances with these UID triples (those still there) in one transaction, then their
    blobs; returns how many went."""
    wanted = {tuple(k) for k in keys}
    with db.write() as conn:
        rows = [row for row in conn.execute(select_by_keys(store, keys)) if tuple(row[:3]) in wanted]
        if not rows:
            return 0
        conn.execute(
            instances.delete().where(
                instances.c.store_pk == store.pk,
                instances.c.sop_uid.in_({row.sop_uid for row in rows}),  # the index; the triple decides
                sa.tuple_(*KEY_COLUMNS).in_([tuple(row[:3]) for row in rows]),
            )
        )
        if store.streams:
            db.added_stream_events(conn)
            now = time.time()
            conn.execute(
                _INSERT_EVENT,
                [
                    {
                        "store_pk": store.pk,
                        "type": "DELETE",
                        "study_uid": row.study_uid,
                        "series_uid": row.series_uid,
                        "sop_uid": row.sop_uid,
                        "last_updated": now,
                    }
                    for row in rows
                ],
            )
        affected: dict[str, set[str]] = {}
        for row in rows:
            affected.setdefault(row.study_uid, set()).add(row.series_uid)
        for study, series_uids in affected.items():
            _refresh_counts(conn, store.pk, study, series_uids)
    for row in rows:
        blobs.delete(row.blob_key)
    return len(rows)


def _refresh_counts(conn: sa.Connection, store_pk: int, study: str, series_uids: Iterable[str]) -> None:
    for series_uid in series_uids:
        count = conn.execute(
            sa.select(sa.func.count()).where(
                instances.c.store_pk == store_pk, instances.c.study_uid == study, instances.c.series_uid == series_uid
            )
        ).scalar_one()
        match = (series.c.store_pk == store_pk, series.c.study_uid == study, series.c.series_uid == series_uid)
        if count:
            conn.execute(series.update().where(*match).values(instance_count=count))
        else:
            conn.execute(series.delete().where(*match))
    counts = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(series.c.instance_count), 0)).where(
            series.c.store_pk == store_pk, series.c.study_uid == study
        )
    ).one()
    match_study = (studies.c.store_pk == store_pk, studies.c.study_uid == study)
    if counts[0]:
        modalities = (
            conn.execute(
                sa.select(series.c.modality)
                .distinct()
                .where(series.c.store_pk == store_pk, series.c.study_uid == study, series.c.modality.is_not(None))
            )
            .scalars()
            .all()
        )
        conn.execute(
            studies.update()
            .where(*match_study)
            .values(series_count=counts[0], instance_count=counts[1], modalities="\\".join(sorted(modalities)) or None)
        )
    else:
        conn.execute(studies.delete().where(*match_study))


def recover(db: Database, blobs: BlobStore) -> int:
    """Remove the blobs that dead processes of this host wrote but never committed; returns how many."""
    removed = 0
    for journal_file, keys in blobs.journal.leftovers():
        for key in keys:
            try:
                check_key(key)
            except UnsafeKey:
                continue  # recorded by a version that let UIDs into keys: never followed outside the blob root
            if not _committed(db, key):
                blobs.discard(key)
                removed += 1
        journal_file.unlink(missing_ok=True)
    return removed


def _committed(db: Database, key: str) -> bool:
    # Keys are "<store>/<study>/<series>/<sop>.<unique>.dcm": look the instance up by its primary key.
    parts = key.split("/")
    if len(parts) != 4 or not parts[0].isdigit():
        return False
    sop = parts[3].rsplit(".", 2)[0]
    uids = {"w_store": int(parts[0]), "w_study": parts[1], "w_series": parts[2], "w_sop": sop}
    with db.read() as conn:
        return conn.execute(_BLOB_OF, uids).scalar() == key
