"""The live index: patient -> study -> series -> instance, and path <-> SOP Instance UID.

It owns one lock and is the only structure threads share. Writers (the start-up scan, the
watcher, C-STORE) hold the lock briefly to add or remove records; readers (C-FIND, C-MOVE,
C-GET) copy immutable records out under the lock and do their matching outside it. Nothing here
reads a file or touches the network.

Reading costs what is asked for, not what is indexed. A unique key is a dict lookup at every
level (a SOP Instance UID alone included). `entities` copies out records only, one small object
per candidate; `views` adds the computed attributes (counts, ModalitiesInStudy) for the few a
query matched. `candidates` does both at once, for callers that want every view.

Built for a million instances: what repeats is shared. A study's attributes are held once per
study, an instance's folder path once per folder (`Instance.folder`, interned with the other
repeated strings when a record is made), a series lists its instances by UID rather than in a
dict of its own, and a file is found by folder and name, not through a dict of full paths.

Two files may hold the same SOP Instance UID (a copy in another folder, say). Both are
remembered; the first one indexed is served, and deleting it reveals the other. A caller that
knows a file is the newer copy (C-STORE with `on_duplicate: replace`) asks for it to be served.

Files are also grouped by folder, so that a folder deleted, moved or rescanned costs a lookup
per folder under it rather than a pass over every file. And patients are also held by the folded
terms of their PatientName (`names.PatientNames`, kept in step whenever a patient comes, goes or
is renamed by a later file), so that a name key with a literal start ("DOE^*") looks up the few
patients it may match (`patients_named`) rather than every patient being matched.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from fsqr.keys import Level, value_position
from fsqr.names import PatientNames
from fsqr.records import Instance, Parsed, Patient, Series, Study

_NAME = value_position(Level.PATIENT, "PatientName")  # where a Patient record holds it


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
class Entity:
    """One entity at `level` as its records alone, None below the level: what matching reads.

    Copied out of the index at the cost of one small object; `Index.views` turns the entities
    that match into views with their computed attributes.
    """

    level: Level
    patient: Patient
    study: Study | None = None
    series: Series | None = None
    instance: Instance | None = None


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
    # The file whose attributes `record` last took: when it goes and others stay, the record
    # is read again from one of them (`stale_sources`), so that what it says is on disk.
    source: Instance | None = None
    # SOP Instance UIDs, in the order indexed; the records are in Index._served. A list, not a
    # dict: a dict entry per instance would cost a twentieth of the index.
    instances: list[str] = field(default_factory=list)
    sop_classes: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True, eq=False)
class _StudyNode:
    record: Study
    # The patient as this study's latest file describes it: in the Study Root model patient
    # attributes are attributes of the study (PS3.4 C.6.2.1.2), and two studies filed under one
    # PatientID may well say different names. The patient's own node holds the latest of all.
    patient: Patient
    source: Instance | None = None  # the file `record` and `patient` last came from
    series: dict[str, _SeriesNode] = field(default_factory=dict)
    instances: int = 0


@dataclass(slots=True, eq=False)
class _PatientNode:
    record: Patient
    # Patients are held in the order first indexed; this says where, to keep that order when
    # patients are found by name.
    order: int
    source: Instance | None = None  # the file `record` last came from
    studies: dict[str, _StudyNode] = field(default_factory=dict)
    instances: int = 0


class Index:
    """The in-memory index of one served tree. Thread-safe; every method takes the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._empty()

    def _empty(self) -> None:
        self._patients: dict[str, _PatientNode] = {}
        self._patients_made = 0  # the next _PatientNode.order
        self._names = PatientNames()  # every patient by the folded terms of its PatientName
        self._studies: dict[str, _StudyNode] = {}
        self._series: dict[str, _SeriesNode] = {}
        self._served: dict[str, Instance] = {}  # SOP Instance UID -> the copy that is served
        # Every indexed file: folder (with its trailing separator, as Instance.folder) -> name
        # -> record. No dict of full paths: a folder's path is held once, however many files.
        self._files: dict[str, dict[str, Instance]] = {}
        # Copies of an already-served SOP Instance UID, oldest first, waiting to be revealed.
        self._waiting: dict[str, list[Parsed]] = {}
        # Nodes whose source file is gone while other files keep them: their records are to be
        # read again from a file still there (`stale_sources`, `refresh`).
        self._stale: dict[int, _SeriesNode | _StudyNode | _PatientNode] = {}

    # -- writing ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every file (a start-up whose snapshot proved unusable reads them all)."""
        with self._lock:
            self._empty()

    def add(self, parsed: Parsed, *, serve: bool = False) -> None:
        """Index one file; a file already indexed under the same path is replaced.

        With `serve`, this file becomes the served copy of its SOP Instance UID even if another
        file already holds it; that one waits, first in line to be revealed again.
        """
        with self._lock:
            self._add(parsed, serve)

    def update(self, parsed: Parsed) -> bool:
        """`add`, unless this path is indexed at this size, mtime and ctime already; True if it
        added.

        The watcher indexes through here, so that its event for a file C-STORE has just
        written and indexed (and perhaps chosen to serve) changes nothing.
        """
        new = parsed.instance
        with self._lock:
            held = self._at(new.path)
            if held is not None and held.stamp == new.stamp:
                return False
            self._add(parsed, serve=False)
            return True

    def _add(self, parsed: Parsed, serve: bool) -> None:
        instance = parsed.instance
        filed = self._files.get(instance.folder)
        if filed is not None and instance.name in filed:  # a file indexed again: the old goes
            old = filed[instance.name]
            # The copy served, read again as the same instance (rewritten in place), stays the
            # copy served: removing it first would reveal an older copy of it instead.
            uid = instance.sop_instance_uid
            serve = serve or (old.sop_instance_uid == uid and self._served.get(uid) is old)
            self._remove_path(instance.path)
        self._file(instance)
        uid = instance.sop_instance_uid
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
        """`add` each, under one hold of the lock (a whole index from a snapshot at once)."""
        with self._lock:
            for p in parsed:
                self._add(p, False)

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
            moves = [(src, dest)] if self._at(src) is not None else []
            prefix_length = len(src.rstrip(os.sep))
            moves += [(p, dest.rstrip(os.sep) + p[prefix_length:]) for p in self._paths_under(src)]
            for old_path, new_path in moves:
                if old_path != new_path:
                    self._move_path(old_path, new_path)
            return len(moves)

    def stale_sources(self) -> list[str]:
        """Files to read again, and hand to `refresh`: one for each patient, study or series
        whose records came from a file that is gone while other files keep it, the latest
        indexed of those (so the records say what a file on disk says). Each is told once."""
        if not self._stale:  # the watcher asks after every burst of changes: mostly none
            return []
        with self._lock:
            stale, self._stale = self._stale, {}
            paths: dict[str, None] = {}
            for node in stale.values():
                if node.source is not None or not self._holds(node):
                    continue  # a later file gave it records since, or it has gone meanwhile
                below = (
                    next(reversed(node.studies.values()))
                    if isinstance(node, _PatientNode)
                    else node
                )
                series = (
                    next(reversed(below.series.values()))
                    if isinstance(below, _StudyNode)
                    else below
                )
                assert isinstance(series, _SeriesNode)
                paths[self._served[series.instances[-1]].path] = None
            return list(paths)

    def _holds(self, node: _SeriesNode | _StudyNode | _PatientNode) -> bool:
        """True if `node` is still in the index, with files under it."""
        if isinstance(node, _SeriesNode):
            return self._series.get(node.record.series_uid) is node and bool(node.instances)
        if isinstance(node, _StudyNode):
            return self._studies.get(node.record.study_uid) is node and bool(node.series)
        return self._patients.get(node.record.patient_id) is node and bool(node.studies)

    def refresh(self, parsed: Parsed) -> bool:
        """Take the records of a file read again for `stale_sources`, if it is still the copy
        served, unchanged since indexed; True if they were taken."""
        fresh = parsed.instance
        with self._lock:
            served = self._served.get(fresh.sop_instance_uid)
            if served is None or served.path != fresh.path:
                return False
            if served.series_uid != fresh.series_uid:
                return False  # rewritten, its size and mtime kept: its own event says so
            if (served.size, served.mtime_ns) != (fresh.size, fresh.mtime_ns):
                return False  # changed since: its own event indexes it again
            self._nodes(parsed, served)
            return True

    def _move_path(self, old_path: str, new_path: str) -> None:
        self._remove_path(new_path)
        old = self._unfile(old_path)
        if old is None:
            return
        new = Instance(
            old.sop_instance_uid,
            old.series_uid,
            old.sop_class_uid,
            old.transfer_syntax_uid,
            new_path,
            values=old.values,
            stamp=old.stamp,
        )
        self._file(new)
        uid = old.sop_instance_uid
        if self._served.get(uid) is old:
            self._served[uid] = new
            series = self._series[old.series_uid]
            study = self._studies[series.record.study_uid]
            for node in (series, study, self._patients[study.record.patient_id]):
                if node.source is old:
                    node.source = new
        else:
            self._waiting[uid] = [
                replace(p, instance=new) if p.instance is old else p for p in self._waiting[uid]
            ]

    def _paths_under(self, folder: str) -> list[str]:
        prefix = folder.rstrip(os.sep) + os.sep
        return [
            held + name
            for held, files in self._files.items()
            if held.startswith(prefix)
            for name in files
        ]

    def _at(self, path: str) -> Instance | None:
        cut = path.rfind(os.sep) + 1
        files = self._files.get(path[:cut])
        return None if files is None else files.get(path[cut:])

    def _file(self, instance: Instance) -> None:
        self._files.setdefault(instance.folder, {})[instance.name] = instance

    def _unfile(self, path: str) -> Instance | None:
        cut = path.rfind(os.sep) + 1
        files = self._files.get(path[:cut])
        if files is None:
            return None
        instance = files.pop(path[cut:], None)
        if not files:
            del self._files[path[:cut]]
        return instance

    def _parsed_of(self, instance: Instance) -> Parsed:
        """The records a served instance is linked under, to file it among the waiting copies."""
        series = self._series[instance.series_uid].record
        study = self._studies[series.study_uid]
        return Parsed(study.patient, study.record, series, instance)

    def _remove_path(self, path: str) -> Instance | None:
        instance = self._unfile(path)
        if instance is None:
            return None
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
        p, st, se = parsed.patient, parsed.study, parsed.series
        series = self._series.get(se.series_uid)
        if series is not None and series.record is se:
            # The very records its series was last filed with (the files of a snapshot or of a
            # scan's chunk share them): only the instance is new, and the sources stand.
            its_study = self._studies[se.study_uid]
            if its_study.record is st and its_study.patient is p:
                its_patient = self._patients[st.patient_id]
                if its_patient.record is p:
                    self._link_instance(parsed.instance, series, its_study, its_patient)
                    return
        self._link_instance(parsed.instance, *self._nodes(parsed, parsed.instance))

    def _nodes(
        self, parsed: Parsed, source: Instance
    ) -> tuple[_SeriesNode, _StudyNode, _PatientNode]:
        """The nodes `parsed` is filed under, made where missing, their records now `parsed`'s
        (taken from the file `source`).

        The latest file's attributes win at every level: what is on disk is what is served.
        But a series stays in the study it was first filed under, and a study with its first
        patient, whatever a later file says: each record keeps the links of its node, so
        that every node is found under its parent and no parent is left empty.
        """
        p, st, se = parsed.patient, parsed.study, parsed.series
        series = self._series.get(se.series_uid)
        study = (
            self._studies[series.record.study_uid] if series else self._studies.get(st.study_uid)
        )
        patient = (
            self._patients[study.record.patient_id] if study else self._patients.get(p.patient_id)
        )
        if patient is None:
            patient = self._patients[p.patient_id] = _PatientNode(p, self._patients_made, source)
            self._patients_made += 1
            self._names.add(p.patient_id, p.values[_NAME])
        elif patient.record.patient_id == p.patient_id:
            self._rename(p.patient_id, patient.record, p)
            patient.record = p
            self._sourced(patient, source)
        if study is None:
            study = self._studies[st.study_uid] = _StudyNode(st, p, source)
            patient.studies[st.study_uid] = study
            self._names.add(p.patient_id, p.values[_NAME])
        elif study.record.study_uid == st.study_uid:
            held = study.record.patient_id
            study.record = st if st.patient_id == held else replace(st, patient_id=held)
            self._sourced(study, source)
            if p.patient_id == held:  # a file that disagrees on the patient does not rename it
                self._rename(held, study.patient, p)
                study.patient = p
        if series is None:
            series = self._series[se.series_uid] = _SeriesNode(se, source)
            study.series[se.series_uid] = series
        else:
            held = series.record.study_uid
            series.record = se if se.study_uid == held else replace(se, study_uid=held)
            self._sourced(series, source)
        return series, study, patient

    def _sourced(self, node: _SeriesNode | _StudyNode | _PatientNode, source: Instance) -> None:
        node.source = source
        if self._stale:
            self._stale.pop(id(node), None)

    def _rename(self, patient_id: str, old: Patient, new: Patient) -> None:
        """Keep the names index in step when a record of `patient_id` goes from `old` to `new`."""
        if old.values[_NAME] != new.values[_NAME]:
            self._names.remove(patient_id, old.values[_NAME])
            self._names.add(patient_id, new.values[_NAME])

    def _link_instance(
        self, instance: Instance, series: _SeriesNode, study: _StudyNode, patient: _PatientNode
    ) -> None:
        series.instances.append(instance.sop_instance_uid)
        series.sop_classes[instance.sop_class_uid] += 1
        study.instances += 1
        patient.instances += 1
        self._served[instance.sop_instance_uid] = instance

    def _unlink(self, instance: Instance) -> None:
        del self._served[instance.sop_instance_uid]
        series = self._series[instance.series_uid]
        study = self._studies[series.record.study_uid]
        patient = self._patients[study.record.patient_id]
        series.instances.remove(instance.sop_instance_uid)
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
            self._names.remove(patient.record.patient_id, study.patient.values[_NAME])
        if not patient.studies:
            del self._patients[patient.record.patient_id]
            self._names.remove(patient.record.patient_id, patient.record.values[_NAME])
        nodes: tuple[_SeriesNode | _StudyNode | _PatientNode, ...] = (series, study, patient)
        kept = (series.instances, study.series, patient.studies)
        for node, left in zip(nodes, kept, strict=True):
            if node.source is instance and left:  # others keep it: its records may be stale
                node.source = None
                self._stale[id(node)] = node

    # -- reading ---------------------------------------------------------------------------

    def counts(self) -> Counts:
        with self._lock:
            return Counts(
                patients=len(self._patients),
                studies=len(self._studies),
                series=len(self._series),
                instances=len(self._served),
                files=sum(len(files) for files in self._files.values()),
            )

    def instance_at(self, path: str) -> Instance | None:
        with self._lock:
            return self._at(path)

    def instance(self, sop_instance_uid: str) -> Instance | None:
        with self._lock:
            return self._served.get(sop_instance_uid)

    def files(self) -> list[Parsed]:
        """Every indexed file as its records: a served copy under the records it is linked
        under (what is served), a waiting copy as it was read. What an index snapshot keeps."""
        with self._lock:
            waiting = [p for copies in self._waiting.values() for p in copies]
            return [self._parsed_of(i) for i in self._served.values()] + waiting

    def paths(self) -> list[str]:
        with self._lock:
            return [folder + name for folder, files in self._files.items() for name in files]

    def stamps_under(self, folder: str) -> dict[str, tuple[int, int, int]]:
        """Size, mtime and ctime (ns) of every indexed file below `folder`, by path: what a
        rescan compares the disk with (the ctime catches a file rewritten with its size and
        mtime kept, as a warm restart's check does)."""
        with self._lock:
            prefix = folder.rstrip(os.sep) + os.sep
            return {
                held + name: (instance.size, instance.mtime_ns, instance.ctime_ns)
                for held, files in self._files.items()
                if held.startswith(prefix)
                for name, instance in files.items()
            }

    def candidates(self, level: Level, uids: dict[Level, Sequence[str]]) -> list[View]:
        """Views of every entity at `level`, narrowed by the unique keys in `uids`.

        `uids` maps a level to the values its Unique Key must take (a UID list, or PatientIDs);
        levels absent from it are not narrowed. Narrowing looks entities up by key instead of
        scanning, and only ever drops entities that could not match, so the caller still
        matches every key. Each view carries the level's computed attributes, which costs work
        per entity: a query matches `entities` first and asks for `views` of the matches only.
        """
        with self._lock:
            return self._views(self._entities(level, uids))

    def patients_named(self, prefixes: Iterable[str]) -> list[str]:
        """The PatientIDs of the patients whose PatientName may match a key with these literal
        starts (`matching.person_name_prefixes`), in the order `entities` gives patients.

        A range lookup in the names, not a pass over the patients; like unique keys, it only
        leaves out patients that cannot match, so the caller still matches every one.
        """
        with self._lock:
            found = [self._patients[k] for k in self._names.candidates(prefixes)]
            return [p.record.patient_id for p in sorted(found, key=lambda p: p.order)]

    def study_patients(self, uids: dict[Level, Sequence[str]]) -> list[Patient]:
        """The patient records the studies of the patients narrowed by `uids` answer with (each
        study's own, `_StudyNode.patient`), each once: what patient keys are matched on below
        the PATIENT level."""
        with self._lock:
            return [
                record
                for p in self._patients_of(uids.get(Level.PATIENT))
                for record in {id(s.patient): s.patient for s in p.studies.values()}.values()
            ]

    def entities(self, level: Level, uids: dict[Level, Sequence[str]]) -> list[Entity]:
        """The entities at `level` narrowed by `uids` (as in `candidates`), as records only.

        Cheap: one small object per entity, nothing counted. Match these outside the lock and
        ask `views` for the few that match.
        """
        with self._lock:
            return self._entities(level, uids)

    def views(self, entities: Iterable[Entity]) -> list[View]:
        """Full views, computed attributes included, of those `entities` still indexed."""
        with self._lock:
            return self._views(entities)

    def _entities(self, level: Level, uids: dict[Level, Sequence[str]]) -> list[Entity]:
        patient_ids = uids.get(Level.PATIENT)
        study_uids = uids.get(Level.STUDY)
        if level is Level.PATIENT:
            return [Entity(level, p.record) for p in self._patients_of(patient_ids)]
        if level is Level.STUDY:
            return [
                Entity(level, s.patient, s.record)
                for s in self._studies_of(patient_ids, study_uids)
            ]
        series_uids = uids.get(Level.SERIES)
        wanted = uids.get(Level.IMAGE)
        if level is Level.IMAGE and wanted is not None:
            return self._instances_of(patient_ids, study_uids, series_uids, wanted)
        found: list[Entity] = []
        for node in self._series_of(patient_ids, study_uids, series_uids):
            study_node = self._studies[node.record.study_uid]
            study, patient = study_node.record, study_node.patient
            if level is Level.SERIES:
                found.append(Entity(level, patient, study, node.record))
                continue
            found.extend(
                Entity(level, patient, study, node.record, self._served[u]) for u in node.instances
            )
        return found

    def _views(self, entities: Iterable[Entity]) -> list[View]:
        views: list[View] = []
        for e in entities:
            if e.instance is not None and e.study is not None and e.series is not None:
                views.append(InstanceView(e.patient, e.study, e.series, e.instance))
            elif e.series is not None:
                series = self._series.get(e.series.series_uid)
                if series is not None:
                    views.append(self._series_view(series))
            elif e.study is not None:
                study = self._studies.get(e.study.study_uid)
                if study is not None:
                    views.append(self._study_view(study))
            else:
                patient = self._patients.get(e.patient.patient_id)
                if patient is not None:
                    views.append(self._patient_view(patient))
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
            allowed = set(patient_ids)
            found = [s for s in found if s.record.patient_id in allowed]
        return found

    def _instances_of(
        self,
        patient_ids: Sequence[str] | None,
        study_uids: Sequence[str] | None,
        series_uids: Sequence[str] | None,
        sop_uids: Sequence[str],
    ) -> list[Entity]:
        """Instances looked up by SOP Instance UID, then kept if they lie in what the levels
        above are narrowed to."""
        instances = [self._served[u] for u in dict.fromkeys(sop_uids) if u in self._served]
        if patient_ids is not None or study_uids is not None or series_uids is not None:
            allowed = {
                x.record.series_uid for x in self._series_of(patient_ids, study_uids, series_uids)
            }
            instances = [i for i in instances if i.series_uid in allowed]
        found = []
        for i in instances:
            series = self._series[i.series_uid].record
            study = self._studies[series.study_uid]
            found.append(Entity(Level.IMAGE, study.patient, study.record, series, i))
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
            patient=s.patient,
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
            patient=study.patient,
            study=study.record,
            series=s.record,
            instances=len(s.instances),
            first_path=self._served[s.instances[0]].path,
        )

    def _first_path(self, study: _StudyNode) -> str:
        return self._served[next(iter(study.series.values())).instances[0]].path
