"""`fsqr serve --explain`: each DIMSE step in plain words, with the section of the Standard it
follows. Owns the wording of that narration and nothing else.

The protocol code (handlers.py, retrieve.py) calls one function here at each step and passes
plain values: strings, integers, small frozen records. Nothing here touches pynetdicom, a socket
or the index, and nothing here decides anything: the narration only says what was decided.

Lines go to the logger `fsqr.explain` at INFO. `fsqr serve --explain` shows them; otherwise the
CLI sets that logger to WARNING and every function here returns at its first line, so the
narration costs nothing. Values that could identify a patient (Patient… attributes, person
names, free text) are shown only when the logger is at DEBUG (`--explain -v`).

docs/how-a-c-move-works.md follows one C-MOVE through these lines; its transcript is written
and checked by tests/test_explain.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID

from fsqr import status

log = logging.getLogger(__name__)

# PS3.8 9.3.3.2: the Result/Reason of each presentation context in an A-ASSOCIATE-AC.
_CONTEXT_RESULTS = {
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}
# Why each result happens, as fsqr sees it when it is the acceptor (PS3.8 9.3.3.2).
_WHY_WE_REFUSED = {
    1: "fsqr's policy refused it (e.g. a role it does not take)",
    2: "no reason given",
    3: "fsqr does not offer this SOP Class",
    4: "fsqr accepts none of the transfer syntaxes proposed for it",
}
_VALUE_SHOWN_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "IS", "DS", "US", "UL", "SS", "SL"}
_HIDDEN = "(value hidden; --explain -v shows it)"
_FIRST_STATUSES = {
    status.SUCCESS: "0000 Success",
    status.CANCEL: "FE00 Cancel",
    status.SUBOPS_WITH_FAILURES: "B000 Warning: sub-operations complete, one or more failures",
    status.OUT_OF_RESOURCES_SUBOPS: "A702 Refused: out of resources, unable to perform "
    "sub-operations",
}


@dataclass(frozen=True, slots=True)
class Context:
    """A presentation context as negotiated (PS3.8 9.3.2.2, 9.3.3.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]  # accepted: the one agreed; otherwise those proposed
    result: int | None  # 0 accepted, 1-4 refused (PS3.8 9.3.3.2), None not yet negotiated
    roles: str = ""  # what role selection (PS3.7 D.3.3.4) settled for it, in words; "" if none


@dataclass(frozen=True, slots=True)
class Key:
    """One attribute of a request's identifier."""

    keyword: str  # or the tag as hex when the dictionary does not know it
    vr: str
    value: str  # "" for zero length; "(n items)" for a sequence


def on() -> bool:
    """True when the narration is shown: callers may skip building its arguments otherwise."""
    return log.isEnabledFor(logging.INFO)


def name(uid: str) -> str:
    """A UID's name from the DICOM dictionary, or the UID itself.

    >>> name("1.2.840.10008.5.1.4.1.2.2.2"), name("1.2.3")
    ('Study Root Query/Retrieve Information Model - MOVE', '1.2.3')
    """
    return str(UID(uid).name) if uid else "?"


def _syntaxes(uids: Sequence[str]) -> str:
    return ", ".join(name(uid) for uid in uids)


# -- associations (PS3.8 7.1-7.4, 9.3) --------------------------------------------------------


def association_accepted(
    peer: str, *, we_requested: bool, contexts: Sequence[Context], max_pdu: int
) -> None:
    """A-ASSOCIATE-AC: sent by fsqr (it accepted an SCU) or received (a sub-association)."""
    if not on():
        return
    accepted = [cx for cx in contexts if cx.result == 0]
    if we_requested:
        log.info(
            "%s accepted fsqr's association request (A-ASSOCIATE-AC, PS3.8 7.1): "
            "%d of %d proposed presentation contexts accepted (PS3.8 9.3.3.2); "
            "it takes PDUs of up to %s bytes",
            peer,
            len(accepted),
            len(contexts),
            max_pdu or "any number of",
        )
    else:
        log.info(
            "association from %s accepted (A-ASSOCIATE-AC, PS3.8 7.1): "
            "%d of %d proposed presentation contexts accepted (PS3.8 9.3.3.2); "
            "it takes PDUs of up to %s bytes",
            peer,
            len(accepted),
            len(contexts),
            max_pdu or "any number of",
        )
    for cx in contexts:
        if cx.result == 0:
            roles = f", {cx.roles}" if cx.roles else ""
            log.info(
                "  context %d accepted: %s in %s%s",
                cx.context_id,
                name(cx.abstract_syntax),
                _syntaxes(cx.transfer_syntaxes[:1]),
                roles,
            )
        else:
            result = cx.result or 0
            why = "the peer does not take it" if we_requested else _WHY_WE_REFUSED.get(result, "")
            log.info(
                "  context %d refused, %s: %s (proposed in %s): %s",
                cx.context_id,
                _CONTEXT_RESULTS.get(result, f"result {result}"),
                name(cx.abstract_syntax),
                _syntaxes(cx.transfer_syntaxes),
                why,
            )


def association_rejected(
    peer: str, *, we_requested: bool, result: str, source: str, reason: str
) -> None:
    """A-ASSOCIATE-RJ (PS3.8 7.1.1.9 and 9.3.4): no association at all."""
    if not on():
        return
    who = (
        f"{peer} rejected fsqr's association request"
        if we_requested
        else (f"association from {peer} rejected")
    )
    log.info(
        "%s (A-ASSOCIATE-RJ, PS3.8 9.3.4): %s, by the %s: %s",
        who,
        result or "rejected",
        source or "service user",
        reason or "no reason given",
    )


def association_released(peer: str, *, we_requested: bool) -> None:
    """A-RELEASE (PS3.8 7.2): the orderly end; every request before it was answered."""
    if on():
        kind = "sub-association to" if we_requested else "association with"
        log.info("%s %s released (A-RELEASE, PS3.8 7.2)", kind, peer)


def association_aborted(peer: str, *, we_requested: bool) -> None:
    """A-ABORT or A-P-ABORT (PS3.8 7.3, 7.4): the association ends at once."""
    if on():
        kind = "sub-association to" if we_requested else "association with"
        log.info(
            "%s %s aborted (A-ABORT or A-P-ABORT, PS3.8 7.3, 7.4): anything unanswered is lost",
            kind,
            peer,
        )


# -- C-ECHO, C-STORE --------------------------------------------------------------------------


def echo(peer: str, code: int) -> None:
    if on():
        log.info(
            "C-ECHO from %s (Verification, PS3.4 Annex A, PS3.7 9.1.5): answered %04X%s",
            peer,
            code,
            " Success: the association and both DIMSE providers work" if code == 0 else "",
        )


def store_received(peer: str, sop_class: str, outcome: str, code: int) -> None:
    if on():
        log.info(
            "C-STORE from %s (Storage SCP, PS3.4 B.2.2): a %s instance, %s; answered %04X",
            peer,
            name(sop_class),
            outcome,
            code,
        )


# -- C-FIND -----------------------------------------------------------------------------------


def _kind(key: Key) -> str:
    """Which kind of matching a key asks for (PS3.4 C.2.2.2).

    >>> _kind(Key("StudyDate", "DA", "20200101-")), _kind(Key("PatientName", "PN", "DO*"))
    ('range matching (C.2.2.2.5)', 'wild card matching (C.2.2.2.4)')
    """
    value = key.value
    if key.vr == "SQ":
        return "sequence matching (C.2.2.2.6)"
    if key.vr == "UI" and "\\" in value:
        return "list of UID matching (C.2.2.2.2)"
    if key.vr in ("DA", "TM", "DT") and "-" in value:
        return "range matching (C.2.2.2.5)"
    if value == "*":
        return "universal matching (C.2.2.2.3)"
    if any(c in value for c in "*?") and key.vr not in ("UI", "DA", "TM", "DT"):
        return "wild card matching (C.2.2.2.4)"
    return "single value matching (C.2.2.2.1)"


def _shown(key: Key) -> str:
    if key.vr in _VALUE_SHOWN_VRS and not key.keyword.startswith("Patient"):
        return key.value
    return key.value if log.isEnabledFor(logging.DEBUG) else _HIDDEN


def _keys(keys: Sequence[Key], *, retrieve: bool = False) -> None:
    matching = [k for k in keys if k.value and k.keyword != "QueryRetrieveLevel"]
    returned = [k.keyword for k in keys if not k.value and k.keyword != "QueryRetrieveLevel"]
    for key in matching:
        if retrieve:  # PS3.4 C.4.2.2.1: unique keys down to the level, nothing else
            log.info("  unique key %s = %s (PS3.4 C.4.2.2.1)", key.keyword, _shown(key))
        else:
            log.info("  matching key %s = %s: PS3.4 %s", key.keyword, _shown(key), _kind(key))
    if returned:
        log.info(
            "  return keys (zero length: universal matching, a value in every answer, "
            "PS3.4 C.2.2.2.3): %s",
            ", ".join(returned),
        )


def find_request(peer: str, model: str, level: str, keys: Sequence[Key]) -> None:
    """A C-FIND-RQ and its identifier (PS3.4 C.4.1.2, C.2.2)."""
    if not on():
        return
    log.info(
        "C-FIND-RQ from %s (PS3.4 C.4.1.2): %s, Query/Retrieve Level %s (PS3.4 C.6); "
        "each key in the identifier is either matched or returned (PS3.4 C.2.2.1)",
        peer,
        model,
        level,
    )
    _keys(keys)


def find_done(peer: str, matches: int, outcome: str) -> None:
    """The C-FIND responses: one pending response per match, then the final one."""
    if on():
        log.info(
            "C-FIND from %s: %d match(es), each sent as a pending C-FIND-RSP FF00 with its "
            "identifier (PS3.4 C.4.1.3.1), then the final response %s (PS3.4 C.4.1.1.4)",
            peer,
            matches,
            outcome,
        )


# -- C-MOVE and C-GET -------------------------------------------------------------------------


def _section(operation: str) -> str:
    return "PS3.4 C.4.2.1.5" if operation == "C-MOVE" else "PS3.4 C.4.3.1.4"


def retrieve_request(
    operation: str, peer: str, model: str, *, level: str, keys: Sequence[Key], destination: str
) -> None:
    """A C-MOVE-RQ or C-GET-RQ and its identifier (PS3.4 C.4.2.2, C.4.3.2)."""
    if not on():
        return
    if operation == "C-MOVE":
        where = (
            f"to the Move Destination {destination!r} (PS3.4 C.4.2.3: fsqr opens a new "
            "association to it and sends each instance with a C-STORE sub-operation)"
        )
    else:
        where = (
            "back over the SCU's own association (PS3.4 C.4.3.3: each instance is a C-STORE "
            "sub-operation on the association the C-GET came on)"
        )
    log.info(
        "%s-RQ from %s: %s, level %s; send every instance the unique keys select %s",
        operation,
        peer,
        model,
        level,
        where,
    )
    _keys(keys, retrieve=True)


def destination(title: str, host: str, port: int) -> None:
    """The Move Destination found in the AE table (PS3.4 C.4.2.2.1)."""
    if on():
        log.info(
            "Move Destination %r looked up in fsqr's ae_table: %s:%d. A C-MOVE names its "
            "destination by AE title only (PS3.4 C.4.2.1.2), so the SCP must already know "
            "where that AE listens",
            title,
            host,
            port,
        )


def plan(operation: str, instances: int, batches: Sequence[tuple[int, int]]) -> None:
    """How many sub-operations, over which associations. `batches`: (contexts, instances)."""
    if not on():
        return
    if operation == "C-MOVE":
        how = (
            f"over {len(batches)} sub-association(s) proposing "
            f"{' + '.join(str(c) for c, _ in batches) or 0} presentation context(s): for each "
            "SOP Class, one per transfer syntax its files are stored in, and one with "
            "uncompressed syntaxes to convert to (retrieve.propose_contexts)"
        )
    else:
        how = "over the SCU's association, on the storage contexts it accepted as SCP"
    log.info(
        "%d instance(s) match: %d C-STORE sub-operation(s) to perform, %s",
        instances,
        instances,
        how,
    )


def sub_association_opening(title: str, host: str, port: int, contexts: Sequence[Context]) -> None:
    """fsqr, as an SCU now, requests an association with the Move Destination."""
    if not on():
        return
    log.info(
        "opening a sub-association to %s at %s:%d (A-ASSOCIATE-RQ, PS3.8 7.1), fsqr as the "
        "Storage SCU (PS3.4 C.4.2.3), proposing %d presentation context(s):",
        title,
        host,
        port,
        len(contexts),
    )
    for cx in contexts:
        log.info(
            "  context %d proposed: %s in %s",
            cx.context_id,
            name(cx.abstract_syntax),
            _syntaxes(cx.transfer_syntaxes),
        )


def get_link(accepted_as_scp: Sequence[str], without_roles: Sequence[str]) -> None:
    """C-GET: which storage SOP Classes the SCU may be sent (PS3.4 C.4.3.1, PS3.7 D.3.3.4)."""
    if not on():
        return
    log.info(
        "C-STORE sub-operations go back over the SCU's association: it may be sent %d storage "
        "SOP Class(es) for which it took the SCP role with SCP/SCU Role Selection "
        "(PS3.7 D.3.3.4)%s",
        len(accepted_as_scp),
        f", and {len(without_roles)} proposed without role selection that fsqr sends anyway "
        "(allow_get_without_role_selection)"
        if without_roles
        else "",
    )


def sub_operation(
    number: int,
    total: int,
    *,
    sop_class: str,
    transfer_syntax: str,
    stored_as: str,
    code: int | None,
    category: str,
    reason: str,
) -> None:
    """One C-STORE sub-operation and what its response counts as (PS3.4 B.2.3, C.4.2.1.5)."""
    if not on():
        return
    if not transfer_syntax:
        log.info(
            "C-STORE sub-operation %d/%d: %s not sent: %s; counted failed",
            number,
            total,
            name(sop_class),
            reason,
        )
        return
    how = (
        "streamed from the file as stored, not decoded"
        if transfer_syntax == stored_as
        else f"converted from {name(stored_as)}"
    )
    answer = "no response" if code is None else f"C-STORE-RSP {code:04X}"
    log.info(
        "C-STORE sub-operation %d/%d: %s in %s (%s) -> %s: counted %s (PS3.4 B.2.3)%s",
        number,
        total,
        name(sop_class),
        name(transfer_syntax),
        how,
        answer,
        category,
        f": {reason}" if reason else "",
    )


def pending(operation: str, remaining: int, completed: int, failed: int, warning: int) -> None:
    """A pending C-MOVE-RSP or C-GET-RSP (PS3.4 C.4.2.3.1, C.4.3.3.1: progress reports)."""
    if on():
        log.info(
            "pending %s-RSP FF00, a progress report (PS3.4 %s): remaining %d, "
            "completed %d, failed %d, warning %d",
            operation,
            "C.4.2.3.1" if operation == "C-MOVE" else "C.4.3.3.1",
            remaining,
            completed,
            failed,
            warning,
        )


def cancel_received(peer: str, message_id: int) -> None:
    if on():
        log.info(
            "C-CANCEL-RQ from %s for message %d (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3): a C-FIND "
            "sends no further match; a C-MOVE or C-GET finishes the sub-operation in progress "
            "and starts no other; either way the final status is FE00 Cancel",
            peer,
            message_id,
        )


def final(
    operation: str,
    code: int | None,
    *,
    remaining: int,
    completed: int,
    failed: int,
    warning: int,
    reason: str,
) -> None:
    """The final response, and why it carries that status."""
    if not on():
        return
    section = _section(operation)
    if code is None:
        log.info("%s: the SCU went away; there is nobody to send a final response to", operation)
        return
    total = completed + failed + warning
    if code == status.SUCCESS:
        why = f"all {completed} sub-operation(s) completed, none failed or warned"
    elif code == status.CANCEL:
        why = f"a C-CANCEL stopped it with {remaining} sub-operation(s) not attempted"
    elif code == status.OUT_OF_RESOURCES_SUBOPS:
        why = f"all {failed} sub-operation(s) failed" + (f" ({reason})" if reason else "")
    elif code == status.SUBOPS_WITH_FAILURES:
        why = f"of {total} sub-operations, {failed} failed and {warning} warned"
    else:
        why = reason
    extra = (
        "; its identifier lists the Failed SOP Instance UIDs (0008,0058)"
        if code != status.SUCCESS
        else ""
    )
    log.info(
        "final %s-RSP %s, because %s (%s); completed %d, failed %d, warning %d%s",
        operation,
        _FIRST_STATUSES.get(code, f"{code:04X}"),
        why,
        section,
        completed,
        failed,
        warning,
        extra,
    )


_REFUSALS = {
    status.OUT_OF_RESOURCES_MATCHES: "Refused: out of resources, unable to calculate the number "
    "of matches",
    status.MOVE_DESTINATION_UNKNOWN: "Refused: Move Destination unknown, so no association is "
    "opened",
    status.IDENTIFIER_DOES_NOT_MATCH: "Failed: identifier does not match SOP Class",
    status.UNABLE_TO_PROCESS: "Failed: unable to process",
    status.NOT_AUTHORIZED: "Refused: not authorized (PS3.7 C.5)",
}


def refused(operation: str, code: int, comment: str) -> None:
    """A final failure before any sub-operation (A701, A801, A900, C000, 0124)."""
    if on():
        log.info(
            "final %s-RSP %04X %s, before any sub-operation (%s), with Error Comment %r",
            operation,
            code,
            _REFUSALS.get(code, ""),
            _section(operation),
            comment[:64],
        )
