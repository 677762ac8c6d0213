"""Modality Worklist from a folder: sequence matching (PS3.4 C.2.2.2.6) and a live folder."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE

from fsqr.errors import InvalidIdentifier
from fsqr.keys import MODALITY_WORKLIST_FIND
from fsqr.server import Server
from fsqr.synthetic import write_worklist
from fsqr.worklist import Worklist, find_worklist
from tests.conftest import dcmtk


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_worklist(tmp_path / "wl")
    return tmp_path / "wl"


def query(**step_keys: Any) -> Dataset:
    """A typical modality's query: who is scheduled, with these step keys."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    step.ScheduledProcedureStepStartTime = ""
    for keyword, value in step_keys.items():
        setattr(step, keyword, value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@pytest.mark.parametrize(
    ("step_keys", "expected"),
    [
        ({}, ["WL0001", "WL0002", "WL0003"]),
        ({"ScheduledStationAETitle": "MR01"}, ["WL0002"]),
        ({"Modality": "CT"}, ["WL0001"]),
        ({"ScheduledProcedureStepStartDate": "20241202"}, ["WL0001", "WL0002"]),
        ({"ScheduledProcedureStepStartDate": "20241203-"}, ["WL0003"]),
        ({"ScheduledProcedureStepStartTime": "-100000"}, ["WL0001"]),
        ({"Modality": "CT", "ScheduledStationAETitle": "MR01"}, []),
        ({"Modality": "US"}, []),
    ],
    ids=["all", "station", "modality", "date", "date-range", "time-range", "and", "none"],
)
def test_sequence_matching(folder: Path, step_keys: dict[str, str], expected: list[str]) -> None:
    answers = list(find_worklist(Worklist(folder), query(**step_keys)))
    assert sorted(a.AccessionNumber for a in answers) == expected


def test_answers_carry_the_requested_keys(folder: Path) -> None:
    (answer,) = find_worklist(Worklist(folder), query(ScheduledStationAETitle="MR01"))
    assert answer.PatientName == "Nakamura^Yui=中村^結衣"
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    (step,) = answer.ScheduledProcedureStepSequence
    assert (step.Modality, step.ScheduledProcedureStepStartDate) == ("MR", "20241202")
    assert "ScheduledProcedureStepID" not in step  # not asked for, not returned
    assert "RequestedProcedureID" not in answer


def test_patient_keys_match_too(folder: Path) -> None:
    ds = query()
    ds.PatientName = "smith*"
    (answer,) = find_worklist(Worklist(folder), ds)
    assert answer.PatientID == "FSQR0006"


def test_a_stored_sequence_goes_out_in_the_answers_character_set(tmp_path: Path) -> None:
    """A Latin-1 item, Implicit VR (whose sequence items pydicom reads at once, their values
    still encoded), answered under UTF-8: the items returned whole are decoded first."""
    (path, *_) = write_worklist(tmp_path / "wl")
    item = dcmread(path)
    item.SpecificCharacterSet = "ISO_IR 100"
    item.PatientName = "Müller^Jürgen"
    item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription = "Tórax ñandú"
    item.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for other in (tmp_path / "wl").iterdir():
        other.unlink()
    item.save_as(path, enforce_file_format=True)
    ds = Dataset()
    ds.PatientName = ""
    ds.ScheduledProcedureStepSequence = []  # no item: the stored sequence, whole
    (answer,) = find_worklist(Worklist(tmp_path / "wl"), ds)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    buffer = DicomBytesIO()  # as it travels: encoded as it declares, decoded by the SCU
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, answer)
    travelled = read_dataset(DicomBytesIO(buffer.getvalue()), True, True)
    assert travelled.PatientName == "Müller^Jürgen"
    (step,) = travelled.ScheduledProcedureStepSequence
    assert step.ScheduledProcedureStepDescription == "Tórax ñandú"


def test_a_query_retrieve_identifier_is_refused(folder: Path) -> None:
    ds = query()
    ds.QueryRetrieveLevel = "STUDY"
    with pytest.raises(InvalidIdentifier, match="no QueryRetrieveLevel"):
        list(find_worklist(Worklist(folder), ds))


def test_the_folder_is_live(folder: Path, tmp_path: Path) -> None:
    worklist = Worklist(folder)
    assert len(list(find_worklist(worklist, query()))) == 3
    shutil.copy(folder / "item0001.wl", folder / "copy.wl")
    assert len(list(find_worklist(worklist, query()))) == 4
    (folder / "item0002.wl").unlink()
    (folder / "broken.wl").write_bytes(b"not a worklist item")
    (folder / "notes.txt").write_text("ignored: not .wl or .dcm")
    answers = list(find_worklist(worklist, query()))
    assert sorted(a.AccessionNumber for a in answers) == ["WL0001", "WL0001", "WL0003"]
    # A rewritten file is read again.
    item = folder / "item0003.wl"
    data = item.read_bytes().replace(b"CR01", b"DX01")
    item.write_bytes(data)
    os.utime(item, ns=(1, 1))
    (answer,) = find_worklist(worklist, query(ScheduledStationAETitle="DX01"))
    assert answer.AccessionNumber == "WL0003"


# -- over the network ------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_findscu_worklist_query(
    start_server: Callable[..., Server], folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "images").mkdir()
    server = start_server(tmp_path / "images", worklist=str(folder))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [
            dcmtk("findscu"), "-W", "-X", "-od", str(out),
            "-k", "PatientName", "-k", "AccessionNumber",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR01",
            "-k", "ScheduledProcedureStepSequence[0].Modality",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
            "127.0.0.1", str(server.port),
        ],
        capture_output=True, text=True, errors="replace", timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (answer,) = [dcmread(p) for p in out.glob("rsp*.dcm")]
    assert answer.AccessionNumber == "WL0002"
    assert str(answer.PatientName) == "Nakamura^Yui=中村^結衣"
    assert answer.ScheduledProcedureStepSequence[0].Modality == "MR"


def test_a_worklist_query_without_a_worklist_says_why(
    start_server: Callable[..., Server], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", server.port)
    try:
        assert assoc.is_established  # the context is accepted ...
        with caplog.at_level(logging.WARNING, logger="fsqr"):
            ((status, answer),) = list(assoc.send_c_find(query(), MODALITY_WORKLIST_FIND))
        assert status.Status == 0xC000  # ... and the query refused, never an empty answer
        assert "worklist" in status.ErrorComment
        assert answer is None
        assert "this is a Query/Retrieve server" in caplog.text
    finally:
        assoc.release()


def test_worklist_query_from_pynetdicom(
    start_server: Callable[..., Server], folder: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path, worklist=str(folder))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", server.port)
    try:
        responses = list(assoc.send_c_find(query(Modality="CT"), MODALITY_WORKLIST_FIND))
        assert [r[0].Status for r in responses] == [0xFF00, 0x0000]
        assert responses[0][1].PatientID == "FSQR0006"
    finally:
        assoc.release()
