"""Hostile files in the served tree: bad character sets, invalid bytes, huge values, broken and
deeply nested sequences, wrong value lengths, files cut short, empty and unreadable files.

Each is made here, byte by byte where pydicom would not write it. The start-up scan and the live
watcher serve it or skip it with a reason; the server never dies; C-FIND and C-MOVE over a tree
full of them answer, and send only whole instances.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from fsqr import status
from fsqr.errors import DataSetMismatch
from fsqr.header import NO_PIXEL_DATA, TRUNCATED
from fsqr.records import Parsed, Skipped
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid, write_instance
from tests import test_interop_retrieve as retrieve_tests
from tests.conftest import instance
from tests.helpers import wait_until
from tests.test_cli import Running

destination = retrieve_tests.destination  # the retrieve tests' Storage SCP fixture, shared

PATIENT = "HOSTILE"
STUDY = synthetic_uid("study", PATIENT)
TEN_MIB = 10 * 1024 * 1024


def hostile(n: int, **fields: Any) -> Any:
    """An instance of the one hostile study: all of them would be served together."""
    return instance(n=n, patient_id=PATIENT, **fields)


def element_at(data: bytes, tag: int, vr: bytes) -> int:
    """Where the Explicit VR element `tag` starts in `data`."""
    return data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr)


def edit(path: Path, change: Callable[[bytes], bytes]) -> Path:
    path.write_bytes(change(path.read_bytes()))
    return path


# -- the files --------------------------------------------------------------------------------


def unknown_character_set(path: Path) -> Path:
    return write_instance(
        hostile(1, patient_name="Müller", specific_character_set="ISO_IR 999"), path
    )


def garbage_character_set(path: Path) -> Path:
    ds = hostile(2, patient_name="Müller", specific_character_set="\x01GARBAGE\x7f")
    return write_instance(ds, path)


def invalid_utf8_in_a_name(path: Path) -> Path:
    ds = hostile(3, patient_name="XXXXXX", specific_character_set="ISO_IR 192")
    return edit(write_instance(ds, path), lambda b: b.replace(b"XXXXXX", b"\xff\xfe\x80\xc3(^"))


def a_10_mib_long_string(path: Path) -> Path:
    # LO has a 16-bit length in Explicit VR (PS3.5 7.1.2): only Implicit VR can hold 10 MiB.
    ds = hostile(4, transfer_syntax_uid=ImplicitVRLittleEndian)
    ds.StudyDescription = "A" * TEN_MIB
    return write_instance(ds, path)


def nested(depth: int) -> bytes:
    """(0008,0006) Language Code Sequence with an item holding the same, `depth` deep."""
    sequence = struct.pack("<HH2sHL", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return (sequence + item) * depth + ends * depth


def sequence_nested_1000_deep(path: Path) -> Path:
    def insert(data: bytes) -> bytes:
        at = element_at(data, 0x00080008, b"CS")  # Image Type: the element after (0008,0006)
        return data[:at] + nested(1000) + data[at:]

    return edit(write_instance(hostile(5), path), insert)


def an_item_longer_than_the_file(path: Path) -> Path:
    ds = hostile(6)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]

    def break_it(data: bytes) -> bytes:
        at = element_at(data, 0x00081140, b"SQ") + 12  # the item after the sequence's header
        return data[: at + 4] + struct.pack("<L", 0x7FFFFFF0) + data[at + 8 :]

    return edit(write_instance(ds, path), break_it)


def cut_inside_a_sequence(path: Path) -> Path:
    ds = hostile(11)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]
    return edit(write_instance(ds, path), lambda b: b[: element_at(b, 0x00081140, b"SQ") + 20])


def a_us_value_3_bytes_long(path: Path) -> Path:
    def lengthen(data: bytes) -> bytes:
        at = element_at(data, 0x00280010, b"US")  # Rows: US is 2 bytes a value (PS3.5 6.2)
        return data[: at + 6] + struct.pack("<H", 3) + data[at + 8 :]

    return edit(write_instance(hostile(7), path), lengthen)


def cut_before_the_pixel_data(path: Path) -> Path:
    return edit(write_instance(hostile(8), path), lambda b: b[: element_at(b, 0x00280010, b"US")])


def cut_in_the_pixel_data(path: Path) -> Path:
    return edit(write_instance(hostile(9, rows=64, columns=64), path), lambda b: b[:-100])


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]
    skipped: str  # the start of the reason it is skipped; "" when it is served


CASES = [
    Case(unknown_character_set, ""),  # decoded as pydicom's default (ASCII), with a warning
    Case(garbage_character_set, ""),
    Case(invalid_utf8_in_a_name, ""),  # replacement characters in the name
    Case(a_10_mib_long_string, ""),
    Case(sequence_nested_1000_deep, "cannot be read: RecursionError"),
    Case(an_item_longer_than_the_file, ""),  # a sequence not indexed: stepped over whole
    Case(cut_inside_a_sequence, "no StudyInstanceUID"),  # the UIDs come after it
    Case(a_us_value_3_bytes_long, "cannot be read: BytesLengthException"),
    Case(cut_before_the_pixel_data, NO_PIXEL_DATA),
    Case(cut_in_the_pixel_data, TRUNCATED),
    Case(empty, "empty file"),
]
IDS = [case.make.__name__ for case in CASES]


def made(case: Case, folder: Path) -> Path:
    """The case's file in `folder`, made without pydicom's warnings about what is wrong in it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return case.make(folder / f"{case.make.__name__}.dcm")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_each_hostile_file_is_read_or_skipped_with_a_reason(tmp_path: Path, case: Case) -> None:
    result = read_header(str(made(case, tmp_path)))
    if case.skipped:
        assert isinstance(result, Skipped)
        assert result.reason.startswith(case.skipped), result.reason
    else:
        assert isinstance(result, Parsed), result


# -- a server over them ------------------------------------------------------------------------


def find_images(port: int) -> dict[str, Dataset]:
    """Every instance of the hostile study, by SOP Instance UID, as C-FIND answers."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.maximum_pdu_size = 0  # unlimited: a 10 MiB value comes back in one response
    assoc = ae.associate("127.0.0.1", port, ae_title="FSQR")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = STUDY
    query.SeriesInstanceUID = synthetic_uid("series", PATIENT)
    query.SOPInstanceUID = ""
    query.StudyDescription = ""
    try:
        with warnings.catch_warnings():
            # pydicom's words about the hostile values, on both sides: "exceeds the maximum
            # length of 64 allowed for VR LO", "Unknown encoding", ...
            warnings.simplefilter("ignore")
            responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert responses[-1][0].Status == status.SUCCESS
    return {str(a.SOPInstanceUID): a for _, a in responses if a is not None}


def served_uids(tree: Path) -> set[str]:
    made = {p.name: p for p in tree.iterdir()}
    uids = set()
    for case in CASES:
        if not case.skipped:
            parsed = read_header(str(made[case.make.__name__ + ".dcm"]))
            assert isinstance(parsed, Parsed)
            uids.add(parsed.instance.sop_instance_uid)
    return uids


def make_all(tree: Path) -> None:
    tree.mkdir(exist_ok=True)
    for case in CASES:
        made(case, tree)


def test_a_tree_of_hostile_files_is_indexed_found_and_moved(
    tmp_path: Path,
    start_server: Callable[..., Server],
    destination: Callable[..., retrieve_tests.Destination],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tree = tmp_path / "tree"
    make_all(tree)
    dest = destination()
    with caplog.at_level(logging.DEBUG, logger="fsqr.server"):
        server = start_server(tree, ae_table={"DEST": dest.entry()})
    skipped = {Path(s.path).stem: s.reason for s in server.skipped}
    assert skipped.keys() == {c.make.__name__ for c in CASES if c.skipped}
    for case in CASES:
        if case.skipped:
            reason = skipped[case.make.__name__]
            assert reason.startswith(case.skipped)
            assert f"skipped {tree / case.make.__name__}.dcm: {reason}" in caplog.messages
    expected = served_uids(tree)
    found = find_images(server.port)
    assert set(found) == expected
    # The study's description is the 10 MiB one (a study-level value: each answer carries it).
    assert TEN_MIB in {len(a.StudyDescription) for a in found.values()}
    request = retrieve_tests.identifier("STUDY", StudyInstanceUID=STUDY)
    last, _ = retrieve_tests.final(retrieve_tests.move(server, request, "DEST"))
    assert last.Status == status.SUCCESS
    assert set(dest.received) == expected


def test_the_watcher_skips_hostile_files_with_a_reason_and_serves_the_rest(
    tmp_path: Path, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    server = start_server(tree)
    make_all(outside)
    expected = served_uids(outside)
    with caplog.at_level(logging.DEBUG, logger="fsqr.watch"):
        for path in sorted(outside.iterdir()):
            os.rename(path, tree / path.name)  # each arrives whole, as a copy tool's rename
        assert wait_until(lambda: server.index.counts().instances == len(expected), 20)
        not_indexed = [c for c in CASES if c.skipped]
        assert wait_until(
            lambda: sum("not indexing" in m for m in caplog.messages) == len(not_indexed), 20
        )
    for case in not_indexed:
        line = f"not indexing {tree / case.make.__name__}.dcm: {case.skipped}"
        assert any(m.startswith(line) for m in caplog.messages), line
    assert set(find_images(server.port)) == expected


def test_a_c_store_of_an_image_without_pixel_data_is_refused(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(tmp_path)
    ds = hostile(10)
    del ds.PixelData
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    # PS3.4 B.2.3: A9xx, Error: Data Set does not match SOP Class; the scan would skip it too.
    # The comment says what is missing: the data set arrived whole, nothing was cut short.
    assert answer.Status == DataSetMismatch.status
    assert answer.ErrorComment == "cannot be stored: an image without its pixel data"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# -- files fsqr may not read ------------------------------------------------------------------


def test_files_and_folders_it_may_not_read_are_skipped_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    """Run as a user that file permissions apply to: root without the capabilities that let it
    read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads every file, and setpriv (util-linux) is not installed")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    outside.mkdir()
    write_instance(hostile(1), tree / "readable.dcm")
    os.chmod(write_instance(hostile(2), tree / "denied.dcm"), 0)
    os.chmod(write_instance(hostile(3), tree / "locked" / "inside.dcm").parent, 0)
    running = Running(
        str(tree),
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--verbose",
        cwd=tmp_path,
        prefix=prefix,
    )
    try:
        port = running.wait_listening()
        log = "".join(running.lines)
        assert f"skipped {tree / 'denied.dcm'}: cannot be read: PermissionError" in log
        assert f"cannot read folder {tree / 'locked'}" in log
        assert set(find_images(port)) == {hostile(1).SOPInstanceUID}
        # Live: an unreadable file arrives.
        later = write_instance(hostile(4), outside / "later.dcm")
        os.chmod(later, 0)
        os.rename(later, tree / "later.dcm")
        assert wait_until(
            lambda: f"not indexing {tree / 'later.dcm'}" in "".join(running.lines), 20
        )
        assert set(find_images(port)) == {hostile(1).SOPInstanceUID}
    finally:
        code = running.stop(signal.SIGTERM)
        for folder in (tree / "locked",):
            os.chmod(folder, 0o755)
    assert code == 0, "".join(running.lines)
