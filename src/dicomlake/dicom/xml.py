"""DICOM JSON (PS3.18 F.2) to the Native DICOM Model XML (PS3.19 A.1), for clients that ask for
application/dicom+xml."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from dicomlake.dicom.tags import keyword

_NAME_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def to_xml(dataset: dict[str, Any]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">']
    _dataset(dataset, out)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode("utf-8")


def _dataset(dataset: dict[str, Any], out: list[str]) -> None:
    for key, element in dataset.items():
        vr = element.get("vr", "UN")
        name = keyword(key)
        creator = _private_creator(dataset, key)
        if creator is None:
            attrs = f"tag={quoteattr(key)} vr={quoteattr(vr)}"
        else:
            # PS3.19 A.1, as dcmtk and dcm4che write it: a private attribute names its creator and its tag
            # drops the block number.
            attrs = f"tag={quoteattr(key[:4] + '00' + key[6:])} vr={quoteattr(vr)} privateCreator={quoteattr(creator)}"
        if name != key:
            attrs += f" keyword={quoteattr(name)}"
        out.append(f"<DicomAttribute {attrs}>")
        if "BulkDataURI" in element:
            out.append(f"<BulkData uri={quoteattr(element['BulkDataURI'])}/>")
        elif "InlineBinary" in element:
            out.append(f"<InlineBinary>{escape(element['InlineBinary'])}</InlineBinary>")
        for number, value in enumerate(element.get("Value", []), start=1):
            if vr == "SQ":
                out.append(f'<Item number="{number}">')
                _dataset(value, out)
                out.append("</Item>")
            elif vr == "PN":
                out.append(f'<PersonName number="{number}">')
                for group, text in (value or {}).items():
                    out.append(f"<{group}>")
                    for part, component in zip(_NAME_PARTS, text.split("^"), strict=False):
                        if component:
                            out.append(f"<{part}>{escape(component)}</{part}>")
                    out.append(f"</{group}>")
                out.append("</PersonName>")
            elif value is None:
                out.append(f'<Value number="{number}"/>')
            else:
                out.append(f'<Value number="{number}">{escape(str(value))}</Value>')
        out.append("</DicomAttribute>")


def _private_creator(dataset: dict[str, Any], key: str) -> str | None:
    """The creator of a private data element (gggg,xxee), read from (gggg,00xx) of the same data set."""
    group, element = int(key[:4], 16), int(key[4:], 16)
    if group % 2 == 0 or element < 0x1000:
        return None
    values = dataset.get(f"{key[:4]}00{key[4:6]}", {}).get("Value")
    return str(values[0]) if values and values[0] else None
