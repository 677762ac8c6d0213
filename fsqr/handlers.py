"""pynetdicom events in, DIMSE statuses out: the only place where errors become statuses.

Each handler reads a request, calls the core (query, retrieve, storage), and yields what
pynetdicom sends back. Anything a peer sends that the core refuses arrives here as a
`DimseError` carrying its status and ErrorComment; anything unexpected is logged with its
traceback and answered with a failure status, and the association and the server go on.

C-MOVE and C-GET are served a level below pynetdicom's events: fsqr takes those requests before
pynetdicom's Query/Retrieve service class, runs `retrieve.run` over its own C-STORE
sub-operations, and sends each response itself (the section "C-MOVE and C-GET" says why). All of
fsqr's DIMSE plumbing lives here, so that only this module and server.py import pynetdicom.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.pdu_primitives import P_DATA

from fsqr import explain, faults, reactor, retrieve, security, status
from fsqr.config import Config, Operation, Peer
from fsqr.errors import (
    DimseError,
    InvalidIdentifier,
    MoveDestinationUnknown,
    NotAuthorized,
    TooManyResponses,
    UnableToProcess,
)
from fsqr.index import Index
from fsqr.keys import FIND_MODELS, GET_MODELS, MODALITY_WORKLIST_FIND, MOVE_MODELS, Model
from fsqr.operations import Operations, Served, Started
from fsqr.query import find, instances_to_retrieve, parse_identifier, parse_retrieve_identifier
from fsqr.scan import HeaderCache
from fsqr.storage import Receiver
from fsqr.worklist import Worklist, find_worklist

log = logging.getLogger(__name__)

C_CANCEL_RQ = 0x0FFF  # PS3.7 E.1: Command Field of C-CANCEL-RQ
# The largest PDU read from a peer when `max_pdu` is smaller: an A-ASSOCIATE-RQ is not bound by
# Maximum Length Received, and 128 presentation contexts with many transfer syntaxes stay far below.
MAX_PDU_READ = 1 << 20
_QR_MODELS = {**FIND_MODELS, **MOVE_MODELS, **GET_MODELS}

FindResponse = tuple[int | Dataset, Dataset | None]


def caller(assoc: Any) -> str:
    """`AE@host:port` of the peer that requested the association, for log lines."""
    peer = assoc.requestor
    return f"{peer.ae_title.strip()}@{peer.address}:{peer.port}"


def failure(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), as pynetdicom sends it."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment
    return ds


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: no Nagle, and quick ACKs, on every socket fsqr accepts or opens.

    DIMSE is request/response: with Nagle on, each small message waits for the peer's delayed
    ACK, 40-90 ms on loopback, which dwarfs everything else a query costs.
    """
    transport = event.assoc.dul.socket
    sock = transport.socket
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_QUICKACK"):
        # A peer that keeps Nagle on (pynetdicom and DCMTK do by default) holds back the second
        # PDU of a request until our ACK of the first; Linux delays that ACK by up to 40 ms.
        # QUICKACK makes the next ACK immediate and the kernel clears it again, so re-arm it
        # after every read.
        read = transport.recv

        def recv_and_ack(nr_bytes: int) -> bytearray:
            data: bytearray = read(nr_bytes)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            return data

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        transport.recv = recv_and_ack


# -- small messages, one PDU each ----------------------------------------------------------
#
# pynetdicom sends every DIMSE message as at least two P-DATA-TF PDUs, its command set in one
# and its data set in the next, and builds the command set as a pydicom Dataset each time. A
# C-FIND answers with one pending response per match (PS3.4 C.4.1.2.2) and a C-MOVE sends one
# C-STORE per instance, so that doubles the PDUs both ends must read and handle. PS3.8 9.3.5
# lets one P-DATA-TF carry several PDVs: fsqr encodes these command sets itself (PS3.7 6.3.1,
# E.1; byte for byte what pynetdicom writes, which tests check) and sends each with its data set
# in one PDU whenever both fit in the peer's Maximum Length (PS3.8 D.1). Anything larger goes
# pynetdicom's way, in fragments.

_C_FIND_RSP = 0x8020  # PS3.7 E.1: Command Field values
_C_GET_RSP = 0x8010
_C_MOVE_RSP = 0x8021
_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_DATA_SET_PRESENT = 0x0001  # PS3.7 E.1: Command Data Set Type; anything but 0x0101, as pynetdicom
_NO_DATA_SET = 0x0101
_PENDING = (0xFF00, 0xFF01)
_PDV_HEADER = 6  # PS3.8 9.3.5.1: item length (4), presentation context ID (1), control header (1)
_ONE_PDU_AT_MOST = 1 << 16  # bytes of data set read whole when the peer sets no PDU limit
_US = struct.Struct("<H")


def _command_element(element: int, value: bytes) -> bytes:
    """One element of group 0000, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _command_set(*elements: tuple[int, bytes]) -> bytes:
    """A command set: (0000,0000) Command Group Length, then `elements` in tag order."""
    body = b"".join(_command_element(element, value) for element, value in elements)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)  # PS3.5 6.2: UI is padded with NUL


def _ae(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " * (len(raw) % 2)  # PS3.5 6.2: AE is padded with a space


def find_pending_command(sop_class_uid: str, message_id: int, code: int) -> bytes:
    """The command set of a pending C-FIND-RSP with an identifier (PS3.7 9.3.2.2).

    >>> command = find_pending_command("1.2", 7, 0xFF00)
    >>> len(command), command[8:12].hex()  # (0000,0000) UL: the 52 bytes that follow it
    (64, '34000000')
    """
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_FIND_RSP)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_DATA_SET_PRESENT)),
        (0x0900, _US.pack(code)),
    )


def retrieve_pending_command(
    command_field: int, sop_class_uid: str, message_id: int, counts: tuple[int, int, int, int]
) -> bytes:
    """The command set of a pending C-MOVE-RSP or C-GET-RSP (PS3.7 9.3.3.2, 9.3.4.2): no data
    set, and the remaining, completed, failed and warning sub-operation counts."""
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(command_field)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_NO_DATA_SET)),
        (0x0900, _US.pack(status.PENDING)),
        *((0x1020 + i, _US.pack(count)) for i, count in enumerate(counts)),
    )


def store_request_command(
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    priority: int,
    originator: tuple[str, int] | None,
) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1), with the Move Originator's AE title and
    Message ID when it is a C-MOVE sub-operation (PS3.7 9.1.1.1)."""
    elements = [
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_STORE_RQ)),
        (0x0110, _US.pack(message_id)),
        (0x0700, _US.pack(priority)),
        (0x0800, _US.pack(_DATA_SET_PRESENT)),
        (0x1000, _uid(sop_instance_uid)),
    ]
    if originator is not None:
        elements += [(0x1030, _ae(originator[0])), (0x1031, _US.pack(originator[1]))]
    return _command_set(*elements)


def store_response_command(
    sop_class_uid: str, sop_instance_uid: str, message_id: int, code: int
) -> bytes:
    """The command set of a C-STORE-RSP without an Error Comment (PS3.7 9.3.1.2): what fsqr
    answers each instance it stores."""
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_STORE_RSP)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_NO_DATA_SET)),
        (0x0900, _US.pack(code)),
        (0x1000, _uid(sop_instance_uid)),
    )


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A C-STORE-RSP as fsqr reads it (PS3.7 9.3.1.2): the request it answers, and how."""

    message_id: int
    status: int
    comment: str = ""


_ELEMENT = struct.Struct("<HHI")  # PS3.7 6.3.1: tag and 32-bit length, Implicit VR Little Endian


def read_store_response(command: bytes) -> StoreResponse | None:
    """The C-STORE-RSP a whole command set holds; None for any other command, or any doubt.

    >>> read_store_response(bytes(16)) is None  # two empty elements: no C-STORE-RSP
    True
    """
    fields: dict[int, bytes] = {}
    pos = 0
    while pos + _ELEMENT.size <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += _ELEMENT.size
        if group != 0x0000 or pos + length > len(command):
            return None
        fields[element] = command[pos : pos + length]
        pos += length
    if (
        pos != len(command)
        or fields.get(0x0100) != _US.pack(_C_STORE_RSP)
        or fields.get(0x0800) != _US.pack(_NO_DATA_SET)
        or len(fields.get(0x0120, b"")) != 2
        or len(fields.get(0x0900, b"")) != 2
    ):
        return None
    comment = fields.get(0x0902, b"").decode("ascii", "replace").strip(" \0")
    return StoreResponse(_US.unpack(fields[0x0120])[0], _US.unpack(fields[0x0900])[0], comment)


def read_store_responses_directly(assoc: Any) -> None:
    """C-STORE responses that come to this association are read here, not by pynetdicom.

    pynetdicom decodes every command set into a pydicom Dataset, validating each value, and then
    into a primitive: some 40 % of the CPU a small instance's sub-operation cost. A response is
    a command set alone, in one PDV (PS3.8 E.2: control header 03, command and last fragment);
    anything else, or a message pynetdicom is part-way through, is left to pynetdicom.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        pdvs = primitive.presentation_data_value_list
        if dimse.message is None and len(pdvs) == 1 and pdvs[0][1][:1] == b"\x03":
            context_id, pdv = pdvs[0]
            response = read_store_response(bytes(pdv[1:]))
            if response is not None:
                dimse.msg_queue.put((context_id, response))
                return
        receive(primitive)

    dimse.receive_primitive = receive_primitive


def _room_in_one_pdu(assoc: Any, command: bytes) -> int:
    """How many data set bytes fit in one PDU with `command` (the peer's Maximum Length)."""
    limit = assoc.dimse.maximum_pdu_size or _ONE_PDU_AT_MOST  # 0: the peer sets no limit
    return limit - 2 * _PDV_HEADER - len(command)


def _send_in_one_pdu(assoc: Any, context_id: int, command: bytes, data: bytes | None) -> bool:
    """Send a message as one P-DATA-TF; False (nothing sent) when it does not fit in one."""
    if len(data or b"") > _room_in_one_pdu(assoc, command):
        return False
    pdata = P_DATA()
    pdvs = pdata.presentation_data_value_list  # appended to, as pynetdicom does
    pdvs.append((context_id, b"\x03" + command))  # command, last fragment
    if data is not None:
        pdvs.append((context_id, b"\x02" + data))  # data set, last fragment
    assoc.dul.send_pdu(pdata)
    return True


def send_answers_in_one_pdu(event: Any) -> None:
    """EVT_CONN_OPEN: pending C-FIND responses of this association go as one PDU each, and
    C-STORE responses without an Error Comment are encoded here rather than by pydicom (half a
    millisecond of each instance a peer stores)."""
    assoc = event.assoc
    if not assoc.is_acceptor:
        return
    send_msg = assoc.dimse.send_msg  # pynetdicom's, for everything else

    def send(primitive: Any, context_id: int) -> None:
        command = None
        data = None
        code = primitive.Status
        message_id = primitive.MessageIDBeingRespondedTo
        if isinstance(primitive, C_FIND):
            if primitive.Identifier is not None and code in _PENDING and message_id is not None:
                command = find_pending_command(
                    str(primitive.AffectedSOPClassUID), message_id, int(code)
                )
                data = primitive.Identifier.getvalue()
        elif (
            isinstance(primitive, C_STORE)
            and code is not None
            and message_id is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
        ):
            command = store_response_command(
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                message_id,
                code,
            )
        if command is not None and _send_in_one_pdu(assoc, context_id, command, data):
            return
        send_msg(primitive, context_id)

    assoc.dimse.send_msg = send


_PYNETDICOM_LOG = logging.getLogger("pynetdicom")
# pynetdicom binds these to every association; they describe each message and PDU in its log,
# at INFO and DEBUG, and do that work (some 10 % of a C-MOVE's) even when the lines are dropped.
_MESSAGE_LOGGERS = (
    (logging.INFO, evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (logging.INFO, evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (logging.DEBUG, evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (logging.DEBUG, evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def without_unheard_message_logs(event: Any) -> None:
    """EVT_CONN_OPEN: unbind pynetdicom's per-message log handlers whose lines nobody would see
    (`fsqr serve` keeps pynetdicom's logger at WARNING unless run with `-v`)."""
    for level, event_type, handler in _MESSAGE_LOGGERS:
        if not _PYNETDICOM_LOG.isEnabledFor(level):
            event.assoc.unbind(event_type, handler)


def _identifier(event: Any) -> Dataset:
    """The request's identifier; bytes that do not decode as a data set are the peer's error."""
    try:
        return cast(Dataset, event.identifier)
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from None


# -- --explain: what pynetdicom negotiated, as the plain values explain.py narrates ---------


def _peer_of(assoc: Any) -> str:
    """`AE@host:port` of the other end, whichever side fsqr is on."""
    if assoc.is_acceptor:
        peer = assoc.requestor
        # Before negotiation (a rejection) only the request's primitive has the calling AE title.
        request = getattr(peer.primitive, "calling_ae_title", "")
        title = str(peer.ae_title).strip() or str(request or "").strip()
        return f"{title}@{peer.address}:{peer.port}"
    peer = assoc.acceptor
    return f"{str(peer.ae_title).strip()}@{peer.address}:{peer.port}"


def _explained_contexts(assoc: Any) -> list[explain.Context]:
    """Every presentation context of an association, accepted or refused, by context ID."""
    roles = assoc.requestor.role_selection if assoc.is_acceptor else {}
    found = []
    for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts]:
        said = ""
        if str(cx.abstract_syntax) in roles and cx.result == 0:
            said = "fsqr may send C-STOREs on it" if cx.as_scu else "fsqr may not send on it"
            said += " (SCP/SCU Role Selection, PS3.7 D.3.3.4)"
        found.append(
            explain.Context(
                int(cx.context_id),
                str(cx.abstract_syntax),
                tuple(str(ts) for ts in cx.transfer_syntax),
                cx.result,
                said,
            )
        )
    return sorted(found, key=lambda cx: cx.context_id)


def explain_association(event: Any) -> None:
    """EVT_ACCEPTED, EVT_REJECTED, EVT_RELEASED, EVT_ABORTED, narrated with --explain."""
    if not explain.on():
        return
    assoc = event.assoc
    peer, ours = _peer_of(assoc), assoc.is_requestor
    if event.event is evt.EVT_ACCEPTED:
        other = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        explain.association_accepted(
            peer,
            we_requested=ours,
            contexts=_explained_contexts(assoc),
            max_pdu=int(other.maximum_length or 0),
        )
    elif event.event is evt.EVT_REJECTED:
        answer = assoc.acceptor.primitive
        explain.association_rejected(
            peer,
            we_requested=ours,
            result=str(getattr(answer, "result_str", "")),
            source=str(getattr(answer, "source_str", "")),
            reason=str(getattr(answer, "reason_str", "")),
        )
    elif event.event is evt.EVT_RELEASED:
        explain.association_released(peer, we_requested=ours)
    else:
        explain.association_aborted(peer, we_requested=ours)


EXPLAINED = (evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED)


def _explained_keys(identifier: Dataset) -> list[explain.Key]:
    """The identifier's attributes as explain.py shows them; nothing here is logged."""
    keys = []
    for element in identifier:
        value = element.value
        if element.VR == "SQ":
            value = f"({len(value)} items)"
        elif isinstance(value, MultiValue):  # as on the wire: values separated by backslashes
            value = "\\".join(str(v) for v in value)
        keys.append(
            explain.Key(element.keyword or f"({element.tag})", str(element.VR), str(value or ""))
        )
    return keys


def _explain_retrieve_request(event: Any, operation: str, model: str) -> None:
    try:
        identifier = _identifier(event)
    except InvalidIdentifier:
        identifier = Dataset()  # the refusal that follows says why
    explain.retrieve_request(
        operation,
        caller(event.assoc),
        model,
        level=str(identifier.get("QueryRetrieveLevel", "") or "?"),
        keys=_explained_keys(identifier),
        destination=str(event.request.MoveDestination or "").strip()
        if operation == "C-MOVE"
        else "",
    )


_AHEAD = 4  # responses a C-FIND may have queued for sending before it computes the next


def _keep_pace_with_the_network(assoc: Any) -> None:
    """Wait until at most `_AHEAD` messages wait in pynetdicom's send queue.

    pynetdicom queues each response for its DUL thread to send; a handler that runs ahead
    would queue every answer before the first reaches the wire, and a C-CANCEL sent after
    the SCU saw a few answers would then find nothing left to stop (and a huge result would sit
    in memory). Keeping pace bounds both.
    """
    pending = assoc.dul.to_provider_queue
    deadline = time.monotonic() + 60
    while pending.qsize() > _AHEAD and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0005)


class CancelRegistry:
    """C-CANCEL requests seen per association, by the Message ID they cancel.

    pynetdicom keeps cancels in a dict that it empties just before it dispatches each request,
    so a C-CANCEL that arrives while the request still waits in its queue is lost. fsqr
    records every C-CANCEL as the DUL thread decodes it (EVT_DIMSE_RECV), and a handler asks
    here between responses: a cancel is honoured whenever it arrives.
    """

    _KEEP = 16  # cancels for requests that already finished are forgotten beyond this many

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()

    def on_dimse_recv(self, event: Any) -> None:
        command = event.message.command_set
        if command.get("CommandField") != C_CANCEL_RQ:
            return
        message_id = int(command.MessageIDBeingRespondedTo)
        log.info("C-CANCEL from %s for message %d", caller(event.assoc), message_id)
        explain.cancel_received(caller(event.assoc), message_id)
        with self._lock:
            seen = self._seen.setdefault(event.assoc, [])
            seen.append(message_id)
            del seen[: -self._KEEP]

    def is_cancelled(self, event: Any) -> bool:
        with self._lock:
            return event.request.MessageID in self._seen.get(event.assoc, ())

    def forget(self, event: Any) -> None:
        """Called when a request finishes: its message ID may be used again later."""
        with self._lock:
            seen = self._seen.get(event.assoc)
            if seen and event.request.MessageID in seen:
                seen.remove(event.request.MessageID)


# -- C-MOVE and C-GET, below pynetdicom's Query/Retrieve service class -----------------------
#
# pynetdicom runs the sub-operation loop of C-MOVE and C-GET itself: an EVT_C_MOVE handler yields
# the destination, then the number of sub-operations, then (status, Dataset) pairs, and
# pynetdicom opens the sub-association, sends each Dataset, counts the responses and writes the
# final response. That protocol cannot say what fsqr's retrieve must do (PS3.4 C.4.2, C.4.3):
#   - it sends only decoded Datasets, re-encoding every instance (a path is counted failed);
#   - it opens one sub-association, so more than 128 presentation contexts cannot be used, and
#     answers A801 (destination unknown) when the destination cannot be reached;
#   - it computes the counts and the final status from its own sub-operations only, so a file
#     deleted, a conversion refused or a context the SCU did not offer cannot be reported;
#   - it waits with send_c_store, which aborts the association on a DIMSE timeout and races
#     the association's reactor thread for the response (pynetdicom issues #435, #875).
# So fsqr takes the C-MOVE and C-GET requests of its own Q/R SOP Classes off pynetdicom before
# its service class sees them (`take_retrieve_requests`), runs `retrieve.run`, and sends every
# response itself over the DIMSE provider. These pynetdicom internals are used, here only:
# Association._serve_request (where requests are dispatched, replaced per association),
# Association._is_paused and ._reactor_checkpoint (how pynetdicom's own send_* methods keep the
# reactor thread off the DIMSE queue), C_STORE._dataset_path (what send_c_store sets to stream a
# data set from a file; fsqr gives it an open file's descriptor, which pynetdicom's open() takes),
# and C_STORE_RQ.encode_msg (its P-DATA fragments, sent one by one by fsqr as DIMSE's send_msg
# would, see _send_from_file). tests/test_interop_retrieve.py fails if a pynetdicom release
# changes any of them. (reactor.py lists the internals its loops use.)


# PS3.4 C.4.2.3.1: pending responses are optional progress reports. Each costs about as much as a
# small instance's C-STORE, so while instances go faster than this, one goes out per interval.
PENDING_INTERVAL = 0.1  # seconds


def _accepted_context(assoc: Any, context_id: int) -> Any | None:
    return next((cx for cx in assoc.accepted_contexts if cx.context_id == context_id), None)


class _Responder:
    """The SCU of one C-MOVE or C-GET (a `retrieve.Requestor`): its cancels, whether it is still
    there, and the responses fsqr sends it (PS3.7 9.3.3, 9.3.4)."""

    def __init__(self, event: Any, cancels: CancelRegistry) -> None:
        self._event = event
        self._cancels = cancels
        self._assoc = event.assoc
        self._request = event.request
        self._context_id = int(event.context.context_id)
        self._syntax = UID(event.context.transfer_syntax)
        self._operation = "C-MOVE" if isinstance(self._request, C_MOVE) else "C-GET"
        self.counts = retrieve.Tally(0)  # as last reported
        self._reported = -PENDING_INTERVAL  # monotonic time of the last pending response
        # Responses may be sent from several sub-association threads at once (a destination's
        # `associations`); the fragments of two messages must not interleave (PS3.7 8.1).
        self._sending = threading.Lock()
        self.fault: faults.Fault | None = None  # a `faults:` rule's abort_after ends it early

    def cancelled(self) -> bool:
        return self._cancels.is_cancelled(self._event) or bool(self._event.is_cancelled)

    def gone(self) -> bool:
        assoc = self._assoc
        if self.fault is not None and self.fault.cut_short:
            return True  # the association is aborted once the retrieve has stopped
        return bool(assoc.is_aborted or assoc.acse.is_aborted() or not assoc.dul.is_alive())

    def pending(self, tally: retrieve.Tally) -> None:
        """Progress: a pending response, at most one per PENDING_INTERVAL."""
        self.counts = tally
        if time.monotonic() - self._reported >= PENDING_INTERVAL:
            self.report()

    def report(self) -> None:
        """A pending response with the counts so far, now.

        Also sent as each C-MOVE sub-association connects: an SCU that is its own Move
        Destination on one thread (DCMTK's DIMSE_moveUser: movescu --port) looks for the
        incoming association only after a C-MOVE response or a 1 s poll of the main
        association; this response makes it look at once.
        """
        self._reported = time.monotonic()
        counts = self.counts
        explain.pending(
            self._operation, counts.remaining, counts.completed, counts.failed, counts.warning
        )
        command = retrieve_pending_command(
            _C_MOVE_RSP if self._operation == "C-MOVE" else _C_GET_RSP,
            str(self._request.AffectedSOPClassUID),
            int(self._request.MessageID),
            (counts.remaining, counts.completed, counts.failed, counts.warning),
        )
        with self._sending:
            if not self.gone() and not _send_in_one_pdu(
                self._assoc, self._context_id, command, None
            ):
                self._assoc.dimse.send_msg(self._response(status.PENDING, counts), self._context_id)

    def final(self, outcome: retrieve.Outcome) -> None:
        """The final response; none when the SCU has gone."""
        code, tally = outcome.status, outcome.tally
        explain.final(
            self._operation,
            code,
            remaining=tally.remaining,
            completed=tally.completed,
            failed=tally.failed,
            warning=tally.warning,
            reason=outcome.reason,
        )
        if code is None:
            return
        rsp = self._response(code, tally)
        if code != status.CANCEL:
            rsp.NumberOfRemainingSuboperations = None  # PS3.7 9.3.3.2: only while pending
        if code == status.OUT_OF_RESOURCES_SUBOPS and outcome.reason:
            rsp.ErrorComment = outcome.reason[:64]
        if code != status.SUCCESS:
            # PS3.4 C.4.2.1.5 and C.4.3.1.4: the identifier lists the failed SOP Instances.
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = retrieve.failed_uid_list(
                tally.failed_uids, explicit_vr=not self._syntax.is_implicit_VR
            )
            encoded = encode_dataset(
                identifier,
                self._syntax.is_implicit_VR,
                self._syntax.is_little_endian,
                self._syntax.is_deflated,
            )
            rsp.Identifier = BytesIO(encoded or b"")
        self._send(rsp)

    def refuse(self, code: int, comment: str) -> None:
        """A final failure before any sub-operation (A701, A801, A900, C000)."""
        explain.refused(self._operation, code, comment)
        rsp = self._response(code, None)
        rsp.ErrorComment = comment[:64]
        self._send(rsp)

    def _response(self, code: int, tally: retrieve.Tally | None) -> Any:
        rsp = type(self._request)()  # a C_MOVE or C_GET primitive
        rsp.MessageIDBeingRespondedTo = self._request.MessageID
        rsp.AffectedSOPClassUID = self._request.AffectedSOPClassUID
        rsp.Status = code
        if tally is not None:
            rsp.NumberOfRemainingSuboperations = tally.remaining
            rsp.NumberOfCompletedSuboperations = tally.completed
            rsp.NumberOfFailedSuboperations = tally.failed
            rsp.NumberOfWarningSuboperations = tally.warning
        return rsp

    def _send(self, rsp: Any) -> None:
        with self._sending:
            if not self.gone():
                self._assoc.dimse.send_msg(rsp, self._context_id)


_SENT_YET = 0.005  # seconds between looks at whether a C-STORE request has gone out


class _StoreSender:
    """C-STORE requests over one association, each answered by its response or a timeout.

    Responses are read straight from the association's DIMSE queue and matched by Message ID:
    a response that comes after its timeout is recognised and dropped, never taken for the
    answer to a later request.
    """

    def __init__(
        self, assoc: Any, *, config: Config, priority: int, originator: tuple[str, int] | None
    ) -> None:
        self.assoc = assoc
        self._sending = config.timeouts.dimse  # for the request to leave: the peer must read it
        self._timeout = config.timeouts.store_response
        self._priority = priority
        self._originator = originator  # C-MOVE: Move Originator AE Title and Message ID
        self._message_id = 0
        self.stashed: list[tuple[int, Any]] = []  # requests that came while waiting (C-GET)
        self.timed_out = False  # the last request's response did not come in time

    def store(self, context_id: int, outgoing: retrieve.Outgoing) -> retrieve.Stored:
        self._message_id = self._message_id % 65535 + 1  # PS3.7 9.3.1.1: Message ID is US
        command = store_request_command(
            outgoing.sop_class_uid,
            outgoing.sop_instance_uid,
            self._message_id,
            self._priority,
            self._originator,
        )
        if outgoing.size <= _room_in_one_pdu(self.assoc, command):
            data = retrieve.data_set_bytes(outgoing)
            if data is not None and _send_in_one_pdu(self.assoc, context_id, command, data):
                return self._response_to(self._message_id)
        req = C_STORE()
        req.MessageID = self._message_id
        req.AffectedSOPClassUID = outgoing.sop_class_uid
        req.AffectedSOPInstanceUID = outgoing.sop_instance_uid
        req.Priority = self._priority
        if self._originator is not None:  # PS3.7 9.1.1.1: who asked for the C-MOVE
            req.MoveOriginatorApplicationEntityTitle = self._originator[0]
            req.MoveOriginatorMessageID = self._originator[1]
        payload = outgoing.payload
        if isinstance(payload, retrieve.FromFile):
            not_sent = self._send_from_file(req, context_id, payload)
            if not_sent is not None:
                return not_sent
        else:
            req.DataSet = BytesIO(payload.data)
            self.assoc.dimse.send_msg(req, context_id)
        return self._response_to(self._message_id)

    def _send_from_file(
        self, req: C_STORE, context_id: int, payload: retrieve.FromFile
    ) -> retrieve.Stored | None:
        """Send `req` with its data set read from the file as it was checked, or say why not.

        The file is opened once and checked, and pynetdicom reads that open file (by its
        descriptor) in PDU-sized pieces, so a file renamed over it meanwhile is not mixed in.
        A file cut short while it is read would make a short data set look complete: the last
        fragment is held back and the association aborted, so the peer never takes a half file
        for an instance (PS3.8 9.3.5: a message is whole only with its last fragment).
        """
        try:
            fd = os.open(payload.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            return retrieve.Stored(None, f"cannot open the file: {exc.strerror or exc}")
        if not payload.is_the_file(os.fstat(fd)):
            os.close(fd)
            return retrieve.Stored(None, "the file changed before it was sent")
        req._dataset_path = cast(Any, (fd, payload.offset))  # pynetdicom open()s it, and closes it
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})  # as send_msg does
        expected, sent = payload.identity[2] - payload.offset, 0
        for pdata in message.encode_msg(context_id, self.assoc.dimse.maximum_pdu_size):
            ((_, pdv),) = pdata.presentation_data_value_list
            if not pdv[0] & 0x01:  # PS3.8 E.2: bit 0 clear, a data set fragment
                sent += len(pdv) - 1
                if pdv[0] & 0x02 and sent != expected:  # bit 1 set: the last fragment
                    self.assoc.abort()
                    return retrieve.Stored(
                        None, "the file changed while it was being sent", usable=False
                    )
            self.assoc.dul.send_pdu(pdata)
        return None

    def _response_to(self, message_id: int) -> retrieve.Stored:
        """The response to the request just queued: the `store_response` timeout starts once the
        request's last PDU has gone to the socket, so a large instance is not timed out while it
        is still being sent."""
        messages = self.assoc.dimse.msg_queue
        unsent = self.assoc.dul.to_provider_queue
        sending_until = time.monotonic() + self._sending
        deadline = None
        self.timed_out = False
        while True:
            now = time.monotonic()
            if deadline is None and (unsent.empty() or now >= sending_until):
                deadline = now + self._timeout
            left = _SENT_YET if deadline is None else deadline - now
            if left <= 0:
                self.timed_out = True
                return retrieve.Stored(
                    None, f"no C-STORE response within {self._timeout:g} s", usable=False
                )
            try:
                context_id, msg = messages.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:  # pynetdicom's signal: aborted, or the connection closed
                messages.put((None, None))
                return retrieve.Stored(None, "the association was aborted", usable=False)
            if isinstance(msg, StoreResponse):
                if msg.message_id == message_id:
                    return retrieve.Stored(msg.status, msg.comment)
                log.debug("dropped a late C-STORE response to message %s", msg.message_id)
            elif isinstance(msg, C_STORE) and msg.is_valid_response:
                if msg.MessageIDBeingRespondedTo == message_id:
                    code = None if msg.Status is None else int(msg.Status)
                    return retrieve.Stored(code, str(msg.ErrorComment or ""))
                log.debug(
                    "dropped a late C-STORE response to message %s", msg.MessageIDBeingRespondedTo
                )
            elif msg.is_valid_request:
                self.stashed.append((context_id, msg))
            else:
                log.warning("ignored a %s while waiting for a C-STORE response", msg.msg_type)


class _SubAssociation:
    """A C-MOVE sub-association to the Move Destination (a `retrieve.Link`)."""

    def __init__(self, assoc: Any, peer: Peer, sender: _StoreSender) -> None:
        self._assoc = assoc
        self._peer = peer
        self._sender = sender
        self._usable = True
        self._contexts: dict[str, dict[str, int]] = {}  # SOP Class -> transfer syntax -> ID
        for cx in assoc.accepted_contexts:
            syntaxes = self._contexts.setdefault(str(cx.abstract_syntax), {})
            syntaxes.setdefault(str(cx.transfer_syntax[0]), int(cx.context_id))
        # The association's reactor thread also reads the DIMSE queue, and drops any response it
        # finds there (the lost responses of pynetdicom issues #435, #875). It is held at its
        # checkpoint while fsqr sends, as send_c_store holds it for one message; should it take
        # a response all the same, in the moment before it stops, it hands the response back.
        assoc._reactor_checkpoint.clear()
        dispatch = assoc._serve_request

        def serve_request(msg: Any, context_id: int) -> None:
            if isinstance(msg, StoreResponse) or (msg is not None and msg.is_valid_response):
                assoc.dimse.msg_queue.put((context_id, msg))
            else:
                dispatch(msg, context_id)

        assoc._serve_request = serve_request
        read_store_responses_directly(assoc)

    @classmethod
    def open(
        cls,
        ae: Any,
        peer: Peer,
        batch: retrieve.Batch,
        *,
        config: Config,
        priority: int,
        originator: tuple[str, int],
        on_connect: Callable[[], None],
    ) -> _SubAssociation:
        """Associate with `peer`, proposing the batch's contexts; raises retrieve.Unreachable."""
        where = f"{peer.ae_title} at {peer.host}:{peer.port}"
        contexts = [
            build_context(c.abstract_syntax, list(c.transfer_syntaxes)) for c in batch.contexts
        ]
        connected = threading.Event()
        explain.sub_association_opening(
            peer.ae_title,
            peer.host,
            peer.port,
            [  # PS3.8 9.3.2.2: the requestor numbers its contexts 1, 3, 5, ...
                explain.Context(2 * i + 1, c.abstract_syntax, c.transfer_syntaxes, None)
                for i, c in enumerate(batch.contexts)
            ],
        )

        def connect(event: Any) -> None:
            connected.set()
            on_connect()

        try:
            assoc = ae.associate(
                peer.host,
                peer.port,
                contexts=contexts,
                ae_title=peer.ae_title,
                max_pdu=config.max_pdu,
                tls_args=(security.client_context(config.tls), peer.host) if peer.tls else None,
                evt_handlers=[
                    (evt.EVT_CONN_OPEN, set_nodelay),
                    (evt.EVT_CONN_OPEN, without_unheard_message_logs),
                    (evt.EVT_CONN_OPEN, connect),
                    # Not EVT_ACCEPTED: it runs on the association's thread, and the narration
                    # of the acceptance comes below, in order with the sub-operations.
                    *((event, explain_association) for event in EXPLAINED[1:]),
                ],
            )
        except Exception as exc:  # e.g. a host name that does not resolve
            raise retrieve.Unreachable(f"cannot connect: {exc} ({where})") from None
        if not assoc.is_established:
            # The reason first: it is what fits in a response's 64-character Error Comment.
            timeouts = config.timeouts
            if not connected.is_set():
                reason = f"connection refused or timed out ({timeouts.connect:g} s)"
            elif assoc.is_rejected:
                answer = assoc.acceptor.primitive
                reason = f"association rejected: {getattr(answer, 'reason_str', '')}"
            else:
                reason = f"no association within {timeouts.acse:g} s"
            raise retrieve.Unreachable(f"{reason} ({where})")
        sender = _StoreSender(assoc, config=config, priority=priority, originator=originator)
        explain_association(evt.Event(assoc, evt.EVT_ACCEPTED))
        log.debug(
            "C-MOVE sub-association to %s: %d contexts accepted",
            where,
            len(assoc.accepted_contexts),
        )
        return cls(assoc, peer, sender)

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        return tuple(self._contexts.get(sop_class_uid, ()))

    def why_not(self, sop_class_uid: str) -> str:
        return (
            f"{self._peer.ae_title} accepted no presentation context for {_sop_name(sop_class_uid)}"
        )

    def store(self, outgoing: retrieve.Outgoing) -> retrieve.Stored:
        context_id = self._contexts[outgoing.sop_class_uid][outgoing.transfer_syntax]
        stored = self._sender.store(context_id, outgoing)
        self._usable = stored.usable
        return stored

    def close(self) -> None:
        if self._usable and self._assoc.is_established:
            self._assoc.release()  # lets the reactor run again for the A-RELEASE exchange
        else:
            self._assoc.abort()  # after a timeout the peer's state is unknown
            # pynetdicom skips close() when shutdown() fails, as it does on a connection the
            # peer reset (a destination that died): close it here, or the descriptor leaks.
            transport = self._assoc.dul.socket
            if transport is not None and transport.socket is not None:
                transport.socket.close()


class _RequestorLink:
    """C-GET's sub-operations over the SCU's own association (a `retrieve.Link`).

    The SCU must have taken the SCP role for a storage SOP Class with SCP/SCU Role Selection
    (PS3.4 C.4.3.1, PS3.7 D.3.3.4); with `allow_get_without_role_selection` fsqr also sends over
    contexts the SCU proposed without any, as viewers such as Horos expect.
    """

    _TIMEOUTS_IN_A_ROW = 2  # then the SCU is taken to be stuck and the rest fail

    def __init__(self, assoc: Any, sender: _StoreSender, *, without_roles: bool) -> None:
        self._sender = sender
        self._timeouts = 0
        self._contexts: dict[str, dict[str, int]] = {}
        self._why: dict[str, str] = {}
        proposed_roles = assoc.requestor.role_selection
        for cx in assoc.accepted_contexts:
            uid = str(cx.abstract_syntax)
            if cx.as_scu or (without_roles and uid not in proposed_roles):
                syntaxes = self._contexts.setdefault(uid, {})
                syntaxes.setdefault(str(cx.transfer_syntax[0]), int(cx.context_id))
            elif uid not in proposed_roles:
                self._why[uid] = (
                    f"the SCU offered {_sop_name(uid)} without SCP/SCU Role Selection, so it "
                    "may not be sent C-STOREs (PS3.7 D.3.3.4); allow_get_without_role_selection:"
                    " true sends them anyway"
                )
            else:
                self._why[uid] = f"the SCU did not take the SCP role for {_sop_name(uid)}"
        # Sent over only thanks to allow_get_without_role_selection: said once in the log.
        self._unannounced = {uid for uid in self._contexts if uid not in proposed_roles}
        self._caller = caller(assoc)
        explain.get_link(
            [uid for uid in self._contexts if uid not in self._unannounced],
            sorted(self._unannounced),
        )

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        return tuple(self._contexts.get(sop_class_uid, ()))

    def why_not(self, sop_class_uid: str) -> str:
        return self._why.get(
            sop_class_uid,
            f"the SCU offered no presentation context for {_sop_name(sop_class_uid)}",
        )

    def store(self, outgoing: retrieve.Outgoing) -> retrieve.Stored:
        if outgoing.sop_class_uid in self._unannounced:
            self._unannounced.discard(outgoing.sop_class_uid)
            log.info(
                "C-GET from %s: sending %s over a context proposed without role selection "
                "(allow_get_without_role_selection)",
                self._caller,
                _sop_name(outgoing.sop_class_uid),
            )
        context_id = self._contexts[outgoing.sop_class_uid][outgoing.transfer_syntax]
        stored = self._sender.store(context_id, outgoing)
        if self._sender.timed_out:
            # The association cannot be replaced: go on with it, unless the SCU is stuck.
            self._timeouts += 1
            return retrieve.Stored(None, stored.comment, self._timeouts < self._TIMEOUTS_IN_A_ROW)
        self._timeouts = 0
        return stored

    def close(self) -> None:
        """Give back the requests that came during the C-GET, for the reactor to serve next."""
        for item in self._sender.stashed:
            self._sender.assoc.dimse.msg_queue.put(item)
        self._sender.stashed.clear()


class _MisbehavingLink:
    """A `retrieve.Link` slowed down by a `faults:` rule: it waits `delay_ms` before each
    sub-operation and counts them, for the rule's abort_after (fsqr/faults.py)."""

    def __init__(self, link: retrieve.Link, fault: faults.Fault) -> None:
        self._link = link
        self._fault = fault

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        return self._link.transfer_syntaxes(sop_class_uid)

    def why_not(self, sop_class_uid: str) -> str:
        return self._link.why_not(sop_class_uid)

    def store(self, outgoing: retrieve.Outgoing) -> retrieve.Stored:
        self._fault.pause()
        stored = self._link.store(outgoing)
        self._fault.step()
        return stored

    def close(self) -> None:
        self._link.close()


def _misbehaving(
    open_link: Callable[[retrieve.Batch], retrieve.Link], fault: faults.Fault
) -> Callable[[retrieve.Batch], retrieve.Link]:
    """`open_link`, its links slowed down and counted by `fault`."""
    return lambda batch: _MisbehavingLink(open_link(batch), fault)


def _counted(n: int, thing: str) -> str:
    """`n` things, in words.

    >>> _counted(1, "match"), _counted(2, "match"), _counted(0, "sub-operation")
    ('1 match', '2 matches', '0 sub-operations')
    """
    plural = thing + ("es" if thing.endswith("ch") else "s")
    return f"{n} {thing if n == 1 else plural}"


def _sop_name(uid: str) -> str:
    return str(UID(uid).name)


def _requestor_ae(config: Config) -> Any:
    """The AE that opens C-MOVE sub-associations: the server's title and timeouts."""
    ae = reactor.WaitingAE(ae_title=config.ae_title)
    timeouts = config.timeouts
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.connection_timeout = timeouts.connect
    return ae


class _Lifetime:
    """What the association log knows of one association while it lasts."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.operations = 0
        self.logged = False  # its one line is written


class AssociationLog:
    """One log line per association: when it ends, who called from where, how it ended
    (released, aborted by the peer or by fsqr, timed out, the connection lost), the operations
    served and how long it lasted; when it is rejected, why.

    EVT_CONN_OPEN, before the association's threads start, gives it fsqr's loops
    (`reactor.serve_without_polling`), which say how it ended once its thread has finished.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lifetimes: weakref.WeakKeyDictionary[Any, _Lifetime] = weakref.WeakKeyDictionary()

    def bindings(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_CONN_OPEN, self.on_open), (evt.EVT_REJECTED, self.on_rejected)]

    def on_open(self, event: Any) -> None:
        if event.assoc.is_acceptor:
            with self._lock:
                self._lifetimes[event.assoc] = _Lifetime()
            reactor.serve_without_polling(event.assoc, ended=self.ended)

    def served(self, assoc: Any) -> None:
        """One more operation served over `assoc`."""
        with self._lock:
            lifetime = self._lifetimes.get(assoc)
            if lifetime is not None:
                lifetime.operations += 1

    def _first_word(self, assoc: Any) -> _Lifetime | None:
        """The association's lifetime if its line is still to be written (and now taken)."""
        with self._lock:
            lifetime = self._lifetimes.get(assoc)
            if lifetime is None or lifetime.logged:
                return None
            lifetime.logged = True
            return lifetime

    def said_rejected(self, assoc: Any) -> None:
        """fsqr rejected `assoc` and said why (Handlers.on_requested): nothing more to log."""
        self._first_word(assoc)

    def on_rejected(self, event: Any) -> None:
        """pynetdicom's own rejections, e.g. beyond max_associations (PS3.8 9.3.4)."""
        if not event.assoc.is_acceptor or self._first_word(event.assoc) is None:
            return
        answer = event.assoc.acceptor.primitive
        log.warning(
            "association from %s rejected: %s, %s",
            _peer_of(event.assoc),
            getattr(answer, "result_str", ""),
            getattr(answer, "reason_str", ""),
        )

    def ended(self, assoc: Any, how: str) -> None:
        lifetime = self._first_word(assoc)
        if lifetime is None:
            return
        milliseconds = (time.perf_counter() - lifetime.started) * 1000
        peer = assoc.requestor
        record = {
            "calling_ae": _peer_of(assoc).rsplit("@", 1)[0],
            "peer": f"{peer.address}:{peer.port}",
            "ended": how,
            "operations": lifetime.operations,
            "duration_ms": round(milliseconds, 1),
        }
        log.info(
            "association with %s ended: %s, %d operations, %.0f ms",
            _peer_of(assoc),
            how,
            lifetime.operations,
            milliseconds,
            extra={"association": record},
        )


class _FindProgress:
    """One C-FIND as it goes, for its record and its log line (`Handlers._answer_find`)."""

    def __init__(self, event: Any, model: str) -> None:
        self.event = event
        self.model = model
        self.started = Started.now()
        self.level = ""  # "-" for Modality Worklist, which has no levels
        self.matches = 0
        self.busy = 0.0  # time spent in fsqr, not waiting for pynetdicom to send
        self.fault: faults.Fault | None = None
        self.served: Served | None = None  # its record, once made


class Handlers:
    """The event handlers of one server, bound to its configuration and index."""

    def __init__(self, config: Config, index: Index, keep_operations: int = 100_000) -> None:
        self.config = config
        self.index = index
        self.headers = HeaderCache()
        self.cancels = CancelRegistry()
        self.worklist = Worklist(config.worklist) if config.worklist is not None else None
        self._requestor_ae = _requestor_ae(config)  # opens C-MOVE sub-associations
        self.receiver = Receiver(config, index)
        self.operations = Operations(keep_operations)  # the requests served, most recent last
        self.associations = AssociationLog()

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_CONN_OPEN, without_unheard_message_logs),
            (evt.EVT_CONN_OPEN, send_answers_in_one_pdu),
            (evt.EVT_CONN_OPEN, self.take_retrieve_requests),
            (evt.EVT_CONN_OPEN, self.limit_pdu_size),
            (evt.EVT_DIMSE_RECV, self.cancels.on_dimse_recv),
            (evt.EVT_SOP_EXTENDED, self.on_sop_extended),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_STORE, self.on_store),
            *((event, explain_association) for event in EXPLAINED),
            *self.associations.bindings(),
        ]

    def on_sop_extended(self, event: Any) -> dict[str, bytes]:
        """Accept relational queries (PS3.4 C.5.1.1: byte 1 of the application information).

        The other bytes (combined date-time matching, fuzzy semantic matching, timezone
        adjustment) are answered 0: fsqr does not offer them.
        """
        accepted = {}
        for uid, info in event.app_info.items():
            if uid in _QR_MODELS and info:
                relational = info[0] == 1 and self.config.relational_queries
                accepted[uid] = bytes([int(relational)])
        return accepted

    def limit_pdu_size(self, event: Any) -> None:
        """EVT_CONN_OPEN: end a connection whose peer announces a PDU larger than we take.

        pynetdicom reads a PDU's 6-byte header, then as many bytes as its length field says (up
        to 4 GiB) before it looks at any of them, so one peer could fill the memory. fsqr
        announces `max_pdu` (PS3.8 D.1); a longer PDU (or, below 1 MiB, one over 1 MiB: the
        A-ASSOCIATE-RQ is not bound by it) ends the connection as a transport failure would.

        pynetdicom also reads a PDU it has begun with a blocking socket: a peer that sends part
        of one and then nothing held its thread and connection forever, past every timeout.
        Each read and write now gives up after `timeouts.network` without progress.
        """
        if not event.assoc.is_acceptor:
            return
        transport = event.assoc.dul.socket
        if transport.socket is not None:
            transport.socket.settimeout(self.config.timeouts.network)
        if not self.config.max_pdu:
            return
        limit = max(self.config.max_pdu, MAX_PDU_READ)
        read = transport.recv
        who = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"

        def bounded_recv(nr_bytes: int) -> bytearray:
            if nr_bytes > limit:
                log.warning(
                    "connection from %s closed: it announced a PDU of %d bytes (we take %d)",
                    who,
                    nr_bytes,
                    limit,
                )
                raise OSError(f"PDU of {nr_bytes} bytes refused")
            data: bytearray = read(nr_bytes)
            return data

        transport.recv = bounded_recv

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: admit the association, or send A-ASSOCIATE-RJ (PS3.8 9.3.4) and end it.

        The request is judged before pynetdicom negotiates it (`security.admit`). Anything
        unexpected here rejects the association: access control fails closed.
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        where = f"{calling}@{assoc.requestor.address}:{assoc.requestor.port}"
        try:
            refusal = security.admit(
                self.config, calling, str(request.called_ae_title), str(assoc.requestor.address)
            )
        except Exception:
            log.exception("association from %s: access check failed; rejected", where)
            refusal = security.Refusal(security.REJECTED_PERMANENT, security.SERVICE_USER, 1, "")
        if refusal is None:
            return
        log.warning("association from %s rejected: %s", where, refusal.why)
        self.associations.said_rejected(assoc)
        # As pynetdicom does when it rejects a request itself (acse.py, _negotiate_as_acceptor).
        assoc.acse.send_reject(refusal.result, refusal.source, refusal.reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _authorize(self, event: Any, operation: Operation) -> None:
        """Raise NotAuthorized (0124) if the calling AE may not ask for `operation`."""
        calling = str(event.assoc.requestor.ae_title).strip()
        if not security.allowed(self.config, calling, operation):
            log.warning(
                "C-%s from %s refused: not allowed (ae_table allow, access.allow)",
                operation.upper(),
                caller(event.assoc),
            )
            raise NotAuthorized(f"{calling} may not {operation} here")

    def _fault(self, event: Any, operation: Operation) -> faults.Fault | None:
        """The `faults:` rule for this request at work, if one applies (fsqr/faults.py)."""
        calling = str(event.assoc.requestor.ae_title)
        rule = faults.rule_for(self.config.faults, operation, calling)
        if rule is None:
            return None
        fault = faults.Fault(rule)
        log.info(
            "C-%s from %s: fault rule applies (%s)",
            operation.upper(),
            caller(event.assoc),
            fault.describe(),
        )
        return fault

    def _served(self, event: Any, started: Started, operation: str, **outcome: Any) -> Served:
        """Record a request as served, before its final response goes (fsqr/operations.py)."""
        peer = event.assoc.requestor
        served = Served(
            operation=operation,
            calling_ae=str(peer.ae_title).strip(),
            peer=f"{peer.address}:{peer.port}",
            started=started.at,
            duration_ms=started.elapsed_ms(),
            **outcome,
        )
        self.operations.append(served)
        self.associations.served(event.assoc)
        return served

    def on_echo(self, event: Any) -> int | Dataset:
        started = Started.now()
        fault = None
        code, comment = status.SUCCESS, ""
        try:
            self._authorize(event, "echo")
            fault = self._fault(event, "echo")
            if fault is not None:
                fault.pause()
                fault.raise_status()
        except DimseError as exc:
            code, comment = exc.status, exc.comment
        served = self._served(
            event, started, "C-ECHO", status=code, comment=comment, fault=fault is not None
        )
        log.info(
            "C-ECHO from %s%s",
            caller(event.assoc),
            f": {code:04X} {comment}" if code != status.SUCCESS else "",
            extra={"operation": served.as_json()},
        )
        explain.echo(caller(event.assoc), code)
        return failure(code, comment) if code != status.SUCCESS else status.SUCCESS

    def take_retrieve_requests(self, event: Any) -> None:
        """EVT_CONN_OPEN: serve this association's C-MOVE and C-GET requests with fsqr's own
        retrieve rather than pynetdicom's service class (why: see `_Responder` above)."""
        assoc = event.assoc
        if not assoc.is_acceptor:
            return
        dispatch = assoc._serve_request  # pynetdicom's: hands a request to its service class
        routes = {
            C_MOVE: (evt.EVT_C_MOVE, MOVE_MODELS, self.on_move),
            C_GET: (evt.EVT_C_GET, GET_MODELS, self.on_get),
        }

        def serve_request(msg: Any, context_id: int) -> None:
            if isinstance(msg, StoreResponse):  # a C-GET's, come after its timeout: as pynetdicom
                log.debug("dropped a late C-STORE response to message %s", msg.message_id)
                return
            route = routes.get(type(msg))
            context = _accepted_context(assoc, context_id)
            if (
                route is None
                or context is None
                or not msg.is_valid_request
                or str(msg.AffectedSOPClassUID) not in route[1]
                or str(context.abstract_syntax) != str(msg.AffectedSOPClassUID)
            ):
                dispatch(msg, context_id)  # anything else, errors included: pynetdicom's way
                return
            event_type, _, handler = route
            request = evt.Event(
                assoc,
                event_type,
                {
                    "request": msg,
                    "context": context.as_tuple,
                    "_is_cancelled": lambda message_id: message_id in assoc.dimse.cancel_req,
                },
            )
            # As pynetdicom does around a service class: cancels of earlier requests are
            # forgotten, and the reactor counts as paused, for it is this thread.
            assoc.dimse.cancel_req = {}
            assoc._is_paused = True
            try:
                handler(request)
            except Exception:
                log.exception("%s from %s failed", event_type.name, caller(assoc))
                assoc.abort()
            finally:
                assoc._is_paused = False

        assoc._serve_request = serve_request
        read_store_responses_directly(assoc)  # C-GET's sub-operations

    def on_move(self, event: Any) -> None:
        """C-MOVE SCP (PS3.4 C.4.2.3): every matching instance to the Move Destination, over
        sub-associations fsqr opens, with pending responses and the final status.

        Called by `take_retrieve_requests`, not by pynetdicom: it sends its responses itself.
        """
        self._retrieve(event, MOVE_MODELS)

    def on_get(self, event: Any) -> None:
        """C-GET SCP (PS3.4 C.4.3.3): every matching instance back over the SCU's association,
        with pending responses and the final status.

        Called by `take_retrieve_requests`, not by pynetdicom: it sends its responses itself.
        """
        self._retrieve(event, GET_MODELS)

    def _links(
        self, event: Any, responder: _Responder
    ) -> Callable[[retrieve.Batch], retrieve.Link]:
        """Where sub-operations go: sub-associations to the Move Destination (C-MOVE), or the
        SCU's own association (C-GET). Raises MoveDestinationUnknown (A801)."""
        request = event.request
        priority = int(request.Priority or 0)  # the sub-operations inherit it
        if isinstance(request, C_GET):
            sender = _StoreSender(
                event.assoc, config=self.config, priority=priority, originator=None
            )
            link = _RequestorLink(
                event.assoc, sender, without_roles=self.config.allow_get_without_role_selection
            )
            return lambda batch: link
        title = str(request.MoveDestination or "").strip()
        peer = self.config.peer(title)
        if peer is None:  # PS3.4 C.4.2.1.5: A801, and no association is opened
            raise MoveDestinationUnknown(f"{title!r} is not in fsqr's ae_table")
        explain.destination(title, peer.host, peer.port)
        destination = peer
        originator = (event.assoc.requestor.ae_title.strip(), int(request.MessageID))

        def open_link(batch: retrieve.Batch) -> retrieve.Link:
            return _SubAssociation.open(
                self._requestor_ae,
                destination,
                batch,
                config=self.config,
                priority=priority,
                originator=originator,
                on_connect=responder.report,
            )

        return open_link

    def _links_at_once(self, event: Any) -> int:
        """Sub-associations a C-MOVE sends over at once: the destination's `associations`."""
        if not isinstance(event.request, C_MOVE):
            return 1  # C-GET sends over the requestor's own association
        peer = self.config.peer(str(event.request.MoveDestination or ""))
        return peer.associations if peer is not None else 1

    def _retrieve(self, event: Any, models: dict[str, Model]) -> None:
        """What C-MOVE and C-GET share: identifier -> instances -> sub-operations -> responses."""
        started = Started.now()
        request = event.request
        operation = "C-MOVE" if models is MOVE_MODELS else "C-GET"
        destination = str(request.MoveDestination or "").strip() if models is MOVE_MODELS else ""
        sop_class = str(event.request.AffectedSOPClassUID)
        model = models[sop_class]
        responder = _Responder(event, self.cancels)
        fault = None
        level = ""
        tally = retrieve.Tally(0)
        code: int | None = None
        comment = ""
        answer: Callable[[], None]  # the final response, sent once the request is recorded
        try:
            if explain.on():
                _explain_retrieve_request(event, operation, model.value)
            self._authorize(event, "move" if models is MOVE_MODELS else "get")
            fault = self._fault(event, "move" if models is MOVE_MODELS else "get")
            if fault is not None:
                fault.pause()
                fault.raise_status()
                responder.fault = fault
            open_link = self._links(event, responder)
            if fault is not None:
                open_link = _misbehaving(open_link, fault)
            level, outcome = self._sub_operations(event, model, responder, open_link)
            tally, code = outcome.tally, outcome.status
            if fault is not None and fault.cut_short:
                done = _counted(fault.steps, "sub-operation")
                comment = f"aborted after {done} (faults: abort_after)"
            elif code is None:
                comment = "no answer: the SCU went away"
            answer = functools.partial(responder.final, outcome)
        except DimseError as exc:
            code, comment = exc.status, exc.comment
            log.warning("%s from %s refused: %s", operation, caller(event.assoc), exc.comment)
            answer = functools.partial(responder.refuse, exc.status, exc.comment)
        except Exception as exc:
            log.exception("%s from %s failed", operation, caller(event.assoc))
            code, comment = status.UNABLE_TO_PROCESS, f"fsqr error: {exc}"
            answer = functools.partial(responder.refuse, status.UNABLE_TO_PROCESS, comment)
        self.cancels.forget(event)
        served = self._served(
            event,
            started,
            operation,
            status=code,
            comment=comment[:64],
            model=model.value,
            level=level,
            destination=destination,
            completed=tally.completed,
            failed=tally.failed,
            warning=tally.warning,
            sop_instance_uids=tuple(tally.sent_uids),
            fault=fault is not None,
        )
        self._log_retrieve(event, served, tally)
        if fault is not None and fault.cut_short:
            event.assoc.abort()
        else:
            answer()

    def _sub_operations(
        self,
        event: Any,
        model: Model,
        responder: _Responder,
        open_link: Callable[[retrieve.Batch], retrieve.Link],
    ) -> tuple[str, retrieve.Outcome]:
        """The level asked for, and how its sub-operations went (`retrieve.run`)."""
        sop_class = str(event.request.AffectedSOPClassUID)
        moving = isinstance(event.request, C_MOVE)
        relational = event.assoc.acceptor.sop_class_extended.get(sop_class, b"")[:1] == b"\1"
        query = parse_retrieve_identifier(_identifier(event), model, relational=relational)
        instances = instances_to_retrieve(self.index, query)
        retrieve.check_limit(instances)
        responder.counts = retrieve.Tally(len(instances))
        if moving:
            batches = retrieve.plan_batches(instances)
        else:
            batches = [retrieve.Batch((), tuple(instances))] if instances else []
        explain.plan(
            "C-MOVE" if moving else "C-GET",
            len(instances),
            [(len(b.contexts), len(b.instances)) for b in batches],
        )
        outcome = retrieve.run(
            batches,
            open_link,
            responder,
            self.index,
            reopen=moving,
            links=self._links_at_once(event),
        )
        return query.level.value, outcome

    def _log_retrieve(self, event: Any, served: Served, tally: retrieve.Tally) -> None:
        """The one log line of a C-MOVE or C-GET, with its record for JSON logs."""
        code, comment = served.status, served.comment
        outcome = f"{code:04X} {comment}".rstrip() if code is not None else comment
        seconds = served.duration_ms / 1000
        done = tally.completed + tally.warning
        log.info(
            "%s %s %s from %s%s: %d completed, %d warning, %d failed, %d not attempted, "
            "%s, %.0f ms, %.1f instances/s, %.1f MB/s",
            served.operation,
            served.level or "?",
            served.model,
            caller(event.assoc),
            f" to {served.destination}" if served.destination else "",
            tally.completed,
            tally.warning,
            tally.failed,
            tally.remaining,
            outcome,
            served.duration_ms,
            done / seconds if seconds else 0.0,
            tally.sent_bytes / seconds / 1e6 if seconds else 0.0,
            extra={"operation": served.as_json()},
        )

    def on_store(self, event: Any) -> int | Dataset:
        """C-STORE SCP (PS3.4 B.2.2): write the instance under the root as sent, index it, answer.

        It is indexed before this returns, that is before pynetdicom sends the response, so a
        C-FIND sent after the response finds it. `storage.on_duplicate: keep` answers 0000
        Success for an instance already stored: the SCU's instance is there, as it asked.
        """
        started = Started.now()
        sop_class = str(event.request.AffectedSOPClassUID)
        uid = str(event.request.AffectedSOPInstanceUID)
        who = caller(event.assoc)
        fault = None
        try:
            self._authorize(event, "store")
            fault = self._fault(event, "store")
            if fault is not None:
                fault.pause()
                fault.raise_status()
            encoded = event.encoded_dataset()
            stored = self.receiver.store(encoded, sop_class, uid)
        except DimseError as exc:
            self._served(
                event,
                started,
                "C-STORE",
                status=exc.status,
                comment=exc.comment,
                model=sop_class,
                fault=fault is not None,
            )
            log.warning("C-STORE %s from %s refused: %04X %s", uid, who, exc.status, exc.comment)
            return failure(exc.status, exc.comment)
        except Exception as exc:
            comment = f"fsqr error: {type(exc).__name__}"[:64]
            self._served(
                event,
                started,
                "C-STORE",
                status=status.CANNOT_UNDERSTAND,
                comment=comment,
                model=sop_class,
                fault=fault is not None,
            )
            log.exception("C-STORE %s from %s failed", uid, who)
            return failure(status.CANNOT_UNDERSTAND, comment)
        served = self._served(
            event,
            started,
            "C-STORE",
            status=status.SUCCESS,
            model=sop_class,
            sop_instance_uids=(uid,),
            fault=fault is not None,
        )
        log.info(
            "C-STORE %s from %s: %s, %d bytes, %.1f ms",
            uid,
            who,
            stored.outcome,
            len(encoded),
            served.duration_ms,
            extra={"operation": served.as_json()},
        )
        log.debug("C-STORE %s: %s", uid, stored.path)
        explain.store_received(who, sop_class, str(stored.outcome), status.SUCCESS)
        return status.SUCCESS

    def on_find(self, event: Any) -> Iterator[FindResponse]:
        """C-FIND SCP: Query/Retrieve (PS3.4 C.4.1.2) or Modality Worklist (PS3.4 K.4.1.3)."""
        if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
            return self._answer_find(event, "Modality Worklist", self._worklist_answers)
        model = FIND_MODELS[str(event.request.AffectedSOPClassUID)]
        return self._answer_find(event, model.value, self._query_answers)

    def _query_answers(self, event: Any) -> tuple[str, Iterator[Dataset]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        relational = event.assoc.acceptor.sop_class_extended.get(sop_class, b"")[:1] == b"\1"
        query = parse_identifier(_identifier(event), FIND_MODELS[sop_class], relational=relational)
        log.debug("C-FIND keys: %s", [k.keyword or hex(k.tag) for k in query.keys])
        if explain.on():
            explain.find_request(
                caller(event.assoc),
                FIND_MODELS[sop_class].value,
                query.level.value,
                _explained_keys(_identifier(event)),
            )
        return query.level.value, find(self.index, query, self.config.ae_title, self.headers)

    def _worklist_answers(self, event: Any) -> tuple[str, Iterator[Dataset]]:
        if self.worklist is None:
            log.warning(
                "Modality Worklist query from %s refused: this is a Query/Retrieve server; "
                "to answer worklist queries, set `worklist:` in fsqr.yaml to a folder of .wl files",
                caller(event.assoc),
            )
            raise UnableToProcess("no worklist here: set worklist: in fsqr.yaml")
        return "-", find_worklist(self.worklist, _identifier(event))

    def _answer_find(
        self, event: Any, model: str, answers: Callable[[Any], tuple[str, Iterator[Dataset]]]
    ) -> Iterator[FindResponse]:
        """One pending response per match, then the final status; a C-CANCEL between any two
        answers ends it with FE00. pynetdicom sends 0000 Success by itself once this generator
        ends without a final status of its own.
        """
        find = _FindProgress(event, model)
        cap = self.config.max_find_responses
        try:
            self._authorize(event, "find")
            fault = find.fault = self._fault(event, "find")
            if fault is not None:
                fault.pause()
                fault.raise_status()
            tick = time.perf_counter()
            find.level, results = answers(event)
            find.busy += time.perf_counter() - tick
            while True:
                _keep_pace_with_the_network(event.assoc)
                if self.cancels.is_cancelled(event) or event.is_cancelled:
                    self._find_done(find, status.CANCEL)
                    yield status.CANCEL, None
                    return
                if fault is not None and fault.cut_short:
                    comment = (
                        f"aborted after {_counted(find.matches, 'match')} (faults: abort_after)"
                    )
                    self._find_done(find, None, comment)
                    event.assoc.abort()
                    return
                tick = time.perf_counter()
                answer = next(results, None)
                find.busy += time.perf_counter() - tick
                if answer is None:
                    self._find_done(find, status.SUCCESS)
                    return
                if cap and find.matches >= cap:  # PS3.4 C.4.1.1.4: A700, Out of Resources
                    raise TooManyResponses(f"more than {cap} matches: narrow the query")
                find.matches += 1
                yield status.PENDING, answer
                if fault is not None:
                    fault.step()
                    fault.pause()  # before the next response, whatever it is
        except DimseError as exc:
            self._find_done(find, exc.status, exc.comment)
            yield failure(exc.status, exc.comment), None
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", caller(event.assoc))
            comment = f"fsqr error: {exc}"
            self._find_done(find, status.UNABLE_TO_PROCESS, comment[:64])
            yield failure(status.UNABLE_TO_PROCESS, comment), None
            return
        finally:
            # The association ended while answers were still going (pynetdicom closed this).
            self._find_done(find, None, "no answer: the association ended")

    def _find_done(self, find: _FindProgress, code: int | None, comment: str = "") -> None:
        """Record and log a C-FIND, once, before its final response goes."""
        if find.served is not None:
            return
        event = find.event
        self.cancels.forget(event)
        outcome = f"{code:04X} {comment}" if code is not None else comment
        if code in (status.SUCCESS, status.CANCEL):
            outcome = "0000 Success" if code == status.SUCCESS else "FE00 Cancel"
        if code is not None:
            explain.find_done(caller(event.assoc), find.matches, outcome)
        level = "" if find.level == "-" else find.level
        find.served = self._served(
            event,
            find.started,
            "C-FIND",
            status=code,
            comment=comment,
            model=find.model,
            level=level,
            matches=find.matches,
            fault=find.fault is not None,
        )
        log.info(
            "C-FIND %s %s from %s: %d matches, %s, %.1f ms (fsqr %.1f ms)",
            find.level or "?",
            find.model,
            caller(event.assoc),
            find.matches,
            outcome,
            find.served.duration_ms,
            find.busy * 1000,
            extra={"operation": find.served.as_json()},
        )
