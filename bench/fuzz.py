"""A seeded fuzzer against a real `dicomlake serve` on loopback: every case is made from `SEED:INDEX` alone
(`random.Random`), sent on one kept-alive connection, and checked against the invariants of issue 10: no 5xx,
no connection dropped without `Connection: close`, no file created outside the data dir, a canary secret never
in a response, the server still answering at the end.

`python -m bench fuzz --requests N --seed S` runs N cases and writes bench/results/fuzz.json;
`python -m bench fuzz --replay SEED:INDEX` sends one case (after the same set-up) and prints its answer."""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.servers import free_port

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
SHARED_TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
SOURCE_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "SC_rgb.dcm", "ExplVR_BigEnd.dcm")
PROJECT, LOCATION, DATASET, STORE, BUCKET, BQ_DATASET = "fuzz", "local", "fuzzds", "fuzzstore", "fuzzbkt", "fuzzbq"
TABLE = f"{BQ_DATASET}.instances"


@dataclass
class Case:
    family: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # A filter file the case writes into the embedded bucket before it is sent (relative name, content).
    bucket_file: tuple[str, bytes] | None = None

    def describe(self) -> str:
        body = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        return f"{self.method} {self.path[:400]} headers={self.headers} body({len(self.body)} bytes)={body!r}"


@dataclass
class Target:
    """What the cases aim at: the names set up on the server, the files the payloads try to reach."""

    seed: int
    token: str
    marker: str  # in every path a payload tries to create, so a created file can be found by name
    canary: Path  # a file outside the data dir whose secret must never come back
    sentinel: Path  # the server's working directory, watched for new entries
    data_dir: Path
    uids: list[tuple[str, str, str]]  # (study, series, instance) of the stored real files
    sources: list[bytes]

    @property
    def dataset_path(self) -> str:
        return f"/v1/projects/{PROJECT}/locations/{LOCATION}/datasets"

    @property
    def store_path(self) -> str:
        return f"{self.dataset_path}/{DATASET}/dicomStores/{STORE}"

    @property
    def dicomweb(self) -> str:
        return f"{self.store_path}/dicomWeb"


# ---- the pieces cases are made of --------------------------------------------------------------------------


def evil_paths(t: Target) -> list[str]:
    """Places a payload tries to read or write: outside files, the canary, the data dir itself."""
    return [
        "/etc/passwd",
        "/proc/self/environ",
        "/proc/self/cmdline",
        str(t.canary),
        str(t.sentinel / "victim.txt"),
        f"/tmp/{t.marker}.txt",
        f"{t.sentinel}/{t.marker}-w",
        f"../../../../../../tmp/{t.marker}",
        f"{t.marker}.csv",
        str(t.data_dir),
        f"{t.data_dir}/index.sqlite",
        f"{t.data_dir}/*",
        "/",
        "~/.ssh/id_rsa",
    ]


def odd_text(r: random.Random, t: Target) -> str:
    kinds: list[Callable[[], str]] = [
        lambda: "",
        lambda: " ",
        lambda: "a" * r.choice((64, 65, 255, 1024, 5000)),
        lambda: "../" * r.randint(1, 12) + f"tmp/{t.marker}",
        lambda: "..",
        lambda: ".",
        lambda: "%00",
        lambda: "\x00" + t.marker,
        lambda: "".join(chr(r.randint(0, 31)) for _ in range(r.randint(1, 8))),
        lambda: "ü" * r.randint(1, 50),
        lambda: "\ud800",
        lambda: "a#b?c&d=e",
        lambda: "1.2." + ".".join(str(r.randint(0, 10**9)) for _ in range(r.randint(1, 40))),
        lambda: "01.002.0003",
        lambda: "1.2.3 ",
        lambda: "1..2",
        lambda: "-1",
        lambda: str(2**64),
        lambda: "1e308",
        lambda: "null",
        lambda: "*",
        lambda: "'; DROP TABLE instances; --",
        lambda: "${jndi:ldap://x}",
        lambda: r.choice(evil_paths(t)),
        lambda: f"file://{r.choice(evil_paths(t))}",
        lambda: "".join(r.choice("()NOT AND OR = \"'<>:-") for _ in range(r.randint(1, 200))),
    ]
    return r.choice(kinds)()


def odd_uid(r: random.Random, t: Target) -> str:
    if t.uids and r.random() < 0.35:
        return r.choice(r.choice(t.uids))
    return odd_text(r, t)


def odd_json(r: random.Random, t: Target, depth: int = 0) -> object:
    kind = r.randrange(11)
    if depth > 3 or kind == 0:
        return r.choice([None, True, False, 0, -1, 2**63, 2**64, 1.5, float("1e300"), "", odd_text(r, t)])
    if kind == 1:
        return [odd_json(r, t, depth + 1) for _ in range(r.randint(0, 4))]
    if kind == 2:
        nested: object = {}
        for _ in range(r.choice((10, 33, 100, 400))):
            nested = {"a": nested} if r.random() < 0.5 else [nested]
        return nested
    return {odd_text(r, t) if r.random() < 0.3 else r.choice(KEYS): odd_json(r, t, depth + 1) for _ in range(3)}


KEYS = (
    "labels",
    "name",
    "query",
    "gcsSource",
    "gcsDestination",
    "uri",
    "uriPrefix",
    "filterConfig",
    "configuration",
    "jobReference",
    "jobId",
    "timeoutMs",
    "maxResults",
    "dryRun",
    "useLegacySql",
    "streamConfigs",
    "bigqueryDestination",
    "tableUri",
    "defaultDataset",
    "datasetId",
    "notificationConfig",
)


def json_body(r: random.Random, value: object) -> bytes:
    if r.random() < 0.1:
        return r.choice([b"", b"{", b"[1,2", b"\xff\xfe", b"{'a': 1}", b"null", b"1" * 5000, b'{"a":' * 500])
    return json.dumps(value).encode()


def _quote(value: str | bytes, safe: str = "", encoding: str | None = None, errors: str | None = None) -> str:
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return quote(raw, safe="")


def query_string(params: list[tuple[str, str]]) -> str:
    return "?" + urlencode(params, quote_via=_quote) if params else ""


def segment(value: str) -> str:
    """A path segment as the client sends it: percent-encoded, except a bare `..` or `.` now and then."""
    return value if value in ("..", ".") else quote(value.encode("utf-8", "surrogatepass"), safe="")


# ---- DICOM files ------------------------------------------------------------------------------------------


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer)
    return buffer.getvalue()


def mutate_dicom(r: random.Random, t: Target) -> bytes:
    raw = r.choice(t.sources)
    kind = r.randrange(9)
    if kind == 0:  # byte flips in the header
        data = bytearray(raw)
        for _ in range(r.randint(1, 20)):
            data[r.randrange(128, min(len(data), 2048))] = r.randrange(256)
        return bytes(data)
    if kind == 1:  # cut short
        return raw[: r.randrange(0, len(raw))]
    if kind == 2:  # a length field set to something absurd
        data = bytearray(raw)
        at = r.randrange(132, min(len(data) - 4, 4096))
        data[at : at + 4] = r.choice(
            [b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x10\x00\x00\x00"]
        )
        return bytes(data)
    if kind == 3:  # a VR replaced
        data = bytearray(raw)
        for _ in range(r.randint(1, 5)):
            at = data.find(r.choice([b"UI", b"SQ", b"US", b"OB", b"DA", b"PN", b"LO", b"CS"]), r.randrange(132, 1024))
            if at > 0:
                data[at : at + 2] = r.choice([b"SQ", b"UN", b"OB", b"ZZ", b"\x00\x00", b"UT", b"FD"])
        return bytes(data)
    if kind == 4:  # no preamble, no DICM, or garbage
        return r.choice([raw[132:], raw[128:], b"\x00" * 132, b"DICM" * 10, r.randbytes(r.randint(0, 3000))])
    try:
        return rewritten(r, t, raw, kind)
    except Exception:  # pydicom refuses to set or write some mutations; send the source cut in half instead
        return raw[: len(raw) // 2]


def rewritten(r: random.Random, t: Target, raw: bytes, kind: int) -> bytes:
    """The source read by pydicom, changed where the parser and the storage keys are most exposed, written back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        if kind == 5:  # the UIDs that name storage
            for keyword in r.sample(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"], r.randint(1, 3)):
                setattr(ds, keyword, odd_uid(r, t))
            ds.file_meta.MediaStorageSOPInstanceUID = odd_uid(r, t)
        elif kind == 6:  # deep sequences
            item = Dataset()
            item.CodeValue = t.marker
            for _ in range(r.choice((5, 31, 32, 33, 60, 150))):
                outer = Dataset()
                outer.ContentSequence = Sequence([item])
                item = outer
            ds.ContentSequence = item.ContentSequence
        elif kind == 7:  # odd values in ordinary attributes
            for keyword in r.sample(
                [
                    "PatientName",
                    "PatientID",
                    "StudyDate",
                    "Modality",
                    "AccessionNumber",
                    "StudyDescription",
                    "InstanceNumber",
                    "TransferSyntaxUID",
                ],
                3,
            ):
                value = odd_text(r, t)
                if keyword == "TransferSyntaxUID":
                    ds.file_meta.TransferSyntaxUID = value
                else:
                    setattr(ds, keyword, value)
        else:  # fresh UIDs: a new instance that should simply be stored
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{t.seed}.{r.randrange(10**12)}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return dicom_bytes(ds)


def multipart(parts: list[bytes], boundary: str, part_type: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow_headers(boundary: str) -> dict[str, str]:
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


# ---- the families -----------------------------------------------------------------------------------------


def stow_case(r: random.Random, t: Target) -> Case:
    boundary = r.choice(["b", "fuzz-boundary", "x" * 70, "a b", "", '"quoted"', "--", t.marker])
    parts = [r.choice(t.sources) for _ in range(r.randint(0, 3))]
    body = multipart(parts, boundary)
    headers = stow_headers(boundary)
    kind = r.randrange(8)
    if kind == 0:
        body = body[: r.randrange(len(body) + 1)]
    elif kind == 1:
        body = body.replace(f"--{boundary}".encode(), f"--{boundary}X".encode(), 1)
    elif kind == 2:
        headers["Content-Type"] = r.choice(
            [
                "application/json",
                "text/plain",
                "multipart/related",
                "application/dicom",
                'multipart/related; type="image/jpeg"; boundary=b',
                "",
                "*/*",
                f'multipart/related; boundary="{boundary}"; type=application/dicom',
            ]
        )
    elif kind == 3:
        body = multipart(
            parts, boundary, r.choice(["text/plain", "application/octet-stream", "", "application/dicom;x"])
        )
    elif kind == 4:
        body = body.replace(b"\r\n\r\n", b"\n\n")
    elif kind == 5:
        body = f"--{boundary}\r\n".encode() + r.randbytes(r.randint(0, 5000))
    elif kind == 6:
        headers = {"Content-Type": "application/dicom"}
        body = r.choice(t.sources) if r.random() < 0.5 else b""
    study = f"/{segment(odd_uid(r, t))}" if r.random() < 0.3 else ""
    return Case("stow", "POST", f"{t.dicomweb}/studies{study}", headers, body)


def dicom_case(r: random.Random, t: Target) -> Case:
    boundary = "fuzzdicom"
    parts = [mutate_dicom(r, t) for _ in range(r.randint(1, 3))]
    if r.random() < 0.3:
        parts.append(r.choice(t.sources))
    return Case("dicom", "POST", f"{t.dicomweb}/studies", stow_headers(boundary), multipart(parts, boundary))


QIDO_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "Modality",
    "ModalitiesInStudy",
    "AccessionNumber",
    "00100010",
    "0020000D",
    "StudyTime",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
    "ReferringPhysicianName",
    "x",
    "",
)


def qido_value(r: random.Random, t: Target, key: str) -> str:
    if key in ("limit", "offset"):
        return r.choice(["0", "-1", "1", "100000000", str(2**63), str(2**64), "1.5", "abc", ""])
    if key == "includefield":
        return r.choice(["all", "00100010", "PatientName,StudyDate", "x" * 1000, "7FE00010", ",,,"])
    if key == "fuzzymatching":
        return r.choice(["true", "false", "1", ""])
    if "Date" in key:
        return r.choice(["20000101-20201231", "-", "2020", "99999999", "20200101-", "-20200101", "0-0"])
    return r.choice([odd_text(r, t), "*", "?", "CT", "CT\\MR", "Doe^*", "\x00", odd_uid(r, t)])


def qido_wado_case(r: random.Random, t: Target) -> Case:
    study, series, instance = (odd_uid(r, t) for _ in range(3))
    if t.uids and r.random() < 0.4:
        study, series, instance = r.choice(t.uids)
    s, e, i = segment(study), segment(series), segment(instance)
    paths = [
        "/studies",
        "/series",
        "/instances",
        f"/studies/{s}",
        f"/studies/{s}/metadata",
        f"/studies/{s}/series",
        f"/studies/{s}/instances",
        f"/studies/{s}/series/{e}",
        f"/studies/{s}/series/{e}/metadata",
        f"/studies/{s}/series/{e}/instances",
        f"/studies/{s}/series/{e}/instances/{i}",
        f"/studies/{s}/series/{e}/instances/{i}/metadata",
        f"/studies/{s}/series/{e}/instances/{i}/rendered",
        f"/studies/{s}/series/{e}/instances/{i}/frames/{segment(r.choice(['1', '0', '1,2', '-1', 'x', '99999']))}",
        f"/studies/{s}/series/{e}/instances/{i}/frames/1/rendered",
        f"/studies/{s}/series/{e}/instances/{i}/bulkdata/{segment(odd_text(r, t))}",
        f"/{segment(odd_text(r, t))}",
    ]
    path = r.choice(paths)
    params = [(k, qido_value(r, t, k)) for k in r.sample(QIDO_KEYS, r.randint(0, 4))]
    accept = r.choice(
        [
            "",
            "application/dicom+json",
            'multipart/related; type="application/dicom"',
            "image/png",
            "image/jpeg",
            'multipart/related; type="application/octet-stream"',
            "*/*",
            "text/html",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        ]
    )
    headers = {"Accept": accept} if accept else {}
    method = "DELETE" if r.random() < 0.05 and study not in {u[0] for u in t.uids} else "GET"
    if method == "DELETE":
        path = f"/studies/{s}"
    return Case("qido_wado", method, t.dicomweb + path + query_string(params), headers)


def filter_expression(r: random.Random, t: Target) -> str:
    kind = r.randrange(6)
    if kind == 0:
        n = r.choice((5, 31, 33, 200, 2000))
        return "(" * n + "labels.a=b" + ")" * r.choice((n, n - 1, 0))
    if kind == 1:
        return "NOT " * r.choice((3, 32, 1000)) + "labels.a=b"
    if kind == 2:
        return " AND ".join(f"labels.{odd_text(r, t)}={odd_text(r, t)}" for _ in range(r.randint(1, 5)))
    if kind == 3:
        return r.choice(['labels.a="b"', "labels.a:*", "labels.a", "=", '"', "labels.", "x" * 5000])
    return odd_text(r, t)


def resource_case(r: random.Random, t: Target) -> Case:
    fresh = f"fz{r.randrange(10**6)}"
    ident = r.choice([fresh, odd_text(r, t), DATASET, STORE])
    ds = r.choice([DATASET, DATASET, segment(odd_text(r, t))])
    kind = r.randrange(10)
    body = b""
    if kind == 0:
        method, path = "POST", f"{t.dataset_path}?datasetId={_quote(ident)}"
    elif kind == 1:
        method, path = "POST", f"{t.dataset_path}/{ds}/dicomStores?dicomStoreId={_quote(ident)}"
        body = json_body(r, odd_json(r, t) if r.random() < 0.6 else {"labels": {odd_text(r, t): odd_text(r, t)}})
    elif kind == 2:
        params = [("filter", filter_expression(r, t))] + [("pageSize", r.choice(["0", "-1", str(2**64), "x"]))] * (
            r.random() < 0.5
        )
        method, path = "GET", f"{t.dataset_path}/{ds}/dicomStores" + query_string(params)
    elif kind == 3:
        params = [("pageSize", r.choice(["1", "0", "-5", str(2**70)])), ("pageToken", odd_text(r, t))]
        method, path = "GET", t.dataset_path + query_string(params)
    elif kind == 4:
        mask = r.choice(["labels", "notificationConfig", "streamConfigs", "", "x", odd_text(r, t)])
        method, path = "PATCH", f"{t.store_path}?updateMask={_quote(mask)}"
        body = json_body(r, odd_json(r, t))
    elif kind == 5:
        victim = r.choice([fresh, odd_text(r, t)])
        method = "DELETE"
        path = r.choice(
            [f"{t.dataset_path}/{segment(victim)}", f"{t.dataset_path}/{DATASET}/dicomStores/{segment(victim)}"]
        )
    elif kind == 6:
        method = "GET"
        path = f"{t.dataset_path}/{ds}/operations" + query_string([("filter", filter_expression(r, t))])
    elif kind == 7:
        method = r.choice(["GET", "POST"])
        path = f"{t.dataset_path}/{ds}/operations/{segment(odd_text(r, t))}" + r.choice(["", ":cancel"])
    elif kind == 8:
        method, path = "GET", f"/v1/projects/{PROJECT}/logs" + query_string([("filter", filter_expression(r, t))])
    else:
        method, path = "POST", f"{t.store_path}:{segment(odd_text(r, t))}"
        body = json_body(r, odd_json(r, t))
    return Case("resources", method, path, {"Content-Type": "application/json"}, body)


def gcs_uri(r: random.Random, t: Target) -> str:
    name = r.choice([BUCKET, "nosuchbucket", odd_text(r, t), "Bad_Bucket", "a" * 300])
    obj = r.choice(
        [
            "",
            "*",
            "**",
            "a.dcm",
            "*.dcm",
            "dir/**",
            odd_text(r, t),
            "../" * 8 + "etc/passwd",
            "./a.dcm",
            "a#1/",
            "x" * 5000,
            f"../../{t.marker}/",
            "a\nb",
            "a\x00b",
        ]
    )
    return r.choice(
        [
            f"gs://{name}/{obj}",
            f"gs://{name}",
            "gs://",
            f"file://{r.choice(evil_paths(t))}",
            f"file:///tmp/{t.marker}/",
            "s3://x/y",
            odd_text(r, t),
            f"gs://{BUCKET}/ok/",
        ]
    )


def import_export_case(r: random.Random, t: Target) -> Case:
    kind = r.randrange(4)
    if kind == 0:
        body: object = {"gcsSource": {"uri": gcs_uri(r, t)}}
        if r.random() < 0.2:
            body["blobStorageSettings"] = {"blobStorageClass": odd_text(r, t)}  # type: ignore[index]
        verb = "import"
    elif kind == 1:
        destination = {"uriPrefix": gcs_uri(r, t)}
        if r.random() < 0.4:
            destination["mimeType"] = r.choice(["application/dicom", "image/png", "image/jpeg", "text/plain", "x"])
        body = {"gcsDestination": destination}
        verb = "export"
    elif kind == 2:
        table = r.choice(
            [
                f"bq://{PROJECT}.{BQ_DATASET}.t{r.randrange(100)}",
                "bq://",
                "bq://a.b",
                odd_text(r, t),
                f"bq://{PROJECT}.{BQ_DATASET}.{odd_text(r, t)}",
                f"bq://../../{t.marker}.x.y",
            ]
        )
        body = {
            "bigqueryDestination": {
                "tableUri": table,
                "writeDisposition": r.choice(["WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND", "", odd_text(r, t)]),
            }
        }
        verb = "export"
    else:
        body, verb = odd_json(r, t), r.choice(["import", "export"])
    return Case(
        "import_export", "POST", f"{t.store_path}:{verb}", {"Content-Type": "application/json"}, json_body(r, body)
    )


def filter_file_case(r: random.Random, t: Target) -> Case:
    study, series, instance = r.choice(t.uids) if t.uids else ("1", "2", "3")
    lines = [
        f"/studies/{study}",
        f"/studies/{study}/series/{series}",
        f"/studies/{study}/series/{series}/instances/{instance}",
        "/studies/../../etc/passwd",
        "",
        "   ",
        odd_text(r, t),
        f"studies/{odd_uid(r, t)}",
        "/studies/" + "1." * 100,
        "x" * 10000,
        t.marker,
    ]
    content = "\n".join(r.choice(lines) for _ in range(r.randint(0, 8))).encode("utf-8", "surrogatepass")
    if r.random() < 0.1:
        content = r.randbytes(r.randint(0, 2000))
    name = f"filters/f{r.randrange(10**6)}.txt"
    uri = f"gs://{BUCKET}/{name}" if r.random() < 0.8 else gcs_uri(r, t)
    body = {
        "gcsDestination": {"uriPrefix": f"gs://{BUCKET}/out{r.randrange(1000)}/"},
        "filterConfig": {"resourcePathsGcsUri": uri},
    }
    return Case(
        "filter_files",
        "POST",
        f"{t.store_path}:export",
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
        bucket_file=(name, content),
    )


SQL = (
    "SELECT * FROM read_csv('{path}')",
    "SELECT * FROM read_csv_auto('{path}')",
    "SELECT * FROM read_text('{path}')",
    "SELECT * FROM read_blob('{path}')",
    "SELECT * FROM read_json('{path}')",
    "SELECT * FROM read_parquet('{path}')",
    "SELECT * FROM glob('{path}')",
    "SELECT * FROM '{path}'",
    "SELECT * FROM sniff_csv('{path}')",
    "SELECT * FROM parquet_metadata('{path}')",
    "COPY (SELECT '{marker}' AS a) TO '{path}' (HEADER false)",
    "COPY {table} TO '{path}'",
    "COPY {table} FROM '{path}'",
    "EXPORT DATABASE '{path}'",
    "IMPORT DATABASE '{path}'",
    "LOAD '{path}'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "ATTACH '{path}' AS x",
    "ATTACH ':memory:' AS {marker}",
    "DETACH x",
    "PRAGMA database_list",
    "PRAGMA enable_external_access",
    "SET enable_external_access = true",
    "SET memory_limit = '100GB'",
    "RESET ALL",
    "CALL duckdb_settings()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_functions() LIMIT 5",
    "SELECT current_setting('home_directory')",
    "SELECT getenv('HOME')",
    "CREATE TABLE {marker} AS SELECT 1",
    "CREATE MACRO m(x) AS x",
    "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n+1 FROM r) SELECT COUNT(*) FROM r",
    "SELECT COUNT(*) FROM UNNEST(GENERATE_ARRAY(1, 1000000000))",
    "SELECT COUNT(*) FROM range(100000000000) a",
    "SELECT {parens}1{close}",
    "SELECT * FROM {table} LIMIT 5",
    "SELECT COUNT(*) FROM {table}",
    "SELECT StudyInstanceUID FROM {table} WHERE PatientName = '{text}'",
    "SELECT '{text}'",
    "{text}",
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{path}'",
    "SELECT * FROM `{text}`",
    "SELECT * FROM {table} a, {table} b, {table} c, {table} d",
    "SELECT repeat('x', 1000000000)",
    "SELECT string_agg(repeat('x', 100000), '') FROM range(100000)",
)


def sql_text(r: random.Random, t: Target) -> str:
    n = r.choice((3, 100, 3000))
    return r.choice(SQL).format(
        path=r.choice(evil_paths(t)).replace("'", "''"),
        marker=t.marker,
        table=r.choice([TABLE, f"`{PROJECT}.{TABLE}`", "nosuch.table", "information_schema.tables"]),
        parens="(" * n,
        close=")" * r.choice((n, n - 1)),
        text=odd_text(r, t).replace("'", "''"),
    )


def sql_case(r: random.Random, t: Target) -> Case:
    body: dict[str, object] = {
        "query": sql_text(r, t),
        "useLegacySql": False,
        "timeoutMs": r.choice([1, 10, 100, 500]),
        "maxResults": r.choice([1, 10, 1000]),
    }
    if r.random() < 0.2:
        body["dryRun"] = True
    if r.random() < 0.5:
        body["defaultDataset"] = {"projectId": PROJECT, "datasetId": BQ_DATASET}
    return Case(
        "sql",
        "POST",
        f"/bigquery/v2/projects/{PROJECT}/queries",
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
    )


def bigquery_case(r: random.Random, t: Target) -> Case:
    base = f"/bigquery/v2/projects/{segment(r.choice([PROJECT, PROJECT, odd_text(r, t)]))}"
    job = segment(r.choice([odd_text(r, t), "j" * 300, f"job_{r.randrange(100)}", "a/b"]))
    kind = r.randrange(9)
    method, body = "GET", b""
    params: list[tuple[str, str]] = []
    if kind == 0:
        method, path = "POST", f"{base}/jobs"
        config = r.choice(
            [
                5,
                None,
                [],
                {"query": odd_json(r, t)},
                {"query": {"query": sql_text(r, t)}},
                {"query": {"query": "SELECT 1", "destinationTable": odd_json(r, t)}},
                odd_json(r, t),
            ]
        )
        body = json_body(r, {"configuration": config, "jobReference": r.choice([{"jobId": odd_text(r, t)}, 7, None])})
    elif kind == 1:
        path = f"{base}/jobs/{job}"
    elif kind == 2:
        path = f"{base}/queries/{job}"
        params = [("maxResults", r.choice(["0", "-1", str(2**64), "1e9", "x"])), ("timeoutMs", r.choice(["0", "1"]))]
        params += [("startIndex", r.choice(["0", str(2**64), "-3"])), ("pageToken", odd_text(r, t))]
    elif kind == 3:
        method, path = "POST", f"{base}/jobs/{job}/cancel"
    elif kind == 4:
        method, path = "POST", f"{base}/queries"
        body = json_body(
            r,
            {
                "query": odd_json(r, t),
                "maxResults": r.choice([2**64, -1, "x", 1.5, None]),
                "timeoutMs": r.choice([0, -1, 2**64, "1", None]),
                "dryRun": odd_json(r, t),
            },
        )
    elif kind == 5:
        method, path = "POST", f"{base}/datasets"
        body = json_body(r, {"datasetReference": {"datasetId": odd_text(r, t)}, "labels": odd_json(r, t)})
    elif kind == 6:
        method = r.choice(["GET", "DELETE"])
        path = f"{base}/datasets/{segment(odd_text(r, t))}" + r.choice(
            ["", "/tables", f"/tables/{segment(odd_text(r, t))}"]
        )
    elif kind == 7:
        path = f"{base}/datasets/{BQ_DATASET}/tables/instances/data"
        params = [("maxResults", r.choice(["1", str(2**64), "-1"])), ("selectedFields", odd_text(r, t))]
        params += [("startIndex", r.choice(["0", str(2**64), "x"]))]
    else:
        method, path = "POST", f"{base}/datasets/{BQ_DATASET}/tables"
        body = json_body(
            r,
            {
                "tableReference": {"tableId": odd_text(r, t)},
                "view": {"query": sql_text(r, t)},
                "schema": {"fields": odd_json(r, t)},
            },
        )
    return Case("bigquery", method, path + query_string(params), {"Content-Type": "application/json"}, body)


def printable(text: str) -> str:
    """What http.client lets through in a header value."""
    return "".join(c for c in text if " " <= c <= "~")


def token_case(r: random.Random, t: Target) -> Case:
    inner = r.choice([qido_wado_case, resource_case, sql_case, stow_case])(r, t)
    auth = r.choice(
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            f"Bearer {t.token}x",
            f"bearer {t.token[:-1]}",
            f"Basic {t.token}",
            f"Bearer  {t.token} extra",
            "Bearer \x7f",
            f"Bearer {printable(odd_text(r, t))}",
        ]
    )
    headers = {**inner.headers, "Authorization": auth} if auth is not None else {**inner.headers, "Authorization": None}
    return Case("tokens", inner.method, inner.path, headers, inner.body)  # type: ignore[arg-type]


FAMILIES: dict[str, tuple[Callable[[random.Random, Target], Case], int]] = {
    "stow": (stow_case, 10),
    "dicom": (dicom_case, 14),
    "qido_wado": (qido_wado_case, 20),
    "resources": (resource_case, 14),
    "import_export": (import_export_case, 8),
    "filter_files": (filter_file_case, 4),
    "bigquery": (bigquery_case, 10),
    "sql": (sql_case, 12),
    "tokens": (token_case, 8),
}


def make_case(seed: int, index: int, target: Target) -> Case:
    r = random.Random(f"{seed}:{index}")
    names = list(FAMILIES)
    family = r.choices(names, weights=[FAMILIES[n][1] for n in names])[0]
    return FAMILIES[family][0](r, target)


# ---- the server and the client ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: no answer (the connection was reset, or the server did not answer in time)
    body: bytes
    reset: bool
    timed_out: bool = False


class Client:
    """One kept-alive connection; a connection the server drops without `Connection: close` counts a reset."""

    def __init__(self, port: int, token: str, timeout: float = 60) -> None:
        self.port, self.token, self.timeout = port, token, timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def send(self, method: str, path: str, headers: dict[str, str | None], body: bytes) -> Answer:
        sent = {"Authorization": f"Bearer {self.token}", **headers}
        sent = {k: v for k, v in sent.items() if v is not None}
        reset = False
        for _ in range(2):
            try:
                self.connection.request(method, path, body=body or None, headers=sent)
                response = self.connection.getresponse()
                data = response.read()
                if response.will_close:  # the server said so: not a reset
                    self.connection.close()
                return Answer(response.status, data, reset)
            except TimeoutError:  # no answer in time: a hang, told apart from a reset
                self.reconnect()
                return Answer(0, b"", reset, timed_out=True)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                reset = True
                self.reconnect()
        return Answer(0, b"", reset)

    def reconnect(self) -> None:
        self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def json(self, method: str, path: str, body: object = None) -> object:
        answer = self.send(
            method, path, {"Content-Type": "application/json"}, json.dumps(body).encode() if body else b""
        )
        return json.loads(answer.body) if answer.body else None


def snapshot(sentinel: Path, marker: str) -> set[str]:
    """Every entry under the sentinel tree, and every entry of /tmp named with the marker."""
    found = {str(p) for p in sentinel.rglob("*")}
    found |= {f"/tmp/{name}" for name in os.listdir("/tmp") if marker in name}
    return found


@dataclass
class Run:
    seed: int
    requests: int = 0
    per_family: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    server_errors: int = 0
    resets: int = 0
    timeouts: int = 0
    outside_files: list[str] = field(default_factory=list)
    canary_leaks: int = 0
    healthy_at_end: bool = False
    seconds: float = 0.0

    def fail(self, seed: int, index: int, case: Case, what: str, answer: Answer) -> None:
        entry = {
            "case": f"{seed}:{index}",
            "what": what,
            "status": answer.status,
            "request": case.describe(),
            "answer": answer.body[:500].decode("utf-8", "replace"),
        }
        self.failures.append(entry)
        print(f"FAIL {seed}:{index} {what} status={answer.status}: {case.describe()}", file=sys.stderr)

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "requests": self.requests,
            "per_family": dict(sorted(self.per_family.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": self.server_errors,
            "resets": self.resets,
            "timeouts": self.timeouts,
            "outside_files": self.outside_files,
            "canary_leaks": self.canary_leaks,
            "healthy_at_end": self.healthy_at_end,
            "seconds": round(self.seconds, 1),
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "failures": self.failures[:50],
        }

    @property
    def clean(self) -> bool:
        return (
            not (self.server_errors or self.resets or self.outside_files or self.canary_leaks) and self.healthy_at_end
        )


@contextmanager
def fuzz_server(seed: int) -> Iterator[tuple[Target, Client, subprocess.Popen, Path]]:
    """A server with tokens in a scratch folder: `data/` is its data dir, `sentinel/` its working directory
    (with a victim file), and a canary file in /tmp; the store holds the real source files, a bucket folder holds
    a few of them, and the store is exported to a table so that SQL has something to read."""
    marker = f"dlfuzz{seed}m{os.getpid()}"
    secret = os.urandom(16).hex()
    token = f"fuzz-token-{seed}"
    with tempfile.TemporaryDirectory(prefix="dicomlake-fuzz-") as tmp:
        work = Path(tmp)
        data_dir, sentinel = work / "data", work / "sentinel"
        (sentinel / "deep" / "er").mkdir(parents=True)
        (sentinel / "victim.txt").write_text(f"victim {secret}\n")
        canary = Path(f"/tmp/dicomlake-fuzz-canary-{seed}")
        canary.write_text(f"canary {secret}\n")
        sources = [Path(get_testdata_file(n)).read_bytes() for n in SOURCE_FILES]  # type: ignore[arg-type]
        sources += [p.read_bytes() for p in sorted((SHARED_TESTDATA / "highdicom").glob("*_image.dcm"))[:2]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMLAKE_")}
        # A second token no request sends and the canary in the server's environment: neither may come back.
        env.update({"DICOMLAKE_AUTH_TOKENS": f"{token},other-{secret}", "FUZZ_CANARY": secret})
        port = free_port()
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicomlake",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                    "--log-level",
                    "warning",
                ],
                cwd=sentinel,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            client = wait_ready(port, token, process, log_path)
            target = Target(seed, token, marker, canary, sentinel, data_dir.resolve(), [], sources)
            set_up(client, target)
            yield target, client, process, log_path
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            canary.unlink(missing_ok=True)
            if os.environ.get("FUZZ_KEEP_LOG"):
                shutil.copy(log_path, os.environ["FUZZ_KEEP_LOG"])


def wait_ready(port: int, token: str, process: subprocess.Popen, log_path: Path) -> Client:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v1/projects/fuzz/locations/local/datasets")
            connection.getresponse().read()
            connection.close()
            return Client(port, token)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start within 60 s")


def set_up(client: Client, t: Target) -> None:
    client.json("POST", f"{t.dataset_path}?datasetId={DATASET}")
    client.json("POST", f"{t.dataset_path}/{DATASET}/dicomStores?dicomStoreId={STORE}", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in t.sources:
            answer = client.send("POST", f"{t.dicomweb}/studies", stow_headers("setup"), multipart([raw], "setup"))
            if answer.status == 200:
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
                t.uids.append((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    if not t.uids:
        raise RuntimeError("the set-up STOW stored none of the source files")
    bucket = t.data_dir / "buckets" / BUCKET
    (bucket / "ok").mkdir(parents=True)
    for n, raw in enumerate(t.sources[:3]):
        (bucket / "ok" / f"{n}.dcm").write_bytes(raw)
    client.json("POST", f"/bigquery/v2/projects/{PROJECT}/datasets", {"datasetReference": {"datasetId": BQ_DATASET}})
    client.json("POST", f"{t.store_path}:export", {"bigqueryDestination": {"tableUri": f"bq://{PROJECT}.{TABLE}"}})
    wait_operations(client, t, 60)


def wait_operations(client: Client, t: Target, timeout: float) -> None:
    """Until no operation of the dataset is running (or the timeout): late writes of imports and exports count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = client.json("GET", f"{t.dataset_path}/{DATASET}/operations?pageSize=1000")
        operations = listing.get("operations", []) if isinstance(listing, dict) else []
        if all(o.get("done") for o in operations):
            return
        time.sleep(0.2)


def send_case(client: Client, target: Target, case: Case) -> Answer:
    if case.bucket_file:
        path = target.data_dir / "buckets" / BUCKET / case.bucket_file[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.bucket_file[1])
    return client.send(case.method, case.path, case.headers, case.body)  # type: ignore[arg-type]


def run(requests: int, seed: int, progress: bool = False) -> Run:
    result = Run(seed)
    with fuzz_server(seed) as (target, client, process, log_path):
        secret = target.canary.read_text().split()[1].encode()
        before = snapshot(target.sentinel, target.marker)
        started = time.monotonic()
        for index in range(requests):
            case = make_case(seed, index, target)
            answer = send_case(client, target, case)
            result.requests += 1
            result.per_family[case.family] += 1
            result.statuses[answer.status] += 1
            if answer.reset:
                result.resets += 1
                result.fail(seed, index, case, "connection reset", answer)
            if answer.timed_out:
                result.timeouts += 1
                result.fail(seed, index, case, f"no answer within {client.timeout:.0f} s", answer)
            if answer.status >= 500:
                result.server_errors += 1
                result.fail(seed, index, case, "5xx", answer)
            if secret in answer.body:
                result.canary_leaks += 1
                result.fail(seed, index, case, "canary leaked", answer)
            if index % 50 == 49:
                new = snapshot(target.sentinel, target.marker) - before
                for path in sorted(new - set(result.outside_files)):
                    result.outside_files.append(path)
                    result.fail(seed, index, case, f"file outside the data dir: {path} (a case of the last 50)", answer)
            if progress and index % 1000 == 999:
                rate = (index + 1) / (time.monotonic() - started)
                print(f"{index + 1} requests, {rate:.0f}/s, 5xx {result.server_errors}, resets {result.resets}")
            if process.poll() is not None:
                result.fail(seed, index, case, "server exited", answer)
                break
        wait_operations(client, target, 60)
        result.seconds = time.monotonic() - started
        for path in sorted(snapshot(target.sentinel, target.marker) - before - set(result.outside_files)):
            result.outside_files.append(path)
        health = client.send("GET", f"{target.dataset_path}/{DATASET}", {}, b"")
        result.healthy_at_end = health.status == 200 and process.poll() is None
        if result.server_errors:
            print("server log (tracebacks):\n" + log_path.read_text()[-20000:], file=sys.stderr)
    return result


def replay(spec: str) -> None:
    seed, index = (int(x) for x in spec.split(":"))
    with fuzz_server(seed) as (target, client, _process, log_path):
        case = make_case(seed, index, target)
        print(f"{spec} [{case.family}] {case.describe()}")
        answer = send_case(client, target, case)
        print(f"-> {answer.status} reset={answer.reset}\n{answer.body[:2000].decode('utf-8', 'replace')}")
        log = log_path.read_text()
        if log.strip():
            print("server log:\n" + log[-10000:])


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench fuzz")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", metavar="SEED:INDEX")
    args = parser.parse_args(argv)
    if args.replay:
        replay(args.replay)
        return
    result = run(args.requests, args.seed, progress=True)
    summary = {**result.summary(), "machine": f"{os.cpu_count()} cores"}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=2))
    print(f"written to {RESULTS}")
    if not result.clean:
        sys.exit(1)
