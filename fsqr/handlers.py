"""pynetdicom events in, DIMSE statuses out: the only place where errors become statuses.

Each handler reads a request, calls the core (query, retrieve, storage), and yields what
pynetdicom sends back. Anything a peer sends that the core refuses arrives here as a
`DimseError` carrying its status and ErrorComment; anything unexpected is logged with its
traceback and answered with a failure status, and the association and the server go on.

C-MOVE and C-GET are served a level below pynetdicom's events: fsqr takes those requests before
pynetdicom's Query/Retrieve service class (`take_retrieve_requests`) and runs `retrieve.run`
over its own C-STORE sub-operations (links.py, which says why). The DIMSE messages fsqr encodes
and sends itself are in dimse.py. Only these three modules, server.py and reactor.py import
pynetdicom.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE

from fsqr import explain, faults, reactor, retrieve, security, status
from fsqr.config import Config, Operation
from fsqr.dimse import (
    EXPLAINED,
    CancelRegistry,
    StoreResponse,
    caller,
    explain_association,
    keep_pace_with_the_network,
    peer_of,
    read_store_responses_directly,
    send_answers_in_one_pdu,
    set_nodelay,
    without_unheard_message_logs,
)
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
from fsqr.links import (
    RequestorLink,
    Responder,
    StoreSender,
    SubAssociation,
    accepted_context,
    misbehaving,
    requestor_ae,
)
from fsqr.operations import Operations, Served, Started
from fsqr.query import (
    UNDECODABLE,
    find,
    instances_to_retrieve,
    parse_identifier,
    parse_retrieve_identifier,
)
from fsqr.scan import HeaderCache
from fsqr.storage import Provenance, Receiver, file_preamble_and_meta
from fsqr.worklist import Worklist, find_worklist

log = logging.getLogger(__name__)

# The largest PDU read from a peer when `max_pdu` is smaller: an A-ASSOCIATE-RQ is not bound by
# Maximum Length Received, and 128 presentation contexts with many transfer syntaxes stay far below.
MAX_PDU_READ = 1 << 20
_QR_MODELS = {**FIND_MODELS, **MOVE_MODELS, **GET_MODELS}

FindResponse = tuple[int | Dataset, Dataset | None]
WORKLIST = "Modality Worklist"  # the model a worklist C-FIND is logged under; it has no levels


def failure(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), as pynetdicom sends it."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment
    return ds


def _identifier(event: Any) -> Dataset:
    """The request's identifier; bytes that do not decode as a data set are the peer's error,
    and so is a Specific Character Set pydicom does not know: it would only warn, and decode
    the values as something other than the SCU meant. (Checked on every call: pynetdicom
    decodes the identifier once, and warns only then.)"""
    try:
        identifier = cast(Dataset, event.identifier)
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from None
    declared = identifier.get(0x00080005)  # Specific Character Set, as an element
    if declared is not None and declared.value:
        terms = [str(t) for t in _values_of(declared.value)]
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            convert_encodings(terms)
        for warning in warned:
            message = str(warning.message)
            if any(problem in message for problem in UNDECODABLE):
                raise InvalidIdentifier(message)
    return identifier


def _unworkable_pdu_length(maximum: int | None) -> security.Refusal | None:
    """A-ASSOCIATE-RJ for a request whose Maximum Length sub-item (PS3.8 D.1, which every
    request must hold) is missing, or too small for a PDV to carry a byte: pynetdicom accepted
    either, then failed to send the first response and aborted, after fsqr had logged it
    answered. 0 means no limit."""
    if maximum is None:
        why = "no Maximum Length sub-item (PS3.8 D.1)"
    elif 0 < maximum < _SMALLEST_PDU:
        why = f"a Maximum Length of {maximum} bytes: no PDV fits (PS3.8 D.1)"
    else:
        return None
    return security.Refusal(security.REJECTED_PERMANENT, security.SERVICE_USER, 1, why)


# A PDV item: its length (4 bytes), context ID and message control header, and data, of which
# pynetdicom wants more than a byte.
_SMALLEST_PDU = 8
_MIN_RATE = 65536  # bytes a second below which a PDU is taken for a stalled one


def _read_within(sock: Any, nr_bytes: int, deadline: float, network: float, who: str) -> bytearray:
    """`nr_bytes` from `sock` by `deadline`, each read waiting at most `network`; fewer when
    that fails, which pynetdicom takes for a closed connection (one log line, no traceback)."""
    data = bytearray(nr_bytes)
    view, got = memoryview(data), 0
    while got < nr_bytes:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            sock.settimeout(min(network, left))
            read = sock.recv_into(view[got:], nr_bytes - got)
        except TimeoutError:
            log.warning("connection from %s closed: a PDU came too slowly, or stopped", who)
            read = 0
        if not read:
            return data[:got]
        got += read
    return data


def _ended(assoc: Any) -> bool:
    """True once nobody waits for this association's answers: aborted or closed by the peer
    (its DUL no longer in Sta6, PS3.8 9.2: the association thread, busy with the request,
    has not heard of it yet), or aborted by fsqr."""
    return not assoc.is_established or assoc.dul.state_machine.current_state != "Sta6"


NO_ONE_WAITS = "no answer: the association ended during the fault's delay"


def _values_of(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


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


def _misbehave(fault: faults.Fault, responder: Responder) -> None:
    """A `faults:` rule at work on a C-MOVE or C-GET: its status answered after its wait (the
    one response), or else handed to `responder`, which counts the sub-operations for its
    abort_after; `MisbehavingLink` waits before each."""
    if fault.rule.status is not None:
        fault.pause()
        fault.raise_status()
    responder.fault = fault


def _level_asked(event: Any) -> str:
    """The QueryRetrieveLevel a request names, as its log line shows it; "" if none is read."""
    try:
        return str(_identifier(event).get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:  # not a decodable identifier: the request is refused for that, and says so
        return ""


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


def _counted(n: int, thing: str) -> str:
    """`n` things, in words.

    >>> _counted(1, "match"), _counted(2, "match"), _counted(0, "sub-operation")
    ('1 match', '2 matches', '0 sub-operations')
    """
    plural = thing + ("es" if thing.endswith("ch") else "s")
    return f"{n} {thing if n == 1 else plural}"


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
            peer_of(event.assoc),
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
            "calling_ae": peer_of(assoc).rsplit("@", 1)[0],
            "peer": f"{peer.address}:{peer.port}",
            "ended": how,
            "operations": lifetime.operations,
            "duration_ms": round(milliseconds, 1),
        }
        log.info(
            "association with %s ended: %s, %d operations, %.0f ms",
            peer_of(assoc),
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
        # As asked for, should the request be refused before it is parsed; "-" for Modality
        # Worklist, which has no levels.
        self.level = "-" if model == WORKLIST else _level_asked(event)
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
        self._requestor_ae = requestor_ae(config)  # opens C-MOVE sub-associations
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
        of one and then nothing held its thread and connection forever, past every timeout,
        and one that sent a byte now and then (slowloris) did the same. Each read and write
        gives up after `timeouts.network` without progress, and a whole PDU must come within
        a deadline: the A-ASSOCIATE-RQ within `timeouts.acse` of its first byte (as ARTIM
        bounds the wait for it, PS3.8 9.1.5), any later one within `timeouts.network` and a
        second more per `_MIN_RATE` bytes.
        """
        if not event.assoc.is_acceptor:
            return
        transport = event.assoc.dul.socket
        timeouts = self.config.timeouts
        if transport.socket is not None:
            transport.socket.settimeout(timeouts.network)
        limit = max(self.config.max_pdu, MAX_PDU_READ) if self.config.max_pdu else None
        who = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        deadline: list[float] = []  # of the PDU being read: set at its header, gone after it

        def bounded_recv(nr_bytes: int) -> bytearray:
            if limit is not None and nr_bytes > limit:
                log.warning(
                    "connection from %s closed: it announced a PDU of %d bytes (we take %d)",
                    who,
                    nr_bytes,
                    limit,
                )
                raise OSError(f"PDU of {nr_bytes} bytes refused")
            if not deadline:  # a PDU begins: its 6-byte header
                budget = timeouts.network if event.assoc.is_established else timeouts.acse
                deadline.append(time.monotonic() + budget)
                return _read_within(transport.socket, nr_bytes, deadline[0], timeouts.network, who)
            try:  # the rest of it
                by = deadline[0] + nr_bytes / _MIN_RATE
                return _read_within(transport.socket, nr_bytes, by, timeouts.network, who)
            finally:
                deadline.clear()

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
            refusal = _unworkable_pdu_length(assoc.requestor.maximum_length) or security.admit(
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
        fault = faults.Fault(rule, ended=functools.partial(_ended, event.assoc))
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
        code: int | None = status.SUCCESS
        comment = ""
        try:
            self._authorize(event, "echo")
            fault = self._fault(event, "echo")
            if fault is not None and not fault.pause():
                code, comment = None, NO_ONE_WAITS
            elif fault is not None:
                fault.raise_status()
        except DimseError as exc:
            code, comment = exc.status, exc.comment
        served = self._served(
            event, started, "C-ECHO", status=code, comment=comment, fault=fault is not None
        )
        log.info(
            "C-ECHO from %s: %s, %.1f ms",
            caller(event.assoc),
            comment if code is None else f"{code:04X} {comment}".rstrip(),
            served.duration_ms,
            extra={"operation": served.as_json()},
        )
        if code is None:
            return status.UNABLE_TO_PROCESS  # goes nowhere: the association is over
        explain.echo(caller(event.assoc), code)
        return failure(code, comment) if code != status.SUCCESS else status.SUCCESS

    def take_retrieve_requests(self, event: Any) -> None:
        """EVT_CONN_OPEN: serve this association's C-MOVE and C-GET requests with fsqr's own
        retrieve rather than pynetdicom's service class (why: see links.py)."""
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
            context = accepted_context(assoc, context_id)
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

    def _links(self, event: Any, responder: Responder) -> Callable[[retrieve.Batch], retrieve.Link]:
        """Where sub-operations go: sub-associations to the Move Destination (C-MOVE), or the
        SCU's own association (C-GET). Raises MoveDestinationUnknown (A801)."""
        request = event.request
        priority = int(request.Priority or 0)  # the sub-operations inherit it
        if isinstance(request, C_GET):
            sender = StoreSender(
                event.assoc, config=self.config, priority=priority, originator=None
            )
            link = RequestorLink(
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
            return SubAssociation.open(
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
        responder = Responder(event, self.cancels)
        fault = None
        level = _level_asked(event)  # for the log line, should the request be refused early
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
                _misbehave(fault, responder)
            open_link = self._links(event, responder)
            if fault is not None:
                open_link = misbehaving(open_link, fault)
            level, outcome = self._sub_operations(event, model, responder, open_link)
            tally, code = outcome.tally, outcome.status
            if code == status.OUT_OF_RESOURCES_SUBOPS:  # as the final response's Error Comment
                comment = outcome.reason
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
        responder: Responder,
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
            if fault is not None and not fault.pause():
                self._served(
                    event,
                    started,
                    "C-STORE",
                    status=None,
                    comment=f"{NO_ONE_WAITS}; not stored",
                    model=sop_class,
                    fault=True,
                )
                log.info("C-STORE %s from %s: %s; not stored", uid, who, NO_ONE_WAITS)
                return status.OUT_OF_RESOURCES  # goes nowhere: the association is over
            if fault is not None:
                fault.raise_status()
            encoded = received_file(event, self.config.ae_title)
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
            return self._answer_find(event, WORKLIST, self._worklist_answers)
        model = FIND_MODELS[str(event.request.AffectedSOPClassUID)]
        return self._answer_find(event, model.value, self._query_answers)

    def _query_answers(self, event: Any) -> tuple[str, Iterator[Dataset], int]:
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
        answers = find(
            self.index,
            query,
            self.config.ae_title,
            self.headers,
            stopped=lambda: self._stopped(event),
        )
        unmatched = query.keys_not_matched()
        if unmatched:  # PS3.4 C.4.1.1.4: each match then says so, FF01 rather than FF00
            log.debug("C-FIND keys with a value fsqr does not match on: %s", unmatched)
            return query.level.value, answers, status.PENDING_UNSUPPORTED_KEYS
        return query.level.value, answers, status.PENDING

    def _find_ended(self, find: _FindProgress) -> Iterator[FindResponse]:
        """A C-FIND's end: FE00 after a C-CANCEL (PS3.7 9.3.2.3), nothing when the
        association is gone, otherwise Success (pynetdicom sends 0000 itself)."""
        if _ended(find.event.assoc):
            self._find_done(find, None, "stopped: the association ended")
        elif self.cancels.is_cancelled(find.event) or find.event.is_cancelled:
            self._find_done(find, status.CANCEL)
            yield status.CANCEL, None
        else:
            self._find_done(find, status.SUCCESS)

    def _stopped(self, event: Any) -> bool:
        """A C-FIND to end now: cancelled by the SCU, or its association gone."""
        return self.cancels.is_cancelled(event) or bool(event.is_cancelled) or _ended(event.assoc)

    def _worklist_answers(self, event: Any) -> tuple[str, Iterator[Dataset], int]:
        if self.worklist is None:
            log.warning(
                "Modality Worklist query from %s refused: this is a Query/Retrieve server; "
                "to answer worklist queries, set `worklist:` in fsqr.yaml to a folder of .wl files",
                caller(event.assoc),
            )
            raise UnableToProcess("no worklist here: set worklist: in fsqr.yaml")
        return "-", find_worklist(self.worklist, _identifier(event)), status.PENDING

    def _answer_find(
        self,
        event: Any,
        model: str,
        answers: Callable[[Any], tuple[str, Iterator[Dataset], int]],
    ) -> Iterator[FindResponse]:
        """One pending response per match, then the final status; a C-CANCEL between any two
        answers ends it with FE00. pynetdicom sends 0000 Success by itself once this generator
        ends without a final status of its own. `answers` gives the query's level, its matches
        and their pending status: FF00, or FF01 when a key was not matched on.
        """
        find = _FindProgress(event, model)
        cap = self.config.max_find_responses
        try:
            self._authorize(event, "find")
            fault = find.fault = self._fault(event, "find")
            if fault is not None and not fault.pause():
                self._find_done(find, None, NO_ONE_WAITS)
                return
            if fault is not None:
                fault.raise_status()
            tick = time.perf_counter()
            find.level, results, pending = answers(event)
            find.busy += time.perf_counter() - tick
            while True:
                keep_pace_with_the_network(event.assoc)
                if fault is not None and fault.cut_short:
                    comment = (
                        f"aborted after {_counted(find.matches, 'match')} (faults: abort_after)"
                    )
                    self._find_done(find, None, comment)
                    event.assoc.abort()
                    return
                tick = time.perf_counter()
                answer = None if self._stopped(event) else next(results, None)
                find.busy += time.perf_counter() - tick
                if answer is None:  # no more matches, or a C-CANCEL, or nobody left to answer
                    yield from self._find_ended(find)
                    return
                if cap and find.matches >= cap:  # PS3.4 C.4.1.1.4: A700, Out of Resources
                    raise TooManyResponses(f"more than {cap} matches: narrow the query")
                find.matches += 1
                yield pending, answer
                if fault is not None:
                    fault.step()
                    if not fault.pause():  # before the next response, whatever it is
                        self._find_done(find, None, NO_ONE_WAITS)
                        return
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
            # pynetdicom closed this generator: the association ended while answers were still
            # going, or it could not encode an answer (it then sends C312 itself, and logs why).
            self._find_done(
                find, None, "stopped by pynetdicom: the association ended or an answer failed"
            )

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


def received_file(event: Any, ae_title: str) -> bytes:
    """The file a C-STORE request's data set is written as: preamble, file meta (PS3.10 7.1),
    and the data set as it came. The meta says where it came from, as dcm4che's writes it:
    the sender's Implementation Class UID and Version Name (the implementation that wrote the
    content, as it told us in its A-ASSOCIATE-RQ) and AE title, and ours (`ae_title`) as the AE
    title that received it."""
    peer = event.assoc.requestor
    request = event.request
    origin = Provenance(
        str(peer.implementation_class_uid or ""),
        str(peer.implementation_version_name or ""),
        str(peer.ae_title).strip(),
        ae_title,
    )
    meta = file_preamble_and_meta(
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        str(event.context.transfer_syntax),
        origin,
    )
    return meta + cast(bytes, event.encoded_dataset(include_meta=False))
