"""`fsqr serve --explain`: the narration of each DIMSE step, and the quiet log without it.

The transcript in docs/how-a-c-move-works.md is what `scripted_move` below logs: this module
compares the two, so the document cannot drift from the code. After a change to the wording,
regenerate it with

    FSQR_WRITE_DOCS=1 python -m pytest tests/test_explain.py -k transcript
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    MRImageStorage,
    PatientStudyOnlyQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr import dimse, explain
from fsqr.records import Parsed
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.synthetic import write_sample_data
from tests.conftest import REPO
from tests.helpers import wait_until
from tests.test_cli import Running

DOC = REPO / "docs" / "how-a-c-move-works.md"
BEGIN = "<!-- transcript: written by tests/test_explain.py -->"
END = "<!-- end of transcript -->"
SECONDS = 20


# -- a Move Destination and the series moved to it ---------------------------------------------


class Destination:
    """A pynetdicom Storage SCP, `STORESCP`, keeping the SOP Instance UIDs it receives."""

    def __init__(self) -> None:
        self.received: list[str] = []
        ae = AE(ae_title="STORESCP")
        ae.supported_contexts = AllStoragePresentationContexts  # pynetdicom's 4 default syntaxes
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()

    def _on_store(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination()
    yield dest
    dest.stop()


def small_series(root: Path) -> tuple[str, str, int]:
    """Study and Series Instance UID of the first 4-instance MR series of patient FSQR0002."""
    found: dict[tuple[str, str], int] = {}
    for path in sorted((root / "FSQR0002").rglob("*.dcm")):
        parsed = read_header(str(path))
        assert isinstance(parsed, Parsed)
        key = (parsed.study.study_uid, parsed.series.series_uid)
        found[key] = found.get(key, 0) + 1
    study, series = next(k for k, n in sorted(found.items()) if n == 4)
    return study, series, found[(study, series)]


def move_identifier(study: str, series: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    return identifier


# -- the scripted session ----------------------------------------------------------------------


class Lines(logging.Handler):
    """The messages logged to it, from whichever thread, in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.lines.append(record.getMessage())


@pytest.fixture
def narration() -> Iterator[Lines]:
    """The lines of the `fsqr.explain` logger, switched on as `fsqr serve --explain` does."""
    logger = logging.getLogger("fsqr.explain")
    handler = Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def scripted_move(root: Path, destination: Destination, narration: Lines | None) -> list[str]:
    """One C-MOVE of one 4-instance series to a Storage SCP, from association to release.

    The SCU proposes the Study Root C-MOVE model, which fsqr accepts, and the retired
    Patient/Study Only one, which it refuses: the transcript shows both.
    """
    write_sample_data(root)
    study, series, count = small_series(root)
    peers = {"STORESCP": {"host": "127.0.0.1", "port": destination.port}}
    with Server(root=str(root), ae_title="FSQR", ae_table=peers) as server:
        scu = AE(ae_title="MOVESCU")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        scu.add_requested_context(PatientStudyOnlyQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", server.port, ae_title="FSQR")
        assert assoc.is_established
        responses = list(
            assoc.send_c_move(
                move_identifier(study, series),
                "STORESCP",
                StudyRootQueryRetrieveInformationModelMove,
            )
        )
        assoc.release()
        if narration is not None:  # the release is narrated from the association's thread
            assert wait_until(
                lambda: any(
                    line.startswith("association with MOVESCU") for line in narration.lines
                ),
                SECONDS,
            )
    assert responses[-1][0].Status == 0x0000
    assert len(destination.received) == count
    return list(narration.lines) if narration is not None else []


_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")
_PORT = re.compile(r"\b(127\.0\.0\.1):\d+")


def structure(lines: list[str]) -> list[str]:
    """What must not drift: the lines without UIDs and ports, and without the pending
    responses after the first, whose number depends on speed (one per PENDING_INTERVAL).

    >>> structure(["a 1.2.3.4.5 at 127.0.0.1:4242", "pending FF00 a", "pending FF00 b"])
    ['a UID at 127.0.0.1:PORT', 'pending FF00 a']
    """
    out: list[str] = []
    pending = 0
    for line in lines:
        if line.startswith("pending "):
            pending += 1
            if pending > 1:
                continue
        out.append(_PORT.sub(r"\1:PORT", _UID.sub("UID", line)))
    return out


def committed_transcript() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("```")]


def write_transcript(lines: list[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    block = "\n```text\n" + "\n".join(lines) + "\n```\n"
    DOC.write_text(head + BEGIN + block + END + tail, encoding="utf-8")


def test_the_transcript_in_the_walkthrough_is_what_fsqr_says(
    tmp_path: Path, destination: Destination, narration: Lines
) -> None:
    lines = scripted_move(tmp_path / "tree", destination, narration)
    if os.environ.get("FSQR_WRITE_DOCS") == "1":
        write_transcript(lines)
    assert structure(committed_transcript()) == structure(lines), (
        f"{DOC.name} no longer shows what --explain says; regenerate it with "
        "FSQR_WRITE_DOCS=1 python -m pytest tests/test_explain.py -k transcript"
    )


def test_the_narration_follows_the_move_step_by_step(
    tmp_path: Path, destination: Destination, narration: Lines
) -> None:
    lines = scripted_move(tmp_path / "tree", destination, narration)
    steps = [
        "association from MOVESCU",  # A-ASSOCIATE-AC, with the contexts
        "C-MOVE-RQ from MOVESCU",
        "Move Destination 'STORESCP' looked up",
        "4 instance(s) match",
        "opening a sub-association to STORESCP",
        "STORESCP@",  # ... accepted fsqr's association request
        "C-STORE sub-operation 1/4",
        "C-STORE sub-operation 4/4",
        "sub-association to STORESCP",  # released
        "final C-MOVE-RSP 0000 Success",
        "association with MOVESCU",  # released
    ]
    at = [next((i for i, line in enumerate(lines) if line.startswith(s)), -1) for s in steps]
    assert -1 not in at, [s for s, i in zip(steps, at, strict=True) if i < 0]
    assert at == sorted(at), "\n".join(lines)
    refused = [line for line in lines if "refused, abstract-syntax-not-supported" in line]
    assert len(refused) == 1 and "Patient/Study Only" in refused[0]


def test_the_narration_costs_nothing_when_off(
    tmp_path: Path, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsqr")
    explained = logging.getLogger("fsqr.explain")
    explained.setLevel(logging.WARNING)  # as `fsqr serve` without --explain
    try:
        scripted_move(tmp_path / "tree", destination, None)
    finally:
        explained.setLevel(logging.NOTSET)
    # The one line of the C-MOVE comes just after its final response.
    assert wait_until(
        lambda: any(r.getMessage().startswith("C-MOVE SERIES") for r in caplog.records)
    )
    assert not [r for r in caplog.records if r.name == "fsqr.explain"]


def test_c_get_and_an_unknown_destination_are_narrated(tmp_path: Path, narration: Lines) -> None:
    root = tmp_path / "tree"
    write_sample_data(root)
    study, series, count = small_series(root)
    with Server(root=str(root), ae_title="FSQR") as server:
        scu = AE(ae_title="GETSCU")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        scu.add_requested_context(MRImageStorage)
        handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
        assoc = scu.associate(
            "127.0.0.1",
            server.port,
            ae_title="FSQR",
            ext_neg=[build_role(MRImageStorage, scp_role=True)],
            evt_handlers=handlers,
        )
        assert assoc.is_established
        identifier = move_identifier(study, series)
        got = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        moved = list(
            assoc.send_c_move(identifier, "NOWHERE", StudyRootQueryRetrieveInformationModelMove)
        )
        assoc.release()
        assert wait_until(lambda: narration.lines[-1].startswith("association with"), SECONDS)
    assert got[-1][0].Status == 0x0000
    assert moved[-1][0].Status == 0xA801
    said = "\n".join(narration.lines)
    assert "fsqr may send C-STOREs on it (SCP/SCU Role Selection, PS3.7 D.3.3.4)" in said
    assert "C-STORE sub-operations go back over the SCU's association" in said
    assert f"C-STORE sub-operation {count}/{count}" in said
    assert f"final C-GET-RSP 0000 Success, because all {count} sub-operation(s)" in said
    assert "final C-MOVE-RSP A801 Refused: Move Destination unknown" in said


# -- the words, without a socket ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "counts", "expected"),
    [
        (0x0000, (0, 3, 0, 0), "0000 Success, because all 3 sub-operation(s) completed"),
        (
            0xB000,
            (0, 2, 1, 0),
            "B000 Warning: sub-operations complete, one or more failures, "
            "because of 3 sub-operations, 1 failed and 0 warned",
        ),
        (
            0xA702,
            (0, 0, 3, 0),
            "A702 Refused: out of resources, unable to perform "
            "sub-operations, because all 3 sub-operation(s) failed (gone)",
        ),
        (
            0xFE00,
            (2, 1, 0, 0),
            "FE00 Cancel, because a C-CANCEL stopped it with 2 sub-operation(s) not attempted",
        ),
    ],
    ids=["success", "some-failed", "all-failed", "cancelled"],
)
def test_the_final_status_says_which_rule_of_c_4_2_1_5_gave_it(
    narration: Lines, code: int, counts: tuple[int, int, int, int], expected: str
) -> None:
    remaining, completed, failed, warning = counts
    explain.final(
        "C-MOVE",
        code,
        remaining=remaining,
        completed=completed,
        failed=failed,
        warning=warning,
        reason="gone",
    )
    (line,) = narration.lines
    assert line.startswith(f"final C-MOVE-RSP {expected}")
    assert "(PS3.4 C.4.2.1.5)" in line
    assert ("Failed SOP Instance UIDs" in line) is (code != 0x0000)


def test_patient_values_are_shown_only_at_debug(narration: Lines) -> None:
    keys = [
        explain.Key("PatientName", "PN", "DOE^JANE"),
        explain.Key("PatientID", "LO", "FSQR0002"),
        explain.Key("StudyDate", "DA", "20230101-20231231"),
        explain.Key("ModalitiesInStudy", "CS", "MR"),
    ]
    explain.find_request("SCU@127.0.0.1:1", "Study Root", "STUDY", keys)
    said = "\n".join(narration.lines)
    assert "DOE^JANE" not in said and "FSQR0002" not in said
    assert "StudyDate = 20230101-20231231: PS3.4 range matching (C.2.2.2.5)" in said
    assert "ModalitiesInStudy = MR: PS3.4 single value matching (C.2.2.2.1)" in said
    logging.getLogger("fsqr.explain").setLevel(logging.DEBUG)
    explain.find_request("SCU@127.0.0.1:1", "Study Root", "STUDY", keys)
    assert "PatientName = DOE^JANE: PS3.4 single value matching" in "\n".join(narration.lines)


# -- `fsqr serve`, with and without --explain ----------------------------------------------------


def _session(port: int, destination: Destination) -> None:
    """C-ECHO, C-FIND and C-MOVE over one association, as a newcomer would try them."""
    ae = AE(ae_title="CLITEST")
    for context in (
        Verification,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "DOE^JANE"
        query.StudyInstanceUID = ""
        found = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        study = next(answer.StudyInstanceUID for _, answer in found if answer is not None)
        move = Dataset()
        move.QueryRetrieveLevel = "STUDY"
        move.StudyInstanceUID = study
        moved = list(
            assoc.send_c_move(move, "STORESCP", StudyRootQueryRetrieveInformationModelMove)
        )
        assert moved[-1][0].Status == 0x0000
    finally:
        assoc.release()


def _serve_and_use(tmp_path: Path, destination: Destination, *flags: str) -> list[str]:
    root = tmp_path / "tree"
    write_sample_data(root)
    (tmp_path / "fsqr.yaml").write_text(
        f"root: {root.as_posix()}\nhost: 127.0.0.1\nport: 0\nwatch: off\n"
        f"ae_table:\n  STORESCP: {{host: 127.0.0.1, port: {destination.port}}}\n",
        encoding="utf-8",
    )
    running = Running(*flags, cwd=tmp_path)
    try:
        _session(running.wait_listening(), destination)
    finally:
        assert running.stop() == 0
    return running.lines


def _between_listening_and_stop(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if "listening on" in line)
    stop = next(i for i, line in enumerate(lines) if "stopping" in line)
    return [line.rstrip("\n") for line in lines[start + 1 : stop]]


def test_without_explain_the_log_is_one_line_per_operation_and_association(
    tmp_path: Path, destination: Destination
) -> None:
    logged = _serve_and_use(tmp_path, destination)
    # The association's line comes from its own thread, maybe only after SIGTERM.
    ended = [line for line in logged if "association with CLITEST@127.0.0.1:" in line]
    assert len(ended) == 1, "".join(logged)
    assert "ended: released, 3 operations," in ended[0]
    lines = [line for line in _between_listening_and_stop(logged) if line != ended[0].rstrip()]
    assert len(lines) == 3, "\n".join(lines)
    assert "C-ECHO from CLITEST" in lines[0]
    assert "C-FIND STUDY" in lines[1] and "1 matches" in lines[1]
    assert "C-MOVE STUDY" in lines[2] and "8 completed" in lines[2]


def test_serve_explain_narrates_each_step_without_patient_names(
    tmp_path: Path, destination: Destination
) -> None:
    lines = _serve_and_use(tmp_path, destination, "--explain")  # the release may follow SIGTERM
    said = "\n".join(line for line in lines if " fsqr.explain: " in line)
    for step in (
        "association from CLITEST@127.0.0.1:",
        "C-ECHO from CLITEST",
        "C-FIND-RQ from CLITEST",
        "matching key PatientName = (value hidden",
        "C-FIND from CLITEST@127.0.0.1:",
        "C-MOVE-RQ from CLITEST",
        "C-STORE sub-operation 8/8",
        "final C-MOVE-RSP 0000 Success, because all 8 sub-operation(s) completed",
        "association with CLITEST@127.0.0.1:",
    ):
        assert step in said, f"{step!r} not in:\n{said}"
    assert "JANE" not in said and "FSQR0002" not in said  # patient names and IDs only with -v


def test_each_pending_and_cancel_line_cites_its_own_section(narration: Lines) -> None:
    """C-GET's pending responses are C.4.3.3.1, not C-MOVE's C.4.2.3.1; a C-CANCEL names
    each service's (PS3.7 9.3.2.3 C-FIND, 9.3.3.3 C-GET, 9.3.4.3 C-MOVE)."""
    explain.pending("C-MOVE", 3, 1, 0, 0)
    explain.pending("C-GET", 3, 1, 0, 0)
    explain.cancel_received("SCU@127.0.0.1:104", 7)
    move, get, cancel = narration.lines
    assert "(PS3.4 C.4.2.3.1)" in move and "(PS3.4 C.4.3.3.1)" in get
    assert "9.3.2.3, 9.3.3.3, 9.3.4.3" in cancel and "C-FIND sends no further match" in cancel


def test_a_context_a_destination_refused_is_shown_in_the_syntaxes_fsqr_proposed() -> None:
    """The A-ASSOCIATE-AC's transfer syntax for a refused context means nothing (PS3.8
    9.3.3.2), and pynetdicom keeps what the peer echoed there."""
    proposed = build_context(MRImageStorage, [ExplicitVRLittleEndian])
    proposed.context_id = 1
    refused = build_context(MRImageStorage, [ImplicitVRLittleEndian])  # as echoed
    refused.context_id, refused.result = 1, 0x04  # transfer-syntaxes-not-supported
    sub_association = SimpleNamespace(
        is_acceptor=False,
        accepted_contexts=[],
        rejected_contexts=[refused],
        requestor=SimpleNamespace(requested_contexts=[proposed]),
    )
    (context,) = dimse._explained_contexts(sub_association)
    assert context.transfer_syntaxes == (ExplicitVRLittleEndian,)
