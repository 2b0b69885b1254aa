"""Datasets and DICOM stores: the resource hierarchy `projects/{p}/locations/{l}/datasets/{d}/dicomStores/{s}`,
their validation and their JSON as Google returns it."""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dicomlake.errors import AlreadyExists, InvalidArgument, NotFound
from dicomlake.storage.db import Database, datasets, dicom_stores, insert_one, instances, series, studies
from dicomlake.warehouse.embedded import TableRef

_ID = re.compile(r"[\w\-.]{1,256}")
WRITE_DISPOSITIONS = ("WRITE_DISPOSITION_UNSPECIFIED", "WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND")
MAX_STREAM_CONFIGS = 5
MAX_LABELS = 64
UPDATABLE_FIELDS = ("labels", "streamConfigs", "notificationConfig", "notificationConfigs")


@dataclass(frozen=True)
class DatasetRef:
    pk: int
    project: str
    location: str
    dataset_id: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/datasets/{self.dataset_id}"


@dataclass(frozen=True)
class StoreRef:
    pk: int
    dataset: DatasetRef
    store_id: str
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.dataset.name}/dicomStores/{self.store_id}"

    def resource(self) -> dict[str, Any]:
        return {"name": self.name, **self.config}

    @property
    def streams(self) -> list[str]:
        """The `bq://` table URIs that stored and deleted instances are streamed to."""
        return [c["bigqueryDestination"]["tableUri"] for c in self.config.get("streamConfigs", [])]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_id(kind: str, value: str) -> None:
    if not _ID.fullmatch(value or ""):
        raise InvalidArgument(f"invalid {kind} ID {value!r}: use 1-256 letters, digits, '_', '-' or '.'")


def _not_found_unless_ids(what: str, *ids: str) -> None:
    """A name with an ID no create accepts names nothing: NotFound at once, before any query (PostgreSQL would
    refuse a NUL in it with an error of its own)."""
    if not all(_ID.fullmatch(i) for i in ids):
        raise NotFound(f"{what} not found: its name holds an ID that is not 1-256 letters, digits, '_', '-' or '.'")


# ---- datasets ---------------------------------------------------------------------------------


def create_dataset(db: Database, project: str, location: str, dataset_id: str) -> DatasetRef:
    for kind, value in (("project", project), ("location", location), ("dataset", dataset_id)):
        check_id(kind, value)
    try:
        with db.write() as conn:
            pk = insert_one(
                conn,
                datasets.insert().values(
                    project=project, location=location, dataset_id=dataset_id, create_time=now_rfc3339()
                ),
            )
    except IntegrityError:
        raise AlreadyExists(
            f"dataset projects/{project}/locations/{location}/datasets/{dataset_id} already exists"
        ) from None
    return DatasetRef(pk, project, location, dataset_id)


def get_dataset(db: Database, project: str, location: str, dataset_id: str) -> DatasetRef:
    _not_found_unless_ids("dataset", project, location, dataset_id)
    with db.read() as conn:
        row = conn.execute(
            sa.select(datasets.c.pk).where(
                datasets.c.project == project, datasets.c.location == location, datasets.c.dataset_id == dataset_id
            )
        ).first()
    if row is None:
        raise NotFound(f"dataset projects/{project}/locations/{location}/datasets/{dataset_id} not found")
    return DatasetRef(row.pk, project, location, dataset_id)


def list_datasets(
    db: Database, project: str, location: str, page_size: int | None, page_token: str | None
) -> tuple[list[DatasetRef], str | None]:
    size, after = paging(page_size, page_token, "datasets")
    if not (_ID.fullmatch(project) and _ID.fullmatch(location)):
        return [], None
    query = (
        sa.select(datasets.c.pk, datasets.c.dataset_id)
        .where(datasets.c.project == project, datasets.c.location == location, datasets.c.dataset_id > after)
        .order_by(datasets.c.dataset_id)
        .limit(size + 1)
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    refs = [DatasetRef(r.pk, project, location, r.dataset_id) for r in rows[:size]]
    return refs, encode_page_token("datasets", refs[-1].dataset_id) if len(rows) > size else None


def delete_dataset(db: Database, dataset: DatasetRef) -> list[str]:
    """Delete a dataset and everything in it; returns the blob keys to remove."""
    with db.write() as conn:
        store_pks = (
            conn.execute(sa.select(dicom_stores.c.pk).where(dicom_stores.c.dataset_pk == dataset.pk)).scalars().all()
        )
        keys = _delete_store_rows(conn, list(store_pks))
        conn.execute(datasets.delete().where(datasets.c.pk == dataset.pk))
    return keys


# ---- DICOM stores -----------------------------------------------------------------------------


def create_store(db: Database, dataset: DatasetRef, store_id: str, body: dict[str, Any]) -> StoreRef:
    check_id("DICOM store", store_id)
    config = validate_store_fields(body, UPDATABLE_FIELDS, partial=False)
    try:
        with db.write() as conn:
            pk = insert_one(
                conn,
                dicom_stores.insert().values(
                    dataset_pk=dataset.pk,
                    store_id=store_id,
                    config=orjson.dumps(config).decode(),
                    create_time=now_rfc3339(),
                ),
            )
    except IntegrityError:
        raise AlreadyExists(f"DICOM store {dataset.name}/dicomStores/{store_id} already exists") from None
    return StoreRef(pk, dataset, store_id, config)


_DATASET_COLUMNS = (
    datasets.c.pk.label("dataset_pk"),
    datasets.c.project,
    datasets.c.location,
    datasets.c.dataset_id,
)
_FIND_STORE = (
    sa.select(datasets.c.pk.label("dataset_pk"), dicom_stores.c.pk, dicom_stores.c.config)
    .select_from(
        datasets.outerjoin(
            dicom_stores,
            sa.and_(dicom_stores.c.dataset_pk == datasets.c.pk, dicom_stores.c.store_id == sa.bindparam("store_id")),
        )
    )
    .where(
        datasets.c.project == sa.bindparam("project"),
        datasets.c.location == sa.bindparam("location"),
        datasets.c.dataset_id == sa.bindparam("dataset_id"),
    )
)


def find_store(db: Database, project: str, location: str, dataset_id: str, store_id: str) -> StoreRef:
    """A store by its full name in one query (every DICOMweb request starts here)."""
    _not_found_unless_ids("DICOM store", project, location, dataset_id, store_id)
    params = {"project": project, "location": location, "dataset_id": dataset_id, "store_id": store_id}
    with db.read() as conn:
        row = conn.execute(_FIND_STORE, params).first()
    dataset_name = f"projects/{project}/locations/{location}/datasets/{dataset_id}"
    if row is None:
        raise NotFound(f"dataset {dataset_name} not found")
    if row.pk is None:
        raise NotFound(f"DICOM store {dataset_name}/dicomStores/{store_id} not found")
    return StoreRef(
        row.pk, DatasetRef(row.dataset_pk, project, location, dataset_id), store_id, orjson.loads(row.config)
    )


def stores_by_label(db: Database, key: str, value: str) -> list[StoreRef]:
    """The stores whose label `key` equals `value` ignoring case (a DIMSE listener finds a store by the AE title a
    modality calls, held in the label `aetitle`)."""
    query = (
        sa.select(dicom_stores.c.pk, dicom_stores.c.store_id, dicom_stores.c.config, *_DATASET_COLUMNS)
        .join(datasets, datasets.c.pk == dicom_stores.c.dataset_pk)
        # A coarse filter in SQL (the JSON text names the key), the exact match below.
        .where(dicom_stores.c.config.contains(f'"{key}"', autoescape=True))
        .order_by(dicom_stores.c.pk)
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    found = []
    for row in rows:
        config = orjson.loads(row.config)
        label = config.get("labels", {}).get(key)
        if isinstance(label, str) and label.lower() == value.lower():
            dataset = DatasetRef(row.dataset_pk, row.project, row.location, row.dataset_id)
            found.append(StoreRef(row.pk, dataset, row.store_id, config))
    return found


def store_by_pk(db: Database, pk: int) -> StoreRef | None:
    """A store by its row key, or None once it is deleted."""
    query = (
        sa.select(
            dicom_stores.c.store_id,
            dicom_stores.c.config,
            datasets.c.pk,
            datasets.c.project,
            datasets.c.location,
            datasets.c.dataset_id,
        )
        .join(datasets, datasets.c.pk == dicom_stores.c.dataset_pk)
        .where(dicom_stores.c.pk == pk)
    )
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    dataset = DatasetRef(row.pk, row.project, row.location, row.dataset_id)
    return StoreRef(pk, dataset, row.store_id, orjson.loads(row.config))


def list_stores(
    db: Database, dataset: DatasetRef, page_size: int | None, page_token: str | None, filter_: str | None
) -> tuple[list[StoreRef], str | None]:
    size, after = paging(page_size, page_token, "dicomStores")
    matches = _parse_label_filter(filter_)
    query = (
        sa.select(dicom_stores.c.pk, dicom_stores.c.store_id, dicom_stores.c.config)
        .where(dicom_stores.c.dataset_pk == dataset.pk, dicom_stores.c.store_id > after)
        .order_by(dicom_stores.c.store_id)
    )
    refs: list[StoreRef] = []
    more = False
    with db.read() as conn:
        for row in conn.execute(query):
            ref = StoreRef(row.pk, dataset, row.store_id, orjson.loads(row.config))
            if not matches(ref.config.get("labels", {})):
                continue
            if len(refs) == size:
                more = True
                break
            refs.append(ref)
    return refs, encode_page_token("dicomStores", refs[-1].store_id) if more else None


def patch_store(db: Database, store: StoreRef, body: dict[str, Any], update_mask: str | None) -> StoreRef:
    if not update_mask:
        raise InvalidArgument("updateMask is required: name the fields to change, e.g. updateMask=labels")
    paths = [p.strip() for p in update_mask.split(",") if p.strip()]
    unknown = [p for p in paths if p not in UPDATABLE_FIELDS]
    if unknown:
        raise InvalidArgument(
            f"invalid updateMask path {unknown[0]!r}: updatable fields are {', '.join(UPDATABLE_FIELDS)}"
        )
    changes = validate_store_fields(body, paths, partial=True)
    config = {k: v for k, v in store.config.items() if k not in paths}
    config.update({k: v for k, v in changes.items() if v not in (None, [], {})})
    with db.write() as conn:
        conn.execute(
            dicom_stores.update().where(dicom_stores.c.pk == store.pk).values(config=orjson.dumps(config).decode())
        )
    return StoreRef(store.pk, store.dataset, store.store_id, config)


def delete_store(db: Database, store: StoreRef) -> list[str]:
    with db.write() as conn:
        keys = _delete_store_rows(conn, [store.pk])
    return keys


def store_metrics(db: Database, store: StoreRef) -> dict[str, Any]:
    """Google's DicomStoreMetrics, from indexes alone (counts, and sizes from ix_instances_sizes)."""
    with db.read() as conn:
        study_count = conn.execute(sa.select(sa.func.count()).where(studies.c.store_pk == store.pk)).scalar_one()
        series_count = conn.execute(sa.select(sa.func.count()).where(series.c.store_pk == store.pk)).scalar_one()
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(instances.c.blob_size), 0),
                sa.func.coalesce(sa.func.sum(instances.c.metadata_size), 0),
            ).where(instances.c.store_pk == store.pk)
        ).one()
    return {
        "name": store.name,
        "studyCount": str(study_count),
        "seriesCount": str(series_count),
        "instanceCount": str(row[0]),
        "blobStorageSizeBytes": str(int(row[1])),
        "structuredStorageSizeBytes": str(int(row[2])),
    }


def _delete_store_rows(conn: sa.Connection, store_pks: list[int]) -> list[str]:
    if not store_pks:
        return []
    keys = conn.execute(sa.select(instances.c.blob_key).where(instances.c.store_pk.in_(store_pks))).scalars().all()
    for table in (instances, series, studies):
        conn.execute(table.delete().where(table.c.store_pk.in_(store_pks)))
    conn.execute(dicom_stores.delete().where(dicom_stores.c.pk.in_(store_pks)))
    return list(keys)


# ---- validation -------------------------------------------------------------------------------


def validate_store_fields(body: dict[str, Any], allowed: tuple[str, ...] | list[str], partial: bool) -> dict[str, Any]:
    """The DicomStore fields of `body` that may be set, validated as Google validates them."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object (a DicomStore)")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "name":
            continue
        if key not in UPDATABLE_FIELDS:
            raise InvalidArgument(f"unknown DicomStore field {key!r}")
        if key not in allowed:
            continue
        out[key] = value
    if "labels" in out:
        out["labels"] = _validate_labels(out["labels"])
    if "streamConfigs" in out:
        out["streamConfigs"] = validate_stream_configs(out["streamConfigs"])
    if "notificationConfig" in out and not isinstance(out["notificationConfig"], dict):
        raise InvalidArgument("notificationConfig must be an object with pubsubTopic and sendForBulkImport")
    if "notificationConfigs" in out and not isinstance(out["notificationConfigs"], list):
        raise InvalidArgument("notificationConfigs must be a list")
    if not partial:
        out = {k: v for k, v in out.items() if v not in (None, [], {})}
    return out


def validate_stream_configs(configs: Any) -> list[dict[str, Any]]:
    if configs is None:
        return []
    if not isinstance(configs, list):
        raise InvalidArgument("streamConfigs must be a list of {bigqueryDestination: {tableUri}}")
    if len(configs) > MAX_STREAM_CONFIGS:
        raise InvalidArgument(f"at most {MAX_STREAM_CONFIGS} streamConfigs are allowed, got {len(configs)}")
    seen: set[str] = set()
    out = []
    for config in configs:
        destination = config.get("bigqueryDestination") if isinstance(config, dict) else None
        if not isinstance(destination, dict):
            destination = {}
        uri = destination.get("tableUri")
        if not isinstance(uri, str) or TableRef.parse_uri(uri) is None:
            raise InvalidArgument(
                f"invalid streamConfigs tableUri {uri!r}: expected bq://PROJECT_ID.DATASET_ID.TABLE_ID"
            )
        if uri in seen:
            raise InvalidArgument(f"duplicate streamConfigs destination {uri}: each destination must be unique")
        disposition = destination.get("writeDisposition", WRITE_DISPOSITIONS[0])
        if disposition not in WRITE_DISPOSITIONS:
            raise InvalidArgument(
                f"invalid writeDisposition {disposition!r}: use one of {', '.join(WRITE_DISPOSITIONS)}"
            )
        seen.add(uri)
        out.append(config)
    return out


def _label_char_ok(ch: str, first: bool) -> bool:
    category = unicodedata.category(ch)
    if category in ("Ll", "Lo"):
        return True
    return not first and (category.startswith("N") or ch in "_-")


def _validate_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InvalidArgument("labels must be an object of string keys and values")
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not (
            isinstance(key, str)
            and 1 <= len(key) <= 63
            and len(key.encode()) <= 128
            and all(_label_char_ok(c, i == 0) for i, c in enumerate(key))
        ):
            raise InvalidArgument(
                f"invalid label key {key!r}: 1-63 lower-case letters, digits, '_' or '-', starting with a letter"
            )
        if not (isinstance(value, str) and len(value) <= 63 and all(_label_char_ok(c, False) for c in value)):
            raise InvalidArgument(
                f"invalid label value {value!r} for {key!r}: up to 63 lower-case letters, digits, '_' or '-'"
            )
    return dict(labels)


# A filter is `labels.KEY=VALUE` / `labels.KEY:VALUE` / `labels.KEY:*` terms joined with AND, OR, NOT and
# parentheses, as Google's list filter syntax; only labels can be filtered on.
_FILTER_TOKEN = re.compile(
    r'\s*(?:(?P<paren>[()])|(?P<term>labels\.[^\s=:()"]+\s*[=:]\s*(?:"[^"]*"|[^\s()"]+))'
    r"|(?P<word>AND|OR|NOT)(?=[\s()]|$))"
)
_FILTER_TERM = re.compile(r'labels\.(?P<key>[^\s=:()"]+)\s*(?P<op>[=:])\s*(?P<value>"[^"]*"|[^\s()"]+)')
LabelFilter = Callable[[dict[str, str]], bool]
# Bounds that keep the recursive-descent parser far from Python's recursion limit (about 1,000 frames).
MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 32


def _parse_label_filter(filter_: str | None) -> LabelFilter:
    """A predicate on a store's labels; InvalidArgument for anything but a label filter."""
    if not filter_ or not filter_.strip():
        return lambda _labels: True
    if len(filter_) > MAX_FILTER_LENGTH:
        raise InvalidArgument(f"filter is {len(filter_)} characters long; at most {MAX_FILTER_LENGTH} are allowed")
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = filter_.strip()
    while pos < len(text):
        match = _FILTER_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise _bad_filter(filter_)
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    predicate, rest = _filter_or(tokens, filter_, 0)
    if rest:
        raise _bad_filter(filter_)
    return predicate


def _bad_filter(filter_: str) -> InvalidArgument:
    return InvalidArgument(
        f"unsupported filter {filter_!r}: only labels can be filtered on, e.g. labels.KEY=VALUE, "
        "labels.KEY:*, combined with AND, OR, NOT and parentheses"
    )


def _filter_or(tokens: list[tuple[str, str]], text: str, depth: int) -> tuple[LabelFilter, list[tuple[str, str]]]:
    first, tokens = _filter_and(tokens, text, depth)
    alternatives = [first]
    while tokens and tokens[0] == ("word", "OR"):
        alternative, tokens = _filter_and(tokens[1:], text, depth)
        alternatives.append(alternative)
    return (lambda labels: any(a(labels) for a in alternatives)), tokens


def _filter_and(tokens: list[tuple[str, str]], text: str, depth: int) -> tuple[LabelFilter, list[tuple[str, str]]]:
    first, tokens = _filter_unary(tokens, text, depth)
    required = [first]
    while tokens and tokens[0] == ("word", "AND"):
        condition, tokens = _filter_unary(tokens[1:], text, depth)
        required.append(condition)
    return (lambda labels: all(c(labels) for c in required)), tokens


def _filter_unary(tokens: list[tuple[str, str]], text: str, depth: int) -> tuple[LabelFilter, list[tuple[str, str]]]:
    """One term, or NOT / parentheses around one; `depth` counts the NOTs and parentheses around it."""
    if not tokens:
        raise _bad_filter(text)
    kind, value = tokens[0]
    if (kind, value) in (("word", "NOT"), ("paren", "(")) and depth >= MAX_FILTER_DEPTH:
        raise InvalidArgument(f"filter nests NOT and parentheses more than {MAX_FILTER_DEPTH} levels deep")
    if (kind, value) == ("word", "NOT"):
        inner, rest = _filter_unary(tokens[1:], text, depth + 1)
        return (lambda labels: not inner(labels)), rest
    if (kind, value) == ("paren", "("):
        inner, rest = _filter_or(tokens[1:], text, depth + 1)
        if not rest or rest[0] != ("paren", ")"):
            raise _bad_filter(text)
        return inner, rest[1:]
    if kind != "term":
        raise _bad_filter(text)
    term = _FILTER_TERM.fullmatch(value)
    assert term is not None  # the tokenizer only yields well-formed terms
    key, op, wanted = term.group("key"), term.group("op"), term.group("value")
    quoted = wanted.startswith('"')
    wanted = wanted.strip('"') if quoted else wanted
    if op == ":" and wanted == "*" and not quoted:
        return (lambda labels: key in labels), tokens[1:]
    return (lambda labels: labels.get(key) == wanted), tokens[1:]


def paging(page_size: int | None, page_token: str | None, kind: str) -> tuple[int, str]:
    """(page size, the last name of the previous page) from a list request."""
    size = page_size or 100
    if size < 0:
        raise InvalidArgument(f"pageSize must not be negative, got {page_size}")
    size = min(size, 1000)
    if not page_token:
        return size, ""
    return size, decode_page_token(page_token, kind)


def encode_page_token(kind: str, last: str) -> str:
    """An opaque nextPageToken for a `kind` listing that continues after `last`."""
    return base64.urlsafe_b64encode(f"{kind}\n{last}".encode()).decode()


def decode_page_token(token: str, kind: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(token.encode("ascii", "strict") + b"=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeError):
        decoded = ""
    token_kind, sep, last = decoded.partition("\n")
    if not sep or token_kind != kind:
        raise InvalidArgument("invalid pageToken: pass the nextPageToken of the previous response")
    return last
