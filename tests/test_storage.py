"""Storing received instances (storage.py): safe paths from hostile values, the atomic write,
the duplicate policy, read-only mode and write failures. No sockets."""

from __future__ import annotations

import errno
import os
import random
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import FileDataset
from pydicom.filewriter import write_file_meta_info

from fsqr import status, storage
from fsqr.config import DEFAULT_LAYOUT
from fsqr.errors import DimseError
from fsqr.index import Index
from fsqr.records import Parsed
from fsqr.scan import read_header
from fsqr.storage import Receiver, relative_path, safe_name, write_atomic
from fsqr.synthetic import synthetic_uid
from fsqr.tree import TEMP_PREFIX, walk
from tests.conftest import instance, server_config

HOSTILE = [
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\system32",
    "a\x00b",
    "\x1b[31mred",
    "line\nbreak",
    ".fsqr-1234.tmp",
    "x" * 5000,
    "",
    "   ",
    "~",
    "name.",
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2"),  # a valid UID is kept
        ("PID-0001_A", "PID-0001_A"),
        ("Müller^Jürgen", "Müller^Jürgen"),  # letters of any script are kept
        ("", "_"),  # PatientID is Type 2: it may be empty
        ("..", "__~5ec1f7e7"),
        ("../x", "_._x~d6b96a97"),
        ("/etc/passwd", "_etc_passwd~74acf318"),
        ("a\\b", "a_b~c62016d0"),
    ],
    ids=["uid", "plain", "unicode", "empty", "dot-dot", "parent", "absolute", "backslash"],
)
def test_safe_name(value: str, expected: str) -> None:
    assert safe_name(value) == expected


def is_one_plain_name(name: str) -> bool:
    return (
        0 < len(name) <= storage.MAX_NAME
        and name not in (".", "..")
        and not name.startswith(".")
        and all(c not in name for c in "/\\\x00")
        and name.isprintable()
    )


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_value_becomes_one_plain_name(value: str) -> None:
    assert is_one_plain_name(safe_name(value))


def test_values_that_differ_get_names_that_differ() -> None:
    values = ["a/b", "a_b", "a\\b", "a\x00b", "a b", "a\nb"]
    assert len({safe_name(v) for v in values}) == len(values)


@given(
    st.dictionaries(st.sampled_from(["PatientID", "StudyInstanceUID", "SOPInstanceUID"]), st.text())
)
def test_a_layout_path_stays_inside_the_root(values: dict[str, str]) -> None:
    path = relative_path(DEFAULT_LAYOUT, values)
    assert len(path.parts) == len(PurePosixPath(DEFAULT_LAYOUT).parts)
    *folders, file_name = path.parts[1:]
    assert all(is_one_plain_name(part) for part in folders)
    assert file_name.endswith(".dcm")  # the layout's own suffix comes on top of the name
    assert is_one_plain_name(file_name.removesuffix(".dcm"))
    root = "/srv/root"
    assert os.path.normpath(os.path.join(root, path)).startswith(root + "/")


# -- the atomic write -----------------------------------------------------------------------


def test_write_atomic_writes_the_bytes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    write_atomic(target, [b"abc", b"def"])
    assert target.read_bytes() == b"abcdef"
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_a_failed_write_leaves_nothing_and_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(b"old")
    real_write = os.write
    calls = 0

    def write_then_fill_the_disk(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[:2])  # a short write: the rest must follow

    monkeypatch.setattr(storage.os, "write", write_then_fill_the_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, [b"new content"])
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


# -- Receiver -------------------------------------------------------------------------------


def encoded(ds: FileDataset) -> bytes:
    """The bytes pynetdicom's `event.encoded_dataset()` hands over: a DICOM file."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def receiver(root: Path, **settings: Any) -> Receiver:
    return Receiver(server_config(root, **settings), Index())


def store(rx: Receiver, ds: FileDataset) -> storage.Stored:
    return rx.store(encoded(ds), ds.SOPClassUID, ds.SOPInstanceUID)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_an_instance_is_written_as_sent_under_the_layout_and_indexed(tmp_path: Path) -> None:
    rx = receiver(tmp_path)
    ds = instance(patient_id="PID 1")
    stored = store(rx, ds)
    expected = (
        tmp_path
        / "incoming"
        / safe_name("PID 1")
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    assert (stored.outcome, stored.path) == ("stored", str(expected))
    assert expected.read_bytes() == encoded(ds)
    assert files_under(tmp_path) == [expected]
    served = rx.index.instance(ds.SOPInstanceUID)
    assert served is not None and served.path == str(expected)
    assert served.size == expected.stat().st_size
    assert served.mtime_ns == expected.stat().st_mtime_ns  # so the watcher's event is a no-op


@pytest.mark.parametrize(("fsync", "fsyncs"), [(True, 2), (False, 0)])
def test_a_stored_instance_is_on_disk_before_success_unless_fsync_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool, fsyncs: int
) -> None:
    """The file, then its folder (the new name); `storage.fsync: false` skips both."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    rx = receiver(tmp_path, storage={"fsync": fsync})
    ds = instance()
    stored = store(rx, ds)
    assert Path(stored.path).read_bytes() == encoded(ds)
    assert rx.index.instance(ds.SOPInstanceUID) is not None
    assert len(synced) == fsyncs


def test_a_custom_layout(tmp_path: Path) -> None:
    rx = receiver(tmp_path, storage={"layout": "in/{Modality}/{SOPInstanceUID}.dcm"})
    ds = instance(modality="MR")
    assert store(rx, ds).path == str(tmp_path / "in" / "MR" / f"{ds.SOPInstanceUID}.dcm")


def test_replace_serves_the_new_copy_and_deletes_the_old_one(tmp_path: Path) -> None:
    rx = receiver(tmp_path)  # on_duplicate: replace is the default
    uid = synthetic_uid("sop", "corrected")
    first = store(rx, instance(patient_id="OLD", sop_uid=uid))
    corrected = instance(patient_id="NEW", sop_uid=uid)  # the patient ID was corrected
    second = store(rx, corrected)
    assert second.outcome == "replaced"
    assert files_under(tmp_path) == [Path(second.path)]
    assert not Path(first.path).exists()
    counts = rx.index.counts()
    assert (counts.patients, counts.instances, counts.files) == (1, 1, 1)
    served = rx.index.instance(corrected.SOPInstanceUID)
    assert served is not None and served.path == second.path


def test_replace_at_the_same_path_overwrites(tmp_path: Path) -> None:
    rx = receiver(tmp_path)
    store(rx, instance(study_description="FIRST"))
    again = instance(study_description="SECOND")
    stored = store(rx, again)
    assert stored.outcome == "replaced"
    assert Path(stored.path).read_bytes() == encoded(again)
    assert rx.index.counts().files == 1


def test_replace_leaves_a_copy_fsqr_did_not_store(tmp_path: Path, write: Any) -> None:
    ds = instance()
    user_copy = write("mine/x.dcm")  # the same instance, put there by someone else
    rx = receiver(tmp_path / "tree")
    parsed = read_header(str(user_copy))
    assert isinstance(parsed, Parsed)
    rx.index.add(parsed)
    stored = store(rx, ds)
    assert stored.outcome == "replaced"
    assert user_copy.exists()
    served = rx.index.instance(ds.SOPInstanceUID)
    assert served is not None and served.path == stored.path
    assert (rx.index.counts().instances, rx.index.counts().files) == (1, 2)


def test_keep_answers_success_and_keeps_the_stored_file(tmp_path: Path) -> None:
    rx = receiver(tmp_path, storage={"on_duplicate": "keep"})
    first = store(rx, instance(study_description="FIRST"))
    before = Path(first.path).read_bytes()
    second = store(rx, instance(study_description="SECOND"))
    assert (second.outcome, second.path) == ("kept", first.path)
    assert Path(first.path).read_bytes() == before
    assert rx.index.counts().files == 1


def test_reject_refuses_with_duplicate_sop_instance(tmp_path: Path) -> None:
    rx = receiver(tmp_path, storage={"on_duplicate": "reject"})
    first = store(rx, instance(patient_id="A"))
    with pytest.raises(DimseError) as refused:
        store(rx, instance(patient_id="B", sop_uid=synthetic_uid("sop", "A", 1)))
    assert refused.value.status == status.DUPLICATE_SOP_INSTANCE == 0x0111
    assert files_under(tmp_path) == [Path(first.path)]


def test_read_only_refuses_and_writes_nothing(tmp_path: Path) -> None:
    rx = receiver(tmp_path, read_only=True)
    with pytest.raises(DimseError) as refused:
        store(rx, instance())
    assert refused.value.status == status.NOT_AUTHORIZED == 0x0124
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("sop_class", "sop_instance"),
    [("1.2.840.10008.5.1.4.1.1.4", None), (None, "1.2.3.4")],
    ids=["sop-class", "sop-instance"],
)
def test_a_data_set_that_is_not_the_requested_instance_is_refused(
    tmp_path: Path, sop_class: str | None, sop_instance: str | None
) -> None:
    rx = receiver(tmp_path)
    ds = instance()
    with pytest.raises(DimseError) as refused:
        rx.store(encoded(ds), sop_class or ds.SOPClassUID, sop_instance or ds.SOPInstanceUID)
    assert refused.value.status == status.DATASET_DOES_NOT_MATCH == 0xA900
    assert list(tmp_path.iterdir()) == []


def test_an_instance_without_a_study_is_refused(tmp_path: Path) -> None:
    rx = receiver(tmp_path)
    ds = instance(extra={"StudyInstanceUID": None})
    with pytest.raises(DimseError) as refused:
        store(rx, ds)
    assert refused.value.status == status.DATASET_DOES_NOT_MATCH
    assert list(tmp_path.iterdir()) == []


def test_garbage_cannot_be_understood(tmp_path: Path) -> None:
    with pytest.raises(DimseError) as refused:
        receiver(tmp_path).store(b"\x00" * 200, "1.2", "1.2.3")
    assert refused.value.status == status.CANNOT_UNDERSTAND == 0xC000


@pytest.mark.parametrize(
    "data_set", [b"", random.Random(10).randbytes(200)], ids=["empty", "noise"]
)
def test_a_data_set_that_is_no_instance_cannot_be_understood(
    tmp_path: Path, data_set: bytes
) -> None:
    """Behind good file meta (pynetdicom writes it from the request): C000, as the README's
    table says, not A900 "SOP Class UID differs"."""
    ds = instance()
    meta = BytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    with pytest.raises(DimseError) as refused:
        receiver(tmp_path).store(meta.getvalue() + data_set, ds.SOPClassUID, ds.SOPInstanceUID)
    assert refused.value.status == status.CANNOT_UNDERSTAND


def test_a_write_failure_is_out_of_resources_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "incoming").write_bytes(b"")  # a file where the storage folder should be
    rx = receiver(tmp_path)
    with pytest.raises(DimseError) as refused:
        store(rx, instance())
    assert refused.value.status == status.OUT_OF_RESOURCES == 0xA700
    assert list(walk(tmp_path)) == [str(tmp_path / "incoming")]
    assert rx.index.counts().files == 0


def test_a_full_disk_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "write", no_space)
    rx = receiver(tmp_path)
    with pytest.raises(DimseError) as refused:
        store(rx, instance())
    assert refused.value.status == status.OUT_OF_RESOURCES
    assert "No space" in refused.value.comment
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in tmp_path.rglob(f"{TEMP_PREFIX}*")]
