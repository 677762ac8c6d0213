"""The retrieve plan without a socket: identifiers, instances, presentation contexts, the bytes
that go, conversions, counts and final statuses (PS3.4 C.4.2, C.4.3), with a fake association."""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from fsqr import retrieve, status
from fsqr.errors import InvalidIdentifier, TooManyMatches
from fsqr.index import Index
from fsqr.keys import Model
from fsqr.query import instances_to_retrieve, parse_retrieve_identifier
from fsqr.records import Instance, Parsed
from fsqr.retrieve import (
    Batch,
    Category,
    NotSendable,
    Stored,
    Tally,
    Unreachable,
    category,
    final_status,
    plan_batches,
    prepare,
    propose_contexts,
)
from fsqr.scan import read_header
from fsqr.synthetic import synthetic_uid
from tests.conftest import instance

ELE, ILE, DEFL, EBE = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
UID_A, UID_B = synthetic_uid("sop", "A"), synthetic_uid("sop", "B")


def record(uid: str, sop_class: str = CTImageStorage, ts: str = ELE) -> Instance:
    """An index record with no file behind it."""
    return Instance(uid, "1.2.3", sop_class, ts, f"/nowhere/{uid}", 0, 0, ("",) * 12)


def identifier(**keys: str) -> Dataset:
    """An identifier as an SCU may send it: values are not checked (a UID may hold a `*`)."""
    ds = Dataset()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    return ds


# -- the identifier (PS3.4 C.4.2.2.1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "keys", "relational", "expected"),
    [
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2"}, False,
         {"StudyInstanceUID": "1.2"}),
        # A UID list at the retrieve level.
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2\\1.3"}, False,
         {"StudyInstanceUID": "1.2\\1.3"}),
        # The study above a series may be left out: a Series Instance UID names one series.
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.3"}, False,
         {"SeriesInstanceUID": "1.2.3"}),
        (Model.PATIENT_ROOT,
         {"QueryRetrieveLevel": "IMAGE", "PatientID": "P1", "StudyInstanceUID": "1.2",
          "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}, False,
         {"PatientID": "P1", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
          "SOPInstanceUID": "1.2.3.4"}),
        # Other keys are ignored; PatientID is no unique key of the Study Root model.
        (Model.STUDY_ROOT,
         {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2", "PatientName": "DOE*",
          "PatientID": "P1"}, False, {"StudyInstanceUID": "1.2"}),
        # Relational retrieve: a list above the retrieve level too.
        (Model.STUDY_ROOT,
         {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3",
          "SeriesInstanceUID": "1.2.3"}, True,
         {"StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.2.3"}),
    ],
    ids=["study", "uid-list", "series-alone", "patient-root-image", "others-ignored",
         "relational-list-above"],
)  # fmt: skip
def test_a_retrieve_identifier_keeps_the_unique_keys(
    model: Model, keys: dict[str, str], relational: bool, expected: dict[str, str]
) -> None:
    query = parse_retrieve_identifier(identifier(**keys), model, relational=relational)
    assert {k.keyword: k.pattern for k in query.keys} == expected


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        (Model.STUDY_ROOT, {"StudyInstanceUID": "1.2"}),  # no level
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}),  # not in model
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2"}),
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}),
        (Model.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2*"}),
        (Model.PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P?"}),
        (Model.PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1\\P2"}),
        (Model.STUDY_ROOT,
         {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3",
          "SeriesInstanceUID": "1.2.3"}),
    ],
    ids=["no-level", "level-not-in-model", "no-key-at-level", "empty-key", "wildcard-uid",
         "wildcard-patient", "patient-id-list", "hierarchical-list-above"],
)  # fmt: skip
def test_a_retrieve_identifier_is_refused_with_a900(model: Model, keys: dict[str, str]) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        parse_retrieve_identifier(identifier(**keys), model, relational=False)
    assert caught.value.status == status.IDENTIFIER_DOES_NOT_MATCH


# -- the instances -------------------------------------------------------------------------


@pytest.fixture
def indexed(write: Callable[..., Path]) -> Callable[..., Instance]:
    """Write an instance under the test's tree and index it; returns its record."""
    index = Index()

    def _indexed(relative: str, **fields: object) -> Instance:
        parsed = read_header(str(write(relative, **fields)))
        assert isinstance(parsed, Parsed)
        index.add(parsed)
        return parsed.instance

    _indexed.index = index  # type: ignore[attr-defined]
    return _indexed


def index_of(indexed: Callable[..., Instance]) -> Index:
    return indexed.index  # type: ignore[attr-defined, no-any-return]


def test_instances_of_a_study_come_series_by_series_in_instance_number_order(
    indexed: Callable[..., Instance],
) -> None:
    study = synthetic_uid("study", "S")
    made = {
        (series, n): indexed(
            f"{series}/{n}.dcm",
            study_uid=study,
            series_uid=synthetic_uid("series", series),
            sop_uid=synthetic_uid("sop", series, n),
            n=n,
        )
        for series in ("one", "two")
        for n in (3, 1, 2)
    }
    indexed("other.dcm", patient_id="P2")  # another patient's study: not retrieved
    query = parse_retrieve_identifier(
        identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study),
        Model.STUDY_ROOT,
        relational=False,
    )
    got = instances_to_retrieve(index_of(indexed), query)
    expected = [made[(s, n)] for s in ("one", "two") for n in (1, 2, 3)]
    assert [i.sop_instance_uid for i in got] == [i.sop_instance_uid for i in expected]


def test_a_uid_list_names_each_instance_once_and_unknown_uids_nothing(
    indexed: Callable[..., Instance],
) -> None:
    a = indexed("a.dcm", n=1)
    b = indexed("b.dcm", n=2)
    uids = "\\".join([a.sop_instance_uid, b.sop_instance_uid, a.sop_instance_uid, "1.2.999"])
    query = parse_retrieve_identifier(
        identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID=uids),
        Model.STUDY_ROOT,
        relational=True,
    )
    got = instances_to_retrieve(index_of(indexed), query)
    assert sorted(i.sop_instance_uid for i in got) == sorted(
        [a.sop_instance_uid, b.sop_instance_uid]
    )


def test_a_patient_root_retrieve_is_narrowed_by_patient_id(
    indexed: Callable[..., Instance],
) -> None:
    mine = indexed("p1.dcm", patient_id="P1")
    indexed("p2.dcm", patient_id="P2")
    both = parse_retrieve_identifier(
        identifier(
            QueryRetrieveLevel="STUDY",
            PatientID="P2",
            StudyInstanceUID=synthetic_uid("study", "P1"),
        ),
        Model.PATIENT_ROOT,
        relational=False,
    )
    assert instances_to_retrieve(index_of(indexed), both) == []
    patient = parse_retrieve_identifier(
        identifier(QueryRetrieveLevel="PATIENT", PatientID="P1"),
        Model.PATIENT_ROOT,
        relational=False,
    )
    assert instances_to_retrieve(index_of(indexed), patient) == [mine]


def test_more_instances_than_a_response_can_count_are_refused_with_a701(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrieve, "MAX_SUBOPERATIONS", 2)
    retrieve.check_limit([record(UID_A), record(UID_B)])
    with pytest.raises(TooManyMatches) as caught:
        retrieve.check_limit([record(UID_A), record(UID_B), record("1.2.3")])
    assert caught.value.status == status.OUT_OF_RESOURCES_MATCHES


# -- presentation contexts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ([ELE], [(ELE,), (ILE,)]),
        ([ILE], [(ILE,), (ELE,)]),
        ([DEFL], [(DEFL,), (ELE, ILE)]),
        ([JPEGBaseline8Bit], [(JPEGBaseline8Bit,), (ELE, ILE)]),
        ([JPEGBaseline8Bit, ILE, ELE], [(ELE,), (ILE,), (JPEGBaseline8Bit,)]),
    ],
    ids=["explicit", "implicit", "deflated", "jpeg", "mixed-no-fallback-needed"],
)
def test_each_stored_syntax_gets_a_context_of_its_own_and_uncompressed_ones_a_fallback(
    stored: list[str], expected: list[tuple[str, ...]]
) -> None:
    instances = [record(f"1.2.{n}", ts=ts) for n, ts in enumerate(stored)]
    contexts = propose_contexts(instances)
    assert {c.abstract_syntax for c in contexts} == {CTImageStorage}
    assert [c.transfer_syntaxes for c in contexts] == expected


def test_contexts_are_proposed_for_the_matched_sop_classes_only() -> None:
    contexts = propose_contexts([record(UID_A, MRImageStorage), record(UID_B, CTImageStorage)])
    assert [c.abstract_syntax for c in contexts] == [MRImageStorage] * 2 + [CTImageStorage] * 2


def test_within_128_contexts_one_association_carries_everything_in_order() -> None:
    instances = [record(f"1.2.{n}", CTImageStorage if n % 2 else MRImageStorage) for n in range(9)]
    (batch,) = plan_batches(instances)
    assert batch.instances == tuple(instances)
    assert plan_batches([]) == []


def test_more_than_128_contexts_are_split_over_associations_never_splitting_a_sop_class() -> None:
    sop_classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, 101)]  # 200 contexts
    instances = [record(f"1.3.{n}.{i}", sop_class) for n, sop_class in enumerate(sop_classes)
                 for i in range(2)]  # fmt: skip
    batches = plan_batches(instances)
    assert len(batches) == 2
    assert all(len(b.contexts) <= retrieve.MAX_CONTEXTS for b in batches)
    sent = [i for b in batches for i in b.instances]
    assert sorted(i.sop_instance_uid for i in sent) == sorted(i.sop_instance_uid for i in instances)
    for b in batches:
        classes = {i.sop_class_uid for i in b.instances}
        assert classes == {c.abstract_syntax for c in b.contexts}
    assert not set.intersection(*({i.sop_class_uid for i in b.instances} for b in batches))


# -- the bytes that go ---------------------------------------------------------------------


def data_set_of(outgoing: retrieve.Outgoing) -> bytes:
    payload = outgoing.payload
    if isinstance(payload, retrieve.Encoded):
        return payload.data
    with open(payload.path, "rb") as fp:
        fp.seek(payload.offset)
        return fp.read()


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


@pytest.mark.parametrize("stored", [ELE, ILE, DEFL], ids=["explicit", "implicit", "deflated"])
def test_a_file_in_an_accepted_syntax_is_streamed_as_stored(
    indexed: Callable[..., Instance], stored: str
) -> None:
    made = indexed("a.dcm", transfer_syntax_uid=stored)
    outgoing = prepare(made, (ELE, ILE, DEFL), index_of(indexed))
    assert isinstance(outgoing.payload, retrieve.FromFile)
    assert outgoing.transfer_syntax == stored
    assert outgoing.size == os.path.getsize(made.path) - outgoing.payload.offset
    assert decode(data_set_of(outgoing), stored) == dcmread(made.path)


def test_a_bare_data_set_without_meta_information_is_streamed_from_its_first_byte(
    write: Callable[..., Path],
) -> None:
    path = write("bare.dcm")
    ds = dcmread(path)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    path.write_bytes(fp.getvalue())  # no preamble, no meta: Implicit VR Little Endian
    parsed = read_header(str(path))
    assert isinstance(parsed, Parsed)
    index = Index()
    index.add(parsed)
    outgoing = prepare(parsed.instance, (ILE,), index)
    assert isinstance(outgoing.payload, retrieve.FromFile)
    assert outgoing.payload.offset == 0
    assert outgoing.transfer_syntax == ILE


def test_meta_information_too_long_to_read_at_once_is_read_by_pydicom(
    write: Callable[..., Path],
) -> None:
    ds = instance()
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = bytes(10_000)
    path = write("long-meta.dcm")
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as fp:
        header = retrieve._read_meta(fp)
        assert fp.tell() == header.offset
        rest = fp.read()
    assert header.offset > 10_000
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.transfer_syntax == ELE
    assert decode(rest, ELE) == dcmread(path)


@pytest.mark.parametrize(
    ("stored", "accepted"),
    [(ILE, ELE), (DEFL, ELE), (ELE, ILE), (ELE, DEFL), (ELE, EBE), (ILE, EBE)],
    ids=["implicit-to-explicit", "deflated-to-explicit", "explicit-to-implicit",
         "explicit-to-deflated", "explicit-to-big-endian", "implicit-to-big-endian"],
)  # fmt: skip
def test_uncompressed_syntaxes_convert_into_each_other(
    indexed: Callable[..., Instance], stored: str, accepted: str
) -> None:
    made = indexed("a.dcm", transfer_syntax_uid=stored, rows=8, columns=8)
    outgoing = prepare(made, (accepted,), index_of(indexed))
    assert isinstance(outgoing.payload, retrieve.Encoded)
    assert outgoing.transfer_syntax == accepted
    received = decode(data_set_of(outgoing), accepted)
    original = dcmread(made.path)
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert (received.pixel_array == original.pixel_array).all()
    assert [e.tag for e in received] == [e.tag for e in original]


def test_big_endian_converts_back_to_the_same_little_endian_bytes(
    indexed: Callable[..., Instance],
) -> None:
    made = indexed("a.dcm", rows=4, columns=4)
    as_stored = data_set_of(prepare(made, (ELE,), index_of(indexed)))
    big = data_set_of(prepare(made, (EBE,), index_of(indexed)))
    assert big != as_stored
    back = retrieve.encode(decode(big, EBE), ELE, source_little_endian=False)
    assert back == as_stored


def test_compressed_pixel_data_is_decoded_when_a_decoder_is_installed(
    write: Callable[..., Path],
) -> None:
    ds = instance(rows=8, columns=8)
    original = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    path = write("rle.dcm")
    ds.save_as(path, enforce_file_format=True)
    parsed = read_header(str(path))
    assert isinstance(parsed, Parsed)
    index = Index()
    index.add(parsed)
    outgoing = prepare(parsed.instance, (ELE,), index)
    received = decode(data_set_of(outgoing), ELE)
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert (received.pixel_array == original).all()


def test_compressed_pixel_data_without_a_decoder_is_not_sendable_and_says_why(
    write: Callable[..., Path],
) -> None:
    ds = instance(rows=8, columns=8)
    ds.PixelData = encapsulate([b"\xff\xd8 not really a JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = write("jpeg.dcm")
    ds.save_as(path, enforce_file_format=True)
    parsed = read_header(str(path))
    assert isinstance(parsed, Parsed)
    index = Index()
    index.add(parsed)
    with pytest.raises(NotSendable, match="JPEG Baseline"):
        prepare(parsed.instance, (ELE, ILE), index)
    if not get_decoder(JPEGBaseline8Bit).is_available:
        with pytest.raises(NotSendable, match="no pydicom decoder"):
            prepare(parsed.instance, (ELE, ILE), index)


def test_nothing_accepted_that_fsqr_can_make_is_not_sendable(
    indexed: Callable[..., Instance],
) -> None:
    made = indexed("a.dcm")
    with pytest.raises(NotSendable, match="converts only to uncompressed"):
        prepare(made, (JPEGBaseline8Bit,), index_of(indexed))


# -- the disk may change -------------------------------------------------------------------


def test_a_deleted_file_is_not_sendable_and_leaves_the_index(
    indexed: Callable[..., Instance],
) -> None:
    made = indexed("a.dcm")
    os.remove(made.path)
    with pytest.raises(NotSendable, match="deleted"):
        prepare(made, (ELE,), index_of(indexed))
    assert index_of(indexed).instance(made.sop_instance_uid) is None


def test_a_file_rewritten_as_the_same_instance_is_sent_as_it_is_now(
    indexed: Callable[..., Instance], write: Callable[..., Path]
) -> None:
    made = indexed("a.dcm", n=1)
    write("a.dcm", n=1, transfer_syntax_uid=ILE)  # same UIDs, now Implicit VR
    os.utime(made.path, ns=(made.mtime_ns + 10**9, made.mtime_ns + 10**9))
    outgoing = prepare(made, (ELE, ILE), index_of(indexed))
    assert outgoing.transfer_syntax == ILE
    assert isinstance(outgoing.payload, retrieve.FromFile)
    now = index_of(indexed).instance(made.sop_instance_uid)
    assert now is not None
    assert now.transfer_syntax_uid == ILE


def test_a_file_replaced_by_another_instance_is_not_sendable_and_reindexed(
    indexed: Callable[..., Instance], write: Callable[..., Path]
) -> None:
    made = indexed("a.dcm", n=1)
    write("a.dcm", n=2)  # another SOP Instance UID at the same path
    os.utime(made.path, ns=(made.mtime_ns + 10**9, made.mtime_ns + 10**9))
    with pytest.raises(NotSendable, match="now holds"):
        prepare(made, (ELE,), index_of(indexed))
    index = index_of(indexed)
    assert index.instance(made.sop_instance_uid) is None
    now = index.instance_at(made.path)
    assert now is not None
    assert now.sop_instance_uid != made.sop_instance_uid


def test_a_file_now_of_another_sop_class_is_not_sendable_and_reindexed(
    indexed: Callable[..., Instance], write: Callable[..., Path]
) -> None:
    """Its contexts were negotiated for the class it had: one failed sub-operation that says
    so, not an error that ends the whole retrieve (it was C000, and the rest never went)."""
    made = indexed("a.dcm", n=1)
    write("a.dcm", n=1, modality="MR")  # the same SOP Instance UID, now MR Image Storage
    os.utime(made.path, ns=(made.mtime_ns + 10**9, made.mtime_ns + 10**9))
    with pytest.raises(NotSendable, match="now MR Image Storage, not negotiated"):
        prepare(made, (ELE,), index_of(indexed))
    now = index_of(indexed).instance(made.sop_instance_uid)
    assert now is not None
    assert now.sop_class_uid == MRImageStorage


def test_a_file_renamed_since_it_was_matched_is_sent_from_where_the_index_has_it(
    indexed: Callable[..., Instance],
) -> None:
    made = indexed("a.dcm", n=1)
    moved = made.path + ".renamed"
    os.rename(made.path, moved)
    index = index_of(indexed)
    index.move(made.path, moved)  # as the watcher does on the rename's event
    outgoing = prepare(made, (ELE,), index)
    assert isinstance(outgoing.payload, retrieve.FromFile)
    assert outgoing.payload.path == moved


@pytest.mark.parametrize("replacement", ["fifo", "link"])
def test_a_file_replaced_by_a_fifo_or_a_link_is_not_sendable_and_leaves_the_index(
    indexed: Callable[..., Instance], write: Callable[..., Path], replacement: str
) -> None:
    """Not followed to what a link leads to (outside the root, say), never waiting on a FIFO's
    writer: the sub-operation fails at once, before the watcher has said anything."""
    made = indexed("a.dcm", n=1)
    os.remove(made.path)
    if replacement == "fifo":
        os.mkfifo(made.path)
    else:
        os.symlink(write("elsewhere.dcm", n=1, patient_name="OUTSIDE^SECRET"), made.path)
    with pytest.raises(NotSendable, match="replaced by a link or a special file"):
        prepare(made, (ELE,), index_of(indexed))
    assert index_of(indexed).instance(made.sop_instance_uid) is None


def test_a_file_that_stopped_being_dicom_is_not_sendable_and_leaves_the_index(
    indexed: Callable[..., Instance],
) -> None:
    made = indexed("a.dcm")
    Path(made.path).write_bytes(b"%PDF-1.7 no longer an image")
    with pytest.raises(NotSendable, match="changed"):
        prepare(made, (ELE,), index_of(indexed))
    assert index_of(indexed).instance_at(made.path) is None


# -- counting and the final status ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, Category.COMPLETED),
        (0xB000, Category.WARNING),  # PS3.4 B.2.3: coercion of data elements
        (0xB007, Category.WARNING),  # data set does not match SOP Class
        (0x0001, Category.WARNING),  # PS3.7 C.4: general warning
        (0xA700, Category.FAILED),  # out of resources
        (0xC000, Category.FAILED),  # cannot understand
        (0x0122, Category.FAILED),  # SOP Class not supported
        (None, Category.FAILED),  # no response
    ],
    ids=["success", "coercion", "mismatch-warning", "general-warning", "out-of-resources",
         "cannot-understand", "class-not-supported", "no-response"],
)  # fmt: skip
def test_a_store_response_counts_as_completed_warning_or_failed(
    code: int | None, expected: Category
) -> None:
    assert category(code) is expected


@pytest.mark.parametrize(
    ("tally", "cancelled", "expected"),
    [
        (Tally(0, completed=3), False, status.SUCCESS),
        (Tally(0), False, status.SUCCESS),  # nothing matched
        (Tally(0, completed=2, failed=1), False, status.SUBOPS_WITH_FAILURES),
        (Tally(0, completed=2, warning=1), False, status.SUBOPS_WITH_FAILURES),
        (Tally(0, warning=3), False, status.SUBOPS_WITH_FAILURES),
        (Tally(0, failed=3), False, status.OUT_OF_RESOURCES_SUBOPS),
        (Tally(2, completed=1), True, status.CANCEL),
    ],
    ids=["all-completed", "none", "some-failed", "some-warned", "all-warned", "all-failed",
         "cancelled"],
)  # fmt: skip
def test_the_final_status_follows_ps34_c4215(tally: Tally, cancelled: bool, expected: int) -> None:
    assert final_status(tally, cancelled=cancelled) == expected


def test_the_failed_uid_list_fits_a_16_bit_length_in_explicit_vr() -> None:
    uids = [synthetic_uid("failed", n) for n in range(3000)]
    kept = retrieve.failed_uid_list(uids, explicit_vr=True)
    assert kept == uids[: len(kept)]
    assert len("\\".join(kept)) <= 0xFFFE < len("\\".join(uids[: len(kept) + 1]))
    assert retrieve.failed_uid_list(uids, explicit_vr=False) == uids


# -- the sub-operation loop, over a fake association ---------------------------------------


@dataclass
class FakeLink:
    """An association that accepts `accepted` and answers each C-STORE with `answer`."""

    accepted: dict[str, tuple[str, ...]]
    answer: Callable[[retrieve.Outgoing], Stored] = lambda outgoing: Stored(0x0000)
    sent: list[str] = field(default_factory=list)
    closed: int = 0

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        return self.accepted.get(sop_class_uid, ())

    def why_not(self, sop_class_uid: str) -> str:
        return f"no context for {sop_class_uid}"

    def store(self, outgoing: retrieve.Outgoing) -> Stored:
        self.sent.append(outgoing.sop_instance_uid)
        return self.answer(outgoing)

    def close(self) -> None:
        self.closed += 1


@dataclass
class FakeRequestor:
    cancel_after: int | None = None  # pending responses
    gone_after: int | None = None
    pendings: list[tuple[int, int, int, int]] = field(default_factory=list)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.pendings) >= self.cancel_after

    def gone(self) -> bool:
        return self.gone_after is not None and len(self.pendings) >= self.gone_after

    def starting(self) -> None:
        pass

    def pending(self, tally: Tally) -> None:
        self.pendings.append((tally.remaining, tally.completed, tally.failed, tally.warning))


@pytest.fixture
def series(indexed: Callable[..., Instance]) -> list[Instance]:
    """Four CT instances on disk, indexed."""
    return [indexed(f"{n}.dcm", n=n) for n in range(1, 5)]


def run(
    instances: list[Instance],
    index: Index,
    links: Iterator[FakeLink] | FakeLink,
    requestor: FakeRequestor | None = None,
    *,
    reopen: bool = True,
    at_once: int = 1,
) -> retrieve.Outcome:
    opening = threading.Lock()  # senders of one retrieve open their links from their own threads

    def open_link(batch: Batch) -> retrieve.Link:
        if isinstance(links, FakeLink):
            return links
        with opening:
            return next(links)

    return retrieve.run(
        plan_batches(instances),
        open_link,
        requestor or FakeRequestor(),
        index,
        reopen=reopen,
        links=at_once,
    )


def every_class(*syntaxes: str) -> dict[str, tuple[str, ...]]:
    return {CTImageStorage: syntaxes, MRImageStorage: syntaxes}


def test_every_instance_goes_with_a_pending_response_after_each(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    link, requestor = FakeLink(every_class(ELE)), FakeRequestor()
    outcome = run(series, index_of(indexed), link, requestor)
    assert outcome.status == status.SUCCESS
    assert link.sent == [i.sop_instance_uid for i in series]
    assert requestor.pendings == [(3, 1, 0, 0), (2, 2, 0, 0), (1, 3, 0, 0), (0, 4, 0, 0)]
    assert outcome.tally.sent_bytes == sum(data_set_size(i) for i in series)
    assert link.closed == 1


def data_set_size(instance: Instance) -> int:
    """Bytes of the data set in the file (after the meta information)."""
    with open(instance.path, "rb") as fp:
        return os.path.getsize(instance.path) - retrieve._read_meta(fp).offset


def test_failures_warnings_and_deleted_files_are_counted_and_listed(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    answers = {series[1].sop_instance_uid: 0xA700, series[2].sop_instance_uid: 0xB000}
    link = FakeLink(every_class(ELE), lambda o: Stored(answers.get(o.sop_instance_uid, 0)))
    os.remove(series[3].path)
    outcome = run(series, index_of(indexed), link)
    assert outcome.status == status.SUBOPS_WITH_FAILURES
    tally = outcome.tally
    assert (tally.remaining, tally.completed, tally.warning, tally.failed) == (0, 1, 1, 2)
    assert tally.failed_uids == [series[1].sop_instance_uid, series[3].sop_instance_uid]
    assert series[3].sop_instance_uid not in link.sent
    assert index_of(indexed).instance(series[3].sop_instance_uid) is None


def test_all_failed_is_a702_with_every_uid(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    link = FakeLink(every_class(ELE), lambda o: Stored(0xC000))
    outcome = run(series, index_of(indexed), link)
    assert outcome.status == status.OUT_OF_RESOURCES_SUBOPS
    assert outcome.tally.failed_uids == [i.sop_instance_uid for i in series]


def test_a_sop_class_without_an_accepted_context_fails_and_the_rest_go(
    indexed: Callable[..., Instance],
) -> None:
    ct = indexed("ct.dcm", n=1)
    sc = indexed("sc.dcm", n=2, sop_class_uid=SecondaryCaptureImageStorage)
    link = FakeLink({CTImageStorage: (ELE,)})
    outcome = run([ct, sc], index_of(indexed), link)
    assert link.sent == [ct.sop_instance_uid]
    assert outcome.tally.failed_uids == [sc.sop_instance_uid]
    assert outcome.reason == f"no context for {SecondaryCaptureImageStorage}"


def test_a_cancel_stops_before_the_next_instance_with_the_counts(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    link, requestor = FakeLink(every_class(ELE)), FakeRequestor(cancel_after=1)
    outcome = run(series, index_of(indexed), link, requestor)
    assert outcome.status == status.CANCEL
    assert link.sent == [series[0].sop_instance_uid]
    assert (outcome.tally.remaining, outcome.tally.completed) == (3, 1)
    assert link.closed == 1


def test_a_requestor_that_went_away_gets_no_final_response(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    link = FakeLink(every_class(ELE))
    outcome = run(series, index_of(indexed), link, FakeRequestor(gone_after=2))
    assert outcome.status is None
    assert len(link.sent) == 2


def test_an_unreachable_destination_fails_everything_once(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    attempts = []

    def open_link(batch: Batch) -> retrieve.Link:
        attempts.append(batch)
        raise Unreachable("STORESCP at 127.0.0.1:1 refused the connection")

    outcome = retrieve.run(
        plan_batches(series), open_link, FakeRequestor(), index_of(indexed), reopen=True
    )
    assert outcome.status == status.OUT_OF_RESOURCES_SUBOPS
    assert outcome.tally.failed == 4
    assert outcome.reason == "STORESCP at 127.0.0.1:1 refused the connection"
    assert len(attempts) == 1


def losing(lost: str) -> Callable[[retrieve.Outgoing], Stored]:
    """A link's answer: `lost`'s response never comes (the link breaks); the rest succeed."""

    def answer(outgoing: retrieve.Outgoing) -> Stored:
        if outgoing.sop_instance_uid == lost:
            return Stored(None, "no C-STORE response within 1 s", usable=False)
        return Stored(0x0000)

    return answer


def test_the_instance_a_link_broke_on_is_sent_again_over_a_new_one(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    """A lost response costs one timeout and one more C-STORE, never the instance."""
    answer = losing(series[1].sop_instance_uid)
    first, second = FakeLink(every_class(ELE), answer), FakeLink(every_class(ELE))
    outcome = run(series, index_of(indexed), iter([first, second]))
    assert outcome.status == status.SUCCESS
    assert (outcome.tally.completed, outcome.tally.failed) == (4, 0)
    assert first.sent == [i.sop_instance_uid for i in series[:2]]
    assert second.sent == [i.sop_instance_uid for i in series[1:]]
    assert (first.closed, second.closed) == (1, 1)


def test_an_instance_is_sent_again_once_then_fails_and_the_rest_go_on(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    lost = series[1].sop_instance_uid
    links = [FakeLink(every_class(ELE), losing(lost)) for _ in range(3)]
    outcome = run(series, index_of(indexed), iter(links))
    assert outcome.status == status.SUBOPS_WITH_FAILURES
    assert outcome.tally.failed_uids == [lost]
    assert outcome.tally.completed == 3
    assert [len(link.sent) for link in links] == [2, 1, 2]  # the second sent only `lost`, again
    assert outcome.reason == "no C-STORE response within 1 s"


def test_a_first_link_that_breaks_at_once_is_replaced_and_the_instance_goes(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    broken = FakeLink(every_class(ELE), lambda o: Stored(None, "aborted", usable=False))
    working = FakeLink(every_class(ELE))
    outcome = run(series, index_of(indexed), iter([broken, working]))
    assert outcome.status == status.SUCCESS
    assert len(broken.sent) == 1
    assert working.sent == [i.sop_instance_uid for i in series]


def test_two_links_in_a_row_that_break_before_delivering_end_the_retrieve(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    broken = [FakeLink(every_class(ELE), lambda o: Stored(None, "aborted", usable=False))] * 2
    outcome = run(series, index_of(indexed), iter(broken))  # a third link would be StopIteration
    assert outcome.status == status.OUT_OF_RESOURCES_SUBOPS
    assert len(broken[0].sent) == 2  # the first instance, then the same instance again
    assert outcome.tally.failed == 4
    assert outcome.reason == "the association broke: aborted"


def test_several_links_at_once_share_the_instances_each_sent_once(
    indexed: Callable[..., Instance],
) -> None:
    instances = [indexed(f"{n}.dcm", n=n) for n in range(1, 31)]
    both_sent = threading.Barrier(3, timeout=10)  # each link holds its first until all have one
    links = [FakeLink(every_class(ELE), lambda o: Stored(0x0000)) for _ in range(3)]

    def first_waits_for_the_others(link: FakeLink) -> Callable[[retrieve.Outgoing], Stored]:
        def answer(outgoing: retrieve.Outgoing) -> Stored:
            if len(link.sent) == 1:
                both_sent.wait()
            return Stored(0x0000)

        return answer

    for link in links:
        link.answer = first_waits_for_the_others(link)
    requestor = FakeRequestor()
    outcome = run(instances, index_of(indexed), iter(links), requestor, at_once=3)
    assert outcome.status == status.SUCCESS
    assert outcome.tally.completed == 30
    sent = [uid for link in links for uid in link.sent]
    assert sorted(sent) == sorted(i.sop_instance_uid for i in instances)
    assert all(link.sent and link.closed == 1 for link in links)
    assert [p[0] for p in requestor.pendings] == list(range(29, -1, -1))


def test_a_link_refused_while_others_are_open_leaves_its_instances_to_them(
    indexed: Callable[..., Instance],
) -> None:
    """A destination that takes fewer associations at once than `associations` (its refusal
    says "transient"): everything goes over the links it did accept, nothing fails."""
    instances = [indexed(f"{n}.dcm", n=n) for n in range(1, 13)]
    both_refused = threading.Barrier(3, timeout=10)  # the first store waits for the refusals
    open_link_calls = []
    accepted = FakeLink(every_class(ELE))

    def answer(outgoing: retrieve.Outgoing) -> Stored:
        if len(accepted.sent) == 1:
            both_refused.wait()
        return Stored(0x0000)

    accepted.answer = answer
    opening = threading.Lock()

    def open_link(batch: Batch) -> retrieve.Link:
        with opening:
            open_link_calls.append(batch)
            calls = len(open_link_calls)
        if calls in (2, 3):  # while the first is open
            both_refused.wait()
            raise Unreachable("association rejected: Local limit exceeded (PYSCP at 127.0.0.1:1)")
        # The first; or a later one, once the first let go (its sender found nothing left
        # while these were still being refused): the peer takes it then.
        return accepted

    outcome = retrieve.run(
        plan_batches(instances), open_link, FakeRequestor(), index_of(indexed), reopen=True, links=3
    )
    assert outcome.status == status.SUCCESS
    assert outcome.tally.completed == 12
    assert sorted(accepted.sent) == sorted(i.sop_instance_uid for i in instances)
    assert len(open_link_calls) in (3, 4)


def test_a_peer_taking_one_association_at_a_time_is_not_kept_waiting(
    indexed: Callable[..., Instance],
) -> None:
    """DCMTK storescp without --fork: a second association waits for the first to end. A
    sender with nothing left to send held its link while another waited to open one, so
    every batch took the ACSE timeout (30 s by default): it now lets go of its link first."""
    instances = [indexed(f"{n}.dcm", n=n) for n in range(1, 9)]
    free = threading.Semaphore(1)

    class OneAtATime(FakeLink):
        def close(self) -> None:
            super().close()
            free.release()

    def open_link(batch: Batch) -> retrieve.Link:
        if not free.acquire(timeout=3):  # the ACSE timeout of this test
            raise Unreachable("no association within 3 s")
        return OneAtATime(every_class(ELE))

    started = time.monotonic()
    outcome = retrieve.run(
        plan_batches(instances), open_link, FakeRequestor(), index_of(indexed), reopen=True, links=2
    )
    assert outcome.tally.completed == 8
    assert time.monotonic() - started < 1.5


def test_without_reopen_a_broken_link_fails_the_rest(
    series: list[Instance], indexed: Callable[..., Instance]
) -> None:
    def answer(outgoing: retrieve.Outgoing) -> Stored:
        usable = outgoing.sop_instance_uid != series[1].sop_instance_uid
        return Stored(0x0000 if usable else None, "stuck", usable=usable)

    link = FakeLink(every_class(ELE), answer)
    outcome = run(series, index_of(indexed), link, reopen=False)
    assert len(link.sent) == 2
    assert (outcome.tally.completed, outcome.tally.failed) == (1, 3)


def test_a_small_data_set_is_read_whole_only_from_the_file_that_was_checked(
    indexed: Callable[..., Instance], tmp_path: Path
) -> None:
    """What goes in one PDU (links.StoreSender) is all of the file as checked, or nothing."""
    made = indexed("a.dcm")
    outgoing = prepare(made, (ELE,), index_of(indexed))
    whole = retrieve.data_set_bytes(outgoing)
    assert whole is not None
    assert len(whole) == outgoing.size
    assert whole == Path(made.path).read_bytes()[-outgoing.size :]

    os.truncate(made.path, os.path.getsize(made.path) - 2)  # cut short
    assert retrieve.data_set_bytes(outgoing) is None

    other = indexed("b.dcm", n=2)
    os.replace(other.path, made.path)  # another file in its place
    assert retrieve.data_set_bytes(outgoing) is None
