"""BigQuery table schemas as they cross every boundary (JSON field lists `[{"name", "type", "mode", "fields"}]`),
what they become in DuckDB and Arrow (RECORD -> STRUCT, REPEATED -> LIST, TIMESTAMP -> TIMESTAMPTZ), what DuckDB
types read back as, and the merge that evolves a table to a wider schema."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NotRequired, Required, TypedDict

import pyarrow as pa

from dicomlake.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from duckdb.sqltypes import DuckDBPyType  # duckdb.typing in older releases


class Field(TypedDict, total=False):
    """One field of a BigQuery JSON schema; `fields` only for RECORD."""

    name: Required[str]
    type: Required[str]
    mode: Required[str]
    fields: NotRequired[list[Field]]
    description: NotRequired[str]


class SchemaConflict(FailedPrecondition):
    """A column exists with another type or mode than the one asked for."""

    reason = "invalid"


MODES = ("NULLABLE", "REQUIRED", "REPEATED")
MAX_DEPTH = 15
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")

_ALIASES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD", "DECIMAL": "NUMERIC"}
_DUCKDB = {
    "STRING": "VARCHAR",
    "BYTES": "BLOB",
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    # DuckDB's widest decimal; BIGNUMERIC's 76 digits do not fit and read back as NUMERIC.
    "NUMERIC": "DECIMAL(38, 9)",
    "BIGNUMERIC": "DECIMAL(38, 9)",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATE": "DATE",
    "TIME": "TIME",
    "DATETIME": "TIMESTAMP",
    "JSON": "JSON",
    "GEOGRAPHY": "VARCHAR",
}
_ARROW: dict[str, pa.DataType] = {
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "INTEGER": pa.int64(),
    "FLOAT": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9),
    "BIGNUMERIC": pa.decimal128(38, 9),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
    "TIME": pa.time64("us"),
    "DATETIME": pa.timestamp("us"),
    "JSON": pa.string(),
    "GEOGRAPHY": pa.string(),
}
_FROM_DUCKDB = {
    "boolean": "BOOLEAN",
    "tinyint": "INTEGER",
    "smallint": "INTEGER",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "hugeint": "INTEGER",
    "utinyint": "INTEGER",
    "usmallint": "INTEGER",
    "uinteger": "INTEGER",
    "ubigint": "INTEGER",
    "uhugeint": "INTEGER",
    "float": "FLOAT",
    "double": "FLOAT",
    "varchar": "STRING",
    "blob": "BYTES",
    "date": "DATE",
    "time": "TIME",
    "time with time zone": "TIME",
    "time_ns": "TIME",
    "timestamp with time zone": "TIMESTAMP",
    "timestamp": "DATETIME",
    "timestamp_s": "DATETIME",
    "timestamp_ms": "DATETIME",
    "timestamp_ns": "DATETIME",
    # `SELECT NULL` is an INT64 in BigQuery.
    '"null"': "INTEGER",
    "null": "INTEGER",
}


def normalize(fields: Any, _path: str = "", _depth: int = 1) -> list[Field]:
    """Check a schema from outside and return it in canonical form (INTEGER not INT64, RECORD not STRUCT,
    every mode spelled out)."""
    if not isinstance(fields, list):
        raise InvalidArgument(f"schema{' of ' + _path if _path else ''} must be a list of fields")
    if _depth > MAX_DEPTH:
        raise InvalidArgument(f"field {_path} is nested deeper than {MAX_DEPTH} levels")
    out: list[Field] = []
    seen: set[str] = set()
    for raw in fields:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"every schema field must be an object, got {str(raw)[:80]!r}")
        name = raw.get("name")
        path = f"{_path}.{name}" if _path else str(name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid field name {name!r}: fields must contain only letters, numbers and underscores, "
                "start with a letter or underscore, and be at most 300 characters long"
            )
        if name.casefold() in seen:
            raise InvalidArgument(f"duplicate field name {path} (field names are case-insensitive)")
        seen.add(name.casefold())
        kind = str(raw.get("type", "")).upper()
        kind = _ALIASES.get(kind, kind)
        if kind != "RECORD" and kind not in _DUCKDB:
            raise InvalidArgument(f"field {path} has unknown type {raw.get('type')!r}")
        mode = str(raw.get("mode") or "NULLABLE").upper()
        if mode not in MODES:
            raise InvalidArgument(f"field {path} has unknown mode {raw.get('mode')!r}")
        field: Field = {"name": name, "type": kind, "mode": mode}
        if kind == "RECORD":
            if not raw.get("fields"):
                raise InvalidArgument(f"field {path} is a RECORD and needs at least one field")
            field["fields"] = normalize(raw["fields"], path, _depth + 1)
        elif raw.get("fields"):
            raise InvalidArgument(f"field {path} has type {kind} and cannot have fields")
        if isinstance(raw.get("description"), str):
            field["description"] = raw["description"]
        out.append(field)
    return out


def merge(current: list[Field], wanted: list[Field]) -> tuple[list[Field], list[tuple[tuple[str, ...], Field]]]:
    """The union of two canonical schemas, and the fields to add to `current` to reach it, each with the DuckDB
    path of its parent (`("Seq", "element")` for a field inside the items of the REPEATED RECORD `Seq`). Columns
    keep their order; new ones come last. Names match case-insensitively, as in BigQuery."""
    return _merge(current, wanted, (), "")


def _merge(
    current: list[Field], wanted: list[Field], parent: tuple[str, ...], shown: str
) -> tuple[list[Field], list[tuple[tuple[str, ...], Field]]]:
    merged = list(current)
    index = {f["name"].casefold(): i for i, f in enumerate(merged)}
    additions: list[tuple[tuple[str, ...], Field]] = []
    for want in wanted:
        key = want["name"].casefold()
        if key not in index:
            index[key] = len(merged)
            merged.append(want)
            additions.append((parent, want))
            continue
        have = merged[index[key]]
        path = f"{shown}.{have['name']}" if shown else have["name"]
        if have["type"] != want["type"]:
            raise SchemaConflict(f"field {path} has changed type from {have['type']} to {want['type']}")
        if (have["mode"] == "REPEATED") != (want["mode"] == "REPEATED"):
            raise SchemaConflict(f"field {path} has changed mode from {have['mode']} to {want['mode']}")
        if have["type"] == "RECORD":
            inner = (*parent, have["name"], *(("element",) if have["mode"] == "REPEATED" else ()))
            fields, added = _merge(have["fields"], want["fields"], inner, path)
            if added:
                merged[index[key]] = {**have, "fields": fields}
                additions += added
    return merged, additions


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_type(field: Field) -> str:
    """The DuckDB column type of a field, e.g. `STRUCT("FamilyName" VARCHAR, ...)[]`."""
    if field["type"] == "RECORD":
        inner = "STRUCT(" + ", ".join(f"{quote(f['name'])} {duckdb_type(f)}" for f in field["fields"]) + ")"
    else:
        inner = _DUCKDB[field["type"]]
    return inner + "[]" if field["mode"] == "REPEATED" else inner


def arrow_type(field: Field) -> pa.DataType:
    if field["type"] == "RECORD":
        inner: pa.DataType = pa.struct([pa.field(f["name"], arrow_type(f)) for f in field["fields"]])
    else:
        inner = _ARROW[field["type"]]
    return pa.list_(inner) if field["mode"] == "REPEATED" else inner


def arrow_schema(fields: list[Field]) -> pa.Schema:
    return pa.schema([pa.field(f["name"], arrow_type(f)) for f in fields])


def from_duckdb(name: str, kind: DuckDBPyType, nullable: bool = True) -> Field:
    """The BigQuery field a DuckDB column or result column reads back as: STRUCT -> RECORD, LIST -> REPEATED,
    DECIMAL(38, 9) -> NUMERIC, other decimals -> INTEGER when whole (SUM of integers) or FLOAT (literals such as
    1.5, which are FLOAT64 in BigQuery), anything without a BigQuery counterpart -> STRING."""
    ident = kind.id
    if ident in ("list", "array"):
        element = from_duckdb(name, _child_types(kind)[0][1])
        if element["mode"] == "REPEATED":
            raise InvalidArgument(f"column {name} is an array of arrays, which BigQuery does not support")
        return {**element, "mode": "REPEATED"}
    if ident == "struct":
        return {
            "name": name,
            "type": "RECORD",
            "mode": "NULLABLE",
            "fields": [from_duckdb(child, child_type) for child, child_type in _child_types(kind)],
        }
    if ident == "map":
        key, value = (from_duckdb(child, child_type) for child, child_type in _child_types(kind))
        return {"name": name, "type": "RECORD", "mode": "REPEATED", "fields": [key, value]}
    if ident == "decimal":
        precision, scale = (value for _, value in kind.children)
        kind_name = "NUMERIC" if (precision, scale) == (38, 9) else "INTEGER" if scale == 0 else "FLOAT"
    elif str(kind) == "JSON":
        kind_name = "JSON"
    else:
        kind_name = _FROM_DUCKDB.get(ident, "STRING")
    return {"name": name, "type": kind_name, "mode": "NULLABLE" if nullable else "REQUIRED"}


def _child_types(kind: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    """The named children of a LIST, STRUCT or MAP type (DuckDB's `children` also holds a DECIMAL's precision and
    scale, and an ENUM's values)."""
    children = []
    for child, child_type in kind.children:
        if isinstance(child_type, int | list):
            raise InvalidArgument(f"column type {kind} has a child {child!r} that is not a type")
        children.append((child, child_type))
    return children
