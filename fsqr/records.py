"""What the index remembers of a file: one frozen record per level, holding only str and int.

A record holds the attributes of its own level once (`values`, in the order of
`keys.indexed_keys(level)`), plus the UIDs that link it to its parent. Records are immutable so
that threads can share them without locks, and picklable so that the start-up scan can build
them in worker processes. Nothing here does I/O or knows about networking.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsqr.keys import Level, value_position


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    values: tuple[str, ...]

    def get(self, keyword: str) -> str:
        return self.values[value_position(Level.PATIENT, keyword)]


@dataclass(frozen=True, slots=True)
class Study:
    study_uid: str
    patient_id: str
    values: tuple[str, ...]

    def get(self, keyword: str) -> str:
        return self.values[value_position(Level.STUDY, keyword)]


@dataclass(frozen=True, slots=True)
class Series:
    series_uid: str
    study_uid: str
    values: tuple[str, ...]

    def get(self, keyword: str) -> str:
        return self.values[value_position(Level.SERIES, keyword)]


@dataclass(frozen=True, slots=True)
class Instance:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str  # absolute path of the file as found under the root
    size: int  # bytes, from stat at indexing time
    mtime_ns: int  # from stat at indexing time: a changed file no longer matches it
    values: tuple[str, ...]

    def get(self, keyword: str) -> str:
        return self.values[value_position(Level.IMAGE, keyword)]


@dataclass(frozen=True, slots=True)
class Parsed:
    """One file's header, split into the records of its four levels."""

    patient: Patient
    study: Study
    series: Series
    instance: Instance


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file the scan could not index, and why (shown in logs and by `fsqr ls`)."""

    path: str
    reason: str
