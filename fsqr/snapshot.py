"""The index snapshot, for a warm restart: every file the index held (and every file the scan
skipped, with its reason), written to one file outside the served tree, and taken back at the
next start only for the files that stat finds unchanged.

This module owns the snapshot's format, writing it, reading it back and deciding, file by file,
what may be taken from it. It reads no DICOM file, knows neither the index's lock nor networking,
and never writes into the served tree (config.py refuses a snapshot path inside the root).

**Trusted by stat, nothing else.** A file is taken from the snapshot only when its size, mtime
(ns) and inode are all what they were when it was read (`records.file_stamp`); the inode catches a
file replaced by another of the same size and mtime. A changed or new file is read, a vanished
one is simply not found by the walk. A stale snapshot therefore costs only the reading of what
changed since it was written, never a wrong answer; that is why it is written only after the
start-up scan and on a clean stop, not periodically.

**Anything wrong, and it is not used.** A snapshot of another format, fsqr version, Python or
set of indexed keys, of another root, or one cut short or corrupted (the header carries the
body's length and BLAKE2 digest, checked before the body is decoded) is ignored with one log line,
and the start-up scan reads every file, as without one.

**Format.** One ASCII header line, then the body: `marshal` of tuples of str and int only, so
loading it builds plain data and runs no code (unlike pickle). Repeated values (a study's
attributes, a folder's path) are written once. marshal is not meant for data from untrusted
hands, which is why the digest is checked first and why the file belongs in a place only fsqr's
user can write (it is created readable by that user alone; it also holds patient names).
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from fsqr.keys import Level, indexed_keys
from fsqr.records import Instance, Parsed, Patient, Series, Skipped, Study, stat_stamp
from fsqr.storage import write_atomic

log = logging.getLogger(__name__)

_MAGIC = "fsqr-index-snapshot"
_FORMAT = 1  # raise when the body's layout changes


def _fingerprint() -> str:
    """What a snapshot must have been written by to be read here: format, fsqr version, Python
    (marshal's format is Python's), and the indexed keys of each level (the records' layout)."""
    try:
        version = metadata.version("fsqr")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    keys = ",".join(k.keyword for level in Level for k in indexed_keys(level))
    identity = f"{_FORMAT} {version} {sys.version_info[:2]} {marshal.version} {keys}"
    return hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()


def _prefix(root: Path) -> str:
    """What every path the walk yields under `root` starts with."""
    return str(root).rstrip(os.sep) + os.sep


def write_snapshot(
    target: Path, root: Path, files: Iterable[Parsed], skipped: Iterable[Skipped]
) -> int:
    """Write the snapshot of `root` to `target` at once (temporary file, then rename); returns
    how many files it holds. Raises OSError if it cannot be written."""
    prefix = _prefix(root)
    tables: dict[type, dict[Any, int]] = {Patient: {}, Study: {}, Series: {}}
    parents: dict[tuple[int, int, int], int] = {}
    folders: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    count = 0
    for parsed in files:
        instance = parsed.instance
        if not instance.folder.startswith(prefix):
            continue  # not as the walk finds it: read again next time
        ids = tuple(
            tables[type(r)].setdefault(r, len(tables[type(r)]))
            for r in (parsed.patient, parsed.study, parsed.series)
        )
        parent = parents.setdefault(ids, len(parents))  # type: ignore[arg-type]
        names, rows = folders.setdefault(instance.folder[len(prefix) :], ([], []))
        names.append(instance.name)
        rows.append(
            (
                parent,
                instance.sop_instance_uid,
                instance.sop_class_uid,
                instance.transfer_syntax_uid,
                instance.stamp,
                instance.values,
            )
        )
        count += 1
    skipped_rows = [
        (s.path[len(prefix) :], s.reason, s.stamp)
        for s in skipped
        if s.stamp and s.path.startswith(prefix)
    ]
    body = marshal.dumps(
        (
            os.path.realpath(root),
            [(r.patient_id, r.values) for r in tables[Patient]],
            [(r.study_uid, r.patient_id, r.values) for r in tables[Study]],
            [(r.series_uid, r.study_uid, r.values) for r in tables[Series]],
            list(parents),
            [(folder, names, rows) for folder, (names, rows) in folders.items()],
            skipped_rows,
        )
    )
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    header = f"{_MAGIC} {_fingerprint()} {len(body)} {digest}\n".encode("ascii")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, [header, body], mode=0o600)
    return count + len(skipped_rows)


class Snapshot:
    """A snapshot read back for one root: `take(path, stamp)` gives a file's records (or its
    `Skipped`) if the snapshot holds it at exactly that stamp, else None (read the file)."""

    def __init__(self, root: Path, body: tuple[Any, ...]) -> None:
        _, patients, studies, series, parents, folders, skipped = body
        patient_records = [Patient(*row) for row in patients]
        study_records = [Study(*row) for row in studies]
        series_records = [Series(*row) for row in series]
        self._parents = [
            (patient_records[p], study_records[st], series_records[se]) for p, st, se in parents
        ]
        prefix = _prefix(root)
        # By path as the walk gives it, to the row and the folder's path (one string per folder,
        # shared by its records as Instance.folder is).
        self._files: dict[str, tuple[str, str, tuple[Any, ...]]] = {}
        for folder, names, rows in folders:
            held = prefix + folder
            for name, row in zip(names, rows, strict=True):
                self._files[held + name] = (held, name, row)
        self._skipped: dict[str, tuple[str, int]] = {
            prefix + path: (reason, stamp) for path, reason, stamp in skipped
        }

    def __len__(self) -> int:
        return len(self._files) + len(self._skipped)

    def take(self, path: str, stamp: int) -> Parsed | Skipped | None:
        """The records of the file at `path` if its stamp is `stamp` in the snapshot."""
        held = self._files.get(path)
        if held is not None:
            folder, name, (parent, sop_uid, sop_class, syntax, held_stamp, values) = held
            if held_stamp != stamp:
                return None
            patient, study, series = self._parents[parent]
            instance = Instance.of_shared(
                sop_uid, series.series_uid, sop_class, syntax, folder, name, stamp, values
            )
            return Parsed(patient, study, series, instance)
        skipped = self._skipped.get(path)
        if skipped is not None and skipped[1] == stamp:
            return Skipped(path, skipped[0], stamp)
        return None


def read_snapshot(source: Path, root: Path) -> Snapshot | None:
    """The snapshot at `source` if it was written by this fsqr for this `root` and is whole;
    otherwise None, said in one log line (no snapshot yet is said at debug level only)."""
    try:
        with open(source, "rb") as f:
            header = f.readline(200)
            body = f.read()
    except FileNotFoundError:
        log.debug("no index snapshot at %s yet", source)
        return None
    except OSError as exc:
        log.warning("index snapshot %s not used: cannot read it: %s", source, exc)
        return None
    problem = _header_problem(header, body)
    if problem is None:
        try:
            data = marshal.loads(body)
            written_for = data[0]
            snapshot = Snapshot(root, data) if written_for == os.path.realpath(root) else None
            if snapshot is None:
                problem = f"it was written for another root ({written_for})"
        except Exception as exc:  # a digest that matches a malformed body: still not fatal
            problem = f"it cannot be decoded ({type(exc).__name__}: {exc})"
    if problem is not None:
        log.warning("index snapshot %s not used, reading every file: %s", source, problem)
        return None
    return snapshot


def _header_problem(header: bytes, body: bytes) -> str | None:
    words = header.decode("ascii", "replace").split()
    if len(words) != 4 or words[0] != _MAGIC:
        return "it is not an fsqr index snapshot"
    _, fingerprint, length, digest = words
    if fingerprint != _fingerprint():
        return "it was written by another version of fsqr"
    if not length.isdigit() or int(length) != len(body):
        return "it is cut short or has extra bytes"
    if hashlib.blake2b(body, digest_size=16).hexdigest() != digest:
        return "it is corrupted (its digest does not match)"
    return None


def partition(snapshot: Snapshot, paths: Iterable[str]) -> tuple[list[Parsed | Skipped], list[str]]:
    """Split the walked `paths` into what the snapshot holds unchanged, and the files to read."""
    paths = list(paths)
    known: list[Parsed | Skipped] = []
    to_read: list[str] = []
    take, stat = snapshot.take, os.stat
    try:
        for path in paths:
            try:
                found = take(path, stat_stamp(stat(path)))
            except OSError:  # gone since the walk saw it: reading it says so
                found = None
            if found is None:
                to_read.append(path)
            else:
                known.append(found)
    except Exception as exc:  # a whole, digest-checked body that still does not hold together
        log.warning("index snapshot not used, reading every file: %s: %s", type(exc).__name__, exc)
        return [], paths
    return known, to_read
