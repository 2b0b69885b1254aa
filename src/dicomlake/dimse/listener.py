"""The DIMSE listener: pynetdicom's association acceptor on `--dimse-port`, each association bound to the store
named by its called AE title, every service a call on `store/` (storing goes through `instances.store_instance`,
exactly the path of STOW).

Who may associate: a called AE title must name one store (label `aetitle`, any case). With access tokens
configured only listed peers may call, each from an address its host name resolves to; without tokens anyone
may, which `Settings.check_bind` allows only on loopback or with `--insecure`, as for HTTP."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from dicomlake.dicom.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_meta
from dicomlake.dimse import commitment, query, retrieve
from dicomlake.dimse.lean_store import StoreAnswer, StoreRequest
from dicomlake.dimse.peers import Peers
from dicomlake.dimse.reactor import CStoreHandler, WakingRequestHandler
from dicomlake.dimse.session import Session, attach, session_of
from dicomlake.dimse.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from dicomlake.services import Services
from dicomlake.store import catalog, instances

log = logging.getLogger("dicomlake.dimse")


class _OneLine(logging.Filter):
    """pynetdicom logs a traceback for every undecodable PDU a peer sends: bad input, worth one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom"):
            record.exc_info = None
            record.exc_text = None
        return True


# pynetdicom logs every request at INFO; the listener logs each association and every failure itself.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

# Any SOP class may be stored, as through STOW (private and retired ones too): pynetdicom then accepts every
# proposed abstract syntax that is not a query, retrieve or other non-storage service as a storage context.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# The identifiers and datasets of requests are not logged: they hold patients' data.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# PS3.8 A-ASSOCIATE-RJ: result 1 (rejected permanent), source 1 (service user), reason 3 / 7.
_REJECT_CALLING = (0x01, 0x01, 0x03)
_REJECT_CALLED = (0x01, 0x01, 0x07)
# PS3.4 Annex B C-STORE statuses.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
MAX_PDU = 262_144
MAX_ASSOCIATIONS = 32
_QUERY_RETRIEVE_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)


@dataclass
class Counters:
    """What the listener has done since it started (read with `Listener.counters`, logged when it stops)."""

    associations: int = 0
    rejected: int = 0
    aborted: int = 0
    echoes: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Listener:
    def __init__(self, services: Services, host: str, port: int, peers: Peers, listed_only: bool) -> None:
        self.services = services
        self.host = host
        self.port = port
        self.peers = peers
        self.listed_only = listed_only
        self.counters = Counters()
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _OneLine) for f in handler.filters):
                handler.addFilter(_OneLine())
        ae = AE("DICOMLAKE")
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 300
        # The called AE title selects a store; pynetdicom's own check compares it with one title.
        ae.require_called_aet = False
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for model in _QUERY_RETRIEVE_MODELS:
            ae.add_supported_context(model, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StorageCommitmentPushModel, ALL_TRANSFER_SYNTAXES)
        # Both roles for storage: a C-GET requestor proposes to be the SCP of the instances it retrieves.
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None  # pynetdicom's list names one in each
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_action),
        ]
        self._server = _SharedPortServer(
            ae,
            (self.host, self.port),
            ae.ae_title,
            ae.supported_contexts,
            evt_handlers=handlers,
            request_handler=WakingRequestHandler,
        )
        self._server.c_store = self._c_store
        self._server.daemon_threads = True
        ae._servers.append(self._server)  # as AE.start_server does: the server's shutdown() takes it off
        self._thread = threading.Thread(target=self._server.serve_forever, name="dimse-listener", daemon=True)
        self._thread.start()
        log.info("DIMSE listener on %s:%d (%s)", self.host, self.port, self._who_may_call())

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        log.info("DIMSE listener stopped: %s", _counts(self.counters.snapshot()))

    def _who_may_call(self) -> str:
        if self.listed_only:
            return f"only the {len(self.peers)} listed peers may call"
        return "any calling AE may call (no access tokens)"

    # ---- associations ----------------------------------------------------------------------------

    def _on_open(self, event: evt.Event) -> None:
        # The answers to a modality are small segments: sent at once, never held back for an ACK.
        assoc_socket = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # the A-ASSOCIATE-RQ this event is about
        calling = _ae_text(request.calling_ae_title)
        called = _ae_text(request.called_ae_title)
        address = assoc.requestor.address
        if self.listed_only and not self.peers.allows(calling, address):
            self._reject(assoc, _REJECT_CALLING, f"calling AE {calling!r} from {address} is not a listed peer")
            return
        stores = catalog.stores_by_label(self.services.db, "aetitle", called)
        if len(stores) != 1:
            why = "names no store" if not stores else f"names {len(stores)} stores (label aetitle is not unique)"
            self._reject(assoc, _REJECT_CALLED, f"called AE {called!r} from {calling!r} at {address} {why}")
            return
        attach(assoc, Session(stores[0], calling, called, address))
        self.counters.add(associations=1)

    def _reject(self, assoc: Association, reason: tuple[int, int, int], why: str) -> None:
        log.warning("DIMSE association rejected: %s", why)
        self.counters.add(rejected=1)
        assoc.acse.send_reject(*reason)
        assoc.kill()  # waits until the rejection is sent and the peer has closed (or the ARTIM timer has)

    def _on_aborted(self, event: evt.Event) -> None:
        self.counters.add(aborted=1)

    def _on_close(self, event: evt.Event) -> None:
        session = session_of(event.assoc)
        if session is None:
            return
        seconds = time.monotonic() - session.started
        log.info(
            "DIMSE association %s -> %s from %s ended after %.1f s: %d stored, %d duplicates, %d failed, %d bytes",
            session.calling,
            session.called,
            session.address,
            seconds,
            session.stored,
            session.duplicates,
            session.failed,
            session.bytes_received,
        )

    # ---- services --------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        self.counters.add(echoes=1)
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        # The C-STOREs pynetdicom hands over; those of an established association mostly come to `_c_store` instead.
        request = event.request
        assert isinstance(request, C_STORE)  # the request of an EVT_C_STORE
        sop_class_uid, sop_instance_uid = request.AffectedSOPClassUID, request.AffectedSOPInstanceUID
        session = self._session(event)
        if request.DataSet is None or not sop_class_uid or not sop_instance_uid:
            answer = self._failed(session, CANNOT_UNDERSTAND, "a C-STORE without a data set or its SOP UIDs")
        else:
            body = request.DataSet.getvalue()
            answer = self._store(session, sop_class_uid, sop_instance_uid, event.context.transfer_syntax, body)
        if answer.error_comment is None:
            return answer.status
        status = Dataset()
        status.Status = answer.status
        status.ErrorComment = answer.error_comment[:64]  # LO
        return status

    def _c_store(self, assoc: Association, request: StoreRequest, body: bytes, transfer_syntax: str) -> StoreAnswer:
        """A C-STORE-RQ read by `lean_store` on an association this listener accepted."""
        session = session_of(assoc)
        assert session is not None, "a C-STORE on an association that was not accepted"
        return self._store(session, request.sop_class_uid, request.sop_instance_uid, transfer_syntax, body)

    def _store(
        self, session: Session, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, body: bytes
    ) -> StoreAnswer:
        meta = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, session.calling)
        data = meta + body
        session.bytes_received += len(body)
        self.counters.add(bytes_received=len(body))
        try:
            result = instances.store_instance(self.services.db, self.services.blobs, session.store, data)
        except Exception:
            log.exception("C-STORE of %s from %s failed", sop_instance_uid, session.calling)
            return self._failed(session, OUT_OF_RESOURCES, "the instance could not be stored (see the server log)")
        if isinstance(result, instances.Stored):
            session.stored += 1
            self.counters.add(stored=1)
            return StoreAnswer(SUCCESS)
        if result.duplicate:
            # A modality resends what it is not sure was received: the first copy is kept, and this is success.
            session.duplicates += 1
            self.counters.add(duplicates=1)
            return StoreAnswer(SUCCESS)
        status = CANNOT_UNDERSTAND if result.reason == instances.CANNOT_UNDERSTAND else PROCESSING_FAILURE
        log.warning(
            "C-STORE of %s from %s into %s refused: %s",
            sop_instance_uid,
            session.calling,
            session.called,
            result.detail,
        )
        return self._failed(session, status, result.detail)

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        yield from query.find(self.services.db, self._session(event), event)

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        yield from retrieve.move(self.services, self._session(event), self.peers, event)

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        yield from retrieve.get(self.services, self._session(event), event)

    def _on_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        return commitment.action(self.services, self._session(event), self.peers, event)

    @staticmethod
    def _session(event: evt.Event) -> Session:
        """The session of the association a service was requested on: every association that gets that far was
        accepted by `_on_requested`, which made one."""
        session = session_of(event.assoc)
        assert session is not None, "a service requested on an association that was not accepted"
        return session

    def _failed(self, session: Session, status: int, why: str) -> StoreAnswer:
        session.failed += 1
        self.counters.add(failed=1)
        return StoreAnswer(status, why)


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a port that every listener process of the server binds, whose
    associations store their C-STOREs with `c_store` (read by `WakingRequestHandler`)."""

    c_store: CStoreHandler | None = None

    def server_bind(self) -> None:
        assert self.socket is not None  # made by TCPServer.__init__ before it binds
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _ae_text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip()


def _counts(snapshot: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in snapshot.items())
