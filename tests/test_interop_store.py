"""C-STORE into a running server, from pynetdicom and DCMTK's storescu: stored under the root and
found by the next C-FIND; hostile values, interrupted stores, duplicates, read-only mode and
write failures."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr import dimse
from fsqr.config import Config
from fsqr.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from fsqr.links import requestor_ae
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid, write_instance
from fsqr.tree import TEMP_PREFIX
from tests.conftest import dcmtk, instance
from tests.helpers import c_find_image, wait_until


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The served folder, one level down, so that a file written beside it would be seen."""
    folder = tmp_path / "served" / "root"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def connect() -> Iterator[Callable[..., Any]]:
    """Open associations with storage contexts (and C-FIND); all released after the test."""
    opened: list[Any] = []

    def _connect(server: Server, **kwargs: Any) -> Any:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, **kwargs)
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield _connect
    for assoc in opened:
        if assoc.is_established:
            assoc.release()


def store(assoc: Any, ds: FileDataset) -> Dataset:
    answer = assoc.send_c_store(ds)
    assert "Status" in answer, "no response"
    return answer


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("watch", ["off", "native"])  # off: no watcher could be the one
def test_a_stored_instance_is_found_by_the_very_next_c_find(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any], watch: str
) -> None:
    server = start_server(root, watch=watch)
    ds = instance()
    assert store(connect(server), ds).Status == 0x0000
    # No waiting: the instance was indexed before the response was sent.
    assert c_find_image(server, ds.SOPInstanceUID) == 1
    (path,) = dicom_files(root)
    assert (
        path
        == (root / "incoming" / "PID1" / ds.StudyInstanceUID / ds.SeriesInstanceUID)
        / f"{ds.SOPInstanceUID}.dcm"
    )
    written = dcmread(path)
    assert written.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert written.PixelData == ds.PixelData


@pytest.mark.parametrize(
    ("sop_instance", "message_id", "code"),
    [("1.2.3.4", 1, 0x0000), ("1.2.3.45", 65535, 0xB000)],
    ids=["success", "warning-odd-length-uid"],
)
def test_the_c_store_response_command_is_pynetdicoms_to_the_byte(
    sop_instance: str, message_id: int, code: int
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = code
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    assert dimse.store_response_command(CTImageStorage, sop_instance, message_id, code) == (
        expected
    )


def test_a_stored_instance_is_answered_by_fsqrs_own_encoding_a_refusal_by_pynetdicoms(
    root: Path,
    start_server: Callable[..., Server],
    connect: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Success goes the quick way; a status with an Error Comment is left to pynetdicom."""
    encoded: list[int] = []
    encode_response = dimse.store_response_command

    def counted(*args: Any) -> bytes:
        encoded.append(args[-1])
        return encode_response(*args)

    monkeypatch.setattr(dimse, "store_response_command", counted)
    assert store(connect(start_server(root)), instance()).Status == 0x0000
    answer = store(connect(start_server(root, read_only=True)), instance(n=2))
    assert (answer.Status, "read-only" in answer.ErrorComment) == (0x0124, True)
    assert encoded == [0x0000]


def test_the_watcher_does_not_index_a_stored_instance_a_second_time(
    root: Path,
    tmp_path: Path,
    start_server: Callable[..., Server],
    connect: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(root)
    ds = instance()
    with caplog.at_level(logging.DEBUG, logger="fsqr.watch"):
        assert store(connect(server), ds).Status == 0x0000
        # Sync: once a file renamed in after the store is served, the store's rename was seen.
        sync = write_instance(instance(patient_id="SYNC"), tmp_path / "sync.dcm")
        os.rename(sync, root / "sync.dcm")
        assert wait_until(lambda: server.index.counts().files == 2)
    indexed_by_watcher = [r.getMessage() for r in caplog.records if "indexed" in r.getMessage()]
    assert indexed_by_watcher == [f"indexed {root / 'sync.dcm'}"]


def test_every_storage_sop_class_and_transfer_syntax_is_accepted(
    root: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(root)
    contexts = [c.abstract_syntax for c in AllStoragePresentationContexts]
    for start in range(0, len(contexts), 128):  # PS3.8 9.3.2.2: at most 128 per association
        ae = AE(ae_title="STORESCU")
        for uid in contexts[start : start + 128]:
            ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES[:1])
        assoc = ae.associate("127.0.0.1", server.port)
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == len(contexts[start : start + 128])
        assoc.release()
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, [JPEGBaseline8Bit])
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port)
    assert len(assoc.accepted_contexts) == 2
    assoc.release()


@pytest.mark.dcmtk
def test_dcmtk_storescu_into_fsqr_then_c_find(
    root: Path, start_server: Callable[..., Server], sample_tree: Path
) -> None:
    server = start_server(root)
    originals = {dcmread(p).SOPInstanceUID: p for p in sample_tree.rglob("*.dcm")}
    scan = ["+sd", "+r", "+sp", "*.dcm"]  # every .dcm file in the folder, recursively
    done = subprocess.run(
        [dcmtk("storescu"), *scan, "127.0.0.1", str(server.port), str(sample_tree)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert server.index.counts().instances == len(originals) > 40
    syntaxes = set()
    for path in dicom_files(root):
        stored = dcmread(path)
        original = dcmread(originals[stored.SOPInstanceUID])
        assert stored.PixelData == original.PixelData
        syntaxes.add(stored.file_meta.TransferSyntaxUID)
        # The file says where it came from: the sender's implementation and AE title, and ours.
        meta = stored.file_meta
        assert meta.ImplementationClassUID.startswith("1.2.276.0.7230010.3")  # DCMTK's root
        assert meta.ImplementationVersionName.startswith("OFFIS_DCMTK")
        assert meta.SourceApplicationEntityTitle == meta.SendingApplicationEntityTitle == "STORESCU"
        assert meta.ReceivingApplicationEntityTitle == server.ae_title
    # storescu sends the Implicit VR file as it is (it inflates the Deflated one itself).
    assert ImplicitVRLittleEndian in syntaxes
    assert query_study_uids(server) == {dcmread(p).StudyInstanceUID for p in originals.values()}


def test_fsqr_names_itself_in_every_association_it_accepts_or_opens(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any]
) -> None:
    """Not as pynetdicom: a peer's log and its workarounds must see which implementation
    this is (PS3.7 D.3.3.2)."""
    assoc = connect(start_server(root))
    assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert IMPLEMENTATION_VERSION_NAME.startswith("FSQR_")
    opener = requestor_ae(Config())  # C-MOVE's sub-associations
    assert opener.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert opener.implementation_version_name == IMPLEMENTATION_VERSION_NAME


def query_study_uids(server: Server) -> set[str]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    found = {
        str(answer.StudyInstanceUID)
        for _, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        if answer is not None
    }
    assoc.release()
    return found


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, on the hostile UIDs
@pytest.mark.parametrize(
    ("patient_id", "sop_uid"),
    [
        ("../../../escaped", None),
        ("/etc/passwd", None),
        ("a\x00b", None),
        ("\\\\server\\share", None),
        ("ok", "../../../../escaped"),
        ("ok", "/tmp/escaped"),
        ("ok", "1.2\x00.3"),
        ("ok", ".."),
    ],
    ids=[
        "pid-parent",
        "pid-absolute",
        "pid-nul",
        "pid-unc",
        "uid-parent",
        "uid-absolute",
        "uid-nul",
        "uid-dot-dot",
    ],
)
def test_nothing_a_peer_sends_leaves_the_root(
    root: Path,
    start_server: Callable[..., Server],
    connect: Callable[..., Any],
    patient_id: str,
    sop_uid: str | None,
) -> None:
    server = start_server(root)
    ds = instance(patient_id="P")
    ds.PatientID = patient_id
    if sop_uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    assert store(connect(server), ds).Status == 0x0000
    served_folder = root.parent
    assert [p.name for p in served_folder.iterdir()] == ["root"]
    (path,) = dicom_files(root)
    assert path.is_relative_to(root / "incoming")
    assert len(path.relative_to(root).parts) == 5  # incoming/PID/study/series/instance
    served = server.index.instance(ds.SOPInstanceUID)
    assert served is not None and served.path == str(path)


def test_a_link_in_the_storage_area_to_outside_the_root_is_refused(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any]
) -> None:
    """A folder of the layout made a symbolic link to elsewhere: fsqr would write where it
    does not serve from (and where its peers should not write). A700, nothing written."""
    outside = root.parent / "outside"
    outside.mkdir()
    (root / "incoming").mkdir()
    (root / "incoming" / "EVIL").symlink_to(outside)
    server = start_server(root)
    answer = store(connect(server), instance(patient_id="EVIL"))
    assert answer.Status == 0xA700
    assert "symbolic link" in answer.ErrorComment
    assert not any(outside.rglob("*"))
    assert server.index.counts().instances == 0


def test_a_store_interrupted_mid_transfer_leaves_nothing(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any]
) -> None:
    server = start_server(root)
    pdus = 0

    def cut_the_line_after_a_few_pdus(event: Any) -> None:
        nonlocal pdus
        pdus += 1
        if pdus == 20:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    assoc = connect(server, evt_handlers=[(evt.EVT_PDU_SENT, cut_the_line_after_a_few_pdus)])
    big = instance(rows=1024, columns=1024)  # 2 MiB of pixels: many PDUs
    answer = assoc.send_c_store(big)
    assert "Status" not in answer  # no response: the association is gone
    assert dicom_files(root) == []
    assert server.index.counts().files == 0
    # The server goes on.
    assert store(connect(server), instance()).Status == 0x0000


def test_a_temporary_file_left_by_a_crash_is_never_served(
    root: Path, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    # What a SIGKILL between write and rename leaves: a whole instance under a temporary name.
    write_instance(instance(n=1), root / "incoming" / f"{TEMP_PREFIX}dead.tmp")
    server = start_server(root)
    write_instance(instance(n=2), root / "incoming" / f"{TEMP_PREFIX}writing.tmp")
    os.rename(write_instance(instance(n=3), tmp_path / "sync.dcm"), root / "sync.dcm")
    assert wait_until(lambda: server.index.counts().files == 1)
    assert server.index.paths() == [str(root / "sync.dcm")]


def test_read_only_refuses_c_store(
    root: Path,
    start_server: Callable[..., Server],
    connect: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(root, read_only=True)
    with caplog.at_level(logging.WARNING, logger="fsqr.handlers"):
        answer = store(connect(server), instance())
    assert answer.Status == 0x0124  # PS3.7 C.5: Refused: Not Authorized
    assert "read-only" in answer.ErrorComment
    assert any("read-only" in r.getMessage() for r in caplog.records)
    assert dicom_files(root) == []


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("replace", (0x0000, "SECOND")),
        ("keep", (0x0000, "FIRST")),  # Success: the SCU's instance is stored, as it asked
        ("reject", (0x0111, "FIRST")),  # PS3.7 C.5: Duplicate SOP Instance
    ],
)
def test_a_second_store_of_one_sop_instance(
    root: Path,
    start_server: Callable[..., Server],
    connect: Callable[..., Any],
    policy: str,
    expected: tuple[int, str],
) -> None:
    server = start_server(root, storage={"on_duplicate": policy})
    assoc = connect(server)
    assert store(assoc, instance(study_description="FIRST")).Status == 0x0000
    answer = store(assoc, instance(study_description="SECOND"))
    assert c_find_image(server, instance().SOPInstanceUID) == 1
    (path,) = dicom_files(root)
    assert (answer.Status, dcmread(path).StudyDescription) == expected


def test_a_write_failure_answers_a700_and_the_server_goes_on(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any]
) -> None:
    server = start_server(root)
    (root / "incoming").write_bytes(b"")  # a file where the storage folder must go
    assoc = connect(server)
    answer = store(assoc, instance())
    assert answer.Status == 0xA700  # PS3.4 B.2.3: Refused: Out of Resources
    assert [p.name for p in root.iterdir()] == ["incoming"]
    (root / "incoming").unlink()
    assert store(assoc, instance()).Status == 0x0000
    assert c_find_image(server, instance().SOPInstanceUID) == 1


def test_stored_patient_folders_follow_the_patient_id(
    root: Path, start_server: Callable[..., Server], connect: Callable[..., Any]
) -> None:
    server = start_server(root)
    assoc = connect(server)
    uid = synthetic_uid("sop", "moved")
    assert store(assoc, instance(patient_id="WRONG", sop_uid=uid)).Status == 0x0000
    assert store(assoc, instance(patient_id="RIGHT", sop_uid=uid)).Status == 0x0000
    (path,) = dicom_files(root)
    assert path.relative_to(root).parts[:2] == ("incoming", "RIGHT")
    assert server.index.counts().patients == 1


def test_explicit_vr_little_endian_is_chosen_when_offered(
    root: Path, start_server: Callable[..., Server]
) -> None:
    """The syntax most files are stored in: received, or sent by C-GET, as they are. (pynetdicom
    accepts the first of the acceptor's syntaxes that was offered, not the peer's first.)"""
    server = start_server(root)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax == [ExplicitVRLittleEndian]
    finally:
        assoc.release()
