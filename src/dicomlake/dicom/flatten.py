"""Flatten an instance's DICOM JSON into one row of the BigQuery DICOM schema (spec §1, §6.5, §6.7-6.11).
One flattener serves batch export and streaming; the warehouse sinks take its rows and schema fields as they are.

Shapes (what other modules rely on):

- A *schema* is a list of BigQuery JSON schema fields, exactly as `bq show --schema` and the REST API write them:
  `{"name": str, "type": "STRING|INTEGER|FLOAT|DATE|TIME|TIMESTAMP|RECORD|BOOLEAN", "mode": "NULLABLE|REPEATED",
  "fields": [...]}` (`fields` on RECORD only). Field dicts are shared between rows: never mutate them.
- A *row* is a plain dict, column name -> `str | int | float | date | time | datetime (aware, UTC) | list | dict`;
  nested dicts for RECORD, lists for REPEATED, a column without a value is absent. Lists never hold None.
  Treat rows as read-only (from a JSON text they hold its parsed lists as they are); `demote` returns a new row.

Column rules (spec §1): one column per keyword present, typed by the dictionary VR and REPEATED unless the
dictionary VM is exactly "1"; DS and IS are STRING; AT is the tag as an INTEGER; SQ is RECORD REPEATED with the
same rules inside; PN is a RECORD of Alphabetic/Ideographic/Phonetic records of five STRING components; private
elements (and public ones the dictionary does not know) go to `OtherElements {Tag, Data}` and private sequences
to `Tag_GGGGEEEE` RECORD REPEATED columns; OB, OD, OF, OL, OV, OW, UN, the ambiguous "... or OW/OB" VRs and
BulkDataURI elements are left out silently. Decisions where the spec is silent:

- Repeating groups (any pattern of pydicom's RepeatersDictionary: 50xx curves, 60xx overlays, ...) become a
  RECORD REPEATED column named by the keyword with one `{Id STRING, Value <type, mode by VM>}` record per group
  present; `Id` is the four hex digits the pattern leaves open (the group, "6000", for 50xx/60xx/7Fxx).
- DS/IS hold each value's text as written, without the leading and trailing spaces, which PS3.5 6.2 makes
  insignificant: "0.50", "1.0E+02" and " 007" are "0.50", "1.0E+02" and "007". The stored DICOM JSON (served
  by DICOMweb) has them as numbers (PS3.18 F.2.3); dicom.parse keeps the text of the values whose number does
  not write back to it, and the store keeps that beside the file meta, under `NUMBER_TEXT`, nested and private
  elements included (OtherElements.Data shows the text too). A file whose numbers are written as that JSON
  writes them ("0.5", "7") needs none: 156 of the 253 test files; the others (GE's "5.000000", ...) keep about
  330 bytes more. Measured over the test files, interleaved on a busy shared machine: parsing as fast as
  before within the noise, flattening 2-7 % slower (medians of three runs). Instances stored before dicomlake
  kept this text show the number as the stored JSON writes it (orjson's shortest round trip: "0.50",
  "1.0E+02", "1e-05" and "007" come back as "0.5", "100.0", "0.00001" and "7"). Text the parser could not
  read as a number is kept as written.
- A value the column type cannot hold (a DA that is not a whole valid date, a bad TM/DT, more than one value in
  a VM 1 element, an explicit VR of another type than the dictionary's) is left out of the typed column and kept
  as strings in `OtherElements` under `Tag_GGGGEEEE` (§1.14, §6.11). TM keeps what is there (`1230` -> 12:30:00);
  DT needs a whole date, missing time parts are zero and an `&ZZXX` offset is applied (none: UTC).
- `DroppedTags {TagName}` lists, by keyword or `Tag_GGGGEEEE`, elements over 1 MiB in their DICOM JSON form,
  sequences over 1 MiB in the file, which the parser left out of the metadata (named by the store in the file
  meta it keeps, under `DROPPED_AT_INGEST`), elements whose column would be nested deeper than BigQuery's 15
  levels (a PN needs two levels, a sequence or `OtherElements` one). (The tables add those whose columns would
  take a table past BigQuery's 10,000: warehouse/dicom_tables.fit.)
- `StructuredStorageSize` is the size in bytes of the instance's DICOM JSON as stored (UTF-8, compact).
- Empty elements get their column (NULL); a sequence whose items give no column at all gets none (a RECORD
  needs fields). Group lengths (gggg,0000) are left out, as dicom.parse leaves them out of the data set.
- Columns follow the metadata's tag order, `OtherElements` last in each record, then the service columns
  `LastUpdated, Type, StorageClass, BlobStorageSize, StructuredStorageSize, DroppedTags` (always, for a stable
  table schema; DroppedTags holds a value only when something was dropped).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson
from orjson import dumps as _dumps
from pydicom.datadict import DicomDictionary, RepeatersDictionary, tag_for_keyword

if TYPE_CHECKING:
    from dicomlake.warehouse.schema import Field

MAX_ELEMENT_BYTES = 1 << 20  # the same limit dicom.parse applies to sequences
# The key, in the file meta a store keeps, of the sequences the parser left out for their size (GGGGEEEE keys).
DROPPED_AT_INGEST = "DroppedTags"
# The key, in the same file meta, of the text of DS and IS values that their JSON numbers do not render back
# (dicom.parse's `number_text`).
NUMBER_TEXT = "NumberText"
MAX_NESTING = 15  # BigQuery: a field may sit at most 15 levels deep (top-level columns are level 1)

EXCLUDED_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_STRING_VRS = ("AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UI", "UR", "UT", "DS", "IS")
_BQ_TYPES = {vr: "STRING" for vr in _STRING_VRS} | {
    "DA": "DATE",
    "TM": "TIME",
    "DT": "TIMESTAMP",
    "FL": "FLOAT",
    "FD": "FLOAT",
    "SS": "INTEGER",
    "US": "INTEGER",
    "SL": "INTEGER",
    "UL": "INTEGER",
    "SV": "INTEGER",
    "UV": "INTEGER",
    "AT": "INTEGER",
    "PN": "RECORD",
    "SQ": "RECORD",
}
_INT64_MAX = (1 << 63) - 1
_INT_TYPE = {int}


# ---- schema fields ------------------------------------------------------------------------------------------


def _field(name: str, type_: str, repeated: bool = False, fields: list[Field] | None = None) -> Field:
    out: Field = {"name": name, "type": type_, "mode": "REPEATED" if repeated else "NULLABLE"}
    if fields is not None:
        out["fields"] = fields
    return out


_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_FIELDS = [_field(g, "RECORD", False, [_field(c, "STRING") for c in _PN_COMPONENTS]) for g in _PN_GROUPS]
OTHER_ELEMENTS_FIELD = _field(
    "OtherElements", "RECORD", True, [_field("Tag", "STRING"), _field("Data", "STRING", True)]
)
DROPPED_TAGS_FIELD = _field("DroppedTags", "RECORD", True, [_field("TagName", "STRING")])
SERVICE_FIELDS = [
    _field("LastUpdated", "TIMESTAMP"),
    _field("Type", "STRING"),
    _field("StorageClass", "STRING"),
    _field("BlobStorageSize", "INTEGER"),
    _field("StructuredStorageSize", "INTEGER"),
    DROPPED_TAGS_FIELD,
]
_UID_FIELDS = [_field(name, "STRING") for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
_DELETE_FIELDS = [*_UID_FIELDS, SERVICE_FIELDS[0], SERVICE_FIELDS[1]]


@dataclass
class ServiceColumns:
    """The non-DICOM columns of a row (spec §1.10). `structured_storage_size` None: measured by `flatten`."""

    last_updated: datetime
    storage_class: str | None = "STANDARD"
    blob_storage_size: int | None = None
    structured_storage_size: int | None = None
    type: str = "CREATE"


@dataclass
class FlatRow:
    """One table row and the schema fields it needs, in a stable order."""

    row: dict[str, Any]
    fields: list[Field]


# ---- per-tag decisions, computed once -----------------------------------------------------------------------

# Kinds of column. _dataset converts those below _PN1 inline, testing for them in this order, most frequent
# in real headers first; _PN1 and _SQ have their own branch, the rest go to _slow.
_STR1, _NUM1, _INT1, _STRN, _NUMN, _DATE1, _TIME1, _FLOAT1, _INTN, _FLOATN, _DT1 = range(11)
_PN1, _SQ, _GENERIC, _PRIVATE, _GROUP, _SKIP = range(11, 17)

# key (8 hex digits as in the DICOM JSON) -> (kind, column name, expected VR or None, field, Tag_GGGGEEEE, extra)
# extra: for _GENERIC/_PN1 the (type, repeated) pair, for _GROUP (Id, type, repeated, VR, field).
_Entry = tuple[int, str, str | None, "Field | None", str, Any]
_CACHE: dict[str, _Entry] = {}
_CACHE_LIMIT = 200_000  # private tags are cached too; past this, unusual ones are recomputed each time


def _kind(vr: str, repeated: bool) -> tuple[int, str | None]:
    """(kind, the VR the fast path expects) for a dictionary VR."""
    if " or " in vr:
        if "OW" in vr or "OB" in vr:
            # Lookup tables and waveform data are bulk data in the Healthcare API: IDC's VOILUTSequence has
            # LUTDescriptor but no LUTData column.
            return _SKIP, None
        vr = "US"  # "US or SS": both INTEGER; SS goes through the compatible-VR path
    if vr in EXCLUDED_VRS:
        return _SKIP, vr
    if vr == "SQ":
        return _SQ, vr
    if vr == "PN":
        return _PN1, vr
    if vr in ("DS", "IS"):
        return (_NUMN if repeated else _NUM1), vr
    if vr in _STRING_VRS:
        return (_STRN if repeated else _STR1), vr
    if vr in ("US", "SS", "UL", "SL", "SV"):
        return (_INTN if repeated else _INT1), vr
    if vr in ("FL", "FD"):
        return (_FLOATN if repeated else _FLOAT1), vr
    if not repeated and vr in ("DA", "TM", "DT"):
        return {"DA": _DATE1, "TM": _TIME1, "DT": _DT1}[vr], vr
    if vr in _BQ_TYPES:
        return _GENERIC, vr  # AT, UV, repeated DA/TM/DT
    return _SKIP, None


def _standard_entry(key: str, vr: str, vm: str, keyword: str) -> _Entry:
    repeated = vm != "1"
    kind, expected = _kind(vr, repeated)
    tag_name = f"Tag_{key}"
    if kind == _SKIP:
        return (_SKIP, keyword, expected, None, tag_name, None)
    if kind == _SQ:
        return (_SQ, keyword, "SQ", None, tag_name, None)
    if kind == _PN1:
        return (_PN1, keyword, "PN", _field(keyword, "RECORD", repeated, _PN_FIELDS), tag_name, ("RECORD", repeated))
    type_ = _BQ_TYPES[expected or vr]
    return (kind, keyword, expected, _field(keyword, type_, repeated), tag_name, (type_, repeated))


def _repeater_patterns() -> list[tuple[int, int, int, tuple]]:
    """(and-mask, value, mask of the open digits, dictionary entry) for each repeating-group pattern."""
    out = []
    for pattern, entry in RepeatersDictionary.items():
        fixed = int("".join("0" if c == "x" else "F" for c in pattern), 16)
        value = int(pattern.replace("x", "0"), 16)
        out.append((fixed, value, 0xFFFF0000 if pattern.index("x") < 4 else 0x0000FFFF, entry))
    return out


_REPEATERS = _repeater_patterns()
_REPEATER_ELEMENTS = {entry[4]: (mask, value) for _, value, mask, entry in _REPEATERS}


def _entry(key: str) -> _Entry:
    entry = _CACHE.get(key)
    if entry is not None:
        return entry
    upper = key.upper()
    tag_name = f"Tag_{upper}"
    entry = (_PRIVATE, tag_name, None, None, tag_name, None)
    try:
        tag = int(key, 16)
    except ValueError:
        tag = -1
    if tag >= 0 and tag & 0xFFFF == 0:
        entry = (_SKIP, tag_name, None, None, tag_name, None)  # group lengths describe an encoding, not data
    elif tag >= 0 and not (tag >> 16) & 1:
        known = DicomDictionary.get(tag)
        if known is not None and known[4]:
            entry = _standard_entry(upper, known[0], known[1], known[4])
        else:
            for fixed, value, open_mask, repeater in _REPEATERS:
                if tag & fixed == value and repeater[4]:
                    entry = _group_entry(tag, open_mask, repeater, tag_name)
                    break
    if len(_CACHE) < _CACHE_LIMIT:
        _CACHE[key] = entry
    return entry


def _group_entry(tag: int, open_mask: int, repeater: tuple, tag_name: str) -> _Entry:
    vr, vm, _, _, keyword = repeater
    group_id = f"{tag >> 16:04X}" if open_mask == 0xFFFF0000 else f"{tag & 0xFFFF:04X}"
    repeated = vm != "1"
    kind, expected = _kind(vr, repeated)
    if kind == _SKIP:
        return (_SKIP, keyword, expected, None, tag_name, None)
    type_ = _BQ_TYPES[expected or vr]
    value_fields = _PN_FIELDS if type_ == "RECORD" else None
    record = _field(keyword, "RECORD", True, [_field("Id", "STRING"), _field("Value", type_, repeated, value_fields)])
    return (_GROUP, keyword, None, record, tag_name, (group_id, type_, repeated, expected, record))


for _tag in DicomDictionary:
    _entry(f"{_tag:08X}")


# ---- value conversion -----------------------------------------------------------------------------------------


class _Invalid(ValueError):
    """The value cannot go into the column type; the element is kept in OtherElements instead."""


# What a value of an unexpected type or form raises on its way into a typed column.
_CONVERSION_ERRORS = (ValueError, TypeError, AttributeError, OverflowError)


_DATES: dict[str, date] = {}
_TIMES: dict[str, time] = {}
_DATETIMES: dict[str, datetime] = {}
_MEMO_LIMIT = 50_000  # dates repeat across the instances of a study; a plain dict is the cheapest memo


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _to_date(text: str) -> date:
    value = _DATES.get(text)
    if value is not None:
        return value
    s = text.strip()
    if len(s) == 10 and s[4] == "." and s[7] == ".":  # ACR-NEMA YYYY.MM.DD
        s = s[:4] + s[5:7] + s[8:]
    if len(s) != 8 or not _digits(s):
        raise _Invalid(text)
    try:
        value = date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        raise _Invalid(text) from None
    if len(_DATES) >= _MEMO_LIMIT:
        _DATES.clear()
    _DATES[text] = value
    return value


def _parse_time(s: str) -> time:
    if ":" in s:  # ACR-NEMA HH:MM:SS
        s = s.replace(":", "")
    main, dot, fraction = s.partition(".")
    if len(main) not in (2, 4, 6) or not _digits(main) or (dot and (len(main) != 6 or not _digits(fraction or "0"))):
        raise _Invalid(s)
    try:
        return time(int(main[:2]), int(main[2:4] or 0), int(main[4:6] or 0), int((fraction + "000000")[:6]))
    except ValueError:
        raise _Invalid(s) from None


def _to_time(text: str) -> time:
    value = _TIMES.get(text)
    if value is None:
        value = _parse_time(text.strip())
        if len(_TIMES) >= _MEMO_LIMIT:
            _TIMES.clear()
        _TIMES[text] = value
    return value


def _to_datetime(text: str) -> datetime:
    value = _DATETIMES.get(text)
    if value is not None:
        return value
    s = text.strip()
    offset = timedelta(0)
    if len(s) > 5 and s[-5] in "+-":
        sign, zone = s[-5], s[-4:]
        if not _digits(zone) or int(zone[:2]) > 14 or int(zone[2:]) > 59:
            raise _Invalid(text)
        offset = timedelta(hours=int(zone[:2]), minutes=int(zone[2:]))
        offset, s = (-offset if sign == "-" else offset), s[:-5]
    if len(s) < 8 or not _digits(s[:8]):
        raise _Invalid(text)  # not a whole date: §6.11
    try:
        day = date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        raise _Invalid(text) from None
    clock = _parse_time(s[8:]) if len(s) > 8 else time()
    try:
        value = datetime.combine(day, clock, timezone(offset)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Invalid(text) from None
    if len(_DATETIMES) >= _MEMO_LIMIT:
        _DATETIMES.clear()
    _DATETIMES[text] = value
    return value


_PN_PARTS: dict[str, tuple[tuple[str, str], ...]] = {}  # the same names recur across a study's instances


def _pn_parts(text: str) -> tuple[tuple[str, str], ...]:
    """(component, part) pairs of one group, the empty parts left out; memoized, so the caller makes a dict."""
    value = _PN_PARTS.get(text)
    if value is not None:
        return value
    parts = text.split("^")
    if len(parts) > 5:  # more than five components is invalid; keep the rest with the suffix
        parts = [*parts[:4], "^".join(parts[4:])]
    value = tuple((c, p) for c, p in zip(_PN_COMPONENTS, parts, strict=False) if p)
    if len(_PN_PARTS) >= _MEMO_LIMIT:
        _PN_PARTS.clear()
    _PN_PARTS[text] = value
    return value


def _to_pn(value: Any) -> dict[str, dict[str, str]]:
    if isinstance(value, str):
        value = dict(zip(_PN_GROUPS, value.split("="), strict=False))
    elif not isinstance(value, dict):
        raise _Invalid(value)
    out = {}
    for group in _PN_GROUPS:
        text = value.get(group)
        if text:
            out[group] = dict(_pn_parts(text))  # a new dict each time: rows are the caller's to change
    return out


def _pn_text(value: dict) -> str:
    return "=".join(value.get(g) or "" for g in _PN_GROUPS).rstrip("=")


def _to_int(value: Any, vr: str) -> int:
    if type(value) is int:
        if -_INT64_MAX - 1 <= value <= _INT64_MAX:
            return value
    elif isinstance(value, str) and vr == "AT":
        try:
            return int(value, 16)
        except ValueError:
            pass
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Invalid(value)


def _to_float(value: Any, vr: str) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Invalid(value) from None


def _to_string(value: Any, vr: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _pn_text(value)
    if isinstance(value, int | float):
        return _number_text(value)
    raise _Invalid(value)


_SCALARS = {
    "STRING": _to_string,
    "INTEGER": _to_int,
    "FLOAT": _to_float,
    "DATE": lambda v, vr: _to_date(v) if isinstance(v, str) else _fail(v),
    "TIME": lambda v, vr: _to_time(v) if isinstance(v, str) else _fail(v),
    "TIMESTAMP": lambda v, vr: _to_datetime(v) if isinstance(v, str) else _fail(v),
    "RECORD": lambda v, vr: _to_pn(v),
}


def _fail(value: Any) -> Any:
    raise _Invalid(value)


def _convert(type_: str, repeated: bool, vr: str, values: list) -> Any:
    """values (a non-empty DICOM JSON Value) as the column holds them; None when nothing is left to store."""
    scalar = _SCALARS[type_]
    if not repeated:
        if len(values) != 1:
            raise _Invalid(values)
        return None if values[0] is None else scalar(values[0], vr)
    if type_ == "STRING":
        return [_to_string(v, vr) if v is not None else "" for v in values]
    if type_ == "FLOAT":  # a JSON null in a float array was a NaN or an infinity
        return [float(v) if v is not None else float("nan") for v in values]
    return [scalar(v, vr) for v in values if v is not None]


def _number_text(value: Any) -> str:
    """A number as the stored DICOM JSON writes it (orjson: shortest round trip, twice as fast as repr);
    NaN and infinities, which JSON cannot hold, as Python writes them. Strings stay as they are."""
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return value
    if value is None:
        return ""
    text = orjson.dumps(value).decode()
    return text if text != "null" else str(value)


def _numbers_text(values: list) -> list[str]:
    """Numbers as strings in one orjson call; strings stay as they are, an empty value becomes ""."""
    try:
        text = orjson.dumps(values).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        text = '"'
    if '"' not in text and "null" not in text:
        return text[1:-1].split(",")
    return [v if type(v) is str else _number_text(v) for v in values]


def _pn_strings(values: list) -> list[str]:
    return [_pn_text(v) if isinstance(v, dict) else "" if v is None else str(v) for v in values]


# How OtherElements.Data is made from a private element's values, by VR: 0 strings, 1 numbers, 2 person names.
_DATA = (
    dict.fromkeys(("AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"), 0)
    | dict.fromkeys(("DS", "IS", "FL", "FD", "SS", "US", "SL", "UL", "SV", "UV"), 1)
    | {"PN": 2}
)


def _strings(values: list) -> list[str]:
    """A DICOM JSON Value as OtherElements.Data: every value as a string, in order."""
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif v is None:
            out.append("")
        elif isinstance(v, dict):
            out.append(_pn_text(v) if not v or any(g in v for g in _PN_GROUPS) else orjson.dumps(v).decode())
        elif isinstance(v, int | float):
            out.append(_number_text(v))
        else:
            out.append(str(v))
    return out


# ---- flattening ---------------------------------------------------------------------------------------------


def _other(other: list | None, tag_name: str, values: list | None) -> list:
    if other is None:
        other = []
    other.append({"Tag": tag_name, "Data": _strings(values) if values else []})
    return other


def _dataset(dataset: dict, level: int, dropped: list[str], owned: bool) -> tuple[dict, list[Field]]:
    """Row and fields of one data set whose columns sit at nesting `level` (top-level columns: 1). `owned`: the
    data set was parsed here, so its value lists may go into the row as they are instead of as copies."""
    row: dict[str, Any] = {}
    fields: list[Any] = []  # of Field: every kind converted inline has its field in the entry
    other: list | None = None
    cache, dates, times = _CACHE, _DATES, _TIMES
    for key, element in dataset.items():
        try:
            entry = cache[key]
        except KeyError:
            entry = _entry(key)
        kind, name, expected, column, tag_name, extra = entry
        values = element.get("Value")
        try:
            vr = element["vr"]
        except KeyError:
            vr = None
        if vr != expected:
            data_kind = _DATA.get(vr) if kind == _PRIVATE and values is not None else None
            if data_kind is not None:
                # Private elements are most of some headers: their strings are made inline.
                if data_kind == 1:
                    if len(values) == 1:
                        value = values[0]
                        data = [str(value) if type(value) is int else _number_text(value)]
                    else:
                        data = _numbers_text(values)
                elif data_kind == 0:
                    if None in values:
                        data = ["" if v is None else v for v in values]
                    else:
                        data = values if owned else values[:]
                else:
                    data = _pn_strings(values)
                if other is None:
                    other = []
                other.append({"Tag": tag_name, "Data": data})
            else:
                other = _slow(row, fields, other, entry, vr, element, level, dropped, owned)
            continue
        if kind >= _PN1:
            if kind == _SQ:
                if level >= MAX_NESTING:
                    dropped.append(name)
                elif type(values) is list and len(values) == 1:
                    # Most sequences hold one item (code sequences above all): no merging of item fields.
                    item_row, item_fields = _dataset(values[0], level + 1, dropped, owned)
                    if item_fields:
                        row[name] = [item_row]
                        fields.append({"name": name, "type": "RECORD", "mode": "REPEATED", "fields": item_fields})
                else:
                    _sequence(row, fields, name, values, level, dropped, owned)
            elif kind == _PN1:
                other = _person_name(row, fields, other, entry, element, level, dropped)
            else:
                other = _slow(row, fields, other, entry, vr, element, level, dropped, owned)
            continue
        if values is None:
            if "BulkDataURI" not in element and "InlineBinary" not in element:
                fields.append(column)  # present but empty: the column exists, its value is NULL
            continue
        # One value where the column holds one: unpacking it raises ValueError for any other count, which sends
        # the element to OtherElements as the explicit checks did, for less work on the most common elements.
        try:
            if kind == _STR1:
                (value,) = values
                if type(value) is not str:
                    raise _Invalid(values)
                row[name] = value
            elif kind == _NUM1:
                (value,) = values
                if type(value) is str:
                    row[name] = value
                elif type(value) is int:  # IS, and DS values that are whole numbers
                    row[name] = str(value)
                elif type(value) is float:
                    text = _dumps(value).decode()
                    row[name] = text if text != "null" else str(value)  # NaN and infinities: as _number_text
                elif value is None:
                    fields.append(column)
                    continue
                else:
                    row[name] = _number_text(value)
            elif kind == _INT1:
                (value,) = values
                if type(value) is not int:
                    raise _Invalid(values)
                row[name] = value
            elif kind == _STRN:
                if None in values:
                    row[name] = ["" if v is None else v for v in values]
                else:
                    row[name] = values if owned else values[:]
            elif kind == _NUMN:
                row[name] = _numbers_text(values)
            elif kind == _DATE1:
                (value,) = values
                day = dates.get(value)  # the memo _to_date fills, looked up here to save a call
                row[name] = day if day is not None else _to_date(value)
            elif kind == _TIME1:
                (value,) = values
                clock = times.get(value)
                row[name] = clock if clock is not None else _to_time(value)
            elif kind == _FLOAT1:
                (value,) = values
                if value is None:
                    fields.append(column)
                    continue
                row[name] = value if type(value) is float else _to_float(value, vr)
            elif kind == _INTN:
                if None in values:
                    values = [v for v in values if v is not None]
                if set(map(type, values)) - _INT_TYPE:
                    raise _Invalid(values)
                row[name] = values if owned else values[:]
            elif kind == _FLOATN:
                row[name] = _convert("FLOAT", True, vr, values)
            else:  # _DT1
                (value,) = values
                row[name] = _to_datetime(value)
        except _CONVERSION_ERRORS:
            other = _other(other, tag_name, values)
            continue
        fields.append(column)
    if other is not None:
        if level < MAX_NESTING:
            row["OtherElements"] = other
            fields.append(OTHER_ELEMENTS_FIELD)
        else:
            dropped.extend(o["Tag"] for o in other)
    return row, fields


def _person_name(
    row: dict, fields: list, other: list | None, entry: _Entry, element: dict, level: int, dropped: list
) -> list | None:
    """A PN element of the dictionary's VR: a record of up to three groups of five components."""
    name, column, tag_name, (_, repeated) = entry[1], entry[3], entry[4], entry[5]
    if "BulkDataURI" in element or "InlineBinary" in element:
        return other
    if level >= MAX_NESTING - 1:
        dropped.append(name)
        return other
    values = element.get("Value")
    if values:
        value: list | dict | None
        try:
            if repeated:
                value = [_to_pn(v) for v in values if v is not None]
            elif len(values) != 1:
                raise _Invalid(values)
            else:
                value = None if values[0] is None else _to_pn(values[0])
        except _CONVERSION_ERRORS:
            return _other(other, tag_name, values)
        if value is not None:
            row[name] = value
    fields.append(column)
    return other


def _slow(
    row: dict,
    fields: list,
    other: list | None,
    entry: _Entry,
    vr: Any,
    element: dict,
    level: int,
    dropped: list,
    owned: bool,
) -> list | None:
    """Everything but a standard element of its dictionary VR: sequences, PN, private and repeating-group
    elements, compatible or conflicting explicit VRs, excluded VRs, bulk data."""
    kind, name, expected, column, tag_name, extra = entry
    values = element.get("Value")
    if vr == "SQ" or (kind == _SQ and vr is None):
        if kind != _SQ:
            name = tag_name  # a private sequence, or one the dictionary does not know as a sequence
        if level >= MAX_NESTING:
            dropped.append(name)
            return other
        _sequence(row, fields, name, values, level, dropped, owned)
        return other
    if kind == _SKIP or vr in EXCLUDED_VRS or "BulkDataURI" in element or "InlineBinary" in element:
        return other
    if kind == _PRIVATE:
        return _other(other, tag_name, values)
    if kind == _SQ:  # the dictionary says SQ, the file says otherwise
        return _other(other, tag_name, values)
    if kind == _GROUP:
        group_id, type_, repeated, group_vr, record = extra
        if level >= MAX_NESTING:
            dropped.append(name)
            return other
        item: dict[str, Any] = {"Id": group_id}
        if values:
            if _BQ_TYPES.get(vr) != type_:
                return _other(other, tag_name, values)
            try:
                value = _convert(type_, repeated, vr, values)
            except _CONVERSION_ERRORS:
                return _other(other, tag_name, values)
            if value is not None:
                item["Value"] = value
        if name not in row:
            row[name] = []
            fields.append(record)
        row[name].append(item)
        return other
    type_, repeated = extra
    if _BQ_TYPES.get(vr, "") != type_ and vr is not None:
        return _other(other, tag_name, values)
    if kind == _PN1 and level >= MAX_NESTING - 1:
        dropped.append(name)
        return other
    value_vr = vr or expected
    assert value_vr is not None  # only _SKIP entries expect no VR, and they were left out above
    if values:
        try:
            value = _convert(type_, repeated, value_vr, values)
        except _CONVERSION_ERRORS:
            return _other(other, tag_name, values)
        if value is not None:
            row[name] = value
    fields.append(column)
    return other


def _sequence(
    row: dict, fields: list[Field], name: str, items: list | None, level: int, dropped: list, owned: bool
) -> None:
    rows = []
    merged: list[Field] | None = None
    for item in items or ():
        item_row, item_fields = _dataset(item, level + 1, dropped, owned)
        rows.append(item_row)
        merged = item_fields if merged is None else _union(merged, item_fields)
    if merged:
        row[name] = rows
        fields.append({"name": name, "type": "RECORD", "mode": "REPEATED", "fields": merged})


def _union(a: list[Field], b: list[Field]) -> list[Field]:
    """Fields of a then the new ones of b; RECORD fields of the same name are merged recursively."""
    if a == b:
        return a
    out = list(a)
    index = {f["name"]: i for i, f in enumerate(out)}
    for f in b:
        i = index.get(f["name"])
        if i is None:
            index[f["name"]] = len(out)
            out.append(f)
            continue
        g = out[i]
        if g is not f and "fields" in g and "fields" in f and g["fields"] != f["fields"]:
            out[i] = {**g, "fields": _union(g["fields"], f["fields"])}
    return out


# As tuples: `isinstance(x, bytes | str)` would build a union type at every call.
_BINARY = (bytes, bytearray, memoryview)
_TEXT = (bytes, str)


def flatten(
    metadata: dict | bytes | str,
    service: ServiceColumns,
    *,
    file_meta: dict | bytes | str | None = None,
) -> FlatRow:
    """One instance's row. `metadata` is its DICOM JSON, as a dict or as the stored JSON text (faster: the size
    is known without encoding). `file_meta`: the group 0002 elements, when kept apart from the data set (§6.10),
    as a dict or as the stored JSON text."""
    owned = not isinstance(metadata, dict)
    if isinstance(metadata, _BINARY):
        size = len(metadata)
        metadata = orjson.loads(metadata)
    elif isinstance(metadata, str):
        size = len(metadata.encode())
        metadata = orjson.loads(metadata)
    elif service.structured_storage_size is not None:
        size = service.structured_storage_size
    else:
        size = len(orjson.dumps(metadata))
    if not isinstance(metadata, dict):
        raise ValueError("DICOM JSON metadata must be an object")
    dropped: list[str] = []
    meta: dict | None
    if isinstance(file_meta, _TEXT):
        meta, meta_owned = (orjson.loads(file_meta) if file_meta else None), True
    else:
        meta, meta_owned = file_meta, False
    if meta:
        if DROPPED_AT_INGEST in meta:
            meta = dict(meta)
            dropped += (_dropped_name(key) for key in meta.pop(DROPPED_AT_INGEST))
        if NUMBER_TEXT in meta:
            meta = dict(meta)
            texts = meta.pop(NUMBER_TEXT)
            if texts and isinstance(texts, dict):
                if not owned:  # the caller's data set must not change: rare (production passes text)
                    metadata, owned = copy.deepcopy(metadata), True
                _restore_number_text(metadata, texts)
        # Parsed text goes into the row without copies; the caller's file meta must not.
        if owned and not meta_owned:
            meta = orjson.loads(orjson.dumps(meta))
        metadata = {**meta, **metadata}
    if size > MAX_ELEMENT_BYTES:
        metadata = _without_large(metadata, dropped)
    row, fields = _dataset(metadata, 1, dropped, owned)
    row["LastUpdated"] = _utc(service.last_updated)
    row["Type"] = service.type
    if service.storage_class is not None:
        row["StorageClass"] = service.storage_class
    if service.blob_storage_size is not None:
        row["BlobStorageSize"] = service.blob_storage_size
    row["StructuredStorageSize"] = size if service.structured_storage_size is None else service.structured_storage_size
    fields.extend(SERVICE_FIELDS)
    if dropped:
        row["DroppedTags"] = [{"TagName": n} for n in dict.fromkeys(dropped)]
    return FlatRow(row, fields)


def _restore_number_text(metadata: dict, texts: dict) -> None:
    """Put the text of DS and IS values kept at ingest (dicom.parse's `number_text`: element path -> texts) in
    place of their numbers, in the data set parsed here. A path that no longer leads to a DS or IS element
    with as many values is passed over."""
    for where, strings in texts.items():
        if type(strings) is not list or type(where) is not str:
            continue
        node: Any = metadata
        key = where
        if "/" in where:  # inside sequence items: element/item/element/...
            *steps, key = where.split("/")
            for i in range(0, len(steps) - 1, 2):
                element = node.get(steps[i]) if type(node) is dict else None
                items = element.get("Value") if type(element) is dict else None
                index = steps[i + 1]
                if type(items) is not list or not index.isdigit() or int(index) >= len(items):
                    node = None
                    break
                node = items[int(index)]
            if len(steps) % 2:
                continue
        element = node.get(key) if type(node) is dict else None
        if type(element) is not dict or element.get("vr") not in _NUMBER_VRS:
            continue
        values = element.get("Value")
        # The data set was parsed here (flatten copies the caller's): its value lists change in place.
        if type(values) is list and len(values) == len(strings) and all(type(t) is str for t in strings):
            for i, text in enumerate(strings):
                if values[i] is not None:
                    values[i] = text


_NUMBER_VRS = frozenset(("DS", "IS"))


def _without_large(metadata: dict, dropped: list[str]) -> dict:
    """The data set minus top-level elements over the size limit (nested ones are smaller than their parent)."""
    kept = {}
    for key, element in metadata.items():
        if len(orjson.dumps(element)) > MAX_ELEMENT_BYTES:
            dropped.append(_dropped_name(key))
        else:
            kept[key] = element
    return kept


def _dropped_name(key: str) -> str:
    """An element's name in DroppedTags: its keyword, or Tag_GGGGEEEE for private and repeating-group ones."""
    entry = _entry(key)
    return entry[1] if entry[0] not in (_PRIVATE, _GROUP) else entry[4]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def delete_row(study_uid: str, series_uid: str, sop_uid: str, last_updated: datetime) -> FlatRow:
    """The row a DICOMweb delete streams (§6.5): the UID triple, `Type` DELETE and `LastUpdated`, nothing else."""
    row = {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "SOPInstanceUID": sop_uid,
        "LastUpdated": _utc(last_updated),
        "Type": "DELETE",
    }
    return FlatRow(row, list(_DELETE_FIELDS))


# ---- rows whose values conflict with their table's columns -------------------------------------------------

_TYPE_ALIASES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD"}


def _type(f: Field) -> str:
    t = f.get("type", "STRING").upper()
    return _TYPE_ALIASES.get(t, t)


def demote(row: dict, conflicts: set[str] | frozenset[str]) -> dict:
    """A copy of row with the values at the conflicting paths moved into their record's `OtherElements` as
    strings (§1.14), so the instance still lands in the table; a conflicting `OtherElements` or `DroppedTags`
    itself can only be left out, and is named in `DroppedTags`."""
    if not conflicts:
        return row
    tree: dict[str, Any] = {}
    for path in conflicts:
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if node is None:
                break
        else:
            node[leaf] = None
    dropped: list[str] = []
    out = _demote(row, tree, dropped)
    if dropped:
        if "DroppedTags" in conflicts:
            return out
        out["DroppedTags"] = [*out.get("DroppedTags", []), *({"TagName": n} for n in dropped)]
    return out


def _demote(record: dict, tree: dict, dropped: list[str]) -> dict:
    out = dict(record)
    for name, subtree in tree.items():
        if name not in out:
            continue
        value = out[name]
        if subtree is not None:
            if isinstance(value, list):
                out[name] = [_demote(v, subtree, dropped) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                out[name] = _demote(value, subtree, dropped)
            continue
        del out[name]
        if name == "OtherElements":
            dropped.extend(o.get("Tag", "") for o in value or ())
        elif name == "DroppedTags":
            continue
        else:
            out["OtherElements"] = [*out.get("OtherElements", ()), *_as_other_elements(name, value)]
    return out


def _as_other_elements(name: str, value: Any) -> list[dict]:
    group = _REPEATER_ELEMENTS.get(name)
    if group is not None and isinstance(value, list) and all(isinstance(v, dict) and "Id" in v for v in value):
        mask, base = group
        out = []
        for item in value:
            open_part = int(item["Id"], 16) << (16 if mask == 0xFFFF0000 else 0)
            data = item.get("Value")
            out.append({"Tag": f"Tag_{base | open_part:08X}", "Data": _value_strings(data)})
        return out
    return [{"Tag": _tag_name(name), "Data": _value_strings(value)}]


def _tag_name(name: str) -> str:
    if name.startswith("Tag_"):
        return name
    tag = tag_for_keyword(name)
    return f"Tag_{tag:08X}" if tag is not None else name


def _value_strings(value: Any) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [_dicom_string(v) for v in values]


def _dicom_string(v: Any) -> str:
    """A row value back in its DICOM string form."""
    if isinstance(v, str):
        return v
    if isinstance(v, datetime):
        v = v.astimezone(UTC)
        text = v.strftime("%Y%m%d%H%M%S")
        return f"{text}.{v.microsecond:06d}+0000" if v.microsecond else f"{text}+0000"
    if isinstance(v, date):
        return v.strftime("%Y%m%d")
    if isinstance(v, time):
        return v.strftime("%H%M%S") + (f".{v.microsecond:06d}" if v.microsecond else "")
    if isinstance(v, dict):
        if v and set(v) <= set(_PN_GROUPS) and all(isinstance(g, dict) for g in v.values()):
            groups = [
                "^".join(g.get(c, "") for c in _PN_COMPONENTS).rstrip("^") for g in (v.get(n, {}) for n in _PN_GROUPS)
            ]
            return "=".join(groups).rstrip("=")
        return orjson.dumps(v, default=str).decode()
    return str(v)


# ---- checking rows ------------------------------------------------------------------------------------------

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "INTEGER": (int,),
    "FLOAT": (float, int),
    "DATE": (date,),
    "TIME": (time,),
    "TIMESTAMP": (datetime,),
    "BOOLEAN": (bool,),
    "RECORD": (dict,),
}


def row_problems(row: dict, fields: list[Field], _path: str = "", _level: int = 1) -> list[str]:
    """Why `row` does not fit `fields` (empty when it does): a key without a field, a value of the wrong Python
    type for its column type, a list for a NULLABLE column or a scalar for a REPEATED one, None in a list,
    a naive timestamp, a field nested deeper than BigQuery allows."""
    problems = []
    by_name = {f["name"]: f for f in fields}
    if _level > MAX_NESTING and fields:
        problems.append(f"{_path.rstrip('.')}: fields nested deeper than {MAX_NESTING} levels")
    for name, value in row.items():
        path = _path + name
        f = by_name.get(name)
        if f is None:
            problems.append(f"{path}: no field in the schema")
            continue
        type_ = _type(f)
        if f.get("mode") == "REPEATED":
            if not isinstance(value, list):
                problems.append(f"{path}: REPEATED column holds {type(value).__name__}")
                continue
            values = value
        else:
            values = [value]
        for v in values:
            if v is None:
                problems.append(f"{path}: None {'in a list' if f.get('mode') == 'REPEATED' else 'value'}")
            elif not isinstance(v, _PYTHON_TYPES[type_]) or (type_ in ("INTEGER", "FLOAT") and isinstance(v, bool)):
                problems.append(f"{path}: {type_} column holds {type(v).__name__} {v!r:.60}")
            elif type_ == "DATE" and isinstance(v, datetime):
                problems.append(f"{path}: DATE column holds a datetime")
            elif type_ == "TIMESTAMP" and isinstance(v, datetime) and v.tzinfo is None:
                problems.append(f"{path}: naive TIMESTAMP {v}")
            elif type_ == "RECORD" and isinstance(v, dict):
                problems.extend(row_problems(v, f.get("fields", []), path + ".", _level + 1))
    return problems
