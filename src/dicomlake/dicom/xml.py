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
        attrs = f"tag={quoteattr(key)} vr={quoteattr(vr)}"
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
                    for part, component in zip(_NAME_PARTS, text.split("^")):
                        if component:
                            out.append(f"<{part}>{escape(component)}</{part}>")
                    out.append(f"</{group}>")
                out.append("</PersonName>")
            elif value is None:
                out.append(f'<Value number="{number}"/>')
            else:
                out.append(f'<Value number="{number}">{escape(str(value))}</Value>')
        out.append("</DicomAttribute>")
