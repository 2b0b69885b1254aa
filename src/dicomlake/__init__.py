"""dicomlake: a self-hosted DICOM store that speaks DICOMweb and the Cloud Healthcare API v1."""

__version__ = "0.1.0"
