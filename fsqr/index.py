"""The live index: patient -> study -> series -> instance, and path <-> SOP Instance UID.

It owns one lock and is the only structure threads share. Writers (the start-up scan, the
watcher, C-STORE) hold the lock briefly to add or remove records; readers (C-FIND, C-MOVE,
C-GET) copy immutable views out under the lock and do their matching outside it. Nothing here
reads a file or touches the network.

Two files may hold the same SOP Instance UID (a copy in another folder, say). Both are
remembered; the first one indexed is served, and deleting it reveals the other. A caller that
knows a file is the newer copy (C-STORE with `on_duplicate: replace`) asks for it to be served.

Files are also grouped by folder, so that a folder deleted, moved or rescanned costs a lookup
per folder under it rather than a pass over every file.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from fsqr.keys import Level
from fsqr.records import Instance, Parsed, Patient, Series, Study


@dataclass(frozen=True, slots=True)
class PatientView:
    patient: Patient
    patient_studies: int
    patient_series: int
    patient_instances: int
    first_path: str  # a file to read attributes the index does not hold


@dataclass(frozen=True, slots=True)
class StudyView:
    patient: Patient
    study: Study
    series: int
    instances: int
    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    first_path: str
    # The Study Root model returns the patient's counts at STUDY level (PS3.4 C.6.2.1.2).
    patient_studies: int
    patient_series: int
    patient_instances: int


@dataclass(frozen=True, slots=True)
class SeriesView:
    patient: Patient
    study: Study
    series: Series
    instances: int
    first_path: str


@dataclass(frozen=True, slots=True)
class InstanceView:
    patient: Patient
    study: Study
    series: Series
    instance: Instance

    @property
    def first_path(self) -> str:
        return self.instance.path


View = PatientView | StudyView | SeriesView | InstanceView


@dataclass(frozen=True, slots=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int
    files: int  # instances plus duplicate copies


@dataclass(slots=True, eq=False)
class _SeriesNode:
    record: Series
    instances: dict[str, Instance] = field(default_factory=dict)
    sop_classes: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True, eq=False)
class _StudyNode:
    record: Study
    series: dict[str, _SeriesNode] = field(default_factory=dict)
    instances: int = 0


@dataclass(slots=True, eq=False)
class _PatientNode:
    record: Patient
    studies: dict[str, _StudyNode] = field(default_factory=dict)
    instances: int = 0


class Index:
    """The in-memory index of one served tree. Thread-safe; every method takes the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._patients: dict[str, _PatientNode] = {}
        self._studies: dict[str, _StudyNode] = {}
        self._series: dict[str, _SeriesNode] = {}
        self._served: dict[str, Instance] = {}  # SOP Instance UID -> the copy that is served
        self._by_path: dict[str, Instance] = {}  # every indexed file
        # Copies of an already-served SOP Instance UID, oldest first, waiting to be revealed.
        self._waiting: dict[str, list[Parsed]] = {}
        self._by_folder: dict[str, set[str]] = {}  # folder -> the indexed files directly in it

    # -- writing ---------------------------------------------------------------------------

    def add(self, parsed: Parsed, *, serve: bool = False) -> None:
        """Index one file; a file already indexed under the same path is replaced.

        With `serve`, this file becomes the served copy of its SOP Instance UID even if another
        file already holds it; that one waits, first in line to be revealed again.
        """
        with self._lock:
            self._add(parsed, serve)

    def update(self, parsed: Parsed) -> bool:
        """`add`, unless this path is indexed at this size and mtime already; True if it added.

        The watcher indexes through here, so that its event for a file C-STORE has just
        written and indexed (and perhaps chosen to serve) changes nothing.
        """
        new = parsed.instance
        with self._lock:
            held = self._by_path.get(new.path)
            if held is not None and (held.size, held.mtime_ns) == (new.size, new.mtime_ns):
                return False
            self._add(parsed, serve=False)
            return True

    def _add(self, parsed: Parsed, serve: bool) -> None:
        path = parsed.instance.path
        self._remove_path(path)
        self._by_path[path] = parsed.instance
        self._by_folder.setdefault(os.path.dirname(path), set()).add(path)
        uid = parsed.instance.sop_instance_uid
        served = self._served.get(uid)
        if served is None:
            self._link(parsed)
        elif serve:
            demoted = self._parsed_of(served)
            self._unlink(served)
            self._link(parsed)
            self._waiting.setdefault(uid, []).insert(0, demoted)
        else:
            self._waiting.setdefault(uid, []).append(parsed)

    def add_many(self, parsed: Iterable[Parsed]) -> None:
        for p in parsed:
            self.add(p)

    def remove_path(self, path: str) -> Instance | None:
        """Forget the file at `path`; returns what it held, or None if it was not indexed."""
        with self._lock:
            return self._remove_path(path)

    def remove_under(self, folder: str) -> int:
        """Forget every file below `folder` (a folder deleted or moved out); returns how many."""
        with self._lock:
            paths = self._paths_under(folder)
            for p in paths:
                self._remove_path(p)
            return len(paths)

    def move(self, src: str, dest: str) -> int:
        """Re-file what was indexed at `src` (a file, or every file below a folder) under `dest`.

        A rename changes neither a file's content nor its size and mtime, so the records move
        as they are, without reading any file; the copy served stays the copy served. Files
        already indexed at the new paths are replaced. Returns how many files moved.
        """
        with self._lock:
            moves = [(src, dest)] if src in self._by_path else []
            prefix_length = len(src.rstrip(os.sep))
            moves += [(p, dest.rstrip(os.sep) + p[prefix_length:]) for p in self._paths_under(src)]
            for old_path, new_path in moves:
                if old_path != new_path:
                    self._move_path(old_path, new_path)
            return len(moves)

    def _move_path(self, old_path: str, new_path: str) -> None:
        self._remove_path(new_path)
        old = self._by_path.pop(old_path)
        self._forget_folder(old_path)
        new = replace(old, path=new_path)
        self._by_path[new_path] = new
        self._by_folder.setdefault(os.path.dirname(new_path), set()).add(new_path)
        uid = old.sop_instance_uid
        if self._served.get(uid) is old:
            self._served[uid] = new
            self._series[new.series_uid].instances[uid] = new
        else:
            self._waiting[uid] = [
                replace(p, instance=new) if p.instance is old else p for p in self._waiting[uid]
            ]

    def _paths_under(self, folder: str) -> list[str]:
        folder = folder.rstrip(os.sep)
        prefix = folder + os.sep
        return [
            path
            for name, paths in self._by_folder.items()
            if name == folder or name.startswith(prefix)
            for path in paths
        ]

    def _forget_folder(self, path: str) -> None:
        folder = os.path.dirname(path)
        paths = self._by_folder.get(folder)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_folder[folder]

    def _parsed_of(self, instance: Instance) -> Parsed:
        """The records a served instance is linked under, to file it among the waiting copies."""
        series = self._series[instance.series_uid].record
        study = self._studies[series.study_uid].record
        return Parsed(self._patients[study.patient_id].record, study, series, instance)

    def _remove_path(self, path: str) -> Instance | None:
        instance = self._by_path.pop(path, None)
        if instance is None:
            return None
        self._forget_folder(path)
        uid = instance.sop_instance_uid
        waiting = self._waiting.get(uid, [])
        if self._served.get(uid) is instance:
            self._unlink(instance)
            if waiting:
                self._link(waiting.pop(0))
        else:
            waiting[:] = [p for p in waiting if p.instance.path != path]
        if not waiting:
            self._waiting.pop(uid, None)
        return instance

    def _link(self, parsed: Parsed) -> None:
        # The latest file's attributes win at every level: what is on disk is what is served.
        # A study keeps the patient it was first filed under, and a series its study.
        patient = self._patients.get(parsed.patient.patient_id)
        if patient is None:
            patient = self._patients[parsed.patient.patient_id] = _PatientNode(parsed.patient)
        else:
            patient.record = parsed.patient
        study = self._studies.get(parsed.study.study_uid)
        if study is None:
            study = self._studies[parsed.study.study_uid] = _StudyNode(parsed.study)
            patient.studies[parsed.study.study_uid] = study
        else:
            study.record = parsed.study
            patient = self._patients[study.record.patient_id]
        series = self._series.get(parsed.series.series_uid)
        if series is None:
            series = self._series[parsed.series.series_uid] = _SeriesNode(parsed.series)
            study.series[parsed.series.series_uid] = series
        else:
            series.record = parsed.series
            study = self._studies[series.record.study_uid]
            patient = self._patients[study.record.patient_id]
        instance = parsed.instance
        series.instances[instance.sop_instance_uid] = instance
        series.sop_classes[instance.sop_class_uid] += 1
        study.instances += 1
        patient.instances += 1
        self._served[instance.sop_instance_uid] = instance

    def _unlink(self, instance: Instance) -> None:
        del self._served[instance.sop_instance_uid]
        series = self._series[instance.series_uid]
        study = self._studies[series.record.study_uid]
        patient = self._patients[study.record.patient_id]
        del series.instances[instance.sop_instance_uid]
        series.sop_classes[instance.sop_class_uid] -= 1
        if not series.sop_classes[instance.sop_class_uid]:
            del series.sop_classes[instance.sop_class_uid]
        study.instances -= 1
        patient.instances -= 1
        if not series.instances:
            del self._series[series.record.series_uid]
            del study.series[series.record.series_uid]
        if not study.series:
            del self._studies[study.record.study_uid]
            del patient.studies[study.record.study_uid]
        if not patient.studies:
            del self._patients[patient.record.patient_id]

    # -- reading ---------------------------------------------------------------------------

    def counts(self) -> Counts:
        with self._lock:
            return Counts(
                patients=len(self._patients),
                studies=len(self._studies),
                series=len(self._series),
                instances=len(self._served),
                files=len(self._by_path),
            )

    def instance_at(self, path: str) -> Instance | None:
        with self._lock:
            return self._by_path.get(path)

    def instance(self, sop_instance_uid: str) -> Instance | None:
        with self._lock:
            return self._served.get(sop_instance_uid)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._by_path)

    def stamps_under(self, folder: str) -> dict[str, tuple[int, int]]:
        """Size and mtime (ns) of every indexed file below `folder`, by path: what a rescan
        compares the disk with."""
        with self._lock:
            return {
                p: (self._by_path[p].size, self._by_path[p].mtime_ns)
                for p in self._paths_under(folder)
            }

    def candidates(self, level: Level, uids: dict[Level, Sequence[str]]) -> list[View]:
        """Views of every entity at `level`, narrowed by the unique keys in `uids`.

        `uids` maps a level to the values its Unique Key must take (a UID list, or one
        PatientID); levels absent from it are not narrowed. Narrowing looks entities up by
        key instead of scanning, and only ever drops entities that could not match, so the
        caller still matches every key.
        """
        patient_ids = uids.get(Level.PATIENT)
        study_uids = uids.get(Level.STUDY)
        with self._lock:
            if level is Level.PATIENT:
                return [self._patient_view(p) for p in self._patients_of(patient_ids)]
            if level is Level.STUDY:
                return [self._study_view(s) for s in self._studies_of(patient_ids, study_uids)]
            series = self._series_of(patient_ids, study_uids, uids.get(Level.SERIES))
            if level is Level.SERIES:
                return [self._series_view(s) for s in series]
            wanted = uids.get(Level.IMAGE)
            views: list[View] = []
            for node in series:
                study = self._studies[node.record.study_uid]
                patient = self._patients[study.record.patient_id].record
                if wanted is None:
                    chosen: Iterable[Instance] = node.instances.values()
                else:
                    chosen = [
                        node.instances[u] for u in dict.fromkeys(wanted) if u in node.instances
                    ]
                views.extend(InstanceView(patient, study.record, node.record, i) for i in chosen)
            return views

    def _patients_of(self, patient_ids: Sequence[str] | None) -> list[_PatientNode]:
        if patient_ids is None:
            return list(self._patients.values())
        return [self._patients[k] for k in dict.fromkeys(patient_ids) if k in self._patients]

    def _studies_of(
        self, patient_ids: Sequence[str] | None, study_uids: Sequence[str] | None
    ) -> list[_StudyNode]:
        if study_uids is None:
            return [s for p in self._patients_of(patient_ids) for s in p.studies.values()]
        found = [self._studies[u] for u in dict.fromkeys(study_uids) if u in self._studies]
        if patient_ids is not None:
            found = [s for s in found if s.record.patient_id in patient_ids]
        return found

    def _series_of(
        self,
        patient_ids: Sequence[str] | None,
        study_uids: Sequence[str] | None,
        series_uids: Sequence[str] | None,
    ) -> list[_SeriesNode]:
        if series_uids is None:
            studies = self._studies_of(patient_ids, study_uids)
            return [x for s in studies for x in s.series.values()]
        found = [self._series[u] for u in dict.fromkeys(series_uids) if u in self._series]
        if patient_ids is not None or study_uids is not None:
            allowed = {s.record.study_uid for s in self._studies_of(patient_ids, study_uids)}
            found = [x for x in found if x.record.study_uid in allowed]
        return found

    def _patient_view(self, p: _PatientNode) -> PatientView:
        return PatientView(
            patient=p.record,
            patient_studies=len(p.studies),
            patient_series=sum(len(s.series) for s in p.studies.values()),
            patient_instances=p.instances,
            first_path=self._first_path(next(iter(p.studies.values()))),
        )

    def _study_view(self, s: _StudyNode) -> StudyView:
        modalities = {x.record.get("Modality") for x in s.series.values()} - {""}
        sop_classes = {c for x in s.series.values() for c in x.sop_classes}
        patient = self._patients[s.record.patient_id]
        return StudyView(
            patient=patient.record,
            study=s.record,
            series=len(s.series),
            instances=s.instances,
            modalities=tuple(sorted(modalities)),
            sop_classes=tuple(sorted(sop_classes)),
            first_path=self._first_path(s),
            patient_studies=len(patient.studies),
            patient_series=sum(len(x.series) for x in patient.studies.values()),
            patient_instances=patient.instances,
        )

    def _series_view(self, s: _SeriesNode) -> SeriesView:
        study = self._studies[s.record.study_uid]
        return SeriesView(
            patient=self._patients[study.record.patient_id].record,
            study=study.record,
            series=s.record,
            instances=len(s.instances),
            first_path=next(iter(s.instances.values())).path,
        )

    @staticmethod
    def _first_path(study: _StudyNode) -> str:
        return next(iter(next(iter(study.series.values())).instances.values())).path
