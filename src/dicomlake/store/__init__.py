"""The DICOM store: catalog (datasets, stores), instances (store, get, delete) and search (QIDO)."""
