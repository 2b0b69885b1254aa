"""What the listener keeps on an association it accepted, shared by the handlers of its services."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pynetdicom.association import Association

from dicomlake.store.catalog import StoreRef

# The attribute of pynetdicom's Association that holds the session (pynetdicom has no slot for a user's data).
_ATTRIBUTE = "dicomlake"


@dataclass
class Session:
    """An association's store and its own counts for the closing log line."""

    store: StoreRef
    calling: str
    called: str
    address: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes_received: int = 0


def attach(assoc: Association, session: Session) -> None:
    setattr(assoc, _ATTRIBUTE, session)


def session_of(assoc: Association) -> Session | None:
    """The session of an association, None when it was rejected before one was made."""
    session = getattr(assoc, _ATTRIBUTE, None)
    return session if isinstance(session, Session) else None
