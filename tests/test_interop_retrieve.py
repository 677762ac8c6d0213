"""C-MOVE and C-GET against a running server: DCMTK's movescu, getscu and storescp, and a
pynetdicom client and Storage SCP for what DCMTK's tools cannot stage (PS3.4 C.4.2, C.4.3)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    RTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import AssociationSocket

from fsqr import dimse, links, retrieve, status
from fsqr.records import Parsed
from fsqr.retrieve import _read_meta
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.synthetic import write_instance, write_sample_data, write_tree
from tests.conftest import dcmtk, instance
from tests.helpers import wait_until

STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
PATIENT_MOVE = PatientRootQueryRetrieveInformationModelMove
STUDY_GET = StudyRootQueryRetrieveInformationModelGet
SECONDS = 20  # the longest any wait here may take before the test fails


# -- the sample data, as the tests need it ---------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A folder of files and what each holds."""

    root: Path
    by_uid: dict[str, Parsed]

    def paths(self) -> dict[str, Path]:
        return {uid: Path(p.instance.path) for uid, p in self.by_uid.items()}

    def studies(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for uid, parsed in self.by_uid.items():
            found.setdefault(parsed.study.study_uid, []).append(uid)
        return found

    def series(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for uid, parsed in self.by_uid.items():
            found.setdefault(parsed.series.series_uid, []).append(uid)
        return found

    def study_of(self, transfer_syntax: str) -> str:
        return next(
            p.study.study_uid
            for p in self.by_uid.values()
            if p.instance.transfer_syntax_uid == transfer_syntax
        )


def load(root: Path) -> Sample:
    parsed = [read_header(str(p)) for p in sorted(root.rglob("*.dcm"))]
    return Sample(root, {p.instance.sop_instance_uid: p for p in parsed if isinstance(p, Parsed)})


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """The sample data, shared by the tests of this module that leave it as it is."""
    root = tmp_path_factory.mktemp("retrieve-sample")
    write_sample_data(root)
    return load(root)


@pytest.fixture
def own_sample(tmp_path: Path) -> Sample:
    """A copy of the sample data for one test to change."""
    write_sample_data(tmp_path / "tree")
    return load(tmp_path / "tree")


def data_set_bytes(path: Path) -> tuple[str, bytes]:
    """A file's transfer syntax and the bytes of its data set (after the meta information)."""
    with open(path, "rb") as fp:
        header = _read_meta(fp)
        return header.transfer_syntax, fp.read()


def decoded(data: bytes, transfer_syntax: str) -> Dataset:
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def content(ds: Dataset) -> list[tuple[int, Any]]:
    """What a data set says, whatever transfer syntax carried it."""
    out: list[tuple[int, Any]] = []
    for element in ds:
        if element.VR == "SQ":
            out.append((element.tag, [content(item) for item in element.value]))
        else:
            out.append((element.tag, element.value))
    return out


def assert_same_instance(transfer_syntax: str, data: bytes, source: Path) -> None:
    """The received data set is the file's: byte for byte in the file's transfer syntax,
    element for element (pixel data included) in another."""
    stored_syntax, stored = data_set_bytes(source)
    if transfer_syntax == stored_syntax:
        assert data == stored, f"{source}: bytes differ"
    original = dcmread(source)
    received = decoded(data, transfer_syntax)
    assert content(received) == content(original), f"{source}: content differs"
    assert (received.pixel_array == original.pixel_array).all()


# -- a Storage SCP that records what it receives ----------------------------------------------


@dataclass
class Received:
    transfer_syntax: str
    data: bytes
    originator: tuple[str, int | None]


@dataclass
class Destination:
    """A pynetdicom Storage SCP on a free port; `gate` (if set) holds each C-STORE until set."""

    ae_title: str = "DEST"
    transfer_syntaxes: list[str] = field(default_factory=lambda: list(ALL_TRANSFER_SYNTAXES))
    gate: threading.Event | None = None
    hold: Callable[[str], bool] = lambda uid: True  # which instances the gate holds
    received: dict[str, Received] = field(default_factory=dict)
    associations: int = 0
    connections: int = 0
    pdvs: list[int] = field(default_factory=list)  # how many PDVs each P-DATA-TF carried
    arrived: threading.Event = field(default_factory=threading.Event)
    _server: Any = None

    def start(self) -> Destination:
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, self.transfer_syntaxes)
        self._server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_CONN_OPEN, self._on_connection),
                (evt.EVT_PDU_RECV, self._on_pdu),
            ],
        )
        return self

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def entry(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port}

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()

    def _on_accepted(self, event: Any) -> None:
        self.associations += 1

    def _on_connection(self, event: Any) -> None:
        self.connections += 1

    def _on_pdu(self, event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            self.pdvs.append(len(event.pdu.presentation_data_value_items))

    def _on_store(self, event: Any) -> int:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        self.received[uid] = Received(
            str(event.context.transfer_syntax),
            request.DataSet.getvalue(),
            (
                str(request.MoveOriginatorApplicationEntityTitle or ""),
                request.MoveOriginatorMessageID,
            ),
        )
        self.arrived.set()
        if self.gate is not None and self.hold(uid):
            self.gate.wait(SECONDS)
        return 0x0000


@pytest.fixture
def destination() -> Iterator[Callable[..., Destination]]:
    started: list[Destination] = []

    def _start(**settings: Any) -> Destination:
        started.append(Destination(**settings).start())
        return started[-1]

    yield _start
    for d in started:
        d.stop()


# -- a pynetdicom SCU ------------------------------------------------------------------------


def associate(server: Server, *contexts: str, ae_title: str = "PYCLIENT", **kwargs: Any) -> Any:
    ae = AE(ae_title=ae_title)
    for context in contexts or (STUDY_MOVE, PATIENT_MOVE):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, **kwargs)
    assert assoc.is_established
    return assoc


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def move(
    server: Server, request: Dataset, to: str, model: str = STUDY_MOVE, msg_id: int = 1
) -> list[tuple[Dataset, Dataset | None]]:
    assoc = associate(server)
    try:
        responses = list(assoc.send_c_move(request, to, model, msg_id=msg_id))
    finally:
        assoc.release()
    assert all(rsp is not None and "Status" in rsp for rsp, _ in responses), "a response is missing"
    return responses


def final(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[Dataset, Dataset | None]:
    *pending, last = responses
    assert all(rsp.Status == status.PENDING for rsp, _ in pending)
    return last


def counts(rsp: Dataset) -> tuple[int | None, int, int, int]:
    """Remaining, completed, failed, warning."""
    return (
        rsp.get("NumberOfRemainingSuboperations"),
        rsp.NumberOfCompletedSuboperations,
        rsp.NumberOfFailedSuboperations,
        rsp.NumberOfWarningSuboperations,
    )


def failed_uids(identifier: Dataset | None) -> list[str]:
    """The Failed SOP Instance UID List of a final response's identifier, as a list."""
    assert identifier is not None, "no identifier with the failed SOP Instance UIDs"
    value = identifier.FailedSOPInstanceUIDList
    if isinstance(value, str):
        return [value] if value else []
    return [str(uid) for uid in value]


def listening(port: int) -> bool:
    """Wait (up to SECONDS) until something accepts connections on `port`."""
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)  # a process starting up: nothing to wait on but its port
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- DCMTK ------------------------------------------------------------------------------------


def run_dcmtk(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(tool), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., tuple[int, Path]]]:
    """Start DCMTK storescp on a free port, writing what it receives (bit-preserving) to a
    folder; returns (port, folder)."""
    running: list[subprocess.Popen[bytes]] = []

    def _start(*options: str) -> tuple[int, Path]:
        out = tmp_path / f"storescp{len(running)}"
        out.mkdir()
        port = free_port()
        process = subprocess.Popen(
            [dcmtk("storescp"), "+B", "-od", str(out), *options, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running.append(process)

        assert listening(port), "storescp did not start listening"
        return port, out

    yield _start
    for process in running:
        process.terminate()
        process.wait(SECONDS)


def received_files(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


def assert_received_as_stored(folder: Path, sample: Sample, expected: list[str]) -> None:
    files = received_files(folder)
    assert sorted(files) == sorted(expected)
    for uid, path in files.items():
        transfer_syntax, data = data_set_bytes(path)
        assert_same_instance(transfer_syntax, data, sample.paths()[uid])


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("options", "associations"),
    [((), 1), (("--fork",), 4)],
    ids=["one-association", "four-associations-to-a-forking-storescp"],
)
def test_movescu_to_storescp_delivers_every_instance_as_stored(
    sample: Sample,
    start_server: Callable[..., Server],
    storescp: Callable[..., tuple[int, Path]],
    options: tuple[str, ...],
    associations: int,
) -> None:
    """All seven studies in one C-MOVE (a UID list): storescp gets each data set byte for byte,
    except the Deflated one, which storescp does not accept and gets converted; over one
    association, or four at once (`associations: 4`)."""
    port, folder = storescp(*options)
    peer = {"host": "127.0.0.1", "port": port, "associations": associations}
    server = start_server(sample.root, ae_table={"STORESCP": peer})
    done = run_dcmtk(
        "movescu", "-S", "-aec", "FSQR", "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", "StudyInstanceUID=" + "\\".join(sample.studies()),
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_received_as_stored(folder, sample, list(sample.by_uid))
    deflated = sample.studies()[sample.study_of(DeflatedExplicitVRLittleEndian)]
    syntaxes = {data_set_bytes(received_files(folder)[uid])[0] for uid in deflated}
    assert DeflatedExplicitVRLittleEndian not in syntaxes


@pytest.mark.dcmtk
def test_movescu_to_a_storescp_that_accepts_deflate_gets_it_as_stored(
    sample: Sample, start_server: Callable[..., Server], storescp: Callable[..., tuple[int, Path]]
) -> None:
    port, folder = storescp("+xa")
    server = start_server(sample.root, ae_table={"STORESCP": {"host": "127.0.0.1", "port": port}})
    study = sample.study_of(DeflatedExplicitVRLittleEndian)
    done = run_dcmtk(
        "movescu", "-P", "-aec", "FSQR", "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=FSQR0001",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    patient = [u for u, p in sample.by_uid.items() if p.patient.patient_id == "FSQR0001"]
    assert_received_as_stored(folder, sample, patient)
    files = received_files(folder)
    assert {data_set_bytes(files[uid])[0] for uid in sample.studies()[study]} >= {
        DeflatedExplicitVRLittleEndian
    }


@pytest.mark.dcmtk
def test_movescu_moves_to_itself(
    sample: Sample, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """The usual `movescu --port` case: the requestor is also the Move Destination."""
    port = free_port()
    server = start_server(sample.root, ae_table={"MOVESCU": {"host": "127.0.0.1", "port": port}})
    out = tmp_path / "out"
    out.mkdir()
    study = sample.study_of(ImplicitVRLittleEndian)
    done = run_dcmtk(
        "movescu", "-S", "-aet", "MOVESCU", "-aec", "FSQR", "-aem", "MOVESCU", "+P", str(port),
        "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = received_files(out)
    assert sorted(files) == sorted(sample.studies()[study])
    for uid, path in files.items():
        assert_same_instance(*data_set_bytes(path), sample.paths()[uid])


@pytest.mark.dcmtk
def test_getscu_receives_every_instance_as_stored(
    sample: Sample, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(sample.root)
    out = tmp_path / "get"
    out.mkdir()
    done = run_dcmtk(
        "getscu", "-S", "+B", "-aec", "FSQR", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", "StudyInstanceUID=" + "\\".join(sample.studies()),
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_received_as_stored(out, sample, list(sample.by_uid))


@pytest.mark.dcmtk
def test_getscu_series_level_as_in_the_issue(
    sample: Sample, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """`getscu -S -k QueryRetrieveLevel=SERIES -k SeriesInstanceUID=...`: no study UID given."""
    server = start_server(sample.root)
    series, uids = next(iter(sample.series().items()))
    done = run_dcmtk(
        "getscu", "-S", "+B", "-aec", "FSQR", "-od", str(tmp_path),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(received_files(tmp_path)) == sorted(uids)


# -- C-MOVE from a pynetdicom client ----------------------------------------------------------


def test_pending_responses_count_down_and_the_stores_name_the_originator(
    sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(links, "PENDING_INTERVAL", 0)  # a pending response after each
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    study, uids = max(sample.studies().items(), key=lambda item: len(item[1]))
    n = len(uids)
    responses = move(server, identifier("STUDY", StudyInstanceUID=study), "DEST", msg_id=42)
    *pending, (last, last_identifier) = responses
    # The first pending response goes out as the sub-association connects (`_Responder.report`).
    assert [counts(rsp) for rsp, _ in pending] == [(n - k, k, 0, 0) for k in range(n + 1)]
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, n, 0, 0)  # no remaining count in a final response
    assert last_identifier is None
    assert sorted(dest.received) == sorted(uids)
    for uid, got in dest.received.items():
        assert got.originator == ("PYCLIENT", 42)  # PS3.7 9.1.1.1: Move Originator
        assert_same_instance(got.transfer_syntax, got.data, sample.paths()[uid])


def test_pending_responses_come_at_most_once_per_interval_and_add_up(
    tmp_path: Path, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    write_tree(tmp_path, patients=1, studies_per_patient=1, series_per_study=2,
               instances_per_series=100, modalities=("CT",))  # fmt: skip
    sample = load(tmp_path)
    (study,) = sample.studies()
    dest = destination()
    server = start_server(tmp_path, ae_table={"DEST": dest.entry()})
    started = time.monotonic()
    *pending, (last, _) = move(server, identifier("STUDY", StudyInstanceUID=study), "DEST")
    seconds = time.monotonic() - started
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, 200, 0, 0)
    assert 1 <= len(pending) <= 2 + seconds / links.PENDING_INTERVAL
    reported = [counts(rsp) for rsp, _ in pending]
    assert all(sum(c) == 200 for c in reported)  # remaining + completed + failed + warning
    assert reported == sorted(reported, key=lambda c: c[1])
    assert len(dest.received) == 200


def test_an_unknown_destination_is_a801_and_no_association_is_opened(
    sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    study = next(iter(sample.studies()))
    # AE titles are case sensitive: "dest" is not "DEST".
    ((rsp, _),) = move(server, identifier("STUDY", StudyInstanceUID=study), "dest")
    assert rsp.Status == status.MOVE_DESTINATION_UNKNOWN
    assert "ae_table" in rsp.ErrorComment
    assert dest.connections == 0
    refused = server.operations[-1]  # recorded with the level asked for, though refused early
    assert (refused.operation, refused.level, refused.status) == ("C-MOVE", "STUDY", 0xA801)
    last, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST  "))
    assert last.Status == status.SUCCESS  # trailing spaces are padding, not part of the title


# pynetdicom drops the socket of a refused connection without closing it (its shutdown() of
# the unconnected socket raises before close()): a ResourceWarning that is not fsqr's to fix.
@pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")
def test_a_destination_that_is_down_is_a702_at_once(
    sample: Sample, start_server: Callable[..., Server]
) -> None:
    down = {"host": "127.0.0.1", "port": free_port()}  # nothing listens there
    server = start_server(sample.root, ae_table={"DOWN": down}, timeouts={"connect": 15})
    study, uids = next(iter(sample.studies().items()))
    started = time.monotonic()
    ((rsp, failed),) = move(server, identifier("STUDY", StudyInstanceUID=study), "DOWN")
    assert time.monotonic() - started < 5
    assert rsp.Status == status.OUT_OF_RESOURCES_SUBOPS
    assert counts(rsp) == (None, 0, len(uids), 0)
    assert "refused" in rsp.ErrorComment
    assert failed is not None
    assert sorted(failed_uids(failed)) == sorted(uids)
    (served,) = server.operations.of("C-MOVE")  # the record (and its log line) says why too
    assert (served.status, served.comment) == (status.OUT_OF_RESOURCES_SUBOPS, rsp.ErrorComment)


def test_a_destination_that_accepts_none_of_the_contexts_is_a702_that_says_so(
    sample: Sample, start_server: Callable[..., Server]
) -> None:
    """It accepts the association and refuses every presentation context (PS3.8 9.3.3.2):
    the reason says that, not that the connection closed (pynetdicom then aborts)."""
    ae = AE(ae_title="RTONLY")
    ae.add_supported_context(RTImageStorage)
    listener = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        entry = {"host": "127.0.0.1", "port": listener.server_address[1]}
        server = start_server(sample.root, ae_table={"RTONLY": entry})
        study, uids = next(iter(sample.studies().items()))
        rsp, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "RTONLY"))
    finally:
        listener.shutdown()
    assert rsp.Status == status.OUT_OF_RESOURCES_SUBOPS
    assert counts(rsp) == (None, 0, len(uids), 0)
    assert rsp.ErrorComment.startswith("RTONLY accepted no presentation context for ")


def test_a_destination_that_never_answers_is_a702_after_the_acse_timeout(
    sample: Sample, start_server: Callable[..., Server]
) -> None:
    with socket.socket() as silent:  # accepts the TCP connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        entry = {"host": "127.0.0.1", "port": silent.getsockname()[1]}
        server = start_server(sample.root, ae_table={"SILENT": entry}, timeouts={"acse": 1})
        study = next(iter(sample.studies()))
        started = time.monotonic()
        rsp, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "SILENT"))
        assert time.monotonic() - started < 1 + 4
    assert rsp.Status == status.OUT_OF_RESOURCES_SUBOPS
    assert "within 1 s" in rsp.ErrorComment, rsp.ErrorComment


class _Seen(logging.Handler):
    """Sets `event` when a log record's message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()


def test_a_cancel_stops_the_transfer_within_one_instance(
    sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dest = destination(gate=threading.Event())
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    study, uids = max(sample.studies().items(), key=lambda item: len(item[1]))
    caplog.set_level(logging.INFO, logger="fsqr")
    seen = _Seen("C-CANCEL from")
    logging.getLogger("fsqr.dimse").addHandler(seen)
    assoc = associate(server)
    try:
        responses = assoc.send_c_move(
            identifier("STUDY", StudyInstanceUID=study), "DEST", STUDY_MOVE, msg_id=9
        )
        # The first instance is at the destination, which holds it: now cancel.
        assert dest.arrived.wait(SECONDS)
        assoc.send_c_cancel(9, query_model=STUDY_MOVE)
        assert seen.event.wait(SECONDS), "fsqr never saw the C-CANCEL"
        assert dest.gate is not None
        dest.gate.set()
        got = list(responses)
    finally:
        logging.getLogger("fsqr.dimse").removeHandler(seen)
        assoc.release()
    last, failed = final(got)
    assert last.Status == status.CANCEL
    assert counts(last) == (len(uids) - 1, 1, 0, 0)
    assert failed is not None
    assert failed_uids(failed) == []
    assert len(dest.received) == 1


def test_a_lost_store_response_costs_one_short_timeout_and_the_instance_is_sent_again(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    study, uids = max(own_sample.studies().items(), key=lambda item: len(item[1]))
    lost = sorted(uids)[len(uids) // 2]
    held: set[str] = set()

    def hold_once(uid: str) -> bool:  # the first C-STORE of `lost` gets no answer
        first = uid == lost and uid not in held
        held.add(uid)
        return first

    dest = destination(gate=threading.Event(), hold=hold_once)
    server = start_server(
        own_sample.root, ae_table={"DEST": dest.entry()}, timeouts={"store_response": 1}
    )
    started = time.monotonic()
    last, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    assert time.monotonic() - started < 1 + 8
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, len(uids), 0, 0)
    assert set(dest.received) == set(uids)
    assert dest.associations == 2  # the association that went silent was replaced


def test_an_instance_never_answered_fails_after_one_retry_and_the_move_goes_on(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    study, uids = max(own_sample.studies().items(), key=lambda item: len(item[1]))
    lost = sorted(uids)[len(uids) // 2]
    dest = destination(gate=threading.Event(), hold=lambda uid: uid == lost)
    server = start_server(
        own_sample.root, ae_table={"DEST": dest.entry()}, timeouts={"store_response": 1}
    )
    last, failed = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (len(uids) - 1, 1, 0)
    assert failed_uids(failed) == [lost]
    assert set(dest.received) == set(uids)  # it arrived, twice; its answer never did
    assert dest.associations == 3


def test_a_destination_with_three_associations_gets_three_at_once(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    study, uids = max(own_sample.studies().items(), key=lambda item: len(item[1]))
    dest = destination(gate=threading.Event())  # holds every C-STORE until the gate opens
    server = start_server(own_sample.root, ae_table={"DEST": {**dest.entry(), "associations": 3}})
    responses: list[list[tuple[Dataset, Dataset | None]]] = []
    mover = threading.Thread(
        target=lambda: responses.append(
            move(server, identifier("STUDY", StudyInstanceUID=study), "DEST")
        )
    )
    mover.start()
    try:
        assert wait_until(lambda: dest.associations == 3, SECONDS), dest.associations
    finally:
        assert dest.gate is not None
        dest.gate.set()
        mover.join(SECONDS)
    last, _ = final(responses[0])
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, len(uids), 0, 0)
    assert set(dest.received) == set(uids)


def test_files_deleted_or_replaced_after_indexing_fail_the_rest_go_and_the_index_is_corrected(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    dest = destination()
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()}, watch="off")
    study, uids = max(own_sample.studies().items(), key=lambda item: len(item[1]))
    deleted, replaced, rewritten = sorted(uids)[:3]
    paths = own_sample.paths()
    os.remove(paths[deleted])
    shutil.copyfile(paths[sorted(uids)[3]], paths[replaced])  # now another instance's copy
    original = dcmread(paths[rewritten])  # the same instance, rewritten as Implicit VR
    original.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    original.save_as(paths[rewritten], enforce_file_format=True)
    last, failed = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (len(uids) - 2, 2, 0)
    assert failed is not None
    assert sorted(failed_uids(failed)) == sorted([deleted, replaced])
    assert set(dest.received) == set(uids) - {deleted, replaced}
    assert server.index.instance(deleted) is None
    assert server.index.instance(replaced) is None
    now = server.index.instance(rewritten)
    assert now is not None
    assert now.transfer_syntax_uid == ImplicitVRLittleEndian
    assert_same_instance(
        dest.received[rewritten].transfer_syntax, dest.received[rewritten].data, paths[rewritten]
    )


def test_a_destination_that_accepts_only_explicit_vr_gets_implicit_and_deflated_converted(
    sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    dest = destination(transfer_syntaxes=[ExplicitVRLittleEndian])
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    studies = [
        sample.study_of(ImplicitVRLittleEndian),
        sample.study_of(DeflatedExplicitVRLittleEndian),
    ]
    last, _ = final(move(server, identifier("STUDY", StudyInstanceUID="\\".join(studies)), "DEST"))
    assert last.Status == status.SUCCESS
    expected = [uid for s in studies for uid in sample.studies()[s]]
    assert sorted(dest.received) == sorted(expected)
    stored = {uid: sample.by_uid[uid].instance.transfer_syntax_uid for uid in expected}
    assert {ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian} <= set(stored.values())
    for uid, got in dest.received.items():
        assert got.transfer_syntax == ExplicitVRLittleEndian
        assert_same_instance(got.transfer_syntax, got.data, sample.paths()[uid])


def test_a_move_to_the_requestor_itself(
    sample: Sample, start_server: Callable[..., Server]
) -> None:
    me = AE(ae_title="ME")
    for context in AllStoragePresentationContexts:
        me.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    me.add_requested_context(PATIENT_MOVE)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    listener = me.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        port = listener.server_address[1]
        server = start_server(sample.root, ae_table={"ME": {"host": "127.0.0.1", "port": port}})
        assoc = me.associate("127.0.0.1", server.port, ae_title="FSQR")
        request = identifier("PATIENT", PatientID="FSQR0002")
        *_, (last, _) = list(assoc.send_c_move(request, "ME", PATIENT_MOVE))
        assoc.release()
    finally:
        listener.shutdown()
    assert last.Status == status.SUCCESS
    expected = [u for u, p in sample.by_uid.items() if p.patient.patient_id == "FSQR0002"]
    assert sorted(received) == sorted(expected)


def test_more_contexts_than_one_association_carries_are_split(
    sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrieve, "MAX_CONTEXTS", 2)  # as if 128 were reached
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    last, _ = final(move(server, identifier("PATIENT", PatientID="FSQR0001"), "DEST", PATIENT_MOVE))
    assert last.Status == status.SUCCESS
    patient = [u for u, p in sample.by_uid.items() if p.patient.patient_id == "FSQR0001"]
    assert sorted(dest.received) == sorted(patient)
    classes = {sample.by_uid[u].instance.sop_class_uid for u in patient}
    assert dest.associations == len(classes) >= 2  # each SOP Class took two contexts


def test_more_sub_operations_than_a_response_counts_are_refused_with_a701(
    sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrieve, "MAX_SUBOPERATIONS", 3)  # as if 65535 were exceeded
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    study = max(sample.studies().items(), key=lambda item: len(item[1]))[0]
    ((rsp, _),) = move(server, identifier("STUDY", StudyInstanceUID=study), "DEST")
    assert rsp.Status == status.OUT_OF_RESOURCES_MATCHES
    assert "at most 3" in rsp.ErrorComment
    assert dest.connections == 0


@pytest.mark.parametrize(
    "request_keys",
    [
        {"StudyInstanceUID": "1.2.3"},  # no QueryRetrieveLevel
        {"QueryRetrieveLevel": "SERIES"},  # no Series Instance UID
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3\\"},  # an empty UID in a list
    ],
    ids=["no-level", "no-unique-key", "empty-uid"],
)
def test_an_identifier_that_names_nothing_retrievable_is_a900(
    sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    request_keys: dict[str, str],
) -> None:
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    request = Dataset()
    for keyword, value in request_keys.items():
        setattr(request, keyword, value)
    ((rsp, _),) = move(server, request, "DEST")
    assert rsp.Status == status.IDENTIFIER_DOES_NOT_MATCH
    assert dest.connections == 0


def test_nothing_matching_is_success_with_no_sub_operations(
    sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    dest = destination()
    server = start_server(sample.root, ae_table={"DEST": dest.entry()})
    ((rsp, _),) = move(server, identifier("STUDY", StudyInstanceUID="1.2.3.999"), "DEST")
    assert rsp.Status == status.SUCCESS
    assert counts(rsp) == (None, 0, 0, 0)
    assert dest.connections == 0


# -- C-GET from a pynetdicom client -----------------------------------------------------------


def get(
    server: Server, request: Dataset, offered: list[str], *, roles: bool = True
) -> tuple[list[tuple[Dataset, Dataset | None]], dict[str, Received]]:
    """C-GET `request` from an SCU that offers storage for `offered` (with role selection)."""
    received: dict[str, Received] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = Received(
            str(event.context.transfer_syntax), event.request.DataSet.getvalue(), ("", None)
        )
        return 0

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_GET)
    for sop_class in offered:
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
    roles_offered = [build_role(uid, scp_role=True) for uid in offered] if roles else []
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="FSQR",
        ext_neg=roles_offered,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(request, STUDY_GET))
    finally:
        assoc.release()
    return responses, received


def test_a_get_delivers_what_the_scu_offered_and_lists_the_rest_as_failed(
    sample: Sample, start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(links, "PENDING_INTERVAL", 0)  # a pending response after each
    server = start_server(sample.root)
    study = sample.study_of(DeflatedExplicitVRLittleEndian)  # MR series and an OT key image
    uids = sample.studies()[study]
    mr = [u for u in uids if sample.by_uid[u].instance.sop_class_uid == MRImageStorage]
    others = sorted(set(uids) - set(mr))
    assert mr and others
    responses, received = get(server, identifier("STUDY", StudyInstanceUID=study), [MRImageStorage])
    *pending, (last, failed) = responses
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (len(mr), len(others), 0)
    assert failed is not None
    assert sorted(failed_uids(failed)) == others
    assert sorted(received) == sorted(mr)
    assert [counts(rsp)[0] for rsp, _ in pending] == list(range(len(uids) - 1, -1, -1))
    for uid, got in received.items():
        assert_same_instance(got.transfer_syntax, got.data, sample.paths()[uid])


def test_a_get_without_role_selection_sends_nothing_and_says_why(
    sample: Sample, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(sample.root)
    study = sample.study_of(ImplicitVRLittleEndian)
    caplog.set_level(logging.INFO, logger="fsqr")
    classes = sorted({p.instance.sop_class_uid for p in sample.by_uid.values()})
    responses, received = get(
        server, identifier("STUDY", StudyInstanceUID=study), classes, roles=False
    )
    last, failed = final(responses)
    assert last.Status == status.OUT_OF_RESOURCES_SUBOPS
    assert failed is not None
    assert len(failed_uids(failed)) == len(sample.studies()[study])
    assert received == {}
    assert "offered it without one" in caplog.text
    assert "allow_get_without_role_selection" in caplog.text
    # The 64 characters of the Error Comment say what is missing, cut at no comma.
    assert last.ErrorComment.startswith("no SCP/SCU Role Selection for ")


def test_allow_get_without_role_selection_sends_anyway(
    sample: Sample, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    """fsqr sends the C-STOREs; a pynetdicom SCU itself refuses them (0122) since it holds no
    SCP role, which is what tells here that they were sent at all."""
    server = start_server(sample.root, allow_get_without_role_selection=True)
    study = sample.study_of(ImplicitVRLittleEndian)
    caplog.set_level(logging.INFO, logger="fsqr")
    classes = sorted({p.instance.sop_class_uid for p in sample.by_uid.values()})
    responses, _ = get(server, identifier("STUDY", StudyInstanceUID=study), classes, roles=False)
    last, _ = final(responses)
    assert "over a context proposed without role selection" in caplog.text
    assert "the peer answered 0122" in caplog.text
    assert "offered it without one" not in caplog.text
    assert last.Status == status.OUT_OF_RESOURCES_SUBOPS


def test_a_get_of_many_small_instances(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    """One C-GET of 120 instances: every one arrives, counted, over the one association."""
    write_tree(tmp_path, patients=1, studies_per_patient=1, series_per_study=2,
               instances_per_series=60, modalities=("CT",))  # fmt: skip
    server = start_server(tmp_path)
    sample = load(tmp_path)
    (study,) = sample.studies()
    responses, received = get(
        server, identifier("STUDY", StudyInstanceUID=study), ["1.2.840.10008.5.1.4.1.1.2"]
    )
    last, _ = final(responses)
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, 120, 0, 0)
    assert sorted(received) == sorted(sample.by_uid)


# -- the pynetdicom internals fsqr relies on (links.py says which and why) -----------------


def test_the_pynetdicom_internals_fsqr_relies_on_are_still_there() -> None:
    assoc = Association(AE(), "requestor")
    assert callable(assoc._serve_request)
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert isinstance(assoc._is_paused, bool)
    assert hasattr(assoc.dimse, "msg_queue")
    assert isinstance(assoc.dimse.cancel_req, dict)
    assert C_STORE()._dataset_path is None


# -- small C-STOREs, one PDU each (dimse.store_request_command) ----------------------------


@pytest.mark.parametrize(
    ("originator", "message_id", "priority"),
    [(("MOVESCU", 7), 1, 0), (("ODD", 65535), 300, 2), (None, 9, 1)],
    ids=["c-move", "odd-length-ae-title", "c-get"],
)
def test_the_store_command_set_is_pynetdicoms_to_the_byte(
    originator: tuple[str, int] | None, message_id: int, priority: int
) -> None:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.Priority = priority
    if originator is not None:
        request.MoveOriginatorApplicationEntityTitle = originator[0]
        request.MoveOriginatorMessageID = originator[1]
    request.DataSet = BytesIO(b"\x08\x00\x18\x00\x0a\x00\x00\x001.2.3.4.5\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    expected = encode(message.command_set, True, True)
    made = dimse.store_request_command(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", message_id, priority, originator
    )
    assert made == expected


def test_small_instances_arrive_in_one_pdu_each_and_whole(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    dest = destination()
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()})
    study, uids = max(own_sample.studies().items(), key=lambda item: len(item[1]))
    last, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    assert last.Status == status.SUCCESS
    small = [uid for uid in uids if own_sample.paths()[uid].stat().st_size < 16_000]
    assert small, "the study has instances that fit in one of the destination's PDUs"
    assert dest.pdvs.count(2) == len(small)  # a C-STORE-RQ's command and data set together
    for uid in uids:
        received = dest.received[uid]
        assert_same_instance(received.transfer_syntax, received.data, own_sample.paths()[uid])


@pytest.mark.parametrize("primitive", [C_MOVE, C_GET], ids=["c-move", "c-get"])
def test_the_pending_retrieve_command_set_is_pynetdicoms_to_the_byte(primitive: type) -> None:
    response = primitive()
    response.MessageIDBeingRespondedTo = 513
    response.AffectedSOPClassUID = STUDY_MOVE
    response.Status = status.PENDING
    response.NumberOfRemainingSuboperations = 65535
    response.NumberOfCompletedSuboperations = 2
    response.NumberOfFailedSuboperations = 1
    response.NumberOfWarningSuboperations = 0
    message = (C_MOVE_RSP if primitive is C_MOVE else C_GET_RSP)()
    message.primitive_to_message(response)
    expected = encode(message.command_set, True, True)
    field = 0x8021 if primitive is C_MOVE else 0x8010
    made = dimse.retrieve_pending_command(field, STUDY_MOVE, 513, (65535, 2, 1, 0))
    assert made == expected


@pytest.mark.parametrize(
    ("code", "comment"),
    [(0x0000, None), (0xA700, "Disk full"), (0xB000, "coerced"), (0xC123, "odd")],
    ids=["success", "out-of-resources", "warning", "failure-odd-length-comment"],
)
def test_a_store_response_is_read_as_pynetdicom_would(code: int, comment: str | None) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 4097
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    response.AffectedSOPInstanceUID = "1.2.3.4.5"
    response.Status = code
    if comment is not None:
        response.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    read = dimse.read_store_response(encode(message.command_set, True, True))
    assert read == dimse.StoreResponse(4097, code, comment or "")


def test_any_other_command_is_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.Priority = 0
    request.DataSet = BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    command = encode(message.command_set, True, True)
    assert dimse.read_store_response(command) is None
    pending = dimse.retrieve_pending_command(0x8021, STUDY_MOVE, 1, (1, 0, 0, 0))
    assert dimse.read_store_response(pending) is None
    assert dimse.read_store_response(pending[:-1]) is None  # cut short


def test_a_large_instance_is_streamed_a_few_pdus_ahead_of_the_network(
    tmp_path: Path,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read from disk at most `links.STREAM_AHEAD` ahead of what the network has taken: a 200
    MB instance to a slower peer once sat whole in pynetdicom's send queue (680 MB resident
    for one C-GET)."""
    big = instance(rows=2048, columns=2048)  # 8 MiB of pixels: some 512 PDUs of 16 KiB
    write_instance(big, tmp_path / "tree" / "big.dcm")
    dest = destination()
    server = start_server(tmp_path / "tree", ae_table={"DEST": dest.entry()})
    queued: list[int] = []
    send_pdu, send = DULServiceProvider.send_pdu, AssociationSocket.send

    def noted(self: Any, primitive: Any) -> None:  # what waits to be sent, as one more is put
        queued.append(self.to_provider_queue.qsize())
        send_pdu(self, primitive)

    def slowly(self: Any, bytestream: bytes) -> None:  # a network slower than the disk
        time.sleep(0.002)
        send(self, bytestream)

    monkeypatch.setattr(DULServiceProvider, "send_pdu", noted)
    monkeypatch.setattr(AssociationSocket, "send", slowly)
    request = identifier("STUDY", StudyInstanceUID=big.StudyInstanceUID)
    last, _ = final(move(server, request, "DEST"))
    assert last.Status == status.SUCCESS
    assert big.SOPInstanceUID in dest.received
    pdus_ahead = links.STREAM_AHEAD // 16382  # the destination's (pynetdicom's default) PDU size
    assert len(queued) > 2 * pdus_ahead
    assert max(queued) <= pdus_ahead + 4  # (and the command set's PDU)
