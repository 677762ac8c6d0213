"""Modality Worklist from a folder: sequence matching (PS3.4 C.2.2.2.6) and a live folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from fsqr.errors import InvalidIdentifier
from fsqr.synthetic import write_worklist
from fsqr.worklist import Worklist, find_worklist


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
