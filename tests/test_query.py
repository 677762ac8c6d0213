"""C-FIND as data: identifiers in, response identifiers out, over the sample data. No sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fsqr.errors import InvalidIdentifier
from fsqr.index import Index
from fsqr.keys import Level, Model
from fsqr.query import find, parse_identifier
from fsqr.scan import HeaderCache
from fsqr.synthetic import write_instance
from tests.conftest import index_of, instance


@pytest.fixture(scope="module")
def index(sample_tree: Path) -> Index:
    return index_of(sample_tree)


def identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def run(
    index: Index, model: Model = Model.STUDY_ROOT, relational: bool = False, **keys: Any
) -> list[Dataset]:
    query = parse_identifier(identifier(**keys), model, relational=relational)
    return list(find(index, query, "FSQR", HeaderCache()))


def test_every_study_with_its_computed_attributes(index: Index) -> None:
    answers = run(
        index,
        QueryRetrieveLevel="STUDY",
        PatientName="*",
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        NumberOfPatientRelatedStudies="",
    )
    assert len(answers) == 7
    by_date = {a.PatientName: a for a in answers if a.PatientName == "DOE^JOHN"}
    assert by_date  # John Doe has two studies
    mr = next(a for a in answers if "OT" in a.ModalitiesInStudy)
    assert list(mr.ModalitiesInStudy) == ["MR", "OT"]
    assert (mr.NumberOfStudyRelatedSeries, mr.NumberOfStudyRelatedInstances) == (3, 11)
    assert mr.NumberOfPatientRelatedStudies == 2
    for a in answers:
        assert a.QueryRetrieveLevel == "STUDY"
        assert a.RetrieveAETitle == "FSQR"
        assert a.InstanceAvailability == "ONLINE"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "DOE^J*"}, 3),
        ({"PatientName": "doe^jane"}, 1),  # PN: case-insensitive (documented choice)
        ({"PatientName": "muller*"}, 2),  # PN: accent-insensitive, Müller^Jürgen
        ({"PatientName": "山田*"}, 1),  # ideographic component group
        ({"StudyDate": "20240101-"}, 5),
        ({"StudyDate": "-20231231"}, 2),
        ({"StudyDate": "20240115"}, 1),
        ({"ModalitiesInStudy": "CR"}, 2),
        ({"ModalitiesInStudy": "OT"}, 1),
        ({"PatientSex": "F"}, 2),
        ({"AccessionNumber": "NOPE"}, 0),
    ],
    ids=[
        "wildcard",
        "pn-case",
        "pn-accents",
        "pn-ideographic",
        "date-open-end",
        "date-open-start",
        "date-single",
        "modalities-in-study",
        "modalities-other",
        "patient-key-at-study-level",
        "no-match",
    ],
)
def test_study_level_matching(index: Index, keys: dict[str, str], expected: int) -> None:
    assert len(run(index, QueryRetrieveLevel="STUDY", **keys)) == expected


def test_patient_level_counts(index: Index) -> None:
    (john,) = run(
        index,
        Model.PATIENT_ROOT,
        QueryRetrieveLevel="PATIENT",
        PatientID="FSQR0001",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    assert (
        john.NumberOfPatientRelatedStudies,
        john.NumberOfPatientRelatedSeries,
        john.NumberOfPatientRelatedInstances,
    ) == (2, 5, 23)


def test_image_level_by_series_returns_the_unique_keys_above(index: Index) -> None:
    (series,) = run(
        index, Model.STUDY_ROOT, relational=True, QueryRetrieveLevel="SERIES", Modality="OT"
    )
    images = run(
        index,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=series.StudyInstanceUID,
        SeriesInstanceUID=series.SeriesInstanceUID,
        SOPClassUID="",
    )
    assert len(images) == 1
    (image,) = images
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert image.StudyInstanceUID == series.StudyInstanceUID
    assert "SOPInstanceUID" in image


def test_uid_list_matching(index: Index) -> None:
    studies = run(index, QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    uids = [s.StudyInstanceUID for s in studies[:3]]
    answers = run(index, QueryRetrieveLevel="STUDY", StudyInstanceUID="\\".join(uids))
    assert sorted(a.StudyInstanceUID for a in answers) == sorted(uids)


def test_attributes_outside_the_index_are_read_from_files(index: Index) -> None:
    answers = run(
        index,
        QueryRetrieveLevel="STUDY",
        PatientID="FSQR0002",
        MagneticFieldStrength="",  # not a Q/R key: read from the study's files on demand
    )
    (answer,) = answers
    assert answer.MagneticFieldStrength  # an MR study
    matching = run(index, QueryRetrieveLevel="STUDY", MagneticFieldStrength="")
    assert len(matching) == 7
    mr = run(
        index,
        QueryRetrieveLevel="STUDY",
        PatientID="",
        Manufacturer="*",
        MagneticFieldStrength="1.5",
    )
    assert "FSQR0002" in {a.PatientID for a in mr}
    assert run(index, QueryRetrieveLevel="STUDY", Manufacturer="NO SUCH MAKER") == []


def test_non_ascii_answers_say_utf8(index: Index) -> None:
    (answer,) = run(index, QueryRetrieveLevel="STUDY", PatientName="Mu?oz*")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert answer.PatientName == "Muñoz^José"
    (ascii_answer,) = run(index, QueryRetrieveLevel="STUDY", PatientName="DOE^JANE")
    assert "SpecificCharacterSet" not in ascii_answer


def test_keys_below_the_level_are_returned_empty(index: Index) -> None:
    answers = run(index, QueryRetrieveLevel="STUDY", PatientID="FSQR0002", Modality="CT")
    assert len(answers) == 1  # Modality is a series key: not matched at STUDY level
    assert answers[0].Modality is None or answers[0].Modality == ""


@pytest.mark.parametrize(
    ("model", "keys", "relational", "comment"),
    [
        (
            Model.STUDY_ROOT,
            {"PatientName": "*"},
            False,
            "QueryRetrieveLevel (0008,0052) is missing",
        ),
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "FOO"}, False, "unknown QueryRetrieveLevel"),
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT"}, False, "not in the Study Root"),
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "SERIES"}, False, "needs one StudyInstanceUID"),
        (
            Model.PATIENT_ROOT,
            {"QueryRetrieveLevel": "STUDY", "PatientID": "FSQR*"},
            False,
            "needs one PatientID",
        ),
    ],
    ids=[
        "no-level",
        "unknown-level",
        "level-not-in-model",
        "hierarchical-no-parent",
        "wild-parent",
    ],
)
def test_invalid_identifiers_are_refused(
    model: Model, keys: dict[str, str], relational: bool, comment: str
) -> None:
    with pytest.raises(InvalidIdentifier) as raised:
        parse_identifier(identifier(**keys), model, relational=relational)
    assert comment in raised.value.comment
    assert raised.value.status == 0xA900


def test_relational_queries_need_no_parent_keys(index: Index) -> None:
    series = run(index, relational=True, QueryRetrieveLevel="SERIES", Modality="MR")
    assert len(series) == 5
    images = run(
        index, Model.PATIENT_ROOT, relational=True, QueryRetrieveLevel="IMAGE", PatientName="*Jos*"
    )
    assert len(images) == 1


def test_answers_are_new_datasets(index: Index) -> None:
    ident = identifier(QueryRetrieveLevel="STUDY", PatientName="DOE^JANE", StudyDate="")
    query = parse_identifier(ident, Model.STUDY_ROOT, relational=False)
    (answer,) = find(index, query, "FSQR", HeaderCache())
    assert answer is not ident
    assert ident.StudyDate == ""  # the identifier is never edited
    assert answer.StudyDate == "20230920"


@pytest.fixture(scope="module")
def charset_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """One patient per character set, each file written in its own encoding."""
    root = tmp_path_factory.mktemp("charsets")
    for n, (charset, name) in enumerate(CHARSET_NAMES.items()):
        write_instance(
            instance(patient_id=f"CS{n}", patient_name=name, specific_character_set=charset, n=n),
            root / f"{n}.dcm",
        )
    return index_of(root)


CHARSET_NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 192": "Øster^Åse",
    "\\ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "GB18030": "Wang^XiaoDong=王^小東",
    "ISO_IR 144": "Иванов^Иван",
}


@pytest.mark.parametrize(
    ("query_charset", "pattern", "expected"),
    [
        ("ISO_IR 192", "山田*", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("\\ISO 2022 IR 87", "=山田^太郎", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("GB18030", "王*", "Wang^XiaoDong=王^小東"),
        ("ISO_IR 100", "MULLER*", "Müller^Jürgen"),
        ("ISO_IR 192", "иванов*", "Иванов^Иван"),
        ("ISO_IR 100", "Øster*", "Øster^Åse"),
    ],
    ids=[
        "utf8-to-jis",
        "jis-to-jis",
        "gb18030",
        "latin1-folded",
        "cyrillic-folded",
        "latin1-to-utf8",
    ],
)
def test_names_match_across_character_sets(
    charset_index: Index, query_charset: str, pattern: str, expected: str
) -> None:
    """The identifier is encoded in one character set, the file in another: they still meet."""
    ident = identifier(SpecificCharacterSet=query_charset, QueryRetrieveLevel="STUDY")
    ident.PatientName = pattern
    # Encode and decode the identifier as it would travel, in its own character set.
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ident)
    travelled = read_dataset(DicomBytesIO(buffer.getvalue()), True, True)
    query = parse_identifier(travelled, Model.STUDY_ROOT, relational=False)
    (answer,) = find(charset_index, query, "FSQR", HeaderCache())
    assert str(answer.PatientName) == expected
    assert answer.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_text_inside_a_sequence_goes_out_in_the_answers_character_set(
    tmp_path: Path, syntax: str
) -> None:
    """A Latin-1 file's values answered under UTF-8, those in a sequence's items included,
    however the keys fall: here a non-ASCII key (InstitutionName) comes before the sequence.
    (pydicom reads an Implicit VR file's sequence items at once, their values still encoded.)"""
    ds = instance(patient_id="LATIN1", specific_character_set="ISO_IR 100")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.InstitutionName = "Clínica Ñ"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T1", "99X", "Tórax ñandú"
    ds.ProcedureCodeSequence = [code]
    write_instance(ds, tmp_path / "latin1.dcm")
    (answer,) = run(
        index_of(tmp_path), QueryRetrieveLevel="STUDY", InstitutionName="", ProcedureCodeSequence=[]
    )
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    # As it travels: encoded in the character set it declares, decoded by the SCU.
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, answer)
    travelled = read_dataset(DicomBytesIO(buffer.getvalue()), True, True)
    assert travelled.InstitutionName == "Clínica Ñ"
    assert travelled.ProcedureCodeSequence[0].CodeMeaning == "Tórax ñandú"


def test_a_sequence_key_returns_each_item_with_only_the_attributes_asked_for(
    tmp_path: Path,
) -> None:
    """PS3.4 C.2.2.2.6: items "containing only the requested Attributes"; an item without
    attributes, or no item, asks for the whole sequence."""
    ds = instance(patient_id="CODES")
    codes = []
    for value, meaning in (("CTCHEST", "CT Chest"), ("CTABD", "CT Abdomen")):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "LOCAL", meaning
        codes.append(code)
    ds.ProcedureCodeSequence = codes
    write_instance(ds, tmp_path / "codes.dcm")
    index = index_of(tmp_path)
    asked = Dataset()
    asked.CodeValue = ""
    asked.CodeMeaning = ""
    asked.ContextIdentifier = ""  # not in the items: returned empty
    (answer,) = run(index, QueryRetrieveLevel="STUDY", ProcedureCodeSequence=[asked])
    items = answer.ProcedureCodeSequence
    assert [(i.CodeValue, i.CodeMeaning) for i in items] == [
        ("CTCHEST", "CT Chest"),
        ("CTABD", "CT Abdomen"),
    ]
    assert all(
        "CodingSchemeDesignator" not in i and i.ContextIdentifier in ("", None) for i in items
    )
    for whole in ([], [Dataset()]):
        (answer,) = run(index, QueryRetrieveLevel="STUDY", ProcedureCodeSequence=whole)
        assert [i.CodingSchemeDesignator for i in answer.ProcedureCodeSequence] == ["LOCAL"] * 2


# -- at scale: keys matched on records first, counts only for what matches -------------------


def test_only_matching_studies_are_counted(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []
    count_study = Index._study_view

    def spy(self: Index, node: Any) -> Any:
        counted.append(node.record.study_uid)
        return count_study(self, node)

    monkeypatch.setattr(Index, "_study_view", spy)
    answers = run(
        index,
        QueryRetrieveLevel="STUDY",
        PatientName="DOE^J*",
        StudyInstanceUID="",
        NumberOfStudyRelatedInstances="",
    )
    assert 0 < len(answers) < 7
    assert sorted(counted) == sorted(a.StudyInstanceUID for a in answers)


def test_a_computed_key_still_matches(index: Index) -> None:
    every = run(index, QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="")
    with_mr = run(index, QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="MR")
    assert 0 < len(with_mr) < len(every)
    assert all("MR" in a.ModalitiesInStudy for a in with_mr)
    assert {a.StudyInstanceUID for a in with_mr} == {
        a.StudyInstanceUID for a in every if "MR" in a.ModalitiesInStudy
    }


def test_a_unique_key_below_is_looked_up_rather_than_every_patient_matched(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    (some,) = run(index, QueryRetrieveLevel="STUDY", PatientName="DOE^JANE", StudyInstanceUID="")
    levels: list[Level] = []
    entities, study_patients = Index.entities, Index.study_patients

    def spy(self: Index, level: Level, uids: Any) -> Any:
        levels.append(level)
        return entities(self, level, uids)

    def spy_patients(self: Index, uids: Any) -> Any:  # the patient records studies answer with
        levels.append(Level.PATIENT)
        return study_patients(self, uids)

    monkeypatch.setattr(Index, "entities", spy)
    monkeypatch.setattr(Index, "study_patients", spy_patients)
    uid = some.StudyInstanceUID
    (found,) = run(index, QueryRetrieveLevel="STUDY", PatientName="DOE*", StudyInstanceUID=uid)
    assert found.StudyInstanceUID == uid
    assert levels == [Level.STUDY]  # no pass over the patients first
    levels.clear()
    assert len(run(index, QueryRetrieveLevel="STUDY", PatientName="DOE*")) > 1
    assert levels == [Level.PATIENT, Level.STUDY]  # the patients first, then their studies
