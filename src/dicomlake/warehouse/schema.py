"""BigQuery table schemas as they cross every boundary (JSON field lists `[{"name", "type", "mode", "fields"}]`),
what they become in DuckDB and Arrow (RECORD -> STRUCT, REPEATED -> LIST, TIMESTAMP -> TIMESTAMPTZ), what DuckDB
types read back as, and the merge that evolves a table to a wider schema."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
MAX_COLUMNS = 10_000  # BigQuery: columns per table, nested ones included
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


@dataclass
class SchemaMerge:
    """A schema widened by another: `fields`, the existing fields in their order with new columns and nested
    fields last in their record; `additions`, each new field with the DuckDB path of its parent (`("Seq",
    "element")` inside the items of the REPEATED RECORD `Seq`); `conflicts`, the dotted path of each incoming
    field the existing one cannot take, with why."""

    fields: list[Field]
    additions: list[tuple[tuple[str, ...], Field]]
    conflicts: dict[str, str]

    def strict(self) -> SchemaMerge:
        """This merge, or SchemaConflict for its first conflict."""
        if self.conflicts:
            raise SchemaConflict(next(iter(self.conflicts.values())))
        return self


def merge(existing: list[Field], incoming: list[Field], *, other_elements: Field | None = None) -> SchemaMerge:
    """BigQuery's schema-update rules: columns and nested fields may be added and REQUIRED relaxed to NULLABLE;
    a field of another type, or REPEATED on one side only, is a conflict. Names match case-insensitively, as in
    BigQuery. For DICOM rows (`other_elements` given), whose values are found by exact name, a name that differs
    in case is a conflict too, and a record with conflicts gets `other_elements` (the column its conflicting
    values move to) when it has none. Existing fields keep their order and are never removed."""
    additions: list[tuple[tuple[str, ...], Field]] = []
    conflicts: dict[str, str] = {}
    fields = _merge(existing, incoming, (), "", additions, conflicts, other_elements)
    return SchemaMerge(fields, additions, conflicts)


def _merge(
    existing: list[Field],
    incoming: list[Field],
    parent: tuple[str, ...],
    shown: str,
    additions: list[tuple[tuple[str, ...], Field]],
    conflicts: dict[str, str],
    other_elements: Field | None,
) -> list[Field]:
    out = list(existing)
    index = {f["name"].casefold(): i for i, f in enumerate(out)}
    conflicted = False
    for want in incoming:
        key = want["name"].casefold()
        i = index.get(key)
        if i is None:
            index[key] = len(out)
            out.append(want)
            additions.append((parent, want))
            continue
        have = out[i]
        path = f"{shown}.{want['name']}" if shown else want["name"]
        have_type, want_type = canonical_type(have), canonical_type(want)
        have_mode, want_mode = have.get("mode") or "NULLABLE", want.get("mode") or "NULLABLE"
        if have_type != want_type:
            conflicts[path] = f"field {path} has changed type from {have_type} to {want_type}"
        elif (have_mode == "REPEATED") != (want_mode == "REPEATED"):
            conflicts[path] = f"field {path} has changed mode from {have_mode} to {want_mode}"
        elif other_elements is not None and have["name"] != want["name"]:
            conflicts[path] = f"field {path} is named {have['name']} in the table"
        else:
            merged = have
            if have_mode == "REQUIRED" and want_mode != "REQUIRED":
                merged = {**merged, "mode": "NULLABLE"}
            if have_type == "RECORD":
                inner = (*parent, have["name"], *(("element",) if have_mode == "REPEATED" else ()))
                kept = have.get("fields", [])
                fields = _merge(kept, want.get("fields", []), inner, path, additions, conflicts, other_elements)
                if fields != kept:
                    merged = {**merged, "fields": fields}
            out[i] = merged
            continue
        conflicted = True
    if conflicted and other_elements is not None and other_elements["name"].casefold() not in index:
        out.append(other_elements)
        additions.append((parent, other_elements))
    return out


def count_columns(fields: list[Field]) -> int:
    """Columns as BigQuery counts them against its 10,000 limit: every field, nested ones included."""
    return sum(1 + count_columns(f["fields"]) if "fields" in f else 1 for f in fields)


def canonical_type(f: Field | dict[str, Any]) -> str:
    kind = str(f.get("type", "STRING")).upper()
    return _ALIASES.get(kind, kind)


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
