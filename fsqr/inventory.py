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
    """Scan `root` as the server's start-up scan does, and lint what it finds."""
    paths = sorted(walk(root))
    inventory = Inventory(root=str(root), files=len(paths))
    parsed: list[Parsed] = []
    for result in scan_files(paths, workers):
        if isinstance(result, Parsed):
            parsed.append(result)
        else:
            inventory.skipped.append(result)
    inventory.skipped.sort(key=lambda s: s.path)
    parsed.sort(key=lambda p: p.instance.path)
    served = _file_into_tree(inventory, parsed)
    inventory.problems = [
        *_duplicates(parsed),
        *_conflicting_patients(parsed),
        *_studies_under_two_patients(parsed),
        *_mixed_character_sets(served),
    ]
    return inventory


def _file_into_tree(inventory: Inventory, parsed: Iterable[Parsed]) -> list[Parsed]:
    """Add each instance to the tree once (the first file of a SOP Instance UID is served)."""
    seen: set[str] = set()
    served = []
    for p in parsed:
        if p.instance.sop_instance_uid in seen:
            continue
        seen.add(p.instance.sop_instance_uid)
        served.append(p)
        patient = inventory.patients.setdefault(
            p.patient.patient_id,
            PatientEntry(p.patient.patient_id, p.patient.get("PatientName")),
        )
        study = patient.studies.setdefault(
            p.study.study_uid,
            StudyEntry(
                p.study.study_uid,
                p.study.get("StudyDate"),
                p.study.get("StudyDescription"),
                p.study.get("AccessionNumber"),
            ),
        )
        series = study.series.setdefault(
            p.series.series_uid,
            SeriesEntry(
                p.series.series_uid,
                p.series.get("SeriesNumber"),
                p.series.get("Modality"),
                p.series.get("SeriesDescription"),
            ),
        )
        series.instances += 1
    return served


def _duplicates(parsed: Iterable[Parsed]) -> list[str]:
    paths: dict[str, list[str]] = defaultdict(list)
    for p in parsed:
        paths[p.instance.sop_instance_uid].append(p.instance.path)
    return [
        f"SOP Instance UID {uid} is in {len(files)} files (the first is served): "
        + ", ".join(files)
        for uid, files in paths.items()
        if len(files) > 1
    ]


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


def _mixed_character_sets(parsed: Iterable[Parsed]) -> list[str]:
    """Studies whose files declare different Specific Character Sets (0008,0005)."""
    charsets: dict[str, set[str]] = defaultdict(set)
    for p in parsed:
        charsets[p.study.study_uid].add(_character_set(p.instance.path))
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
