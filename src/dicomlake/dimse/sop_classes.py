"""The SOP classes the listener serves, typed.

pynetdicom makes the names of `pynetdicom.sop_class` at import time (`globals()[name] = SOPClass(uid)`), so a type
checker sees none of them; here each is looked up by name once and typed as what it is."""

from __future__ import annotations

from pynetdicom import sop_class
from pynetdicom.sop_class import SOPClass


def _named(name: str) -> SOPClass:
    value = getattr(sop_class, name)
    assert isinstance(value, SOPClass), name
    return value


Verification = _named("Verification")
PatientRootQueryRetrieveInformationModelFind = _named("PatientRootQueryRetrieveInformationModelFind")
StudyRootQueryRetrieveInformationModelFind = _named("StudyRootQueryRetrieveInformationModelFind")
PatientRootQueryRetrieveInformationModelMove = _named("PatientRootQueryRetrieveInformationModelMove")
StudyRootQueryRetrieveInformationModelMove = _named("StudyRootQueryRetrieveInformationModelMove")
PatientRootQueryRetrieveInformationModelGet = _named("PatientRootQueryRetrieveInformationModelGet")
StudyRootQueryRetrieveInformationModelGet = _named("StudyRootQueryRetrieveInformationModelGet")
StorageCommitmentPushModel = _named("StorageCommitmentPushModel")
