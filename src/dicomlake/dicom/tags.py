"""Which attributes belong to which query level, as the Cloud Healthcare conformance statement lists
them, and keyword/tag conversion for query parameters."""

from __future__ import annotations

from pydicom.datadict import keyword_for_tag, tag_for_keyword


def tag_key(keyword_or_tag: str) -> str | None:
    """'PatientName', '00100010' or '0010,0010' -> '00100010'; None if neither a keyword nor a tag."""
    value = keyword_or_tag.strip()
    tag = tag_for_keyword(value)
    if tag is not None:
        return f"{tag:08X}"
    hexdigits = value.replace(",", "").replace("(", "").replace(")", "")
    if len(hexdigits) == 8:
        try:
            return f"{int(hexdigits, 16):08X}"
        except ValueError:
            return None
    return None


def keyword(key: str) -> str:
    return keyword_for_tag(int(key, 16)) or key


def _keys(*keywords: str) -> tuple[str, ...]:
    return tuple(f"{tag_for_keyword(k):08X}" for k in keywords)


STUDY_DEFAULT = _keys(
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
)
STUDY_EXTRA = _keys(
    "PersonIdentificationCodeSequence",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "PersonTelecomInformation",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionCodeSequence",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "IssuerOfAccessionNumberSequence",
    "LocalNamespaceEntityID",
    "UniversalEntityID",
    "UniversalEntityIDType",
    "StudyDescription",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
)
SERIES_DEFAULT = _keys(
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "SeriesInstanceUID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
SERIES_EXTRA = _keys("SeriesNumber", "Laterality", "SeriesDate", "SeriesTime")
INSTANCE_DEFAULT = _keys(
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)

# What a study or series row keeps of its first instance: everything a search at that level can return.
STUDY_ATTRIBUTES = frozenset(STUDY_DEFAULT + STUDY_EXTRA)
SERIES_ATTRIBUTES = frozenset(SERIES_DEFAULT + SERIES_EXTRA + _keys("StudyInstanceUID"))

STUDY_UID, SERIES_UID, SOP_UID = _keys("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MODALITIES_IN_STUDY, STUDY_SERIES_COUNT, STUDY_INSTANCE_COUNT, SERIES_INSTANCE_COUNT = _keys(
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_AVAILABILITY = _keys("InstanceAvailability")[0]
