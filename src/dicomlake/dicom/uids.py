"""The one validator for UID text (PS3.5 value representation UI), whatever it arrives in: a stored
instance, a URL, a filter file, a DIMSE request.

A UID is digits and dots, components separated by single dots, at most 64 characters. Two mild breaks
of the rule are common in real archives and accepted: trailing padding (spaces, or the NUL that pads a
UI value to even length) is removed, and components with leading zeros ("1.2.03") are kept as they
are, since they are unambiguous and harmless. Anything else (letters, empty components, leading or
trailing dots, inner spaces, over 64 characters) is refused with a reason."""

from __future__ import annotations

import re

__all__ = ["MAX_UID_LENGTH", "InvalidUid", "normalize_uid"]

MAX_UID_LENGTH = 64

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class InvalidUid(ValueError):
    """A UID that is not a UI value; the message says why without echoing more than a short prefix."""


def normalize_uid(value: object, name: str = "UID") -> str:
    """The UID as it is stored and compared: `value` without its trailing padding. Raises InvalidUid."""
    if not isinstance(value, str):
        raise InvalidUid(f"{name} must be a string of digits and dots, not {type(value).__name__}")
    uid = value.rstrip(" \x00")
    if not uid:
        raise InvalidUid(f"{name} is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUid(f"{name} is {len(uid)} characters long; a UID has at most {MAX_UID_LENGTH}")
    if _UID.fullmatch(uid) is None:
        raise InvalidUid(f"{name} {_shown(uid)} is not a UID: only digits separated by single dots are allowed")
    return uid


def _shown(text: str) -> str:
    """Printable and short: a UID in an error message can be anything a client sent."""
    return repr(text if len(text) <= MAX_UID_LENGTH else text[:MAX_UID_LENGTH] + "...")
