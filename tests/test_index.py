"""The index: hierarchy, counts, unique-key lookups, duplicates, removal. No sockets."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from fsqr.index import Counts, Index, InstanceView, PatientView, SeriesView, StudyView
from fsqr.keys import Level
from fsqr.records import Instance, Parsed
from fsqr.scan import read_header
from fsqr.synthetic import synthetic_uid


def parsed(path: Path) -> Parsed:
    result = read_header(str(path))
    assert isinstance(result, Parsed), result
    return result


@pytest.fixture
def two_patients(write: Callable[..., Path]) -> tuple[Index, list[Path]]:
    """Patient A: one study, two series (2 CT + 1 MR). Patient B: one study, one CT."""
    study_a, study_b = synthetic_uid("A", "st"), synthetic_uid("B", "st")
    files = [
        write("a1", patient_id="A", study_uid=study_a, series_uid=synthetic_uid("A", 1), n=1),
        write("a2", patient_id="A", study_uid=study_a, series_uid=synthetic_uid("A", 1), n=2),
        write(
            "a3",
            patient_id="A",
            study_uid=study_a,
            series_uid=synthetic_uid("A", 2),
            modality="MR",
            n=3,
        ),
        write("b1", patient_id="B", patient_name="ROE^JANE", study_uid=study_b, n=1),
    ]
    index = Index()
    index.add_many(parsed(f) for f in files)
    return index, files


def test_counts_follow_the_hierarchy(two_patients: tuple[Index, list[Path]]) -> None:
    index, _ = two_patients
    counts = index.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (2, 2, 3, 4)


def test_computed_attributes(two_patients: tuple[Index, list[Path]]) -> None:
    index, _ = two_patients
    (patient,) = index.candidates(Level.PATIENT, {Level.PATIENT: ["A"]})
    assert isinstance(patient, PatientView)
    assert (patient.patient_studies, patient.patient_series, patient.patient_instances) == (1, 2, 3)
    (study,) = index.candidates(Level.STUDY, {Level.STUDY: [synthetic_uid("A", "st")]})
    assert isinstance(study, StudyView)
    assert (study.series, study.instances, study.modalities) == (2, 3, ("CT", "MR"))
    assert study.sop_classes == ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4")


def test_unique_keys_narrow_and_respect_the_parent(two_patients: tuple[Index, list[Path]]) -> None:
    index, _ = two_patients
    series_a1 = synthetic_uid("A", 1)
    found = index.candidates(Level.IMAGE, {Level.SERIES: [series_a1]})
    assert sorted(
        v.instance.get("InstanceNumber") for v in found if isinstance(v, InstanceView)
    ) == [
        "1",
        "2",
    ]
    # A series UID under another patient's ID narrows to nothing.
    assert index.candidates(Level.SERIES, {Level.PATIENT: ["B"], Level.SERIES: [series_a1]}) == []
    # A repeated UID in a list is answered once.
    assert len(index.candidates(Level.SERIES, {Level.SERIES: [series_a1, series_a1]})) == 1


def test_removing_the_last_instance_removes_empty_parents(
    two_patients: tuple[Index, list[Path]],
) -> None:
    index, files = two_patients
    assert index.remove_path(str(files[3])) is not None
    counts = index.counts()
    assert (counts.patients, counts.studies, counts.instances) == (1, 1, 3)
    assert index.remove_path(str(files[3])) is None  # already gone: nothing happens


def test_remove_under_a_folder(two_patients: tuple[Index, list[Path]]) -> None:
    index, files = two_patients
    assert index.remove_under(str(files[0].parent)) == 4
    assert index.counts().instances == 0


def test_a_duplicate_is_revealed_when_the_served_copy_goes(write: Callable[..., Path]) -> None:
    first = write("one/x.dcm", n=7)
    second = write("two/x.dcm", n=7)
    index = Index()
    index.add(parsed(first))
    index.add(parsed(second))
    assert (index.counts().instances, index.counts().files) == (1, 2)
    uid = synthetic_uid("sop", "PID1", 7)
    served = index.instance(uid)
    assert served is not None and served.path == str(first)
    index.remove_path(str(first))
    revealed = index.instance(uid)
    assert revealed is not None and revealed.path == str(second)
    assert index.counts().files == 1


def test_the_served_copy_read_again_stays_the_copy_served(write: Callable[..., Path]) -> None:
    """Rewritten in place (the watcher reads it again): an older copy elsewhere was revealed
    instead, and C-GET sent its bytes, until a restart served the new one."""
    first = write("one/x.dcm", n=7, patient_name="FIRST^V1")
    second = write("two/x.dcm", n=7, patient_name="SECOND")
    index = Index()
    index.add(parsed(first))
    index.add(parsed(second))
    write("one/x.dcm", n=7, patient_name="FIRST^V2")
    index.add(parsed(first))
    served = index.instance(synthetic_uid("sop", "PID1", 7))
    assert served is not None and served.path == str(first)
    (patient,) = index.entities(Level.PATIENT, {})
    assert patient.patient.get("PatientName") == "FIRST^V2"
    assert (index.counts().instances, index.counts().files) == (1, 2)


def test_re_adding_a_path_replaces_it(write: Callable[..., Path]) -> None:
    path = write("x.dcm", patient_name="OLD^NAME")
    index = Index()
    index.add(parsed(path))
    write("x.dcm", patient_name="NEW^NAME")
    index.add(parsed(path))
    (view,) = index.candidates(Level.SERIES, {})
    assert isinstance(view, SeriesView)
    assert view.patient.get("PatientName") == "NEW^NAME"
    assert index.counts().files == 1


# -- what the watcher and C-STORE need: moves, a preferred copy, unchanged files, folders --------


def test_moving_a_file_keeps_it_served(write: Callable[..., Path]) -> None:
    path = write("a/x.dcm", n=1)
    index = Index()
    index.add(parsed(path))
    new = str(path.parent.parent / "b" / "y.dcm")
    assert index.move(str(path), new) == 1
    served = index.instance(synthetic_uid("sop", "PID1", 1))
    assert served is not None and served.path == new
    assert index.paths() == [new]
    assert index.candidates(Level.IMAGE, {})[0].first_path == new


def test_moving_a_folder_moves_everything_below_it(write: Callable[..., Path]) -> None:
    files = [write(f"study/s{n}/x.dcm", n=n) for n in (1, 2, 3)]
    index = Index()
    index.add_many(parsed(f) for f in files)
    study = files[0].parent.parent
    assert index.move(str(study), str(study.parent / "renamed")) == 3
    assert sorted(index.paths()) == [
        str(study.parent / "renamed" / f"s{n}" / "x.dcm") for n in (1, 2, 3)
    ]
    assert index.remove_under(str(study.parent / "renamed")) == 3
    assert index.counts().files == 0


def test_moving_a_waiting_copy_keeps_it_waiting(write: Callable[..., Path]) -> None:
    first, second = write("one/x.dcm", n=7), write("two/x.dcm", n=7)
    index = Index()
    index.add(parsed(first))
    index.add(parsed(second))
    moved = str(second.parent / "moved.dcm")
    index.move(str(second), moved)
    index.remove_path(str(first))
    revealed = index.instance(synthetic_uid("sop", "PID1", 7))
    assert revealed is not None and revealed.path == moved


def test_a_copy_added_to_be_served_demotes_the_served_one(write: Callable[..., Path]) -> None:
    old, new = write("old.dcm", n=7, patient_name="OLD^NAME"), write("new.dcm", n=7)
    index = Index()
    index.add(parsed(old))
    index.add(parsed(new), serve=True)
    uid = synthetic_uid("sop", "PID1", 7)
    served = index.instance(uid)
    assert served is not None and served.path == str(new)
    assert (index.counts().instances, index.counts().files) == (1, 2)
    index.remove_path(str(new))  # the demoted copy is first in line again
    served = index.instance(uid)
    assert served is not None and served.path == str(old)


def test_update_adds_only_what_changed(write: Callable[..., Path]) -> None:
    path = write("x.dcm")
    index = Index()
    assert index.update(parsed(path)) is True
    assert index.update(parsed(path)) is False  # same size and mtime: nothing to do
    write("x.dcm", patient_name="OTHER^NAME", study_description="a longer description")
    assert index.update(parsed(path)) is True


def test_stamps_under_a_folder(write: Callable[..., Path]) -> None:
    inside, outside = write("a/x.dcm", n=1), write("ab/y.dcm", n=2)
    index = Index()
    index.add_many([parsed(inside), parsed(outside)])
    stat = inside.stat()
    stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    assert index.stamps_under(str(inside.parent)) == {str(inside): stamp}


# -- at scale: records first, counts for the matches only; lean records ---------------------------


def test_entities_are_records_and_views_count_only_those_asked_for(
    two_patients: tuple[Index, list[Path]],
) -> None:
    index, _ = two_patients
    entities = index.entities(Level.STUDY, {})
    assert sorted(e.patient.patient_id for e in entities) == ["A", "B"]
    assert all(e.series is None and e.instance is None for e in entities)
    (chosen,) = [e for e in entities if e.patient.patient_id == "A"]
    assert index.views([chosen]) == index.candidates(Level.STUDY, {Level.PATIENT: ["A"]})


def test_views_leave_out_entities_gone_meanwhile(two_patients: tuple[Index, list[Path]]) -> None:
    index, files = two_patients
    entities = index.entities(Level.SERIES, {Level.PATIENT: ["B"]})
    index.remove_path(str(files[3]))  # patient B's only file
    assert index.views(entities) == []


def test_a_sop_instance_uid_is_looked_up_and_checked_against_its_parents(
    two_patients: tuple[Index, list[Path]],
) -> None:
    index, _ = two_patients
    uid = synthetic_uid("sop", "A", 3)
    (found,) = index.entities(Level.IMAGE, {Level.IMAGE: [uid, uid, "9.9"]})
    assert found.instance is not None and found.instance.sop_instance_uid == uid
    assert found.series is not None and found.series.series_uid == synthetic_uid("A", 2)
    assert index.entities(Level.IMAGE, {Level.PATIENT: ["B"], Level.IMAGE: [uid]}) == []


def test_a_study_stays_with_the_patient_it_was_first_filed_under(
    write: Callable[..., Path],
) -> None:
    study = synthetic_uid("S", "st")
    first = write("a.dcm", patient_id="A", study_uid=study, n=1)
    other = write("b.dcm", patient_id="B", study_uid=study, n=2)  # disagrees on the patient
    index = Index()
    index.add_many([parsed(first), parsed(other)])
    assert (index.counts().patients, index.counts().instances) == (1, 2)
    (patient,) = index.candidates(Level.PATIENT, {})
    assert isinstance(patient, PatientView)
    assert (patient.patient.patient_id, patient.patient_instances) == ("A", 2)
    (view,) = index.candidates(Level.STUDY, {})
    assert isinstance(view, StudyView) and view.study.patient_id == "A"
    index.remove_path(str(first))
    index.remove_path(str(other))
    assert index.counts() == Counts(0, 0, 0, 0, 0)


def test_each_study_answers_with_the_patient_its_own_files_describe(
    write: Callable[..., Path],
) -> None:
    """Two studies under one PatientID whose files disagree on the name (PS3.4 C.6.2.1.2: in
    the Study Root model patient attributes belong to the study): each study, its series and
    its instances answer with their own; the patient, with its latest file's."""
    knee, chest = synthetic_uid("knee"), synthetic_uid("chest")
    first, later = (
        write(f"{n}.dcm", patient_id="P", patient_name=name, study_uid=uid, series_uid=uid, n=n)
        for n, (name, uid) in enumerate((("DOE^JANE", knee), ("SMITH^JANE", chest)))
    )
    index = Index()
    index.add_many([parsed(first), parsed(later)])
    named = {
        v.study.study_uid: v.patient.get("PatientName")
        for v in index.candidates(Level.STUDY, {})
        if isinstance(v, StudyView)
    }
    assert named == {knee: "DOE^JANE", chest: "SMITH^JANE"}
    for level in (Level.SERIES, Level.IMAGE):
        names = {
            (e.study.study_uid, e.patient.get("PatientName"))
            for e in index.entities(level, {})
            if e.study
        }
        assert names == set(named.items())
    (patient,) = index.candidates(Level.PATIENT, {})
    assert patient.patient.get("PatientName") == "SMITH^JANE"
    assert index.patients_named(["doe^"]) == index.patients_named(["smith^"]) == ["P"]
    index.remove_path(str(later))  # the chest study goes, and its name with it
    (view,) = index.candidates(Level.STUDY, {})
    assert view.patient.get("PatientName") == "DOE^JANE"
    index.remove_path(str(first))
    assert len(index._names) == 0


def test_instances_share_their_folder_and_keep_their_path(write: Callable[..., Path]) -> None:
    one, two = write("f/one.dcm", n=1), write("f/two.dcm", n=2)
    index = Index()
    index.add_many([parsed(one), parsed(two)])
    first, second = index.instance_at(str(one)), index.instance_at(str(two))
    assert first is not None and second is not None
    assert first.folder is second.folder  # one copy of the folder's path, however many files
    assert (first.path, second.path) == (str(one), str(two))
    assert first.get("SOPInstanceUID") is first.sop_instance_uid  # the UID is held once
    assert index.instance_at(str(one) + "x") is None


def test_an_instance_crosses_pickle_whole_as_the_scan_workers_send_it() -> None:
    made = Instance(
        "1.9", "1.8", "1.2.3", "1.2.840.10008.1.2", "/d/a.dcm", 10, 20, ("1.9", "1.2.3", "7")
    )
    sent = pickle.loads(pickle.dumps(made))
    assert sent == made and sent.path == "/d/a.dcm"
    assert (sent.size, sent.mtime_ns, sent.get("InstanceNumber")) == (10, 20, "7")
    assert made.values[0] is made.sop_instance_uid


def test_records_whose_file_is_gone_are_read_again_from_one_still_there(
    write: Callable[..., Path],
) -> None:
    older = write("older.dcm", n=1, patient_name="DOE^OLD", series_description="OLD")
    newer = write("newer.dcm", n=2, patient_name="DOE^NEW", series_description="NEW")
    index = Index()
    index.add(parsed(older))
    index.add(parsed(newer))
    (patient,) = index.entities(Level.PATIENT, {})
    assert patient.patient.get("PatientName") == "DOE^NEW"
    index.move(str(newer), str(newer) + ".moved")  # a rename keeps the records' source
    assert index.stale_sources() == []
    index.remove_path(str(newer) + ".moved")
    assert index.stale_sources() == [str(older)]  # one file for the patient, study and series
    assert index.stale_sources() == []  # told once
    assert index.refresh(parsed(older))
    (patient,) = index.entities(Level.PATIENT, {})
    (series,) = index.entities(Level.SERIES, {})
    assert series.series is not None
    names = patient.patient.get("PatientName"), series.series.get("SeriesDescription")
    assert names == ("DOE^OLD", "OLD")
    index.remove_path(str(older))  # the last: nothing is left to read again
    assert index.stale_sources() == []


def test_a_file_read_again_is_refused_if_it_changed_since_indexed(
    write: Callable[..., Path],
) -> None:
    older = write("older.dcm", n=1, patient_name="DOE^OLD")
    newer = write("newer.dcm", n=2, patient_name="DOE^NEW")
    index = Index()
    index.add_many([parsed(older), parsed(newer)])
    index.remove_path(str(newer))
    assert index.stale_sources() == [str(older)]
    write("older.dcm", n=1, patient_name="DOE^REWRITTEN", study_description="longer now")
    assert not index.refresh(parsed(older))  # its own event indexes it again


def test_a_node_emptied_after_it_was_marked_stale_is_passed_over(
    write: Callable[..., Path],
) -> None:
    """Its source file went, then its last other file: nothing to read again for it, and the
    other stale nodes are still told (an IndexError here lost them all)."""
    study = synthetic_uid("st")
    kept = write("kept.dcm", n=1, study_uid=study, series_uid=synthetic_uid("s", 2))
    kept_too = write("kept2.dcm", n=4, study_uid=study, series_uid=synthetic_uid("s", 2))
    gone = [
        write(f"gone{n}.dcm", n=n, study_uid=study, series_uid=synthetic_uid("s", 1))
        for n in (2, 3)
    ]
    index = Index()
    for path in (kept, kept_too, *gone):
        index.add(parsed(path))
    index.remove_path(str(kept_too))  # the study's and patient's source: they are stale now
    index.remove_path(str(gone[0]))  # its series' source: stale too...
    index.remove_path(str(gone[1]))  # ...and then empty, and gone
    assert index.stale_sources() == [str(kept)]
