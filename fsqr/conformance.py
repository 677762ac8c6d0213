"""fsqr's DICOM Conformance Statement (PS3.2), written from the code's own tables.

`python -m fsqr.conformance > docs/conformance.md` writes it; `tests/test_conformance.py` fails
when the committed document differs from what this module writes, so the statement cannot drift
from the server: the SOP Classes come from the Application Entity the server builds, the query
keys from `keys.py`, the matching rules from `matching.py`, the statuses from `status.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.charset import python_encoding
from pydicom.uid import UID

from fsqr import status
from fsqr.config import Config
from fsqr.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from fsqr.keys import KEYS_OF_LEVEL, Level
from fsqr.matching import NUMERIC_VRS, RANGE_VRS, WILDCARD_VRS
from fsqr.server import application_entity

# What each operation may answer, by the name of its constant in status.py.
STATUSES = {
    "C-ECHO": ["SUCCESS", "NOT_AUTHORIZED"],
    "C-FIND": [
        "PENDING",
        "PENDING_UNSUPPORTED_KEYS",
        "SUCCESS",
        "CANCEL",
        "NOT_AUTHORIZED",
        "OUT_OF_RESOURCES",
        "IDENTIFIER_DOES_NOT_MATCH",
        "UNABLE_TO_PROCESS",
    ],
    "C-MOVE, C-GET": [
        "PENDING",
        "SUCCESS",
        "SUBOPS_WITH_FAILURES",
        "CANCEL",
        "NOT_AUTHORIZED",
        "OUT_OF_RESOURCES_MATCHES",
        "OUT_OF_RESOURCES_SUBOPS",
        "MOVE_DESTINATION_UNKNOWN",
        "IDENTIFIER_DOES_NOT_MATCH",
        "UNABLE_TO_PROCESS",
    ],
    "C-STORE": [
        "SUCCESS",
        "NOT_AUTHORIZED",
        "DUPLICATE_SOP_INSTANCE",
        "OUT_OF_RESOURCES",
        "DATASET_DOES_NOT_MATCH",
        "CANNOT_UNDERSTAND",
    ],
}

INTRODUCTION = """\
# fsqr DICOM Conformance Statement

fsqr is a filesystem-only DICOM Query/Retrieve SCP: it indexes a folder of DICOM files at
start-up, keeps the index in step with the folder while it runs, and serves C-ECHO, C-FIND,
C-MOVE, C-GET and C-STORE from it. This statement is written by `python -m fsqr.conformance`
from the code's own tables; a test keeps it identical to what the code says.

## Networking

- One Application Entity, its AE title set by `ae_title` (default `FSQR`), listening on TCP
  (`host`, `port`; default port 11112). It accepts associations from any calling AE title
  unless the configuration says otherwise.
- TCP_NODELAY and TCP_QUICKACK on every connection; Maximum PDU length received: `max_pdu`.
- C-MOVE opens associations to the destinations listed in `ae_table` and proposes exactly the
  SOP Classes and transfer syntaxes of the instances it sends; C-GET sends over the
  requesting association to the storage SOP Classes the SCU accepted with SCP role selection.
- A C-MOVE sends over as many associations to its destination at once as that destination's
  `associations` (default 1). A C-STORE response that does not come within
  `timeouts.store_response` ends that association; the instance is sent once more over a new
  one (C-MOVE), and fails if that is lost too.
- A message whose command set and data set both fit in the peer's Maximum PDU length (pending
  C-FIND responses, C-STORE requests of small instances) is sent as one P-DATA-TF PDU holding
  both PDVs (PS3.8 9.3.5); larger ones are fragmented.
- Instances are sent in the transfer syntax they are stored in when the peer accepts it;
  otherwise converted between the uncompressed transfer syntaxes, or counted failed.
- Extended negotiation: relational queries (C-FIND, C-MOVE, C-GET) are accepted when
  `relational_queries` is true; date-time matching, fuzzy semantic matching and timezone
  adjustment are answered as not supported.
"""


def implementation() -> Iterator[str]:
    yield "## Implementation identification\n"
    yield f"- Implementation Class UID: `{IMPLEMENTATION_CLASS_UID}`"
    yield f"- Implementation Version Name: `{IMPLEMENTATION_VERSION_NAME}`"
    yield (
        "- A file received by C-STORE is written with the data set as it came and a file meta"
        "\n  of the sender's: its Implementation Class UID and Version Name, its AE title as"
        "\n  Source and Sending Application Entity Title; fsqr's AE title as Receiving"
        "\n  Application Entity Title (PS3.10 7.1)."
    )
    yield ""


def _uid_name(uid: str) -> str:
    return UID(uid).name if UID(uid).is_valid else uid


def sop_classes() -> Iterator[str]:
    ae = application_entity(Config())
    yield "## SOP Classes\n"
    yield "| SOP Class | UID | SCP | SCU |"
    yield "|---|---|---|---|"
    for context in sorted(ae.supported_contexts, key=lambda c: _uid_name(c.abstract_syntax)):
        uid = str(context.abstract_syntax)
        storage = context.scu_role is True
        scu = "yes (C-MOVE and C-GET sub-operations)" if storage else "no"
        yield f"| {_uid_name(uid)} | `{uid}` | yes | {scu} |"
    syntaxes = sorted({str(t) for c in ae.supported_contexts for t in c.transfer_syntax})
    yield ""
    yield "Transfer syntaxes accepted for storage SOP Classes:\n"
    yield from (f"- {_uid_name(t)} (`{t}`)" for t in syntaxes)
    yield ""


def query_keys() -> Iterator[str]:
    yield "## C-FIND keys\n"
    yield (
        "Patient Root levels: PATIENT, STUDY, SERIES, IMAGE; Study Root levels: STUDY, SERIES,"
        " IMAGE (in Study Root the patient's keys are keys of the STUDY level). Every key below"
        " can be matched and returned. Any other attribute is read from the files' headers on"
        " demand, so it too can be matched and returned.\n"
    )
    for level in Level:
        yield f"### {level.value} level\n"
        yield "| Attribute | Tag | VR | Type |"
        yield "|---|---|---|---|"
        for key in KEYS_OF_LEVEL[level]:
            tag = f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})"
            kind = "unique" if key.unique else "computed" if key.computed else "indexed"
            yield f"| {key.keyword} | {tag} | {key.vr} | {kind} |"
        yield ""


def matching() -> Iterator[str]:
    yield "## Matching (PS3.4 C.2.2.2)\n"
    yield "- Single value matching: every VR; case sensitive except PN."
    yield "- Universal matching: an empty key, or `*` alone."
    yield f"- Wild card matching (`*`, `?`): {', '.join(sorted(WILDCARD_VRS))}."
    yield f"- Range matching: {', '.join(sorted(RANGE_VRS))}; open-ended ranges too."
    yield "- List of UID matching: UI."
    yield f"- Numeric comparison: {', '.join(sorted(NUMERIC_VRS))}."
    yield "- Sequence matching: Modality Worklist (Scheduled Procedure Step Sequence)."
    yield (
        "- Person names match without regard to case or accents, and against each component"
        " group; a multi-valued attribute matches when any of its values does."
    )
    yield ""


def character_sets() -> Iterator[str]:
    yield "## Character sets\n"
    yield (
        "Values are held decoded, so queries and stored data may use different character sets."
        " Answers that are not plain ASCII are sent as ISO_IR 192 (UTF-8). Recognised values of"
        " Specific Character Set (0008,0005):\n"
    )
    yield ", ".join(f"`{name}`" for name in python_encoding if name) + "\n"


def statuses() -> Iterator[str]:
    yield "## Statuses\n"
    yield (
        "What each operation answers. Configured as a test double (`faults:` in fsqr.yaml), fsqr"
        " also answers any status named there, waits before responses or sub-operations, and"
        " aborts associations after a given number of matches or sub-operations, on purpose.\n"
    )
    yield "| Operation | Status | Name in fsqr |"
    yield "|---|---|---|"
    for operation, names in STATUSES.items():
        for name in names:
            yield f"| {operation} | {getattr(status, name):04X} | {name} |"
    yield ""


def statement() -> str:
    parts = [
        INTRODUCTION,
        *implementation(),
        *sop_classes(),
        *query_keys(),
        *matching(),
        *character_sets(),
    ]
    parts += [*statuses()]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(statement(), end="")
