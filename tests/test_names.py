"""Patients found by name (fsqr/names.py): a PatientName key with a literal start is looked up,
and answers exactly what matching every patient's name answers, however the index changed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from fsqr.header import indexed_texts, records_from
from fsqr.index import Index
from fsqr.keys import KEY_BY_KEYWORD, Level, Model
from fsqr.matching import match, person_name_terms
from fsqr.names import PatientNames
from fsqr.query import find, parse_identifier
from fsqr.records import Parsed
from fsqr.scan import HeaderCache
from fsqr.synthetic import synthetic_uid

# Names that fold, pad and split in every way PN matching knows (fsqr/matching.py).
NAMES = [
    "DOE^JOHN",
    "Doe^Jane",
    "doe",  # matched by "DOE^*" once padded to "doe^^^^"
    "DOE^",
    "DOE^^^^",
    "DÖE^JOHN",  # accents fold away
    "\uff24\uff2f\uff25^\uff2a\uff2f\uff28\uff2e",  # full-width letters fold to ASCII
    " DOE ^ JOHN ",
    "DOEX^JOHN",
    "DO",
    "Müller^Jürgen",
    "MULLER",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",  # three component groups, each matched on its own
    "=山田^太郎",
    "DOE^JOHN\\SMITH^JANE",  # two values
    "SMITH^JANE",
    "^JOHN",
    "",  # no name at all
    "==",
    "D*E^JOHN",  # a literal "*" in a stored name
]
PATTERNS = [
    "DOE^*",
    "doe*",
    "DOE",
    "DOE^JOHN",
    "DO?^*",
    "D*",
    "DOE^J*N",
    "DOE^^*",
    "DÖE*",
    "\uff24\uff2f\uff25*",
    "MÜLLER*",
    "muller",
    "山田*",
    "=山田*",
    "Yamada^*=山田*",
    "やまだ*",
    "SMITH*",
    "DOE*\\MULLER*",
    "D\\SMITH^JANE",
    "*JOHN",  # no literal start: every name is matched, as before
    "?OE*",
    "^*",
    "*",
    "",
]
PATIENTS = [f"P{n}" for n in range(6)]


def parsed(patient: str, name: str, study: int, sop: int, folder: str = "t") -> Parsed:
    """A record of one file, made without a file, as the start-up scan would make it."""
    values = {
        "PatientID": patient,
        "PatientName": name,
        "StudyInstanceUID": synthetic_uid("names", patient, study),
        "SeriesInstanceUID": synthetic_uid("names", patient, study, 1),
        "SOPInstanceUID": synthetic_uid("names", patient, study, 1, sop),
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
    }
    by_tag = {KEY_BY_KEYWORD[k].tag: v for k, v in values.items()}
    result = records_from(
        indexed_texts(lambda tag: by_tag.get(tag, "")),
        lambda: "",
        path=f"/{folder}/{patient}/{study}/{sop}.dcm",
        size=1,
        mtime_ns=0,
        transfer_syntax="1.2.840.10008.1.2.1",
    )
    assert isinstance(result, Parsed)
    return result


def answers(index: Index, level: str, pattern: str) -> list[str]:
    """What C-FIND answers: the unique keys of the entities a PatientName key matches."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientName = pattern
    model = Model.PATIENT_ROOT if level == "PATIENT" else Model.STUDY_ROOT
    query = parse_identifier(ds, model, relational=True)
    unique = "PatientID" if level == "PATIENT" else "StudyInstanceUID"
    return [a[unique].value for a in find(index, query, "FSQR", HeaderCache())]


def every_name_matched(index: Index, level: str, pattern: str) -> list[str]:
    """The same, by matching every entity's PatientName: what fsqr answered before the lookup."""
    at, unique = (
        (Level.PATIENT, "PatientID") if level == "PATIENT" else (Level.STUDY, "StudyInstanceUID")
    )
    return [
        (e.patient if e.study is None else e.study).get(unique)
        for e in index.entities(at, {})
        if match("PN", pattern, e.patient.get("PatientName"))
    ]


def assert_lookup_is_exact(index: Index, patterns: list[str]) -> None:
    for pattern in patterns:
        for level in ("PATIENT", "STUDY"):
            assert answers(index, level, pattern) == every_name_matched(index, level, pattern), (
                level,
                pattern,
            )
    # Nothing is left behind of a name gone: every pair held is a term of a patient's name, as
    # its patient holds it and as each of its studies does.
    patients = [
        e.patient for level in (Level.PATIENT, Level.STUDY) for e in index.entities(level, {})
    ]
    terms = sum(len(person_name_terms(p.get("PatientName"))) for p in patients)
    assert len(index._names) == terms


def test_a_name_key_with_a_literal_start_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    index = Index()
    for n, name in enumerate(NAMES):
        index.add(parsed(f"P{n:02d}", name, 1, 1))
    looked_up: list[Any] = []  # the patients each pass over the index is narrowed to
    entities, study_patients = Index.entities, Index.study_patients

    def spy(self: Index, level: Level, uids: Any) -> Any:
        looked_up.append(uids.get(Level.PATIENT))
        return entities(self, level, uids)

    def spy_patients(self: Index, uids: Any) -> Any:
        looked_up.append(uids.get(Level.PATIENT))
        return study_patients(self, uids)

    monkeypatch.setattr(Index, "entities", spy)
    monkeypatch.setattr(Index, "study_patients", spy_patients)
    found = answers(index, "STUDY", "DOE^*")
    # Only the patients whose names may match are matched: those with a term that starts with
    # "doe^", and those with a bare "doe" that the matcher pads.
    first = ["P00", "P01", "P02", "P03", "P04", "P05", "P06", "P14"]
    assert looked_up[0] == first
    assert found == [f"{synthetic_uid('names', p, 1)}" for p in first]
    looked_up.clear()
    answers(index, "STUDY", "*JOHN")
    assert looked_up[0] is None  # no literal start: every patient is matched, as before


def test_a_study_level_name_key_with_a_unique_key_is_not_looked_up_by_name() -> None:
    """A unique key names its few candidates already; the names are not consulted."""
    index = Index()
    index.add(parsed("P1", "DOE^JOHN", 1, 1))
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "DOE^*"
    ds.StudyInstanceUID = synthetic_uid("names", "P1", 1)
    query = parse_identifier(ds, Model.STUDY_ROOT, relational=False)
    index._names = PatientNames()  # forgotten: a lookup by name would now find nobody
    assert len(list(find(index, query, "FSQR", HeaderCache()))) == 1


def test_names_follow_renames_and_removals() -> None:
    index = Index()
    index.add(parsed("P1", "DOE^JOHN", 1, 1))
    index.add(parsed("P1", "DOE^JOHN", 2, 1))
    index.add(parsed("P2", "DOE^JANE", 1, 1))
    assert answers(index, "PATIENT", "DOE^J*") == ["P1", "P2"]
    index.add(parsed("P1", "SMITH^JOHN", 2, 2))  # the latest file's name wins
    assert answers(index, "PATIENT", "DOE^J*") == ["P2"]
    assert answers(index, "PATIENT", "SMITH*") == ["P1"]
    index.remove_path("/t/P2/1/1.dcm")
    assert answers(index, "PATIENT", "DOE^J*") == []
    index.add(parsed("P2", "DOE^JANE", 1, 1))  # back, and after P1 in the index's order
    index.move("/t", "/u")
    assert answers(index, "PATIENT", "*") == answers(index, "PATIENT", "?*") == ["P1", "P2"]
    assert_lookup_is_exact(index, PATTERNS)
    index.remove_under("/u")
    assert len(index._names) == 0


ADD = st.tuples(
    st.just("add"),
    st.sampled_from(PATIENTS),
    st.sampled_from(NAMES),
    st.integers(1, 2),  # study
    st.integers(1, 2),  # instance
)
REMOVE = st.tuples(
    st.just("remove"), st.sampled_from(PATIENTS), st.integers(1, 2), st.integers(1, 2)
)
MOVE = st.tuples(st.just("move"), st.sampled_from(PATIENTS))


@settings(
    database=None, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    operations=st.lists(st.one_of(ADD, ADD, REMOVE, MOVE), max_size=25),
    more_patterns=st.lists(st.sampled_from(NAMES).map(lambda n: n[:3] + "*"), max_size=3),
)
def test_the_lookup_answers_what_matching_every_name_answers(
    operations: list[tuple[Any, ...]], more_patterns: list[str]
) -> None:
    """Differential: after any adds (a patient renamed by a later file), removals and moves,
    the lookup by name answers exactly what matching every patient's name does, in order."""
    index = Index()
    folders = dict.fromkeys(PATIENTS, "t")
    for op, patient, *rest in operations:
        if op == "add":
            name, study, sop = rest
            index.add(parsed(patient, name, study, sop, folders[patient]))
        elif op == "remove":
            study, sop = rest
            index.remove_path(f"/{folders[patient]}/{patient}/{study}/{sop}.dcm")
        else:
            moved = "u" if folders[patient] == "t" else "t"
            index.move(f"/{folders[patient]}/{patient}", f"/{moved}/{patient}")
            folders[patient] = moved
    assert_lookup_is_exact(index, PATTERNS + more_patterns)


def test_thousands_of_names_stay_in_order_as_they_come_and_go() -> None:
    """Enough names to fill many runs, added in no order and removed again."""
    names = PatientNames()
    held = {f"P{n}": f"Doe^{(n * 7919) % 3001}=Name{n % 13}" for n in range(3000)}
    for patient, name in held.items():
        names.add(patient, name)
    assert_in_order(names)
    for patient in list(held)[::3]:
        names.remove(patient, held.pop(patient))
    assert_in_order(names)
    for prefix in ["doe^", "doe^1", "doe^29", "doe^2999", "name1", "name12", "nam", "e", "zz"]:
        expected = {
            patient
            for patient, name in held.items()
            if any(t.startswith(prefix) for t in person_name_terms(name))
        }
        assert names.candidates([prefix]) == expected, prefix
    assert len(names) == sum(len(person_name_terms(name)) for name in held.values())
    for patient, name in held.items():
        names.remove(patient, name)
    assert len(names) == 0
    assert names.candidates(["doe^"]) == set()


def assert_in_order(names: PatientNames) -> None:
    pairs = [pair for run in names._runs for pair in run]
    assert pairs == sorted(pairs)
    assert names._lasts == [run[-1] for run in names._runs]
    assert len(names._runs) > 10  # many runs: splits were made
