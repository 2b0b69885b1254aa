"""QIDO-RS: turn search parameters into one SQL query at study, series or instance level and build the
DICOM JSON answers from the attributes kept at ingest, plus the computed attributes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from dicomlake.dicom import tags
from dicomlake.errors import InvalidArgument
from dicomlake.storage.db import Database, instances, series, studies
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import name_tokens, normalise_name

LEVELS = ("study", "series", "instance")
DEFAULT_LIMIT = {"study": 100, "series": 100, "instance": 1000}
MAX_LIMIT = {"study": 5000, "series": 5000, "instance": 50000}
MAX_OFFSET = 1_000_000
# Google's standard query parameters, accepted and ignored on every method.
IGNORED_PARAMETERS = frozenset(
    {
        "alt",
        "prettyPrint",
        "fields",
        "key",
        "$.xgafv",
        "quotaUser",
        "access_token",
        "callback",
        "uploadType",
        "upload_protocol",
        "oauth_token",
        "userIp",
    }
)

_STUDY_PN = {"00100010": "patient_name", "00080090": "referring_physician_name"}
_STUDY_TEXT = {
    "0020000D": studies.c.study_uid,
    "00100020": studies.c.patient_id,
    "00080050": studies.c.accession_number,
    "00200010": studies.c.study_id,
    "00081030": studies.c.study_description,
}
_SERIES_TEXT = {
    "0020000E": series.c.series_uid,
    "00080060": series.c.modality,
    "00200011": series.c.series_number,
    "0008103E": series.c.series_description,
}
_INSTANCE_TEXT = {"00080018": instances.c.sop_uid, "00080016": instances.c.sop_class_uid}
_UID_KEYS = frozenset({"0020000D", "0020000E", "00080018", "00080016"})


@dataclass
class Query:
    level: str
    filters: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0


def parse_query(level: str, params: list[tuple[str, str]]) -> Query:
    """Validate QIDO parameters (already percent-decoded) into a Query; InvalidArgument says what is wrong."""
    query = Query(level=level, limit=DEFAULT_LIMIT[level])
    for name, value in params:
        if name in IGNORED_PARAMETERS:
            continue
        if "\x00" in value:
            # No stored value holds a NUL (the parser strips it as padding), and PostgreSQL refuses one in text.
            raise InvalidArgument(f"search parameter {name!r} holds a NUL character")
        if name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item == "all":
                    query.include_all = True
                    continue
                key = tags.tag_key(item)
                if key is None:
                    raise InvalidArgument(f"includefield {item!r} is neither a DICOM keyword nor a tag")
                query.include.add(key)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidArgument(f"fuzzymatching must be true or false, got {value!r}")
            query.fuzzy = value.lower() == "true"
        elif name in ("limit", "offset"):
            number = _non_negative(name, value)
            if name == "limit":
                query.limit = min(number, MAX_LIMIT[level]) if number else DEFAULT_LIMIT[level]
            else:
                if number > MAX_OFFSET:
                    raise InvalidArgument(f"offset must be at most {MAX_OFFSET}, got {number}")
                query.offset = number
        else:
            key = tags.tag_key(name)
            if key is None:
                raise InvalidArgument(f"unknown search parameter {name!r}: not a DICOM keyword, tag or QIDO option")
            if not searchable(level, key):
                raise InvalidArgument(f"searching on {tags.keyword(key)} is not supported at the {level} level")
            query.filters[key] = value
    return query


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}")
    return number


def searchable(level: str, key: str) -> bool:
    """Whether the attribute `key` (a tag as 8 hex digits) can be matched at `level`: what C-FIND asks
    before it hands its matching keys to QIDO."""
    study_keys = set(_STUDY_PN) | set(_STUDY_TEXT) | {"00080020", "00080061"}
    if level == "study":
        return key in study_keys
    if level == "series":
        return key in study_keys or key in _SERIES_TEXT
    return key in study_keys or key in _SERIES_TEXT or key in _INSTANCE_TEXT or key == "00200013"


# ---- matching ---------------------------------------------------------------------------------

# PS3.5 6.2.1.1: trailing empty components may be left out, so "Doe^John" and "Doe^John^^^" are one name.
_MAX_TRAILING_DELIMITERS = 4
_INT32 = 2**31


def _universal(value: str) -> bool:
    """An empty value or a lone `*` matches everything, values absent or empty included (PS3.4 C.2.2.2.3)."""
    return not value.strip("*")


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_match(column: sa.ColumnElement, value: str, key: str) -> sa.ColumnElement[bool] | None:
    if key in _UID_KEYS:
        uids = [u.strip() for u in re.split(r"[\\,]", value) if u.strip()]
        if not uids:
            return None
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if _universal(value):
        return None
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value


def _person_name_match(prefix: str, value: str, fuzzy: bool) -> sa.ColumnElement[bool] | None:
    if fuzzy:
        tokens = name_tokens(value.replace("*", " ").replace("?", " "))
        if not tokens:
            return None
        column = studies.c[f"{prefix}_tokens"]
        return sa.or_(*[column.like(f"% {_like(t)}%", escape="\\") for t in tokens])
    if _universal(value):
        return None
    groups = [normalise_name(g).rstrip("^") for g in value.split("=")]
    columns = [studies.c[f"{prefix}_{group}"] for group in ("alphabetic", "ideographic", "phonetic")]
    if len(groups) == 1:
        # One group in the query: it may be written in any of the name's scripts.
        return sa.or_(*[_group_match(c, groups[0]) for c in columns])
    if len(groups) > len(columns):
        raise InvalidArgument(f"invalid person name {value!r}: at most three '='-separated component groups")
    matches = [_group_match(c, g) for c, g in zip(columns, groups, strict=False) if g.strip("*")]
    return sa.and_(*matches) if matches else None


def _group_match(column: sa.ColumnElement, needle: str) -> sa.ColumnElement[bool]:
    """One component group, lower-cased, against one stored group; wildcards stay inside the group."""
    if needle.endswith("*"):
        return column.like(_like(needle), escape="\\")
    variants = [needle + "^" * n for n in range(_MAX_TRAILING_DELIMITERS + 1)]
    if "*" in needle or "?" in needle:
        return sa.or_(*[column.like(_like(v), escape="\\") for v in variants])
    return column.in_(variants)


_DATE_QUERY = re.compile(r"(?P<start>\d{8})?(?P<dash>-)?(?P<end>\d{8})?")


def _is_date(text: str | None) -> bool:
    try:
        datetime.strptime(text or "", "%Y%m%d")
    except ValueError:
        return False
    return True


def _date_match(column: sa.ColumnElement, value: str) -> sa.ColumnElement[bool] | None:
    if value == "":
        return None
    match = _DATE_QUERY.fullmatch(value.strip())
    start, dash, end = (match["start"], match["dash"], match["end"]) if match else (None, None, None)
    if not (start or end) or (end and not dash) or not all(_is_date(d) for d in (start, end) if d):
        raise InvalidArgument(f"invalid StudyDate {value!r}: use YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-")
    if not dash:
        return column == start
    conditions = []
    if start:
        conditions.append(column >= start)
    if end:
        conditions.append(column <= end)
    return sa.and_(*conditions)


def _integer_match(column: sa.ColumnElement, value: str, key: str) -> sa.ColumnElement[bool] | None:
    if _universal(value):
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not -_INT32 <= number < _INT32:
        raise InvalidArgument(f"{tags.keyword(key)} must be an integer, got {value!r}")
    return column == number


def _condition(query: Query, key: str, value: str) -> sa.ColumnElement[bool] | None:
    if key in _STUDY_PN:
        return _person_name_match(_STUDY_PN[key], value, query.fuzzy)
    if key in _STUDY_TEXT:
        return _text_match(_STUDY_TEXT[key], value, key)
    if key == "00080020":
        return _date_match(studies.c.study_date, value)
    if key == "00080061":
        modalities = [m for m in re.split(r"[\\,]", value) if m]
        if not modalities:
            return None
        # Any series of the study: an alias correlated to the outer study row only, so that at the series and
        # instance levels (whose queries hold `series` too) it is not bound to the outer series row.
        study_series = series.alias("study_series")
        return (
            sa.exists()
            .where(
                study_series.c.store_pk == studies.c.store_pk,
                study_series.c.study_uid == studies.c.study_uid,
                study_series.c.modality.in_(modalities),
            )
            .correlate(studies)
        )
    if key == "0020000E" and query.level == "instance":
        # Answered from the instance row itself, without joining series.
        return _text_match(instances.c.series_uid, value, key)
    if key in _SERIES_TEXT:
        return _text_match(_SERIES_TEXT[key], value, key)
    if key in _INSTANCE_TEXT:
        return _text_match(_INSTANCE_TEXT[key], value, key)
    # InstanceNumber, the one searchable key left (see searchable).
    return _integer_match(instances.c.instance_number, value, key)


def _conditions(query: Query, store: StoreRef) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [studies.c.store_pk == store.pk]
    for key, value in query.filters.items():
        condition = _condition(query, key, value)
        if condition is not None:
            where.append(condition)
    return where


# ---- running ----------------------------------------------------------------------------------


def search(
    db: Database, store: StoreRef, query: Query, study: str | None = None, series_uid: str | None = None
) -> list[dict[str, Any]]:
    """Run a search; `study`/`series_uid` come from the URL path. Returns DICOM JSON objects."""
    if study is not None:
        query.filters["0020000D"] = study
    if series_uid is not None:
        query.filters["0020000E"] = series_uid
    where = _conditions(query, store)
    with db.read() as conn:
        if query.level == "study":
            return _studies(conn, query, where)
        if query.level == "series":
            return _series(conn, query, where)
        return _instances(conn, query, where)


def _page(select: sa.Select, query: Query) -> sa.Select:
    return select.limit(query.limit).offset(query.offset)


def _studies(conn: sa.Connection, query: Query, where: list) -> list[dict[str, Any]]:
    select = sa.select(
        studies.c.study_uid,
        studies.c.attributes,
        studies.c.series_count,
        studies.c.instance_count,
        studies.c.modalities,
    )
    if query.offset:
        # A page deep in the results: the studies skipped are counted in the primary-key index alone, and only
        # the page's rows are read from the table (PostgreSQL read every skipped row: 7,000 of them cost 5 ms).
        keys = sa.select(studies.c.store_pk, studies.c.study_uid).where(*where).order_by(studies.c.study_uid)
        page = _page(keys, query).subquery("page")
        select = select.join(
            page, sa.and_(studies.c.store_pk == page.c.store_pk, studies.c.study_uid == page.c.study_uid)
        )
        rows = conn.execute(select.order_by(studies.c.study_uid)).all()
    else:
        rows = conn.execute(_page(select.where(*where).order_by(studies.c.study_uid), query)).all()
    wanted = _wanted(tags.STUDY_DEFAULT, tags.STUDY_EXTRA, query)
    results = []
    for row in rows:
        attrs = _pick(orjson.loads(row.attributes), wanted, query)
        attrs[tags.MODALITIES_IN_STUDY] = _values("CS", row.modalities.split("\\") if row.modalities else [])
        attrs[tags.STUDY_SERIES_COUNT] = _values("IS", [row.series_count])
        attrs[tags.STUDY_INSTANCE_COUNT] = _values("IS", [row.instance_count])
        results.append(_sorted(attrs))
    return results


def _join_studies(select: sa.Select, table: sa.Table) -> sa.Select:
    return select.join(
        studies, sa.and_(studies.c.store_pk == table.c.store_pk, studies.c.study_uid == table.c.study_uid)
    )


def _series(conn: sa.Connection, query: Query, where: list) -> list[dict[str, Any]]:
    select = sa.select(
        series.c.attributes, series.c.instance_count, series.c.study_uid, studies.c.attributes.label("study")
    )
    select = _join_studies(select.select_from(series), series)
    order = (series.c.study_uid, series.c.series_uid)
    rows = conn.execute(_page(select.where(*where).order_by(*order), query)).all()
    wanted = _wanted(tags.SERIES_DEFAULT, tags.SERIES_EXTRA, query)
    study_wanted = {k for k in query.include | set(query.filters) if k in tags.STUDY_ATTRIBUTES}
    results = []
    for row in rows:
        attrs = _pick(orjson.loads(row.attributes), wanted, query)
        if study_wanted:
            study_attrs = orjson.loads(row.study)
            attrs.update({k: v for k, v in study_attrs.items() if k in study_wanted})
        attrs[tags.STUDY_UID] = _values("UI", [row.study_uid])
        attrs[tags.SERIES_INSTANCE_COUNT] = _values("IS", [row.instance_count])
        results.append(_sorted(attrs))
    return results


def _instances(conn: sa.Connection, query: Query, where: list) -> list[dict[str, Any]]:
    select = sa.select(instances.c.metadata).select_from(instances)
    select = _join_studies(select, instances)
    if any(k in _SERIES_TEXT and k != "0020000E" for k in query.filters):
        select = select.join(
            series,
            sa.and_(
                series.c.store_pk == instances.c.store_pk,
                series.c.study_uid == instances.c.study_uid,
                series.c.series_uid == instances.c.series_uid,
            ),
        )
    order = (instances.c.study_uid, instances.c.series_uid, instances.c.instance_number, instances.c.sop_uid)
    rows = conn.execute(_page(select.where(*where).order_by(*order), query)).scalars().all()
    wanted = set(tags.INSTANCE_DEFAULT) | {tags.STUDY_UID, tags.SERIES_UID} | query.include | set(query.filters)
    results = []
    for text in rows:
        metadata = orjson.loads(text)
        attrs = _without_bulkdata(metadata) if query.include_all else {k: metadata[k] for k in wanted if k in metadata}
        attrs.setdefault(tags.INSTANCE_AVAILABILITY, _values("CS", ["ONLINE"]))
        results.append(_sorted(attrs))
    return results


def _without_bulkdata(dataset: dict[str, Any]) -> dict[str, Any]:
    """Every attribute but those held as bulk data, at any depth: search results carry no BulkDataURIs."""
    out = {}
    for key, element in dataset.items():
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [_without_bulkdata(item) for item in element["Value"]]}
        out[key] = element
    return out


def _wanted(default: tuple[str, ...], extra: tuple[str, ...], query: Query) -> set[str]:
    """The attributes a study or series result holds: the defaults, those asked for and those matched on."""
    wanted = set(default) | query.include | set(query.filters)
    if query.include_all:
        wanted |= set(extra)
    return wanted


def _pick(attrs: dict[str, Any], wanted: set[str], query: Query) -> dict[str, Any]:
    picked = {k: v for k, v in attrs.items() if k in wanted}
    if tags.INSTANCE_AVAILABILITY in wanted:
        picked.setdefault(tags.INSTANCE_AVAILABILITY, _values("CS", ["ONLINE"]))
    return picked


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _sorted(attrs: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(attrs.items()))
