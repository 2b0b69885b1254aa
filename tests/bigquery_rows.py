"""Rows shaped like the Cloud Healthcare API's BigQuery DICOM export (PN records, DATE/TIME columns, sequences as
REPEATED RECORDs, the service columns), for the tests of the warehouse, the BigQuery API and `dicomlake query`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

_NAME_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
PERSON_NAME = {
    "type": "RECORD",
    "mode": "NULLABLE",
    "fields": [
        {
            "name": group,
            "type": "RECORD",
            "mode": "NULLABLE",
            "fields": [{"name": p, "type": "STRING"} for p in _NAME_PARTS],
        }
        for group in ("Alphabetic", "Ideographic", "Phonetic")
    ],
}

SCHEMA: list[dict[str, Any]] = [
    {"name": "SpecificCharacterSet", "type": "STRING", "mode": "REPEATED"},
    {"name": "ImageType", "type": "STRING", "mode": "REPEATED"},
    {"name": "SOPClassUID", "type": "STRING", "mode": "NULLABLE"},
    {"name": "SOPInstanceUID", "type": "STRING", "mode": "NULLABLE"},
    {"name": "StudyDate", "type": "DATE", "mode": "NULLABLE"},
    {"name": "StudyTime", "type": "TIME", "mode": "NULLABLE"},
    {"name": "AcquisitionDateTime", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "Modality", "type": "STRING", "mode": "NULLABLE"},
    {"name": "ReferringPhysicianName", **PERSON_NAME},
    {"name": "PatientName", **PERSON_NAME},
    {"name": "PatientID", "type": "STRING", "mode": "NULLABLE"},
    {"name": "SliceThickness", "type": "STRING", "mode": "NULLABLE"},
    {"name": "StudyInstanceUID", "type": "STRING", "mode": "NULLABLE"},
    {"name": "SeriesInstanceUID", "type": "STRING", "mode": "NULLABLE"},
    {"name": "InstanceNumber", "type": "STRING", "mode": "NULLABLE"},
    {"name": "PixelSpacing", "type": "STRING", "mode": "REPEATED"},
    {"name": "Rows", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "Columns", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "RescaleSlope", "type": "STRING", "mode": "NULLABLE"},
    {"name": "SpacingBetweenSlices", "type": "FLOAT", "mode": "NULLABLE"},
    {
        "name": "ReferencedSeriesSequence",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [
            {"name": "SeriesInstanceUID", "type": "STRING", "mode": "NULLABLE"},
            {
                "name": "ReferencedInstanceSequence",
                "type": "RECORD",
                "mode": "REPEATED",
                "fields": [
                    {"name": "ReferencedSOPClassUID", "type": "STRING", "mode": "NULLABLE"},
                    {"name": "ReferencedSOPInstanceUID", "type": "STRING", "mode": "NULLABLE"},
                ],
            },
        ],
    },
    {
        "name": "OtherElements",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [{"name": "Tag", "type": "STRING"}, {"name": "Data", "type": "STRING", "mode": "REPEATED"}],
    },
    {"name": "StorageClass", "type": "STRING", "mode": "NULLABLE"},
    {"name": "BlobStorageSize", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "StructuredStorageSize", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "DroppedTags", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "TagName", "type": "STRING"}]},
    {"name": "LastUpdated", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "Type", "type": "STRING", "mode": "NULLABLE"},
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.3.6.1.4.1.5962.99.1"


@dataclass(frozen=True)
class Study:
    patient_id: str
    family_name: str
    uid: str
    date: dt.date
    time: dt.time
    instances: int

    @property
    def series_uid(self) -> str:
        return f"{self.uid}.1"

    def sop_uid(self, number: int) -> str:
        return f"{self.uid}.1.{number}"

    @property
    def date_time(self) -> str:
        """`StudyDate StudyTime` as BigQuery's CONCAT writes them."""
        return f"{self.date.isoformat()} {self.time.isoformat()}"


STUDIES = [
    Study("C3L-01924", "ALPHA", f"{ROOT}.2466232160.1625963902816.3.0", dt.date(2021, 7, 11), dt.time(0, 38, 22), 4),
    Study("C3L-01924", "ALPHA", f"{ROOT}.2463459463.1625961130119.3.0", dt.date(2021, 7, 10), dt.time(23, 52, 10), 4),
    Study("C3L-02513", "BETA", f"{ROOT}.2462202516.1625959873172.3.0", dt.date(2021, 7, 10), dt.time(23, 31, 13), 7),
    Study("19045", "GAMMA", f"{ROOT}.2461846936.1625959517592.3.0", dt.date(2021, 7, 10), dt.time(23, 25, 17), 3),
    Study("C3L-02515", "DELTA", f"{ROOT}.2458845347.1625956516003.3.0", dt.date(2021, 7, 10), dt.time(22, 35, 16), 6),
    Study("C3L-02515", "DELTA", f"{ROOT}.2456116127.1625953786783.3.0", dt.date(2021, 7, 10), dt.time(21, 49, 46), 7),
    Study("C3L-02513", "BETA", f"{ROOT}.2455894080.1625953564736.3.0", dt.date(2021, 7, 10), dt.time(21, 46, 4), 6),
    Study("19045", "GAMMA", f"{ROOT}.2453939652.1625951610308.3.0", dt.date(2021, 7, 10), dt.time(21, 13, 30), 2),
    Study("C3L-02515", "DELTA", f"{ROOT}.2453746219.1625951416875.3.0", dt.date(2021, 7, 10), dt.time(21, 10, 17), 6),
    Study("C3L-02513", "BETA", f"{ROOT}.2449877792.1625947548448.3.0", dt.date(2021, 7, 10), dt.time(20, 5, 48), 6),
    Study("C3L-00001", "EPSILON", f"{ROOT}.2440000000.1625900000000.3.0", dt.date(2021, 7, 9), dt.time(8, 0, 0), 2),
    Study("C3L-00001", "EPSILON", f"{ROOT}.2430000000.1625800000000.3.0", dt.date(2020, 1, 2), dt.time(9, 15, 0), 1),
]
LAST_UPDATED = dt.datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)


def person_name(family: str, given: str) -> dict[str, Any]:
    return {"Alphabetic": {"FamilyName": family, "GivenName": given}}


def instance_rows(study: Study) -> list[dict[str, Any]]:
    """One row per instance of a CT series of the study, as an export writes them."""
    return [
        {
            "SpecificCharacterSet": ["ISO_IR 100"],
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            "SOPClassUID": CT_IMAGE_STORAGE,
            "SOPInstanceUID": study.sop_uid(number),
            "StudyDate": study.date,
            "StudyTime": study.time,
            "AcquisitionDateTime": dt.datetime.combine(study.date, study.time, dt.UTC),
            "Modality": "CT",
            "ReferringPhysicianName": person_name("House", "Gregory"),
            "PatientName": person_name(study.family_name, "Pat"),
            "PatientID": study.patient_id,
            "SliceThickness": "1.25",
            "StudyInstanceUID": study.uid,
            "SeriesInstanceUID": study.series_uid,
            "InstanceNumber": str(number),
            "PixelSpacing": ["0.703125", "0.703125"],
            "Rows": 512,
            "Columns": 512,
            "RescaleSlope": "1",
            "SpacingBetweenSlices": 1.25,
            "ReferencedSeriesSequence": [
                {
                    "SeriesInstanceUID": f"{study.uid}.9",
                    "ReferencedInstanceSequence": [
                        {"ReferencedSOPClassUID": CT_IMAGE_STORAGE, "ReferencedSOPInstanceUID": f"{study.uid}.9.1"}
                    ],
                }
            ],
            "OtherElements": [{"Tag": "Tag_00431039", "Data": ["1", "0", "0"]}],
            "StorageClass": "STANDARD",
            "BlobStorageSize": 525_000 + number,
            "StructuredStorageSize": 4_096,
            "LastUpdated": LAST_UPDATED,
            "Type": "CREATE",
        }
        for number in range(1, study.instances + 1)
    ]


def all_rows() -> list[dict[str, Any]]:
    return [row for study in STUDIES for row in instance_rows(study)]


# The two example queries of the Cloud Healthcare API's "Query and analyze DICOM data in BigQuery", as written
# there; only the table name changes.
DICOMWEB_PATHS_OF_PATIENT = """#standardSQL
SELECT CONCAT('/dicomWeb/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, '/instances/', SOPInstanceUID) as DICOMwebPath
FROM `{table}`
WHERE PatientID = '19045';"""  # noqa: E501

LATEST_STUDIES = """#standardSQL
SELECT
  MIN(CONCAT(StudyDate, ' ', StudyTime)) as StudyDateTime, MIN(PatientID) as PatientID, StudyInstanceUID, COUNT(*) as InstanceCount
FROM
 `{table}` AS dicom
GROUP BY StudyInstanceUID
ORDER BY StudyDateTime DESC
LIMIT 10;"""  # noqa: E501


def expected_dicomweb_paths() -> list[str]:
    return sorted(
        f"/dicomWeb/studies/{s.uid}/series/{s.series_uid}/instances/{s.sop_uid(n)}"
        for s in STUDIES
        if s.patient_id == "19045"
        for n in range(1, s.instances + 1)
    )


def expected_latest_studies() -> list[tuple[str, str, str, int]]:
    """(StudyDateTime, PatientID, StudyInstanceUID, InstanceCount) of the ten latest studies, latest first."""
    latest = sorted(STUDIES, key=lambda s: s.date_time, reverse=True)[:10]
    return [(s.date_time, s.patient_id, s.uid, s.instances) for s in latest]
