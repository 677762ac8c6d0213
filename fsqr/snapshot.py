"""The index snapshot, for a warm restart: every file the index held (and every file the scan
skipped, with its reason), written to one file outside the served tree, and taken back at the
next start only for the files that stat finds unchanged.

This module owns the snapshot's format, writing it, reading it back and deciding, file by file,
what may be taken from it. It reads no DICOM file, knows neither the index's lock nor networking,
and never writes into the served tree (config.py refuses a snapshot path inside the root).

**Trusted by stat, nothing else.** A file is taken from the snapshot only when its size, mtime
and ctime (ns) are all what they were when it was read (`records.file_stamp`); the ctime, which
no tool can set back, catches a file rewritten or replaced with its size and mtime kept (`cp -p`
onto it keeps even the inode). A changed or new file is read, a vanished
one is simply not found by the walk. A stale snapshot therefore costs only the reading of what
changed since it was written, never a wrong answer; that is why it is written only after the
start-up scan and on a clean stop, not periodically.

**Anything wrong, and it is not used.** A snapshot of another format, fsqr version, Python or
set of indexed keys, of another root, or one cut short or corrupted (the header carries the
body's length and BLAKE2 digest, checked before the body is decoded) is ignored with one log line,
and the start-up scan reads every file, as without one.

**Two passes at a restart, one per core.** `changes` walks the tree and stats every file against
the snapshot's stamps, in a process of its own; meanwhile the server's reads the records
(`read_snapshot`) and indexes them, then drops the ones `changes` found stale and reads what it
found new or changed (server.py).

**Format.** One ASCII header line, then the body in two parts: the paths and stamps, which is
all `changes` loads, then the records. Both are `marshal` of tuples of str and int only, so
loading them builds plain data and runs no code (unlike pickle). Repeated values (a study's
attributes, a folder's path) are written once. marshal is not meant for data from untrusted
hands, which is why the digest is checked first and why the file belongs in a place only fsqr's
user can write (it is created readable by that user alone; it also holds patient names).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import marshal
import os
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fsqr.keys import Level, indexed_keys
from fsqr.records import Instance, Parsed, Patient, Series, Skipped, Study, stat_stamp
from fsqr.tree import walk_entries

log = logging.getLogger(__name__)

_MAGIC = "fsqr-index-snapshot"
_FORMAT = 3  # raise when the body's layout, or a stamp's meaning, changes


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
    real_root = os.path.realpath(root)
    # Two parts: what `changes` needs (paths and stamps) first, on its own, then the records.
    stamps = marshal.dumps(
        (
            real_root,
            [(folder, names, [r[4] for r in rows]) for folder, (names, rows) in folders.items()],
            [(path, stamp) for path, _, stamp in skipped_rows],
        )
    )
    body = stamps + marshal.dumps(
        (
            real_root,
            [(r.patient_id, r.values) for r in tables[Patient]],
            [(r.study_uid, r.patient_id, r.values) for r in tables[Study]],
            [(r.series_uid, r.study_uid, r.values) for r in tables[Series]],
            list(parents),
            [(folder, names, rows) for folder, (names, rows) in folders.items()],
            skipped_rows,
        )
    )
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    header = f"{_MAGIC} {_fingerprint()} {len(stamps)} {len(body)} {digest}\n".encode("ascii")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Imported here: storage.py brings pydicom, which the stat pass's process must not wait for.
    from fsqr.storage import write_atomic  # noqa: PLC0415

    write_atomic(target, [header, body], mode=0o600)
    return count + len(skipped_rows)


class Snapshot:
    """A snapshot read back for one root: the records of every file it holds (`records`, the
    `Parsed` and `Skipped` of each); `partition` keeps those that `changes` found unchanged."""

    def __init__(self, root: Path, body: tuple[Any, ...], digest: str) -> None:
        _, patients, studies, series, parents, folders, skipped = body
        patient_records = [Patient(*row) for row in patients]
        study_records = [Study(*row) for row in studies]
        series_records = [Series(*row) for row in series]
        parent_records = [
            (patient_records[p], study_records[st], series_records[se]) for p, st, se in parents
        ]
        prefix = _prefix(root)
        records: list[Parsed | Skipped] = []
        make, add = Instance.of_shared, records.append
        for folder, names, rows in folders:
            held = prefix + folder  # one string per folder, shared as Instance.folder is
            for name, (parent, sop_uid, sop_class, syntax, stamp, values) in zip(
                names, rows, strict=True
            ):
                patient, study, series_record = parent_records[parent]
                instance = make(
                    sop_uid, series_record.series_uid, sop_class, syntax, held, name, stamp, values
                )
                add(Parsed(patient, study, series_record, instance))
        for path, reason, stamp in skipped:
            add(Skipped(prefix + path, reason, stamp))
        self.records = records
        self.digest = digest  # of the body: `changes` must have compared this very snapshot


def read_snapshot(source: Path, root: Path) -> Snapshot | None:
    """The snapshot at `source` if it was written by this fsqr for this `root` and is whole;
    otherwise None, said in one log line (no snapshot yet is said at debug level only)."""
    try:
        parts = _read_parts(source)
    except FileNotFoundError:
        log.debug("no index snapshot at %s yet", source)
        return None
    except OSError as exc:
        log.warning("index snapshot %s not used: cannot read it: %s", source, exc)
        return None
    snapshot = None
    if isinstance(parts, str):
        problem: str | None = parts
    else:
        digest, _, records = parts
        try:
            data = marshal.loads(records)
            written_for = data[0]
            if written_for == os.path.realpath(root):
                snapshot = Snapshot(root, data, digest)
                problem = None
            else:
                problem = f"it was written for another root ({written_for})"
        except Exception as exc:  # a digest that matches a malformed body: still not fatal
            problem = f"it cannot be decoded ({type(exc).__name__}: {exc})"
    if problem is not None:
        log.warning("index snapshot %s not used, reading every file: %s", source, problem)
    return snapshot


def _read_parts(source: Path) -> tuple[str, memoryview, memoryview] | str:
    """The body's digest, its stamps part and its records part (see `write_snapshot`), or what
    is wrong with the file. Raises OSError if it cannot be read."""
    # Not waiting on a FIFO's writer, nor reading a device without end: a regular file only.
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        header = f.readline(200)
        body = f.read()
    words = header.decode("ascii", "replace").split()
    if len(words) != 5 or words[0] != _MAGIC:
        return "it is not an fsqr index snapshot"
    _, fingerprint, stamps_length, length, digest = words
    if fingerprint != _fingerprint():
        return "it was written by another version of fsqr"
    if not (length.isdigit() and stamps_length.isdigit()) or int(length) != len(body):
        return "it is cut short or has extra bytes"
    if hashlib.blake2b(body, digest_size=16).hexdigest() != digest:
        return "it is corrupted (its digest does not match)"
    cut = int(stamps_length)
    return digest, memoryview(body)[:cut], memoryview(body)[cut:]


@dataclass(frozen=True)
class Changes:
    """What stat found in the tree against a snapshot's stamps."""

    digest: str  # the body's, as in its header: which snapshot this was compared with
    to_read: list[str]  # files new since the snapshot, or changed
    stale: list[str]  # files the snapshot holds that are changed or gone


def changes(source: Path, root: Path) -> Changes | None:
    """Walk `root` and stat every file against the stamps of the snapshot at `source`; None when
    that snapshot cannot be used (`read_snapshot` says why). A file is unchanged only when its
    size, mtime and ctime are all what they were (`records.file_stamp`)."""
    held = _stamps(source, root)
    return None if held is None else _compare(root, *held)


def _stamps(source: Path, root: Path) -> tuple[str, dict[str, int]] | None:
    """The snapshot's digest, and the stamp of every file it holds by path."""
    prefix = _prefix(root)
    held: dict[str, int] = {}
    try:
        parts = _read_parts(source)
        if isinstance(parts, str):
            return None
        digest, stamps, _ = parts
        written_for, folders, skipped = marshal.loads(stamps)
        if written_for != os.path.realpath(root):
            return None
        for folder, names, folder_stamps in folders:
            in_folder = prefix + folder
            held.update(zip([in_folder + name for name in names], folder_stamps, strict=True))
        for path, stamp in skipped:
            held[prefix + path] = stamp
    except Exception:
        return None
    return digest, held


def _compare(root: Path, digest: str, held: dict[str, int]) -> Changes:
    to_read: list[str] = []
    stale: list[str] = []
    take = held.pop
    for entry in walk_entries(root):
        path = entry.path
        stamp = take(path, None)
        if stamp is None:  # new since the snapshot
            to_read.append(path)
            continue
        try:
            unchanged = stat_stamp(entry.stat()) == stamp
        except OSError:  # gone since the walk saw it: reading it says so
            unchanged = False
        if not unchanged:
            to_read.append(path)
            stale.append(path)
    stale.extend(held)  # not found by the walk: gone
    return Changes(digest, to_read, stale)


class StatPass:
    """`changes(source, root)`, at a warm restart, in a Python process of its own
    (`python -m fsqr.snapshot`), on the other core, while the server reads the snapshot's
    records. Started before the watcher: it loads the snapshot's stamps meanwhile, and walks the
    tree only once told to `go()`, when the watcher is there to see any change that comes after.

    A plain subprocess, not multiprocessing: a forkserver or spawn child would first import
    the parent's main module (fsqr's CLI, with pydicom and pynetdicom: half a second); this one
    imports fsqr.snapshot alone. If it cannot start or fails, `answer()` does the work here;
    `here=True` asks for that from the start (one core).
    """

    def __init__(self, source: Path, root: Path, *, here: bool = False) -> None:
        self._source, self._root = source, root
        self._process: subprocess.Popen[bytes] | None = None
        if here:
            return
        if not sys.executable:  # an embedded interpreter: no Python to start
            return
        command = [sys.executable, "-m", "fsqr.snapshot", os.fspath(source), os.fspath(root)]
        # It finds this fsqr wherever this process found it (a source tree, say).
        here_from = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (here_from, os.environ.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )
        except OSError as exc:
            log.warning("cannot start a process to stat the tree (%s); doing it here", exc)

    def go(self) -> None:
        """Walk the tree now (everything that changes from here on, the watcher sees)."""
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):  # it has died: answer() says so
                self._process.stdin.write(b"go\n")
                self._process.stdin.flush()

    def answer(self) -> Changes | None:
        """What `changes` found (waits for it)."""
        process, self._process = self._process, None
        if process is None:
            return changes(self._source, self._root)
        out, _ = process.communicate()
        try:
            if process.returncode != 0:
                raise ValueError(f"exit status {process.returncode}")
            found = marshal.loads(out)
            return None if found is None else Changes(*found)
        except Exception as exc:
            log.warning("the process that stats the tree failed (%s); doing it here", exc)
            return changes(self._source, self._root)

    def close(self) -> None:
        """Stop it, unanswered (a start-up that failed)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.communicate()


def partition(
    snapshot: Snapshot, found: Changes | None
) -> tuple[list[Parsed | Skipped], list[str]] | None:
    """What the snapshot holds unchanged, and the files to read, from what `changes` found; None
    when that was found for another snapshot (then every file is read), said in one log line."""
    if found is None or found.digest != snapshot.digest:
        log.warning("index snapshot not used, reading every file: it changed while being read")
        return None
    if not found.stale:
        return snapshot.records, found.to_read
    stale = set(found.stale)
    known = [
        r
        for r in snapshot.records
        if (r.instance.path if isinstance(r, Parsed) else r.path) not in stale
    ]
    return known, found.to_read


if __name__ == "__main__":  # StatPass: the stamps now, the walk on "go", the answer on stdout
    held = _stamps(Path(sys.argv[1]), Path(sys.argv[2]))
    if sys.stdin.readline() != "go\n":
        sys.exit(0)  # the server's start-up failed before the walk: nobody waits for an answer
    found = None if held is None else _compare(Path(sys.argv[2]), *held)
    answer = None if found is None else (found.digest, found.to_read, found.stale)
    sys.stdout.buffer.write(marshal.dumps(answer))
