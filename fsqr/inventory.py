"""`fsqr ls`: what a folder holds, as the server would serve it, and what is wrong with it.

Answers "why does my file not show up?" before anyone starts a server: the patient/study/series
tree with counts and modalities, every skipped file with its reason, and a lint of the things
that confuse PACS users (one SOP Instance UID in two files, one PatientID with two names, a
study whose files disagree on their character set, a study filed under two patients). Reads
files through `scan`; knows nothing of networking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from fsqr.index import Index, SeriesView
from fsqr.keys import Level
from fsqr.records import Parsed, Skipped
from fsqr.scan import scan_files
from fsqr.tree import walk


@dataclass(slots=True)
class SeriesEntry:
    uid: str
    number: str
    modality: str
    description: str
    instances: int = 0


@dataclass(slots=True)
class StudyEntry:
    uid: str
    date: str
    description: str
    accession: str
    series: dict[str, SeriesEntry] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series.values())

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series.values()} - {""})


@dataclass(slots=True)
class PatientEntry:
    patient_id: str
    name: str
    studies: dict[str, StudyEntry] = field(default_factory=dict)


@dataclass(slots=True)
class Inventory:
    root: str
    files: int = 0
    patients: dict[str, PatientEntry] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(s.instances for p in self.patients.values() for s in p.studies.values())

    def counts(self) -> dict[str, int]:
        studies = [s for p in self.patients.values() for s in p.studies.values()]
        return {
            "patients": len(self.patients),
            "studies": len(studies),
            "series": sum(len(s.series) for s in studies),
            "instances": self.instances,
            "files": self.files,
            "skipped": len(self.skipped),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "counts": self.counts(),
            "patients": [
                {
                    "patient_id": p.patient_id,
                    "name": p.name,
                    "studies": [
                        {
                            "study_instance_uid": s.uid,
                            "date": s.date,
                            "description": s.description,
                            "accession_number": s.accession,
                            "modalities": s.modalities,
                            "instances": s.instances,
                            "series": [
                                {
                                    "series_instance_uid": x.uid,
                                    "number": x.number,
                                    "modality": x.modality,
                                    "description": x.description,
                                    "instances": x.instances,
                                }
                                for x in s.series.values()
                            ],
                        }
                        for s in p.studies.values()
                    ],
                }
                for p in self.patients.values()
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "problems": self.problems,
        }

    def as_text(self) -> str:
        c = self.counts()
        lines = [
            f"{self.root}: {c['patients']} patients, {c['studies']} studies, "
            f"{c['series']} series, {c['instances']} instances "
            f"({c['files']} files, {c['skipped']} skipped)"
        ]
        for p in self.patients.values():
            lines.append(f"{p.patient_id or '(no PatientID)'}  {p.name}")
            for s in p.studies.values():
                lines.append(
                    f"  {s.date or '--------'}  {s.description or '(no description)'}  "
                    f"[{'/'.join(s.modalities)}]  {len(s.series)} series, "
                    f"{s.instances} instances  {s.uid}"
                )
                for x in s.series.values():
                    lines.append(
                        f"    #{x.number or '-'}  {x.modality}  "
                        f"{x.description or '(no description)'}  {x.instances} instances"
                    )
        if self.skipped:
            lines.append("skipped:")
            lines.extend(f"  {s.path}: {s.reason}" for s in self.skipped)
        if self.problems:
            lines.append("problems:")
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


def take_inventory(root: Path, workers: int = 0) -> Inventory:
    """Scan `root` as the server's start-up scan does, index it in an `Index` as the server does
    (so the tree, the copy served of a duplicate and each name are the server's), and lint it."""
    paths = list(walk(root))  # in the walk's order, as the server reads them
    inventory = Inventory(root=str(root), files=len(paths))
    index = Index()
    parsed: list[Parsed] = []
    for result in scan_files(paths, workers):
        if isinstance(result, Parsed):
            parsed.append(result)
            index.add(result)
        else:
            inventory.skipped.append(result)
    inventory.skipped.sort(key=lambda s: s.path)
    _tree_into(inventory, index)
    served = index.entities(Level.IMAGE, {})
    inventory.problems = [
        *_duplicates(parsed, index),
        *_conflicting_patients(parsed),
        *_studies_under_two_patients(parsed),
        *_mixed_character_sets(
            (e.study.study_uid, e.instance.path) for e in served if e.study and e.instance
        ),
    ]
    return inventory


def _tree_into(inventory: Inventory, index: Index) -> None:
    """The patients, studies and series as the server answers them: a patient with its latest
    file's name, a study under the patient it was first filed under."""
    for patient_view in index.candidates(Level.PATIENT, {}):
        record = patient_view.patient
        inventory.patients[record.patient_id] = PatientEntry(
            record.patient_id, record.get("PatientName")
        )
    for view in index.candidates(Level.SERIES, {}):
        assert isinstance(view, SeriesView)
        study = inventory.patients[view.study.patient_id].studies.setdefault(
            view.study.study_uid,
            StudyEntry(
                view.study.study_uid,
                view.study.get("StudyDate"),
                view.study.get("StudyDescription"),
                view.study.get("AccessionNumber"),
            ),
        )
        study.series[view.series.series_uid] = SeriesEntry(
            view.series.series_uid,
            view.series.get("SeriesNumber"),
            view.series.get("Modality"),
            view.series.get("SeriesDescription"),
            view.instances,
        )


def _duplicates(parsed: Iterable[Parsed], index: Index) -> list[str]:
    paths: dict[str, list[str]] = defaultdict(list)
    for p in parsed:
        paths[p.instance.sop_instance_uid].append(p.instance.path)
    problems = []
    for uid, files in paths.items():
        if len(files) > 1:
            served = index.instance(uid)
            shown = [f"{f} (served)" if served and f == served.path else f for f in files]
            problems.append(f"SOP Instance UID {uid} is in {len(files)} files: " + ", ".join(shown))
    return problems


def _conflicting_patients(parsed: Iterable[Parsed]) -> list[str]:
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in parsed:
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex"):
            values[(p.patient.patient_id, keyword)].add(p.patient.get(keyword))
    return [
        f"PatientID {pid!r} has {len(found)} different {keyword} values: "
        + ", ".join(repr(v) for v in sorted(found))
        for (pid, keyword), found in values.items()
        if len(found) > 1
    ]


def _studies_under_two_patients(parsed: Iterable[Parsed]) -> list[str]:
    owners: dict[str, set[str]] = defaultdict(set)
    for p in parsed:
        owners[p.study.study_uid].add(p.patient.patient_id)
    return [
        f"study {uid} is filed under {len(pids)} PatientIDs: " + ", ".join(sorted(pids))
        for uid, pids in owners.items()
        if len(pids) > 1
    ]


def _mixed_character_sets(served: Iterable[tuple[str, str]]) -> list[str]:
    """Studies whose served files (study UID, path) declare different Specific Character Sets."""
    charsets: dict[str, set[str]] = defaultdict(set)
    for study_uid, path in served:
        charsets[study_uid].add(_character_set(path))
    return [
        f"study {uid} mixes character sets: " + ", ".join(sorted(found))
        for uid, found in charsets.items()
        if len(found) > 1
    ]


def _character_set(path: str) -> str:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[0x00080005])
    except Exception:  # the scan read this file a moment ago; if it broke since, say so
        return "(unreadable)"
    value = ds.get("SpecificCharacterSet", "")
    if not isinstance(value, str):
        value = "\\".join(value)
    return value or "ISO_IR 6 (default)"
