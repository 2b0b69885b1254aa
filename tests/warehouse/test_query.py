"""BigQuery Standard SQL on the embedded warehouse: the documented example queries unchanged, the BigQuery
features DICOM queries lean on, results in BigQuery's REST encoding, and errors in BigQuery's words."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from bigquery_rows import (
    DICOMWEB_PATHS_OF_PATIENT,
    LATEST_STUDIES,
    SCHEMA,
    STUDIES,
    all_rows,
    expected_dicomweb_paths,
    expected_latest_studies,
)
from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.warehouse import embedded, query, results
from dicomlake.warehouse.embedded import TableRef, Warehouse
from dicomlake.warehouse.results import TimestampFormat
from dicomlake.warehouse.schema import Field
from dicomlake.warehouse.sql import InvalidQuery

TABLE = "my-project.dicom.instances"


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    warehouse = Warehouse.in_data_dir(tmp_path_factory.mktemp("query"))
    embedded.create_dataset(warehouse, "my-project", "dicom")
    embedded.append(warehouse, TableRef.parse(TABLE), SCHEMA, all_rows())
    return warehouse


def run(wh: Warehouse, sql: str, **options: Any) -> tuple[list[Field], list[dict[str, Any]]]:
    path = wh.root / "result.arrow"
    summary = query.run(wh, "my-project", sql, results_path=path, **options)
    fields, table, total = results.read(path, 0, None)
    assert fields == summary.fields and total == summary.total_rows == table.num_rows
    return fields, table.to_pylist()


def test_the_dicomweb_paths_of_a_patient_example_runs_unchanged(wh: Warehouse) -> None:
    fields, rows = run(wh, DICOMWEB_PATHS_OF_PATIENT.format(table=TABLE))
    assert fields == [{"name": "DICOMwebPath", "type": "STRING", "mode": "NULLABLE"}]
    assert sorted(r["DICOMwebPath"] for r in rows) == expected_dicomweb_paths()


def test_the_latest_studies_example_runs_unchanged(wh: Warehouse) -> None:
    fields, rows = run(wh, LATEST_STUDIES.format(table=TABLE))
    assert [(f["name"], f["type"]) for f in fields] == [
        ("StudyDateTime", "STRING"),
        ("PatientID", "STRING"),
        ("StudyInstanceUID", "STRING"),
        ("InstanceCount", "INTEGER"),
    ]
    assert [tuple(r.values()) for r in rows] == expected_latest_studies()


def test_struct_fields_unnest_of_sequences_and_repeated_values(wh: Warehouse) -> None:
    _, rows = run(
        wh,
        "SELECT PatientName.Alphabetic.FamilyName, ref.SeriesInstanceUID AS Referenced, inst.ReferencedSOPInstanceUID, "
        "ARRAY_LENGTH(PixelSpacing) AS n FROM dicom.instances, UNNEST(ReferencedSeriesSequence) AS ref, "
        "UNNEST(ref.ReferencedInstanceSequence) AS inst WHERE 'AXIAL' IN UNNEST(ImageType) AND InstanceNumber = '1' "
        "ORDER BY Referenced LIMIT 1",
    )
    study = min(STUDIES, key=lambda s: f"{s.uid}.9")
    assert rows == [
        {
            "FamilyName": study.family_name,
            "Referenced": f"{study.uid}.9",
            "ReferencedSOPInstanceUID": f"{study.uid}.9.1",
            "n": 2,
        }
    ]


def test_aggregates_windows_qualify_except_and_safe_cast(wh: Warehouse) -> None:
    _, rows = run(
        wh,
        "SELECT * EXCEPT(rn) FROM (SELECT PatientID, SAFE_CAST(PatientID AS INT64) AS AsNumber, "
        "ARRAY_AGG(DISTINCT StudyInstanceUID ORDER BY StudyInstanceUID) OVER (PARTITION BY PatientID) AS Studies, "
        "ROW_NUMBER() OVER (PARTITION BY PatientID ORDER BY StudyDate DESC) AS rn FROM dicom.instances "
        "QUALIFY rn = 1) ORDER BY PatientID",
    )
    by_patient = {r["PatientID"]: r for r in rows}
    assert sorted(by_patient) == sorted({s.patient_id for s in STUDIES})
    assert by_patient["19045"]["AsNumber"] == 19045 and by_patient["C3L-01924"]["AsNumber"] is None
    assert by_patient["C3L-02513"]["Studies"] == sorted(s.uid for s in STUDIES if s.patient_id == "C3L-02513")
    assert "rn" not in rows[0]


def test_concat_with_a_null_is_null_as_in_bigquery(wh: Warehouse) -> None:
    _, rows = run(wh, "SELECT CONCAT('a', CAST(NULL AS STRING)) AS x, CONCAT('a', 'b') AS y")
    assert rows == [{"x": None, "y": "ab"}]


def test_expressions_without_alias_are_named_like_bigquery(wh: Warehouse) -> None:
    fields, _ = run(
        wh, "SELECT COUNT(*), PatientID, UPPER(Modality), Modality AS m FROM dicom.instances GROUP BY 2, 3, 4"
    )
    assert [f["name"] for f in fields] == ["f0_", "PatientID", "f1_", "m"]


def test_a_default_dataset_qualifies_bare_table_names(wh: Warehouse) -> None:
    _, rows = run(wh, "SELECT COUNT(*) AS n FROM instances", default_dataset=("my-project", "dicom"))
    assert rows == [{"n": len(all_rows())}]
    with pytest.raises(InvalidQuery, match='Table "instances" must be qualified with a dataset'):
        run(wh, "SELECT COUNT(*) FROM instances")


def test_queries_join_tables_of_other_projects(wh: Warehouse) -> None:
    embedded.create_dataset(wh, "research-project", "cohorts")
    embedded.append(
        wh,
        TableRef("research-project", "cohorts", "members"),
        [{"name": "PatientID", "type": "STRING"}, {"name": "Cohort", "type": "STRING"}],
        [{"PatientID": "19045", "Cohort": "lung"}],
    )
    _, rows = run(
        wh,
        "SELECT DISTINCT c.Cohort, i.StudyInstanceUID FROM dicom.instances i "
        "JOIN `research-project.cohorts.members` c USING (PatientID) ORDER BY 2",
    )
    assert rows == [
        {"Cohort": "lung", "StudyInstanceUID": s.uid}
        for s in sorted(STUDIES, key=lambda s: s.uid)
        if s.patient_id == "19045"
    ]


def test_statements_that_change_data_report_the_rows_they_touched(wh: Warehouse) -> None:
    run_plain = lambda sql: query.run(wh, "my-project", sql)  # noqa: E731
    assert run_plain("CREATE TABLE dicom.scratch AS SELECT SOPInstanceUID FROM dicom.instances").statement_type == (
        "CREATE_TABLE_AS_SELECT"
    )
    assert run_plain("DELETE FROM dicom.scratch WHERE SOPInstanceUID LIKE '%.1'").affected_rows == len(STUDIES)
    assert run_plain("INSERT INTO dicom.scratch (SOPInstanceUID) VALUES ('x')").affected_rows == 1
    assert embedded.row_count(wh, TableRef("my-project", "dicom", "scratch")) == len(all_rows()) - len(STUDIES) + 1
    scratch = TableRef("my-project", "dicom", "scratch")
    assert embedded.get_table(wh, scratch).created_ms > 0
    run_plain("DROP TABLE dicom.scratch")
    with pytest.raises(NotFound):
        embedded.get_table(wh, scratch)
    run_plain("CREATE VIEW dicom.scratch AS SELECT 1 AS x")
    assert embedded.get_table(wh, scratch).type == "VIEW"
    run_plain("DROP VIEW dicom.scratch")
    assert [t.ref.table for t in embedded.list_tables(wh, "my-project", "dicom")] == ["instances"]


def test_a_dry_run_returns_the_schema_without_rows(wh: Warehouse) -> None:
    summary = query.run(wh, "my-project", "SELECT Rows, PatientName FROM dicom.instances", dry_run=True)
    assert [(f["name"], f["type"]) for f in summary.fields] == [("Rows", "INTEGER"), ("PatientName", "RECORD")]
    assert summary.total_rows == 0


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("SELECT FROM", InvalidQuery, r"Syntax error: Expected table name but got end of input at \[1:12\]"),
        ("SELECT Nope FROM dicom.instances", InvalidQuery, 'Referenced column "Nope" not found'),
        ("SELECT * FROM dicom.nope", NotFound, "Not found: Table my-project:dicom.nope was not found in location US"),
        ("SELECT * FROM nope.t", NotFound, "Not found: Dataset my-project:nope was not found in location US"),
        ("SELECT * FROM `no-project.d.t`", NotFound, "Not found: Dataset no-project:d"),
        ("SELECT 1 AS a, 2 AS a", InvalidQuery, "Duplicate column names in the result are not supported"),
        ("SELECT 1; SELECT 2", InvalidQuery, "Multi-statement queries"),
        ("SELECT [[1]] AS x", InvalidQuery, "array of arrays"),
        ("SELECT CONCAT ('/studies/', StudyInstanceUID) FROM [p:d.t]", InvalidQuery, "Syntax error"),
    ],
)
def test_bad_queries_fail_with_bigquery_like_messages(wh: Warehouse, sql: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        run(wh, sql)


def test_queries_without_tables_run_even_in_a_project_without_a_file(tmp_path: Path) -> None:
    wh = Warehouse.in_data_dir(tmp_path)
    path = tmp_path / "r.arrow"
    assert query.run(wh, "fresh-project", "SELECT 40 + 2 AS answer", results_path=path).total_rows == 1
    assert results.read(path, 0, None)[1].to_pylist() == [{"answer": 42}]
    with pytest.raises(InvalidArgument, match="invalid project id"):
        query.run(wh, "../escape", "SELECT 1")


# ---- the REST encoding of rows ----------------------------------------------------------------


def test_rows_encode_as_bigquery_rest_json_with_records_and_repeated_values(wh: Warehouse) -> None:
    fields, _ = run(
        wh,
        "SELECT PatientName, PixelSpacing, Rows, SpacingBetweenSlices, StudyDate, StudyTime, LastUpdated, "
        "ReferencedSeriesSequence, DroppedTags, TRUE AS Flag FROM dicom.instances WHERE InstanceNumber = '1' "
        "ORDER BY StudyInstanceUID LIMIT 1",
    )
    _, table, _ = results.read(wh.root / "result.arrow", 0, 1)
    (row,) = results.rows_json(table, fields)
    cells = dict(zip([f["name"] for f in fields], [c["v"] for c in row["f"]], strict=True))
    first = min(STUDIES, key=lambda s: s.uid)
    alphabetic = {"f": [{"v": first.family_name}, {"v": "Pat"}, {"v": None}, {"v": None}, {"v": None}]}
    assert cells["PatientName"] == {"f": [{"v": alphabetic}, {"v": None}, {"v": None}]}
    assert cells["PixelSpacing"] == [{"v": "0.703125"}, {"v": "0.703125"}]
    assert (cells["Rows"], cells["SpacingBetweenSlices"], cells["Flag"]) == ("512", "1.25", "true")
    assert (cells["StudyDate"], cells["StudyTime"]) == (first.date.isoformat(), first.time.isoformat())
    assert cells["LastUpdated"] == "1709294400.25"
    instance = {"f": [{"v": "1.2.840.10008.5.1.4.1.1.2"}, {"v": f"{first.uid}.9.1"}]}
    assert cells["ReferencedSeriesSequence"] == [{"v": {"f": [{"v": f"{first.uid}.9"}, {"v": [{"v": instance}]}]}}]
    # A NULL array reads as an empty one, as BigQuery has no NULL arrays.
    assert cells["DroppedTags"] == []


def test_timestamps_encode_in_each_format_bigquery_offers() -> None:
    field: Field = {"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"}
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=dt.UTC)
    when = dt.datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    assert results.encoder(field)(when) == "1709294400.25"
    assert results.encoder(field)(before_epoch) == "-1.5"
    assert results.encoder(field, TimestampFormat.INT64_MICROS)(when) == "1709294400250000"
    assert results.encoder(field, TimestampFormat.ISO8601)(when) == "2024-03-01T12:00:00.250000Z"
    floats: Field = {"name": "f", "type": "FLOAT", "mode": "REPEATED"}
    assert results.encoder(floats)([1.0, float("inf"), float("nan"), None]) == [
        {"v": "1.0"},
        {"v": "Infinity"},
        {"v": "NaN"},
        {"v": None},
    ]
