"""C-MOVE and C-GET below pynetdicom's Query/Retrieve service class: what `retrieve.run` is
handed to reach the network (the comment below says why fsqr does not let pynetdicom run them).

- `Responder` is the retrieve's SCU as `retrieve.Requestor`: its pending responses with their
  remaining/completed/failed/warning counts, its final response, whether it sent a C-CANCEL.
- The `retrieve.Link`s are where the C-STORE sub-operations go: a sub-association that fsqr opens
  to the move destination (`SubAssociation`), or the C-GET requestor's own association
  (`RequestorLink`); each sends through one `StoreSender`, which streams the file as it is on
  disk and reads the C-STORE responses as they arrive.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_MOVE, C_STORE
from pynetdicom.dsutils import encode as encode_dataset

from fsqr import explain, faults, reactor, retrieve, security, status
from fsqr.config import Config, Peer
from fsqr.dimse import (
    C_GET_RSP_FIELD,
    C_MOVE_RSP_FIELD,
    EXPLAINED,
    CancelRegistry,
    StoreResponse,
    caller,
    explain_association,
    keep_pace_with_the_network,
    read_store_responses_directly,
    retrieve_pending_command,
    room_in_one_pdu,
    send_in_one_pdu,
    set_nodelay,
    store_request_command,
    without_unheard_message_logs,
)
from fsqr.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from fsqr.tree import open_served

log = logging.getLogger(__name__)


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
# its service class sees them (`Handlers.take_retrieve_requests`), runs `retrieve.run` over the
# links of this module, and sends every response itself over the DIMSE provider. These
# pynetdicom internals are used, here and in handlers.py only:
# Association._serve_request (where requests are dispatched, replaced per association),
# Association._is_paused and ._reactor_checkpoint (how pynetdicom's own send_* methods keep the
# reactor thread off the DIMSE queue), C_STORE._dataset_path (what send_c_store sets to stream a
# data set from a file; fsqr gives it an open file's descriptor, which pynetdicom's open() takes),
# and C_STORE_RQ.encode_msg (its P-DATA fragments, sent one by one by fsqr as DIMSE's send_msg
# would, see _send_from_file). tests/test_interop_retrieve.py fails if a pynetdicom release
# changes any of them. (reactor.py lists the internals its loops use.)


# Bytes of a file being sent that may wait in pynetdicom's send queue: enough that its DUL thread
# never waits for the disk, few enough that a large instance is never held whole in memory.
STREAM_AHEAD = 4 << 20

# PS3.4 C.4.2.3.1: pending responses are optional progress reports. Each costs about as much as a
# small instance's C-STORE, so while instances go faster than this, one goes out per interval.
PENDING_INTERVAL = 0.1  # seconds


def accepted_context(assoc: Any, context_id: int) -> Any | None:
    return next((cx for cx in assoc.accepted_contexts if cx.context_id == context_id), None)


class Responder:
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

    def starting(self) -> None:
        if self.fault is not None:  # counted as it starts: with several links sending at once,
            self.fault.step()  # counting as each ends let more than abort_after through

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
            C_MOVE_RSP_FIELD if self._operation == "C-MOVE" else C_GET_RSP_FIELD,
            str(self._request.AffectedSOPClassUID),
            int(self._request.MessageID),
            (counts.remaining, counts.completed, counts.failed, counts.warning),
        )
        with self._sending:
            if not self.gone() and not send_in_one_pdu(
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


class StoreSender:
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
        if outgoing.size <= room_in_one_pdu(self.assoc, command):
            data = retrieve.data_set_bytes(outgoing)
            if data is not None and send_in_one_pdu(self.assoc, context_id, command, data):
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
            fd, st = open_served(payload.path)
        except OSError as exc:
            return retrieve.Stored(None, f"cannot open the file: {exc.strerror or exc}")
        if not payload.is_the_file(st):
            os.close(fd)
            return retrieve.Stored(None, "the file changed before it was sent")
        req._dataset_path = cast(Any, (fd, payload.offset))  # pynetdicom open()s it, and closes it
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        message.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": message})  # as send_msg does
        expected, sent = payload.identity[2] - payload.offset, 0
        pdu_size = self.assoc.dimse.maximum_pdu_size
        ahead = max(1, STREAM_AHEAD // pdu_size) if pdu_size else 1  # 0: one PDU, no limit
        for pdata in message.encode_msg(context_id, pdu_size):
            ((_, pdv),) = pdata.presentation_data_value_list
            if not pdv[0] & 0x01:  # PS3.8 E.2: bit 0 clear, a data set fragment
                sent += len(pdv) - 1
                if pdv[0] & 0x02 and sent != expected:  # bit 1 set: the last fragment
                    self.assoc.abort()
                    return retrieve.Stored(
                        None, "the file changed while it was being sent", usable=False
                    )
            keep_pace_with_the_network(self.assoc, ahead)  # STREAM_AHEAD, not the whole file
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


class SubAssociation:
    """A C-MOVE sub-association to the Move Destination (a `retrieve.Link`)."""

    def __init__(self, assoc: Any, peer: Peer, sender: StoreSender) -> None:
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
    ) -> SubAssociation:
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

        started = time.monotonic()
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
            # pynetdicom says only that it failed; how soon tells a refusal from a timeout.
            timeouts, took = config.timeouts, time.monotonic() - started
            answer = assoc.acceptor.primitive
            if assoc.is_rejected:
                reason = f"association rejected: {getattr(answer, 'reason_str', '')}"
            elif getattr(answer, "result", None) == 0 and assoc.rejected_contexts:
                # Accepted, but not one context: pynetdicom then aborts (PS3.8 9.3.3.2).
                classes = sorted({_sop_name(c.abstract_syntax) for c in assoc.rejected_contexts})
                reason = (
                    f"{peer.ae_title} accepted no presentation context for {', '.join(classes)}"
                )
            elif not connected.is_set() and took >= timeouts.connect:
                reason = f"no connection within {timeouts.connect:g} s"
            elif not connected.is_set():
                reason = "connection refused" + (", or TLS handshake failed" if peer.tls else "")
            elif took >= timeouts.acse:
                reason = f"no association within {timeouts.acse:g} s"
            else:  # a TLS-only peer does this to an A-ASSOCIATE-RQ sent without TLS
                reason = "connection closed without an answer"
            raise retrieve.Unreachable(f"{reason} ({where})")
        sender = StoreSender(assoc, config=config, priority=priority, originator=originator)
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


class RequestorLink:
    """C-GET's sub-operations over the SCU's own association (a `retrieve.Link`).

    The SCU must have taken the SCP role for a storage SOP Class with SCP/SCU Role Selection
    (PS3.4 C.4.3.1, PS3.7 D.3.3.4); with `allow_get_without_role_selection` fsqr also sends over
    contexts the SCU proposed without any, as viewers such as Horos expect.
    """

    _TIMEOUTS_IN_A_ROW = 2  # then the SCU is taken to be stuck and the rest fail

    def __init__(self, assoc: Any, sender: StoreSender, *, without_roles: bool) -> None:
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
                # What fits in a response's 64-character Error Comment first, then the detail.
                self._why[uid] = (
                    f"no SCP/SCU Role Selection for {_sop_name(uid)}: the SCU offered it without "
                    "one, so it may not be sent C-STOREs (PS3.7 D.3.3.4); "
                    "allow_get_without_role_selection: true sends them anyway"
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


class MisbehavingLink:
    """A `retrieve.Link` slowed down by a `faults:` rule: it waits `delay_ms` before each
    sub-operation (`Responder.starting` counts them, for the rule's abort_after)."""

    def __init__(self, link: retrieve.Link, fault: faults.Fault) -> None:
        self._link = link
        self._fault = fault

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        return self._link.transfer_syntaxes(sop_class_uid)

    def why_not(self, sop_class_uid: str) -> str:
        return self._link.why_not(sop_class_uid)

    def store(self, outgoing: retrieve.Outgoing) -> retrieve.Stored:
        self._fault.pause()
        return self._link.store(outgoing)

    def close(self) -> None:
        self._link.close()


def misbehaving(
    open_link: Callable[[retrieve.Batch], retrieve.Link], fault: faults.Fault
) -> Callable[[retrieve.Batch], retrieve.Link]:
    """`open_link`, its links slowed down and counted by `fault`."""
    return lambda batch: MisbehavingLink(open_link(batch), fault)


def _sop_name(uid: str) -> str:
    return str(UID(uid).name)


def requestor_ae(config: Config) -> Any:
    """The AE that opens C-MOVE sub-associations: the server's title and timeouts."""
    ae = reactor.WaitingAE(ae_title=config.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    timeouts = config.timeouts
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.connection_timeout = timeouts.connect
    return ae
