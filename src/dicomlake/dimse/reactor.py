"""pynetdicom's acceptor, woken by what happens instead of polling.

pynetdicom runs two threads per association, and both poll: the DUL thread sleeps a millisecond whenever it
found nothing to do, the association thread sleeps a millisecond before every look at its queue of DIMSE
messages. A modality sends its next C-STORE only when the last one is answered, so those sleeps (two or
three per instance) cap one association near 300 instances/s whatever the store does. Here the same
threads block instead, and are woken at once: the DUL thread in `select` on its socket and a pipe that
every primitive queued for sending writes to, the association thread on an event set by every message or
primitive queued for it. Nothing else of pynetdicom changes (PDUs, the state machine, negotiation,
services, events), and an idle association costs no CPU.

When given a C-STORE handler, the DUL thread also takes plain C-STORE-RQs itself once the association is
established (`lean_store` says which and why): it stores each and writes its answer straight to the socket.

The classes below use pynetdicom's internals (queue attributes, `_run_reactor`, `_read_pdu_data`, `_decode_pdu`):
the dependency is pinned to the 3.0 series, and the tests run every service over these classes."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomlake.dimse.lean_store import P_DATA_TF, Abort, Forward, Splitter, StoreAnswer, StoreRequest, encode_response

log = logging.getLogger("dicomlake.dimse")

# How long a blocked thread waits before it looks at its timers (ARTIM, idle network timeout) anyway.
TICK_SECONDS = 0.05
# PS3.8 9.3: A-ASSOCIATE-RQ, -AC, -RJ, P-DATA-TF, A-RELEASE-RQ, -RP, A-ABORT.
PDU_TYPES = frozenset(range(0x01, 0x08))
# A peer whose PDUs may be shorter than this gets its C-STOREs answered by pynetdicom, which can fragment them.
LEAN_MINIMUM_PEER_PDU = 1024
# PS3.4 Annex B: the status pynetdicom answers when a C-STORE handler raises.
HANDLER_FAILED = 0xC211

# Stores one C-STORE-RQ's data set (as sent, in the context's transfer syntax) and says how to answer it.
CStoreHandler = Callable[[Association, StoreRequest, bytes, str], StoreAnswer]


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls `wake` after each put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Inbox(_WakingQueue):
    """The DIMSE messages a peer sent, with its answers to our requests kept apart in `answers`.

    pynetdicom has one queue for both, and a thread that sent a request on this association (the N-EVENT-REPORT
    of storage commitment, the C-STOREs of a C-GET) takes the next message as its answer. A peer may send its
    next request before that answer (an SCU answers the report in one thread and sends its next N-ACTION from
    another), and that request would be taken for the answer and lost. The end of the association, (None, None),
    goes to both queues."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__(wake)
        self.answers: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        message = item[1]
        if message is None or getattr(message, "MessageIDBeingRespondedTo", None) is None:
            super().put(item, block, timeout)
        if message is None or getattr(message, "MessageIDBeingRespondedTo", None) is not None:
            self.answers.put(item)


class _SortingDimse(DIMSEServiceProvider):
    """Every pynetdicom send waits for its answer with `get_msg(block=True)`; the reactor takes requests with
    `block=False`. Each gets only its kind (see `_Inbox`)."""

    def __init__(self, assoc: Association, wake: Callable[[], None]) -> None:
        super().__init__(assoc)
        self.msg_queue = self.inbox = _Inbox(wake)

    def get_msg(self, block: bool = False) -> Any:
        try:
            if block:
                return self.inbox.answers.get(timeout=self.dimse_timeout)
            return self.inbox.get(block=False)
        except queue.Empty:
            return None, None


class _BlockingSocket(AssociationSocket):
    """`ready` waits up to a tick for data, and returns early when `wake()` is called from another thread."""

    def __init__(self, assoc: Association, client_socket: socket.socket) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        # A full pipe means a wake-up is pending anyway; a closed one, that the association is over.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        # Events already queued (a PDU read while an earlier event waited) are the loop's next work: look, never wait.
        timeout = 0 if self.event_queue.qsize() else TICK_SECONDS
        try:
            watched: list[socket.socket | int] = [sock, self._wake_r]
            readable, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # the connection is gone
            return False
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        return sock in readable

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        self._ack_now()
        return data

    def _ack_now(self) -> None:
        # Acknowledge at once: a peer with Nagle's algorithm on (DCMTK's default) holds the rest of a message
        # back until its first segment is acknowledged, and Linux would wait up to 40 ms to do that. The flag
        # does not stick, so it is set again after every read.
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def read_exactly(self, size: int) -> bytearray | None:
        """`size` bytes, read into one buffer; None if the connection ends or fails first."""
        sock = self.socket
        if sock is None:
            return None
        if size == 0:
            return bytearray()
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        try:
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    return None
                got += n
                # After every read, not once at the end: a peer with Nagle's algorithm on sends the rest of
                # a PDU only when what it sent so far is acknowledged.
                self._ack_now()
        except OSError:
            return None
        return data

    def close(self) -> None:
        super().close()
        self.close_pipe()

    def close_pipe(self) -> None:
        # Forgotten before closed: a late wake() must never write into a descriptor number reused meanwhile.
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _LeanDUL(DULServiceProvider):
    """pynetdicom's DUL service provider, with the C-STORE-RQs of an established association read, stored and
    answered in its own thread by `c_store`; every other PDU is pynetdicom's to read or is handed to it."""

    def __init__(self, assoc: Association, c_store: CStoreHandler) -> None:
        super().__init__(assoc)
        self._c_store = c_store
        self._splitter = Splitter(self._accepts)

    def _read_pdu_data(self) -> None:
        sock = self.socket
        maximum = self.assoc.acceptor.maximum_length
        lean = not self._splitter.aborted and self._in_data_transfer() and bool(maximum)
        if not lean or not isinstance(sock, _BlockingSocket) or maximum is None:
            super()._read_pdu_data()
            return
        # Every PDU is read here while the association is established: one read in the middle of a message (and a
        # PDU header can arrive split over two segments) would give pynetdicom a data set without its command.
        header = sock.read_exactly(6)
        body = None
        if header is not None:
            length = int.from_bytes(header[2:6], "big")
            if header[0] not in PDU_TYPES or length > maximum:
                log.warning(
                    "DIMSE association from %s aborted: a PDU of type 0x%02X and %d bytes",
                    self.assoc.requestor.address,
                    header[0],
                    length,
                )
                self.event_queue.put("Evt19")  # an invalid PDU: the state machine sends the A-ABORT
                return
            body = sock.read_exactly(length)
        if header is None or body is None:
            self.event_queue.put("Evt17")  # the connection closed mid-PDU
            return
        if header[0] != P_DATA_TF:
            self._hand_over(bytes(header + body))
            return
        for action in self._splitter.feed(memoryview(body)):
            if isinstance(action, Forward):
                self._hand_over(action.pdu)
            elif isinstance(action, Abort):
                log.warning("DIMSE association from %s aborted: %s", self.assoc.requestor.address, action.why)
                self.event_queue.put("Evt19")
            else:
                self._store(sock, action.request, action.dataset)

    def _in_data_transfer(self) -> bool:
        # The state machine's word, not `is_established`: the association thread sets that only after the
        # A-ASSOCIATE-AC is sent, and a peer's first message may arrive before; reading its first PDU one way and
        # the rest the other would split the message. The accepted contexts are set before the AC is sent.
        return self.state_machine.current_state == "Sta6" and not self.assoc._sent_release

    def _accepts(self, request: StoreRequest) -> bool:
        context = self.assoc._accepted_cx.get(request.context_id)
        if context is None or context.abstract_syntax != request.sop_class_uid:
            return False
        peer_maximum = self.assoc.requestor.maximum_length
        return not peer_maximum or peer_maximum >= LEAN_MINIMUM_PEER_PDU

    def _hand_over(self, pdu: bytes) -> None:
        # What pynetdicom's own `_read_pdu_data` does with a PDU it has read.
        try:
            decoded, event = self._decode_pdu(bytearray(pdu))
        except Exception:
            log.warning("DIMSE association from %s aborted: an undecodable PDU", self.assoc.requestor.address)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _store(self, sock: _BlockingSocket, request: StoreRequest, dataset: bytes) -> None:
        transfer_syntax = self.assoc._accepted_cx[request.context_id].transfer_syntax[0]
        try:
            answer = self._c_store(self.assoc, request, dataset, transfer_syntax)
        except Exception:
            log.exception("C-STORE of %s failed", request.sop_instance_uid)
            answer = StoreAnswer(HANDLER_FAILED, "the instance could not be stored (see the server log)")
        sock.send(encode_response(request, answer))


class WakingAssociation(Association):
    """An acceptor association whose thread sleeps until a message, a release or an abort arrives."""

    def __init__(self, ae: ApplicationEntity, mode: str, c_store: CStoreHandler | None = None) -> None:
        super().__init__(ae, mode)
        if c_store is not None:
            self.dul = _LeanDUL(self, c_store)
            # pynetdicom hands its timeouts to the DUL it made first.
            self.acse_timeout = self.ae.acse_timeout
            self.network_timeout = self.ae.network_timeout
        self._wakeup = threading.Event()
        self.dul.to_user_queue = _WakingQueue(self._wakeup.set)
        self.dimse = _SortingDimse(self, self._wakeup.set)
        self.dul._run_loop_delay = 0  # the socket's `ready` blocks instead

    def attach(self, sock: _BlockingSocket) -> None:
        self.set_socket(sock)
        self.dul.to_provider_queue = _WakingQueue(sock.wake)

    def kill(self) -> None:
        super().kill()
        self._wakeup.set()

    def run(self) -> None:
        try:
            super().run()
        finally:
            # pynetdicom's acceptor ends by closing the TCP socket only, not the AssociationSocket.
            sock = self.dul.socket
            if isinstance(sock, _BlockingSocket):
                self.dul.join(timeout=5)
                sock.close_pipe()

    def _run_reactor(self) -> None:
        # The same duties as pynetdicom's loop, each looked at after every wake-up or tick.
        self._is_paused = False
        while not self._kill:
            self._wakeup.wait(TICK_SECONDS)
            self._wakeup.clear()
            # Another thread sending on this association (C-GET sub-operations) pauses the reactor first.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            while True:
                context_id, msg = self.dimse.get_msg(block=False)
                if not msg or context_id is None:  # get_msg gives both or neither
                    break
                self._serve_request(msg, context_id)
            if self._ended():
                return

    def _ended(self) -> bool:
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for the abort
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            self.abort()
            self.kill()
            return True
        return False


class WakingRequestHandler(RequestHandler):
    """pynetdicom's handler of a new connection, making a `WakingAssociation`."""

    def _create_association(self) -> Association:
        # The steps of pynetdicom's own handler, with the classes above.
        assoc = WakingAssociation(self.ae, MODE_ACCEPTOR, getattr(self.server, "c_store", None))
        assoc._server = self.server
        assoc.name = f"DIMSE {self.client_address[0]}:{self.client_address[1]}"
        assoc.attach(_BlockingSocket(assoc, self.request))
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = self.server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        # Shared, not copied as pynetdicom does: negotiation only reads them and builds new contexts for its
        # answer, and a deep copy of ~170 contexts with every transfer syntax is 47 ms per association.
        acceptor.supported_contexts = self.server.contexts
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent) and isinstance(handlers, list):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc
