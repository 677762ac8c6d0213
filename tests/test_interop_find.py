"""C-ECHO and C-FIND against a running server, from DCMTK's tools and from a pynetdicom client."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr import dimse, scan
from fsqr.index import SeriesView
from fsqr.keys import Level
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid, write_instance, write_tree
from tests.conftest import dcmtk, instance, server_config
from tests.helpers import wait_until

STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind
PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind


def run_dcmtk(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(tool), *args],
        capture_output=True,
        text=True,
        errors="replace",  # DCMTK's -v output includes the raw bytes of values
        timeout=60,
        cwd=cwd,
        check=False,
    )


def findscu(server: Server, out: Path, *args: str, query_file: str = "") -> list[Dataset]:
    """Run DCMTK findscu with -X and return the response identifiers it wrote."""
    out.mkdir(exist_ok=True)
    files = [query_file] if query_file else []
    done = run_dcmtk("findscu", "-X", "-od", str(out), *args, "127.0.0.1", str(server.port), *files)
    assert done.returncode == 0, done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture
def assoc(sample_server: Server) -> Iterator[Any]:
    """An open pynetdicom association with the sample server."""
    ae = AE(ae_title="PYCLIENT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(STUDY_ROOT)
    ae.add_requested_context(PATIENT_ROOT)
    assoc = ae.associate("127.0.0.1", sample_server.port, ae_title="FSQR")
    assert assoc.is_established
    yield assoc
    assoc.release()


def query(assoc: Any, model: str = STUDY_ROOT, **keys: Any) -> tuple[list[int], list[Dataset]]:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    statuses, answers = [], []
    for status, answer in assoc.send_c_find(ds, model):
        assert status is not None, "no response from the server"
        statuses.append(int(status.Status))
        if answer is not None:
            answers.append(answer)
    return statuses, answers


# -- DCMTK ------------------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_echoscu(sample_server: Server) -> None:
    done = run_dcmtk("echoscu", "-aec", "FSQR", "127.0.0.1", str(sample_server.port))
    assert done.returncode == 0, done.stderr


@pytest.mark.dcmtk
def test_findscu_study_level_as_in_the_quick_start(sample_server: Server, tmp_path: Path) -> None:
    answers = findscu(
        sample_server,
        tmp_path,
        "-S",
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", "PatientName=*",
        "-k", "StudyInstanceUID",
        "-k", "ModalitiesInStudy",
        "-k", "NumberOfStudyRelatedInstances",
    )  # fmt: skip
    assert len(answers) == 7
    names = {str(a.PatientName) for a in answers}
    assert "Müller^Jürgen" in names  # UTF-8 came back intact
    assert "Yamada^Hanako=山田^花子=やまだ^はなこ" in names
    assert sum(int(a.NumberOfStudyRelatedInstances) for a in answers) == 44
    modalities = {m for a in answers for m in _values(a.ModalitiesInStudy)}
    assert modalities == {"CT", "MR", "OT", "CR"}


@pytest.mark.dcmtk
def test_findscu_query_in_latin1_finds_a_utf8_name(sample_server: Server, tmp_path: Path) -> None:
    """A query sent in ISO_IR 100 matches a name stored in UTF-8, and the answer says UTF-8."""
    request = Dataset()
    request.SpecificCharacterSet = "ISO_IR 100"
    request.QueryRetrieveLevel = "STUDY"
    request.PatientName = "Müller*"
    request.StudyDate = ""
    path = tmp_path / "query.dcm"
    request.save_as(path, implicit_vr=False, little_endian=True)
    assert "Müller".encode("latin-1") in path.read_bytes()
    answers = findscu(sample_server, tmp_path / "out", "-S", query_file=str(path))
    assert len(answers) == 2
    assert {str(a.PatientName) for a in answers} == {"Müller^Jürgen"}
    assert all(a.SpecificCharacterSet == "ISO_IR 192" for a in answers)


@pytest.mark.dcmtk
def test_findscu_patient_root_image_level(sample_server: Server, tmp_path: Path) -> None:
    (patient,) = findscu(
        sample_server, tmp_path / "p", "-P",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=FSQR0004",
        "-k", "NumberOfPatientRelatedInstances",
    )  # fmt: skip
    assert patient.NumberOfPatientRelatedInstances == 1
    (study,) = findscu(
        sample_server, tmp_path / "s", "-P",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=FSQR0004", "-k", "StudyInstanceUID",
    )  # fmt: skip
    (series,) = findscu(
        sample_server, tmp_path / "se", "-P",
        "-k", "QueryRetrieveLevel=SERIES", "-k", "PatientID=FSQR0004",
        "-k", f"StudyInstanceUID={study.StudyInstanceUID}", "-k", "SeriesInstanceUID",
    )  # fmt: skip
    (image,) = findscu(
        sample_server, tmp_path / "i", "-P",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=FSQR0004",
        "-k", f"StudyInstanceUID={study.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={series.SeriesInstanceUID}",
        "-k", "SOPInstanceUID", "-k", "InstanceNumber",
        "-k", "Rows", "-k", "Columns", "-k", "BitsAllocated",
    )  # fmt: skip
    assert image.InstanceNumber == 1
    assert image.PatientID == "FSQR0004"  # unique keys of the levels above come back
    served = sample_server.index.instance(image.SOPInstanceUID)
    assert served is not None
    file = dcmread(served.path, stop_before_pixels=True)
    # US values, held as text in the index, go back as numbers
    assert (image.Rows, image.Columns, image.BitsAllocated) == (
        file.Rows,
        file.Columns,
        file.BitsAllocated,
    )
    (same,) = findscu(
        sample_server, tmp_path / "r", "-P",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=FSQR0004",
        "-k", f"StudyInstanceUID={study.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={series.SeriesInstanceUID}",
        "-k", "SOPInstanceUID", "-k", f"Rows={file.Rows}",
    )  # fmt: skip
    assert same.SOPInstanceUID == image.SOPInstanceUID
    assert not findscu(
        sample_server, tmp_path / "n", "-P",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=FSQR0004",
        "-k", f"StudyInstanceUID={study.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={series.SeriesInstanceUID}",
        "-k", "SOPInstanceUID", "-k", f"Rows={file.Rows + 1}",
    )  # fmt: skip


@pytest.mark.dcmtk
def test_findscu_missing_level_gets_a_failure(sample_server: Server, tmp_path: Path) -> None:
    done = run_dcmtk(
        "findscu", "-v", "-S", "-k", "PatientName=*", "127.0.0.1", str(sample_server.port),
        cwd=tmp_path,
    )  # fmt: skip
    # DCMTK names A900 after its C-STORE meaning.
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in done.stderr + done.stdout
    # ... and the server is still there.
    assert run_dcmtk("echoscu", "127.0.0.1", str(sample_server.port)).returncode == 0


LEGACY_STUDY = "1.2.840.0123.7"  # a component with a leading zero: not a valid UID (PS3.5 9.1)


@pytest.mark.dcmtk
def test_a_study_whose_uid_breaks_the_rules_is_queried_and_retrieved_by_it(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Archives hold such UIDs; fsqr indexes them as they are, and takes them in a query."""
    with config.disable_value_validation():  # before the server starts: it validates as usual
        ds = instance(patient_id="LEGACY", study_uid=LEGACY_STUDY)
        write_instance(ds, tmp_path / "tree" / "legacy.dcm")
    server = start_server(tmp_path / "tree")
    (study,) = findscu(
        server, tmp_path / "study", "-S",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={LEGACY_STUDY}",
        "-k", "PatientID", "-k", "NumberOfStudyRelatedInstances=*",
    )  # fmt: skip
    assert study.PatientID == "LEGACY"
    (series,) = findscu(
        server, tmp_path / "series", "-S",
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={LEGACY_STUDY}",
        "-k", "SeriesInstanceUID=*",
    )  # fmt: skip
    assert series.SeriesInstanceUID == ds.SeriesInstanceUID
    out = tmp_path / "get"
    out.mkdir()
    done = run_dcmtk(
        "getscu", "-S", "-aec", "FSQR", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={LEGACY_STUDY}",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (received,) = out.iterdir()
    assert dcmread(received).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.dcmtk
def test_two_studies_of_one_patient_id_are_found_by_their_own_patient_names(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Files that disagree on a patient's name (a drop folder of two sources, say): each study
    is found by the name its own files hold, as in DCMTK's dcmqrscp (PS3.4 C.6.2.1.2)."""
    for n, (name, study) in enumerate((("DOE^JANE", "knee"), ("SMITH^JANE", "chest"))):
        ds = instance(
            patient_id="SHARED",
            patient_name=name,
            study_uid=synthetic_uid(study),
            series_uid=synthetic_uid(study, 1),
            n=n,
        )
        write_instance(ds, tmp_path / "tree" / f"{study}.dcm")
    server = start_server(tmp_path / "tree")
    for name, study in (("DOE^JANE", "knee"), ("SMITH^JANE", "chest")):
        (answer,) = findscu(
            server, tmp_path / study, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientName={name}", "-k", "StudyInstanceUID",
        )  # fmt: skip
        assert (answer.StudyInstanceUID, answer.PatientName) == (synthetic_uid(study), name)
    (patient,) = findscu(
        server, tmp_path / "patient", "-P",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=SHARED", "-k", "PatientName",
        "-k", "NumberOfPatientRelatedStudies",
    )  # fmt: skip
    assert patient.NumberOfPatientRelatedStudies == 2  # one patient, its latest file's name


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one series of 300 instances: enough answers to cancel in the middle."""
    root = tmp_path_factory.mktemp("big")
    write_tree(
        root, patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=300
    )
    with Server(server_config(root)) as server:
        yield server


def image_keys(server: Server) -> Dataset:
    """An IMAGE-level identifier for every instance of the server's only series."""
    (series,) = server.index.candidates(Level.SERIES, {})
    assert isinstance(series, SeriesView)
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = series.study.study_uid
    ds.SeriesInstanceUID = series.series.series_uid
    ds.SOPInstanceUID = ""
    return ds


@pytest.mark.dcmtk
def test_findscu_cancel_after_some_answers(big_server: Server, tmp_path: Path) -> None:
    keys = image_keys(big_server)
    done = run_dcmtk(
        "findscu", "-v", "-S", "--cancel", "5",
        "-k", "QueryRetrieveLevel=IMAGE",
        "-k", f"StudyInstanceUID={keys.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={keys.SeriesInstanceUID}",
        "-k", "SOPInstanceUID",
        "127.0.0.1", str(big_server.port), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "Cancel" in log, log
    assert "Find Response: 299 " not in log


# -- pynetdicom client -----------------------------------------------------------------------


def test_statuses_of_a_good_query(assoc: Any) -> None:
    statuses, answers = query(assoc, QueryRetrieveLevel="STUDY", PatientName="DOE^J*")
    assert statuses == [0xFF00] * 3 + [0x0000]
    assert len(answers) == 3


def test_a_key_fsqr_does_not_match_on_makes_every_match_say_so(assoc: Any) -> None:
    """PS3.4 C.4.1.1.4: FF01, Optional Keys not supported for matching, in each pending response
    when a key asks for matching fsqr does not do; FF00 otherwise (an empty sequence key too)."""
    plain = query(assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002")
    assert plain[0] == [0xFF00, 0x0000]
    below = query(assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", Modality="MR")
    assert below[0] == [0xFF01, 0x0000]  # a SERIES key at STUDY level is not matched
    code = Dataset()
    code.CodeValue = "NOSUCHCODE"
    inside = query(
        assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", ProcedureCodeSequence=[code]
    )
    assert inside[0] == [0xFF01, 0x0000]
    empty = query(assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", ProcedureCodeSequence=[])
    assert empty[0] == [0xFF00, 0x0000]


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"PatientName": "*"}, "QueryRetrieveLevel (0008,0052) is missing"),
        ({"QueryRetrieveLevel": "WARD"}, "unknown QueryRetrieveLevel"),
        ({"QueryRetrieveLevel": "SERIES"}, "needs one StudyInstanceUID"),
    ],
    ids=["no-level", "bad-level", "hierarchical-without-parent"],
)
def test_invalid_queries_fail_with_a_comment_and_the_association_goes_on(
    assoc: Any, keys: dict[str, str], comment: str
) -> None:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    ((status, answer),) = list(assoc.send_c_find(ds, STUDY_ROOT))
    assert status.Status == 0xA900
    assert comment in status.ErrorComment
    assert answer is None
    statuses, _ = query(assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002")
    assert statuses == [0xFF00, 0x0000]


def test_an_undecodable_identifier_fails(assoc: Any) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.add_new(0x00100010, "PN", b"\xff\xfe\xfa")  # not UTF-8
    ((status, _),) = list(assoc.send_c_find(ds, STUDY_ROOT))
    assert status.Status == 0xA900
    assert "cannot decode" in status.ErrorComment


@pytest.mark.dcmtk
def test_a_character_set_pydicom_does_not_know_fails(sample_server: Server, tmp_path: Path) -> None:
    """Not decoded as something else and answered: A900, saying why (README, "Failures")."""
    done = subprocess.run(
        [
            dcmtk("findscu"), "-v", "-S",
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", "SpecificCharacterSet=ISO_IR 999",
            "-k", b"PatientName=M\xfcller*",
            "127.0.0.1", str(sample_server.port),
        ],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    said = (done.stdout + done.stderr).decode("latin-1")
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in said, said  # A900
    assert "Unknown encoding 'ISO_IR 999'" in sample_server.operations[-1].comment


def test_a_private_key_is_neither_matched_nor_returned_and_every_match_says_so(
    assoc: Any,
) -> None:
    """FF01 (PS3.4 C.4.1.1.4): the SCU learns its private key was not used, not just dropped."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "FSQR0002"
    ds.add_new(0x00090010, "LO", "ACME")  # the private creator: not a key of its own
    ds.add_new(0x00091010, "LO", "NOMATCH")
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(ds, STUDY_ROOT)]
    assert statuses == [0xFF01, 0x0000]


def test_keys_that_are_not_keys_do_not_narrow_the_answer(assoc: Any) -> None:
    """Timezone Offset From UTC says which zone a query's times are in; Query/Retrieve View
    needs Extended Negotiation fsqr does not accept. Neither is matched on (C.2.2.2.5,
    C.4.1.1.3.1): each matched every study away before."""
    plain = query(assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002")
    zoned = query(
        assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", TimezoneOffsetFromUTC="+0900"
    )
    viewed = query(
        assoc, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", QueryRetrieveView="CLASSIC"
    )
    assert zoned[0] == viewed[0] == plain[0] == [0xFF00, 0x0000]
    assert [a.StudyInstanceUID for a in zoned[1]] == [a.StudyInstanceUID for a in plain[1]]
    assert "QueryRetrieveView" not in viewed[1][0]


def test_a_cancel_that_crossed_the_final_response_does_not_cancel_the_next_request(
    assoc: Any,
) -> None:
    """A C-CANCEL names a request in progress (PS3.7 9.3.2.3); one for a request that has
    finished, or for a Message ID never used, is ignored, even when the SCU uses that Message
    ID again (some always send 1)."""
    keys = {"QueryRetrieveLevel": "STUDY", "PatientID": "FSQR0002"}
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    first = [int(s.Status) for s, _ in assoc.send_c_find(ds, STUDY_ROOT, msg_id=1)]
    assoc.send_c_cancel(1, query_model=STUDY_ROOT)  # too late: the find is over
    assoc.send_c_cancel(99, query_model=STUDY_ROOT)  # no such request
    time.sleep(0.2)  # both decoded by the server before the next request
    again = [int(s.Status) for s, _ in assoc.send_c_find(ds, STUDY_ROOT, msg_id=1)]
    later = [int(s.Status) for s, _ in assoc.send_c_find(ds, STUDY_ROOT, msg_id=99)]
    assert first == again == later == [0xFF00, 0x0000]


def test_relational_query_when_negotiated(sample_server: Server) -> None:
    ae = AE(ae_title="PYCLIENT")
    ae.add_requested_context(STUDY_ROOT)
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = STUDY_ROOT
    ext.service_class_application_information = b"\x01"
    assoc = ae.associate("127.0.0.1", sample_server.port, ext_neg=[ext])
    try:
        assert assoc.acceptor.sop_class_extended == {STUDY_ROOT: b"\x01"}
        statuses, answers = query(assoc, QueryRetrieveLevel="SERIES", Modality="MR")
        assert statuses[-1] == 0x0000
        assert len(answers) == 5
    finally:
        assoc.release()


def test_cancel_sent_right_behind_the_request_is_honoured(big_server: Server) -> None:
    """C-FIND and C-CANCEL back to back: the cancel may arrive before the request is served.

    pynetdicom on its own forgets a C-CANCEL that arrives before it dispatches the request;
    fsqr must answer FE00 whatever the timing.
    """
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", big_server.port)
    # Keep the client's own reactor from taking the responses off the queue: this test reads
    # them itself, as pynetdicom's send_* methods do.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        for message_id in (1, 2, 3):
            ds = image_keys(big_server)
            request = C_FIND()
            request.MessageID = message_id
            request.AffectedSOPClassUID = STUDY_ROOT
            request.Priority = 2
            request.Identifier = _encoded(ds)
            context_id = assoc._get_valid_context(STUDY_ROOT, "", "scu").context_id
            assoc.dimse.send_msg(request, context_id)
            assoc.send_c_cancel(message_id, context_id)
            pending, final = _drain(assoc)
            assert final == 0xFE00
            assert pending < 300
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()


def test_sockets_have_nagle_switched_off(sample_server: Server, assoc: Any) -> None:
    (accepted,) = [a for a in sample_server._listener.active_associations if a.is_established]
    sock = accepted.dul.socket.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def _values(value: Any) -> list[Any]:
    """A multi-valued element's values; a single value as a list of one."""
    return [value] if isinstance(value, str) else list(value)


def _encoded(ds: Dataset) -> BytesIO:
    return BytesIO(encode(ds, True, True))


def _drain(assoc: Any) -> tuple[int, int]:
    """Read C-FIND responses until the final one; returns (pending count, final status)."""
    pending = 0
    while True:
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None, "no final response"
        code = int(response.Status)
        if code in (0xFF00, 0xFF01):
            pending += 1
            continue
        return pending, code


# -- pending responses, one PDU each (dimse.send_answers_in_one_pdu) -----------------------


@pytest.mark.parametrize(
    ("sop_class", "message_id", "code"),
    [(STUDY_ROOT, 1, 0xFF00), (PATIENT_ROOT, 65535, 0xFF01), ("1.2.3", 300, 0xFF00)],
    ids=["study-root", "patient-root-warning", "odd-length-uid"],
)
def test_the_pending_command_set_is_pynetdicoms_to_the_byte(
    sop_class: str, message_id: int, code: int
) -> None:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.Status = code
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    assert dimse.find_pending_command(sop_class, message_id, code) == expected


def pdus_of_a_query(server: Server, max_pdu: int, **keys: Any) -> tuple[list[int], int]:
    """The PDV count of each P-DATA-TF PDU a C-FIND's responses came in, and the matches."""
    pdvs: list[int] = []

    def received(event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            pdvs.append(len(event.pdu.presentation_data_value_items))

    ae = AE(ae_title="PDUCOUNT")
    ae.add_requested_context(STUDY_ROOT)
    client = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="FSQR",
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_PDU_RECV, received)],
    )
    assert client.is_established
    statuses, answers = query(client, **keys)
    client.release()
    assert statuses[-1] == 0x0000
    return pdvs, len(answers)


def test_each_pending_response_comes_in_one_pdu(sample_server: Server) -> None:
    pdvs, matches = pdus_of_a_query(
        sample_server, 16382, QueryRetrieveLevel="STUDY", PatientName="*", StudyInstanceUID=""
    )
    assert matches >= 5
    assert pdvs == [2] * matches + [1]  # command and identifier together; the final alone


def test_a_pending_response_larger_than_the_peers_pdus_is_sent_in_fragments(
    sample_server: Server,
) -> None:
    pdvs, matches = pdus_of_a_query(
        sample_server, 128, QueryRetrieveLevel="STUDY", PatientName="*", StudyInstanceUID=""
    )
    assert matches >= 5
    assert len(pdvs) > 2 * matches + 1
    assert set(pdvs) == {1}


@pytest.mark.parametrize("how", ["cancel", "abort"])
def test_a_query_stopped_while_matching_ends_at_once(
    tmp_path: Path,
    start_server: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """A key read from each file's header, matching nothing: all the work is between two
    answers, where a C-CANCEL (FE00) or an abort was only looked at. A 20,000-file tree took
    13 s to answer a cancel with 0000; 32 aborted queries held every association for
    minutes. Here each header read is made to take 10 ms."""
    write_tree(
        tmp_path / "tree",
        patients=4,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=50,
    )
    real_get = scan.HeaderCache.get

    def slow_get(self: Any, path: str) -> Any:
        time.sleep(0.01)
        return real_get(self, path)

    monkeypatch.setattr(scan.HeaderCache, "get", slow_get)
    server = start_server(tmp_path / "tree")
    ae = AE(ae_title="PYCLIENT")
    ae.add_requested_context(STUDY_ROOT)
    relational = SOPClassExtendedNegotiation()  # IMAGE level without the UIDs above it
    relational.sop_class_uid = STUDY_ROOT
    relational.service_class_application_information = b"\x01"
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR", ext_neg=[relational])
    assert assoc.is_established
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID = ""
    ds.MagneticFieldStrength = "9.9"  # read from each file: matches none of the 200
    started = time.monotonic()
    responses = assoc.send_c_find(ds, STUDY_ROOT, msg_id=5)
    time.sleep(0.3)
    if how == "cancel":
        assoc.send_c_cancel(5, query_model=STUDY_ROOT)
        statuses = [int(s.Status) for s, _ in responses]
        assert statuses == [0xFE00]
        assoc.release()
    else:
        assoc.abort()
    assert wait_until(lambda: len(server.operations) == 1, timeout=1.5)
    assert time.monotonic() - started < 2  # the whole match takes 2 s or more
    (served,) = server.operations
    assert served.status == (0xFE00 if how == "cancel" else None)
