"""The synthetic-data generator: deterministic, valid Part-10 files, and the committed sample data
is exactly what it writes today."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from fsqr.synthetic import (
    main,
    make_instance,
    pixel_bytes,
    synthetic_uid,
    tree_split,
    write_instance,
    write_sample_data,
    write_tree,
)

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
MAX_SAMPLE_BYTES = 5_000_000
DCMDUMP = Path("/usr/bin/dcmdump")  # DCMTK's; pynetdicom's console scripts shadow its names on PATH


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _inflated(part10: bytes) -> bytes:
    """`part10` with a Deflated data set inflated: zlib builds may compress the same bytes
    differently, so Deflated files are compared by content (PS3.5 A.5)."""
    # Preamble, "DICM", then (0002,0000) UL: tag 4, VR 2, length 2, value 4 (PS3.10 7.1).
    meta_end = 144 + int.from_bytes(part10[140:144], "little")
    meta, data_set = part10[:meta_end], part10[meta_end:]
    if DeflatedExplicitVRLittleEndian.encode() not in meta:
        return part10
    return meta + zlib.decompress(data_set, -zlib.MAX_WBITS)


def _read(path: Path) -> FileDataset:
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root)
    return root


@pytest.fixture(scope="module")
def sample_datasets(sample: Path) -> dict[str, FileDataset]:
    return {p.relative_to(sample).as_posix(): _read(p) for p in sorted(sample.rglob("*.dcm"))}


# Determinism: same inputs, byte-identical files.


def test_sample_data_is_byte_identical_when_written_twice(sample: Path, tmp_path: Path) -> None:
    write_sample_data(tmp_path)
    assert _files(tmp_path) == _files(sample)


def test_tree_is_byte_identical_when_written_twice(tmp_path: Path) -> None:
    shape: dict[str, Any] = {"patients": 2, "studies_per_patient": 2, "series_per_study": 1}
    first = write_tree(tmp_path / "a", **shape, instances_per_series=3)
    second = write_tree(tmp_path / "b", **shape, instances_per_series=3)
    assert len(first) == len(second) == 12
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


# The committed sample data cannot drift from the generator.


def test_committed_sample_data_is_what_the_generator_writes(sample: Path) -> None:
    committed = {name: _inflated(data) for name, data in _files(SAMPLE_DATA).items()}
    generated = {name: _inflated(data) for name, data in _files(sample).items()}
    assert sorted(committed) == sorted(generated), "run: python -m fsqr.synthetic sample_data"
    changed = sorted(name for name in generated if committed[name] != generated[name])
    assert not changed, f"run: python -m fsqr.synthetic sample_data ({changed[:3]} differ)"


def test_committed_sample_data_is_at_most_5_mb() -> None:
    assert sum(len(data) for data in _files(SAMPLE_DATA).values()) <= MAX_SAMPLE_BYTES


# Every file is a complete Part-10 file that reads back.


def test_every_sample_file_has_consistent_meta_uids_and_pixels(
    sample_datasets: dict[str, FileDataset],
) -> None:
    for name, ds in sample_datasets.items():
        meta = ds.file_meta
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID, name
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, name
        assert meta.ImplementationClassUID.is_valid, name
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert uid.is_valid, name
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2, name
        assert ds.PixelData == pixel_bytes(ds.Rows, ds.Columns, ds.InstanceNumber - 1), name


def test_sample_data_covers_what_the_tests_need(sample_datasets: dict[str, FileDataset]) -> None:
    datasets = list(sample_datasets.values())
    assert len({ds.PatientID for ds in datasets}) >= 3
    assert len({ds.StudyInstanceUID for ds in datasets}) >= 4
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)  # no duplicates
    modalities = {ds.Modality for ds in datasets}
    assert {"CT", "MR"} < modalities
    character_sets = {ds.get("SpecificCharacterSet", "") for ds in datasets}
    assert {"ISO_IR 192", "ISO_IR 100"} <= character_sets
    transfer_syntaxes = {ds.file_meta.TransferSyntaxUID for ds in datasets}
    assert {ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian} < transfer_syntaxes
    assert len({ds.StudyDate for ds in datasets}) >= 4
    for keyword in ("StudyID", "ReferringPhysicianName", "BodyPartExamined", "PatientBirthDate"):
        assert all(ds.get(keyword) for ds in datasets), keyword


@pytest.mark.parametrize(
    ("patient_id", "name", "encoded"),
    [
        ("FSQR0003", "Müller^Jürgen", "Müller^Jürgen".encode()),  # ISO_IR 192 is UTF-8
        ("FSQR0004", "Muñoz^José", b"Mu\xf1oz^Jos\xe9"),  # ISO_IR 100 is Latin-1
        ("FSQR0005", "Yamada^Hanako=山田^花子=やまだ^はなこ", "山田^花子".encode()),
    ],
    ids=["utf-8", "latin-1", "japanese-utf-8"],
)
def test_names_are_encoded_in_the_declared_character_set(
    sample: Path, patient_id: str, name: str, encoded: bytes
) -> None:
    paths = sorted((sample / patient_id).rglob("*.dcm"))
    assert paths
    for path in paths:
        assert _read(path).PatientName == name
        if _read(path).file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
            assert encoded in path.read_bytes()


# make_instance and write_instance.


def _instance(**kwargs: Any) -> FileDataset:
    given = {"patient_id": "P1", "patient_name": "DOE^JOHN", "study_uid": "1.2.3"}
    given |= {"series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    return make_instance(**{**given, **kwargs})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("DOE^JOHN", None), ("Ωμέγα^Άλφα", "ISO_IR 192")],
    ids=["ascii-needs-none", "non-ascii-gets-utf-8"],
)
def test_character_set_follows_the_text(name: str, expected: str | None) -> None:
    assert _instance(patient_name=name).get("SpecificCharacterSet") == expected


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
    ids=["explicit", "implicit", "deflated"],
)
def test_instance_round_trips_in_each_transfer_syntax(tmp_path: Path, transfer_syntax: str) -> None:
    ds = _instance(rows=3, columns=5, modality="MR", transfer_syntax_uid=transfer_syntax)
    back = _read(write_instance(ds, tmp_path / "deep" / "er" / "x.dcm"))
    assert back.file_meta.TransferSyntaxUID == transfer_syntax
    assert back.SOPClassUID == MRImageStorage
    assert (back.Rows, back.Columns, len(back.PixelData)) == (3, 5, 30)
    assert back.PatientName == "DOE^JOHN"


def test_other_modalities_are_secondary_capture() -> None:
    ds = _instance(modality="OT")
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert ds.ConversionType == "WSD"


def test_extra_sets_overrides_and_removes_elements() -> None:
    ds = _instance(extra={"StudyID": "42", "Manufacturer": "ACME", "PatientSex": None})
    assert (ds.StudyID, ds.Manufacturer) == ("42", "ACME")
    assert "PatientSex" not in ds


@pytest.mark.parametrize(
    "kwargs",
    [{"extra": {"NotAKeyword": 1}}, {"transfer_syntax_uid": JPEGBaseline8Bit}],
    ids=["unknown-keyword", "compressed-syntax"],
)
def test_what_cannot_be_written_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"keyword|transfer syntax"):
        _instance(**kwargs)


def test_synthetic_uids_are_valid_and_distinct() -> None:
    uids = {synthetic_uid("tree", seed, n) for seed in (0, 1) for n in range(100)}
    assert len(uids) == 200
    assert all(UID(uid).is_valid for uid in uids)


# write_tree and the command line.


def test_tree_layout_and_seeds(tmp_path: Path) -> None:
    shape: dict[str, Any] = {"patients": 2, "studies_per_patient": 2, "series_per_study": 2}
    paths = write_tree(tmp_path / "a", **shape, instances_per_series=2, modalities=("CT", "MR"))
    other = write_tree(tmp_path / "b", **shape, instances_per_series=2, seed=7)
    assert len(paths) == 16
    assert paths[0].relative_to(tmp_path / "a").parts[0] == "T0P000001"
    datasets = [_read(p) for p in paths]
    assert datasets[0].PatientName == "DOE^PATIENT0001"
    assert {ds.Modality for ds in datasets} == {"CT", "MR"}
    assert len({ds.StudyInstanceUID for ds in datasets}) == 4
    assert not {ds.SOPInstanceUID for ds in datasets} & {_read(p).SOPInstanceUID for p in other}


@pytest.mark.parametrize("n", [1, 20, 1000, 12_345])
def test_tree_split_gives_about_n_instances(n: int) -> None:
    patients, studies, series, instances = tree_split(n)
    total = patients * studies * series * instances
    assert total >= 1
    assert abs(total - n) <= max(4, n // 10)


def test_main_writes_sample_data_and_trees(tmp_path: Path, sample: Path) -> None:
    assert main([str(tmp_path / "sample")]) == 0
    assert _files(tmp_path / "sample") == _files(sample)
    assert main(["--tree", "20", str(tmp_path / "tree")]) == 0
    assert len(list((tmp_path / "tree").rglob("*.dcm"))) == 20


# DCMTK reads the files without complaint.


@pytest.mark.dcmtk
@pytest.mark.skipif(not DCMDUMP.exists(), reason="DCMTK's dcmdump is not installed")
def test_dcmtk_reads_every_sample_file_without_a_warning(sample: Path) -> None:
    paths = sorted(str(p) for p in sample.rglob("*.dcm"))
    result = subprocess.run(
        [str(DCMDUMP), *paths], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    assert result.returncode == 0
    assert result.stderr.decode(errors="replace") == ""  # DCMTK logs E: and W: lines here
