"""Bulk data values addressed by the paths used in BulkDataURIs (`7FE00010`, `00283000/0/00283006`)."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.dataset import Dataset

from dicomlake.dicom.parse import PIXEL_DATA_TAGS

_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q", "AT": "L"}


class BulkDataError(LookupError):
    """The path does not name a bulk data element of this instance."""


def extract(data: bytes, path: str) -> bytes:
    """The value of the element at `path`, little-endian and unencapsulated where it is pixel data."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise BulkDataError(f"bulk data path {path!r} must be TAG or TAG/ITEM/TAG...")
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    current: Dataset = ds
    try:
        for i in range(0, len(parts) - 1, 2):
            current = current[int(parts[i], 16)].value[int(parts[i + 1])]
        tag = int(parts[-1], 16)
        element = current[tag]
    except (KeyError, IndexError, ValueError, TypeError):
        raise BulkDataError(f"no bulk data at {path!r} in this instance") from None
    if tag in PIXEL_DATA_TAGS and len(parts) == 1 and ds.file_meta.get("TransferSyntaxUID") is not None \
            and ds.file_meta.TransferSyntaxUID.is_compressed:
        from dicomlake.dicom.pixels import frame_count, frames

        return b"".join(frames(data, list(range(1, frame_count(data) + 1))))
    value = element.value
    if isinstance(value, bytes):
        return value
    fmt = _NUMBER_FORMATS.get(element.VR)
    if fmt is None:
        raise BulkDataError(f"the element at {path!r} is not bulk data")
    values = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
    return struct.pack("<" + fmt * len(values), *[int(v) if fmt not in "fd" else float(v) for v in values])
