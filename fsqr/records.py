"""What the index remembers of a file: one frozen record per level, holding only str and int.

A record holds the attributes of its own level once (`values`, in the order of
`keys.indexed_keys(level)`), plus the UIDs that link it to its parent. Records are immutable so
that threads can share them without locks, and picklable so that the start-up scan can build
them in worker processes. Nothing here does I/O or knows about networking.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

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


def _shared(text: str) -> str:
    """The one interned copy of `text`, a plain str even if given a subclass (pydicom's UID)."""
    return sys.intern(str(text))


# A file's stamp, one int: mtime (ns) in the high bits, then the ctime (ns), then the size.
# Equal stamps mean the same file, unchanged, as far as stat can tell. The ctime is the
# system's own: set on every write, replacement or chmod, and no tool can set it back, so a
# file rewritten with its size and mtime kept (`cp -p` onto it, which keeps the inode too; a
# restore) is still told apart. One int costs no more than two here: Python allocates ints in
# 16-byte steps, and the ctime's bits fit in the step the size and mtime already take.
_SIZE_BITS = 48
_SIZE_MASK = (1 << _SIZE_BITS) - 1
_CTIME_BITS = 64
_CTIME_MASK = (1 << _CTIME_BITS) - 1


def file_stamp(size: int, mtime_ns: int, ctime_ns: int) -> int:
    """Size, mtime and ctime as one int (see `Instance.stamp`); 0 means "not known".

    >>> mtime = 1_700_000_000_123_456_789
    >>> file_stamp(1234, mtime, 42) == file_stamp(1234, mtime, 43), file_stamp(0, 0, 0)
    (False, 0)
    """
    return (
        (mtime_ns << (_SIZE_BITS + _CTIME_BITS))
        | ((ctime_ns & _CTIME_MASK) << _SIZE_BITS)
        | (min(size, _SIZE_MASK))
    )


def stat_stamp(st: os.stat_result) -> int:
    """The stamp of a file as `os.stat` or `os.fstat` describes it."""
    return file_stamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fill(  # noqa: PLR0917 (every field of an Instance, in order)
    instance: Instance,
    sop_instance_uid: str,
    series_uid: str,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    folder: str,
    name: str,
    stamp: int,
    values: tuple[str, ...],
) -> None:
    """Set an Instance's fields: frozen, so object.__setattr__ is the only way in; unrolled, as
    a scan or a snapshot read back makes millions."""
    put = object.__setattr__
    put(instance, "sop_instance_uid", sop_instance_uid)
    put(instance, "series_uid", series_uid)
    put(instance, "sop_class_uid", sop_class_uid)
    put(instance, "transfer_syntax_uid", transfer_syntax_uid)
    put(instance, "folder", folder)
    put(instance, "name", name)
    put(instance, "stamp", stamp)
    put(instance, "values", values)


@dataclass(frozen=True, slots=True, init=False)
class Instance:
    """One file of an instance. Made from a `path` (or, as `replace` does, a folder and name).

    A million of these make up most of the index, so each is held lean. The path is held in two
    parts, `folder` (ending in the separator) and `name`, so that the files of a folder share one
    copy of the folder's path; `path` puts them together again, exactly as given. Size and
    mtime and ctime, which only ever serve together to tell whether a file changed, share one
    integer, `stamp`; `size`, `mtime_ns` and `ctime_ns` take it apart.

    >>> from dataclasses import replace
    >>> i = Instance("1.9", "1.8", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2", "/d/a.dcm")
    >>> i.folder, i.name, i.path, replace(i, size=3).path
    ('/d/', 'a.dcm', '/d/a.dcm', '/d/a.dcm')
    >>> j = replace(i, size=1234, mtime_ns=-5)
    >>> (j.size, j.mtime_ns), (replace(j, size=7).size, replace(j, size=7).mtime_ns)
    ((1234, -5), (7, -5))
    >>> k = replace(j, ctime_ns=99)
    >>> k.size, k.mtime_ns, k.ctime_ns, replace(k, size=8).ctime_ns
    (1234, -5, 99, 99)
    """

    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    folder: str  # the file's folder as found under the root, with its trailing separator
    name: str  # the file's name in that folder
    stamp: int  # size, mtime and ctime (ns) from stat at indexing time: see `file_stamp`
    values: tuple[str, ...]

    def __init__(  # noqa: PLR0917 (positional, as the plain dataclass it replaced)
        self,
        sop_instance_uid: str,
        series_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        path: str | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        values: tuple[str, ...] = (),
        *,
        folder: str = "",
        name: str = "",
        stamp: int = 0,
        ctime_ns: int | None = None,
    ) -> None:
        if path is not None:
            cut = path.rfind(os.sep) + 1
            folder, name = path[:cut], path[cut:]
        sop_instance_uid = str(sop_instance_uid)  # a plain str, even from pydicom's UID
        if values and values[0] == sop_instance_uid:
            values = (sop_instance_uid, *values[1:])  # the UID once, not twice
        # Interned: the instances of a folder and series share one copy of each. (Records made
        # by the scan's worker processes keep this sharing through pickle, chunk by chunk.)
        series_uid, folder, name = _shared(series_uid), _shared(folder), _shared(name)
        sop_class_uid, transfer_syntax_uid = _shared(sop_class_uid), _shared(transfer_syntax_uid)
        if size is not None or mtime_ns is not None or ctime_ns is not None:
            size = stamp & _SIZE_MASK if size is None else size
            mtime_ns = stamp >> (_SIZE_BITS + _CTIME_BITS) if mtime_ns is None else mtime_ns
            ctime_ns = (stamp >> _SIZE_BITS) & _CTIME_MASK if ctime_ns is None else ctime_ns
            stamp = file_stamp(size, mtime_ns, ctime_ns)
        _fill(
            self,
            sop_instance_uid,
            series_uid,
            sop_class_uid,
            transfer_syntax_uid,
            folder,
            name,
            stamp,
            values,
        )

    @classmethod
    def of_shared(  # noqa: PLR0917 (every field, in order)
        cls,
        sop_instance_uid: str,
        series_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        folder: str,
        name: str,
        stamp: int,
        values: tuple[str, ...],
    ) -> Instance:
        """A record from fields that are already as `__init__` would make them: plain strings,
        shared (interned) where they repeat, a stamp. For a whole index at once (a snapshot read
        back, whose strings come out of `marshal` shared as they went in), at a third the cost.
        """
        instance = cls.__new__(cls)
        _fill(
            instance,
            sop_instance_uid,
            series_uid,
            sop_class_uid,
            transfer_syntax_uid,
            folder,
            name,
            stamp,
            values,
        )
        return instance

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its fields, rebuilt by `of_shared`: the scan's helper processes send a
        record per file, and a dataclass's own way (a dict of its slots, set back one by one
        in Python) took twice as long each way.

        >>> import pickle
        >>> i = Instance("1.9", "1.8", "1.2", "1.2.840.10008.1.2", "/d/a.dcm", 5, 7, ("1.9",))
        >>> pickle.loads(pickle.dumps(i)) == i
        True
        """
        return Instance.of_shared, _fields_of(self)

    @property
    def path(self) -> str:
        """The file's path as found under the root."""
        return self.folder + self.name

    @property
    def size(self) -> int:
        """Bytes, from stat at indexing time (at most 256 TiB: larger is held as that)."""
        return self.stamp & _SIZE_MASK

    @property
    def mtime_ns(self) -> int:
        """From stat at indexing time: a changed file no longer matches it."""
        return self.stamp >> (_SIZE_BITS + _CTIME_BITS)

    @property
    def ctime_ns(self) -> int:
        """From stat at indexing time (0 when not known): a file written since has another."""
        return (self.stamp >> _SIZE_BITS) & _CTIME_MASK

    def get(self, keyword: str) -> str:
        return self.values[value_position(Level.IMAGE, keyword)]

    def restamped(self, size: int, mtime_ns: int, ctime_ns: int) -> Instance:
        """The same record, for its file at this size, mtime and ctime (as stat gives them)."""
        return Instance(
            self.sop_instance_uid,
            self.series_uid,
            self.sop_class_uid,
            self.transfer_syntax_uid,
            None,
            size,
            mtime_ns,
            self.values,
            folder=self.folder,
            name=self.name,
            ctime_ns=ctime_ns,
        )


# An Instance's fields in their order, which is also `Instance.of_shared`'s.
_fields_of = attrgetter(*(f.name for f in fields(Instance)))


@dataclass(frozen=True, slots=True)
class Parsed:
    """One file's header, split into the records of its four levels."""

    patient: Patient
    study: Study
    series: Series
    instance: Instance

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Parsed, (self.patient, self.study, self.series, self.instance)  # as Instance's


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file the scan could not index, and why (shown in logs and by `fsqr ls`).

    `stamp` is the file's as it was read (`file_stamp`), or 0 when not known: an index
    snapshot remembers a skipped file by it, so that an unchanged one is not read again.
    """

    path: str
    reason: str
    stamp: int = 0
