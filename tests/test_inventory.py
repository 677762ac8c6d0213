"""`fsqr ls`: the tree as it would be served, skipped files with reasons, and the lint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fsqr.inventory import take_inventory
from fsqr.keys import Level
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid
from tests.conftest import SAMPLE_DATA


def test_the_sample_data_is_clean() -> None:
    inventory = take_inventory(SAMPLE_DATA)
    assert inventory.counts() == {
        "patients": 5,
        "studies": 7,
        "series": 12,
        "instances": 44,
        "files": 44,
        "skipped": 0,
    }
    assert inventory.problems == []


def test_problems_are_found(write: Callable[..., Path], tmp_path: Path) -> None:
    study = synthetic_uid("lint", "study")
    first = write("a/1.dcm", patient_id="P", patient_name="DOE^JOHN", study_uid=study, n=1)
    shutil.copy(first, tmp_path / "tree" / "copy.dcm")  # the same SOP Instance UID twice
    write("a/2.dcm", patient_id="P", patient_name="DOE^JON", study_uid=study, n=2)
    write(
        "a/3.dcm",
        patient_id="P",
        patient_name="DOE^JOHN",
        study_uid=study,
        specific_character_set="ISO_IR 100",
        n=3,
    )
    write("b/1.dcm", patient_id="Q", patient_name="ROE^RICHARD", study_uid=study, n=4)
    (tmp_path / "tree" / "notes.txt").write_text("not DICOM")
    inventory = take_inventory(tmp_path / "tree")
    problems = "\n".join(inventory.problems)
    assert "is in 2 files" in problems
    assert "PatientID 'P' has 2 different PatientName values: 'DOE^JOHN', 'DOE^JON'" in problems
    assert f"study {study} is filed under 2 PatientIDs: P, Q" in problems
    assert "mixes character sets: ISO_IR 100, ISO_IR 6 (default)" in problems
    assert [(Path(s.path).name, s.reason) for s in inventory.skipped] == [
        ("notes.txt", "not a DICOM file")
    ]
    assert inventory.counts()["instances"] == 4


def test_ls_json_and_exit_codes(write: Callable[..., Path], tmp_path: Path) -> None:
    write("x.dcm")
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", "ls", "--json", str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"]["instances"] == 1
    assert report["patients"][0]["studies"][0]["series"][0]["instances"] == 1
    (tmp_path / "tree" / "junk.dcm").write_bytes(b"\0" * 10)
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", "ls", str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1  # something was skipped
    assert "junk.dcm: not a DICOM file" in done.stdout


def test_ls_shows_what_the_server_serves_on_a_messy_tree(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """Duplicates that differ, a patient whose files disagree on the name, a study under two
    PatientIDs: `fsqr ls` files each as the server's index does (it used its own rules: the
    first path in sorted order won, and a study appeared once per PatientID)."""
    study, other = synthetic_uid("messy", 1), synthetic_uid("messy", 2)
    write("a1.dcm", patient_id="P1", patient_name="DOE^JOHN", study_uid=study, n=1)
    write("a2.dcm", patient_id="P1", patient_name="DOE^JOHN", study_uid=study, n=2)
    write("dup_diff.dcm", patient_id="P1", patient_name="DOE^JOHNNY", study_uid=study, n=2)
    write("p1_other.dcm", patient_id="P1", patient_name="DOE^JANE", study_uid=other, n=5)
    write("two_pids.dcm", patient_id="P2", patient_name="ROE^RICHARD", study_uid=study, n=3)
    root = tmp_path / "tree"
    inventory = take_inventory(root)
    with Server(root=root, watch="off") as server:
        index = server.index
        counts = index.counts()
        assert inventory.counts()["patients"] == counts.patients
        assert inventory.counts()["studies"] == counts.studies
        assert inventory.counts()["series"] == counts.series
        assert inventory.counts()["instances"] == counts.instances
        for view in index.candidates(Level.PATIENT, {}):
            entry = inventory.patients[view.patient.patient_id]
            assert entry.name == view.patient.get("PatientName")
            assert set(entry.studies) == {
                e.study.study_uid
                for e in index.entities(Level.STUDY, {Level.PATIENT: [view.patient.patient_id]})
                if e.study
            }
        served = index.instance(synthetic_uid("sop", "P1", 2))
        assert served is not None
        (duplicate,) = [p for p in inventory.problems if "is in 2 files" in p]
        assert f"{served.path} (served)" in duplicate
