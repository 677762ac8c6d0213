"""Deterministic synthetic DICOM Part-10 files: the sample data, test fixtures and benchmark trees.

This module owns making files, nothing else: it knows no index, no matching and no networking, and
nothing in the server imports it. Everything is derived from its inputs, so the same call writes
byte-identical files on every run (the one exception: a Deflated file's compressed bytes depend on
the zlib build, its decompressed content does not). UIDs are name-based UUIDs under the `2.25`
root (PS3.5 B.2), so no organisation's UID root is borrowed.

Every instance is a single-frame, 16-bit MONOCHROME2 image (12 bits stored) with a gradient and a
disk whose size follows the Instance Number, so a series looks like slices through a phantom.
Its attributes fill the Type 1 and Type 2 elements of the image's IOD: CT, MR, CR and US Image
Storage, and Secondary Capture for any other modality.

The sample data, written by ``python -m fsqr.synthetic sample_data``
(laid out as ``<PatientID>/<date>_<study>/SE<nn>_<series>/IMG<nnnn>.dcm``):

========  =========================================  =========  ==============================
Patient   Name (character set)                       Study      Series (instances)
========  =========================================  =========  ==============================
FSQR0001  DOE^JOHN (ASCII)                           20240115   CT chest: 2 CT series (8, 4)
                                                     20240610   MR brain: T1, T2 (5, 5), OT key
                                                                image (1, Deflated Explicit VR)
FSQR0002  DOE^JANE (ASCII)                           20230920   MR left knee: 2 series (4, 4)
FSQR0003  Müller^Jürgen (ISO_IR 192, UTF-8)          20231103   CT abdomen (6)
                                                     20240220   CR chest: PA, lateral (1, 1)
FSQR0004  Muñoz^José (ISO_IR 100, Latin-1)           20240302   CR chest PA (1, Implicit VR)
FSQR0005  Yamada^Hanako=山田^花子=やまだ^はなこ      20240805   MR head (4)
          (ISO_IR 192, UTF-8)
========  =========================================  =========  ==============================

5 patients, 7 studies, 12 series, 44 instances, about half a megabyte. CT and MR slices are
64 x 64, the CR and OT images 128 x 128. Every file is Explicit VR Little Endian except the two
noted, which let retrieve tests exercise transfer-syntax conversion.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import unicodedata
import uuid
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from fsqr.keys import MODALITY_WORKLIST_FIND

# Name-based UUIDs (RFC 9562 version 5) in this namespace become UIDs `2.25.<uuid as integer>`.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fsqr:synthetic")


def synthetic_uid(*parts: object) -> str:
    """A UID determined by `parts` alone: `2.25.` and a name-based UUID (PS3.5 B.2).

    >>> synthetic_uid("example")
    '2.25.104228371321856122795053993221787357333'
    >>> synthetic_uid("1", "23") == synthetic_uid("12", "3")
    False
    """
    name = "\x1f".join(str(part) for part in parts)  # a separator, so the parts cannot run together
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


IMPLEMENTATION_CLASS_UID = synthetic_uid("fsqr.synthetic implementation", 1)
IMPLEMENTATION_VERSION_NAME = "FSQR_SYNTH_1"  # SH, at most 16 characters (PS3.10 7.1)

# What pydicom writes itself; compressed transfer syntaxes would need an encoder.
WRITABLE_TRANSFER_SYNTAXES = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)


@dataclass(frozen=True, slots=True)
class _Kind:
    """What an image of one modality needs beyond the modules every image has."""

    sop_class_uid: str
    image_type: tuple[str, ...]
    in_patient_space: bool  # Frame of Reference and Image Plane modules (PS3.3 C.7.4.1, C.7.6.2)
    attributes: tuple[tuple[str, object], ...]  # the modality's own Type 1 and 2 elements


_KINDS = {
    # PS3.3 A.3 CT Image IOD, C.8.2.1 CT Image Module.
    "CT": _Kind(
        CTImageStorage,
        ("ORIGINAL", "PRIMARY", "AXIAL"),
        in_patient_space=True,
        attributes=(
            ("KVP", "120"),
            ("AcquisitionNumber", 1),
            ("RescaleIntercept", "-1024"),  # stored 1024 is water, 0 HU
            ("RescaleSlope", "1"),
            ("RescaleType", "HU"),
            ("WindowCenter", "40"),
            ("WindowWidth", "400"),
        ),
    ),
    # PS3.3 A.4 MR Image IOD, C.8.3.1 MR Image Module.
    "MR": _Kind(
        MRImageStorage,
        ("ORIGINAL", "PRIMARY", "OTHER"),
        in_patient_space=True,
        attributes=(
            ("ScanningSequence", "SE"),
            ("SequenceVariant", "NONE"),
            ("ScanOptions", ""),
            ("MRAcquisitionType", "2D"),
            ("RepetitionTime", "500"),
            ("EchoTime", "15"),
            ("EchoTrainLength", "1"),
            ("MagneticFieldStrength", "1.5"),
            ("AcquisitionNumber", 1),
        ),
    ),
    # PS3.3 A.2 CR Image IOD, C.8.1.1 CR Series Module: Body Part and View Position are Type 2.
    "CR": _Kind(
        ComputedRadiographyImageStorage,
        ("ORIGINAL", "PRIMARY"),
        in_patient_space=False,
        attributes=(("BodyPartExamined", ""), ("ViewPosition", "")),
    ),
    # PS3.3 A.6 US Image IOD, C.8.5.6 US Image Module.
    "US": _Kind(
        UltrasoundImageStorage, ("ORIGINAL", "PRIMARY"), in_patient_space=False, attributes=()
    ),
}
# PS3.3 A.8.1 SC Image IOD, C.8.6.1 SC Equipment Module: for OT and any modality not above.
_SECONDARY_CAPTURE = _Kind(
    SecondaryCaptureImageStorage,
    ("DERIVED", "SECONDARY"),
    in_patient_space=False,
    attributes=(("ConversionType", "WSD"),),  # workstation
)

_SLICE_THICKNESS_MM = 5
_FIELD_OF_VIEW_MM = 320
_PHASES = 8  # the disk grows over this many slices, then starts again


def sop_class_for(modality: str) -> str:
    """The Storage SOP Class an image of `modality` is written as.

    >>> sop_class_for("MR").name
    'MR Image Storage'
    >>> sop_class_for("OT").name
    'Secondary Capture Image Storage'
    """
    return UID(_KINDS.get(modality, _SECONDARY_CAPTURE).sop_class_uid)


@lru_cache(maxsize=256)
def pixel_bytes(rows: int, columns: int, phase: int = 0) -> bytes:
    """A `rows` x `columns` 16-bit little-endian image: a gradient, a body, a disk sized by `phase`.

    Values stay below 4096, so 12 bits stored hold them; integer arithmetic only.

    >>> len(pixel_bytes(4, 3))
    24
    >>> pixel_bytes(64, 64, 1) == pixel_bytes(64, 64, 1) != pixel_bytes(64, 64, 2)
    True
    """
    # Coordinates are doubled so the centre of an even-sized image falls on a whole number.
    body = min(rows, columns) * 4 // 5  # diameter, in pixels: radius squared x 4 below
    disk = max(1, body * (1 + phase % _PHASES) // (2 * _PHASES))
    values = array("H")
    for y in range(rows):
        dy = 2 * y - rows + 1
        for x in range(columns):
            dx = 2 * x - columns + 1
            distance = dx * dx + dy * dy
            value = (x + y) * 255 // max(1, rows + columns - 2)  # background gradient 0..255
            if distance <= 4 * disk * disk:
                value += 2048
            elif distance <= body * body:
                value += 1024
            values.append(value)
    if sys.byteorder == "big":
        values.byteswap()  # DICOM pixel data here is little endian whatever the host
    return values.tobytes()


def _texts(values: Sequence[object]) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _texts(value)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2).

    >>> _ds(320 / 64), _ds(-157.5), _ds(320 / 3)
    ('5', '-157.5', '106.667')
    """
    return f"{value:.6g}"


def make_instance(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "CT",
    sop_class_uid: str | None = None,
    rows: int = 16,
    columns: int = 16,
    instance_number: int = 1,
    series_number: int = 1,
    study_date: str = "20240101",
    study_time: str = "120000",
    accession_number: str = "",
    study_description: str = "",
    series_description: str = "",
    birth_date: str = "",
    sex: str = "",
    specific_character_set: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    extra: Mapping[str, object] | None = None,
) -> FileDataset:
    """A complete single-frame image with its File Meta Information, ready for `write_instance`.

    `sop_class_uid` defaults to the one `sop_class_for(modality)` names. `specific_character_set`
    None means ISO_IR 192 (UTF-8) when any text is non-ASCII and no element at all otherwise; ""
    means no element whatever the text. `extra` sets further elements by keyword and is applied
    last, so it overrides anything above; a value of None removes the element, which lets a test
    build a file that lacks a required attribute.

    >>> ds = make_instance(patient_id="P1", patient_name="Müller^Jürgen", study_uid="1.2.3",
    ...                    series_uid="1.2.3.4", sop_uid="1.2.3.4.5", rows=4, columns=8)
    >>> ds.SpecificCharacterSet, ds.file_meta.MediaStorageSOPClassUID.name, len(ds.PixelData)
    ('ISO_IR 192', 'CT Image Storage', 64)
    """
    if transfer_syntax_uid not in WRITABLE_TRANSFER_SYNTAXES:
        raise ValueError(f"cannot write transfer syntax {transfer_syntax_uid}")
    extra = dict(extra or {})
    unknown = sorted(keyword for keyword in extra if tag_for_keyword(keyword) is None)
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    kind = _KINDS.get(modality, _SECONDARY_CAPTURE)
    sop_class = UID(sop_class_uid or kind.sop_class_uid)

    if specific_character_set is None:
        texts = [patient_id, patient_name, accession_number, study_description, series_description]
        if any(not text.isascii() for text in _texts([*texts, *extra.values()])):
            specific_character_set = "ISO_IR 192"

    ds = FileDataset(
        "",
        Dataset(),
        file_meta=_file_meta(sop_class, sop_uid, transfer_syntax_uid),
        preamble=bytes(128),
    )
    if specific_character_set:  # set first: it decides how the text below is encoded
        ds.SpecificCharacterSet = specific_character_set
    elements: list[tuple[str, object]] = [
        # SOP Common (PS3.3 C.12.1), Patient (C.7.1.1), General Study (C.7.2.1).
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", UID(sop_uid)),
        ("PatientName", patient_name),
        ("PatientID", patient_id),
        ("PatientBirthDate", birth_date),
        ("PatientSex", sex),
        ("StudyInstanceUID", UID(study_uid)),
        ("StudyDate", study_date),
        ("StudyTime", study_time),
        ("AccessionNumber", accession_number),
        ("StudyID", ""),
        ("ReferringPhysicianName", ""),
        ("StudyDescription", study_description or None),
        # General Series (C.7.3.1), General Equipment (C.7.5.1), General Image (C.7.6.1).
        ("Modality", modality),
        ("SeriesInstanceUID", UID(series_uid)),
        ("SeriesNumber", series_number),
        ("SeriesDate", study_date),
        ("SeriesTime", study_time),
        ("SeriesDescription", series_description or None),
        ("Manufacturer", "fsqr synthetic"),
        ("InstanceNumber", instance_number),
        ("ContentDate", study_date),
        ("ContentTime", study_time),
        ("ImageType", list(kind.image_type)),
        *(
            _image_plane(series_uid, rows, columns, instance_number)
            if kind.in_patient_space
            else [("PatientOrientation", "")]  # Type 2C: required without Image Orientation
        ),
        *_image_pixel(rows, columns, instance_number),
        *kind.attributes,
        *extra.items(),
    ]
    for keyword, value in elements:
        if value is not None:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    return ds


def _file_meta(sop_class_uid: str, sop_uid: str, transfer_syntax_uid: str) -> FileMetaDataset:
    """The File Meta Information (PS3.10 7.1), complete, so pydicom adds nothing of its own."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _image_plane(
    series_uid: str, rows: int, columns: int, instance_number: int
) -> list[tuple[str, object]]:
    """Frame of Reference (PS3.3 C.7.4.1) and Image Plane (C.7.6.2): axial slices, 5 mm apart.

    >>> dict(_image_plane("1.2.3", 64, 64, 3))["ImagePositionPatient"]
    ['-160', '-160', '-10']
    """
    z = -(instance_number - 1) * _SLICE_THICKNESS_MM
    return [
        ("PatientPosition", "HFS"),
        ("FrameOfReferenceUID", synthetic_uid("frame of reference", series_uid)),
        ("PositionReferenceIndicator", ""),
        ("ImagePositionPatient", [_ds(-_FIELD_OF_VIEW_MM / 2)] * 2 + [_ds(z)]),
        ("ImageOrientationPatient", ["1", "0", "0", "0", "1", "0"]),
        ("PixelSpacing", [_ds(_FIELD_OF_VIEW_MM / rows), _ds(_FIELD_OF_VIEW_MM / columns)]),
        ("SliceThickness", _ds(_SLICE_THICKNESS_MM)),
        ("SliceLocation", _ds(z)),
    ]


def _image_pixel(rows: int, columns: int, instance_number: int) -> list[tuple[str, object]]:
    """Image Pixel (PS3.3 C.7.6.3) as every kind above allows it: 16 bits, 12 stored, unsigned."""
    return [
        ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME2"),
        ("Rows", rows),
        ("Columns", columns),
        ("BitsAllocated", 16),
        ("BitsStored", 12),
        ("HighBit", 11),
        ("PixelRepresentation", 0),
        ("PixelData", pixel_bytes(rows, columns, instance_number - 1)),
    ]


def write_instance(ds: FileDataset, path: Path) -> Path:
    """Write `ds` as a DICOM Part-10 file at `path`, creating its folders; return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _hash_int(*parts: object) -> int:
    """A stable pseudo-random integer from `parts`: the same on every machine and Python.

    >>> _hash_int("a", 1) == _hash_int("a", 1) != _hash_int("a", 2)
    True
    """
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def write_tree(
    root: Path,
    *,
    patients: int,
    studies_per_patient: int,
    series_per_study: int,
    instances_per_series: int,
    rows: int = 16,
    columns: int = 16,
    modalities: Sequence[str] = ("CT", "MR"),
    seed: int = 0,
) -> list[Path]:
    """Write a uniform tree of synthetic instances for benchmarks and tests; return their paths.

    Patients are DOE^PATIENT0001, DOE^PATIENT0002, …; study dates are spread over 2023; each study
    has one modality, taken in turn from `modalities`. Layout:
    ``root/<PatientID>/<StudyDate>_<n>/<n>_<Modality>/<n>.dcm``. A different `seed` gives
    different Patient IDs and UIDs, so two trees can be served side by side.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_tree(Path(tmp), patients=2, studies_per_patient=1,
    ...                        series_per_study=2, instances_per_series=3)
    ...     [str(p.relative_to(tmp)) for p in paths[:2]] + [str(len(paths))]
    ['T0P000001/20230626_001/001_CT/0001.dcm', 'T0P000001/20230626_001/001_CT/0002.dcm', '12']
    """
    paths = []
    first_day = date(2023, 1, 1)
    for p in range(1, patients + 1):
        patient_id = f"T{seed}P{p:06d}"
        birth = first_day - timedelta(days=7000 + _hash_int(seed, p, "birth") % 20000)
        patient = {
            "patient_id": patient_id,
            "patient_name": f"DOE^PATIENT{p:04d}",
            "birth_date": _da(birth),
            "sex": "MF"[p % 2],
        }
        for s in range(1, studies_per_patient + 1):
            modality = modalities[((p - 1) * studies_per_patient + s - 1) % len(modalities)]
            day = first_day + timedelta(days=_hash_int(seed, p, s, "date") % 365)
            minutes = _hash_int(seed, p, s, "time") % 600  # 08:00 to 17:59
            study = {
                "study_uid": synthetic_uid("tree", seed, p, s),
                "study_date": _da(day),
                "study_time": f"{8 + minutes // 60:02d}{minutes % 60:02d}00",
                "accession_number": f"A{p:06d}{s:03d}",
                "study_description": f"{modality} STUDY {s}",
            }
            study_dir = root / patient_id / f"{study['study_date']}_{s:03d}"
            for r in range(1, series_per_study + 1):
                series_dir = study_dir / f"{r:03d}_{modality}"
                for i in range(1, instances_per_series + 1):
                    ds = make_instance(
                        **patient,
                        **study,
                        series_uid=synthetic_uid("tree", seed, p, s, r),
                        sop_uid=synthetic_uid("tree", seed, p, s, r, i),
                        modality=modality,
                        rows=rows,
                        columns=columns,
                        instance_number=i,
                        series_number=r,
                        series_description=f"{modality} SERIES {r}",
                        extra={"StudyID": str(s)},
                    )
                    paths.append(write_instance(ds, series_dir / f"{i:04d}.dcm"))
    return paths


def write_tree_of_about(
    root: Path, instances: int, *, rows: int = 16, columns: int = 16, seed: int = 0
) -> list[Path]:
    """`write_tree` of about `instances` instances, split as `tree_split` splits them."""
    patients, studies, series, per_series = tree_split(instances)
    return write_tree(
        root,
        patients=patients,
        studies_per_patient=studies,
        series_per_study=series,
        instances_per_series=per_series,
        rows=rows,
        columns=columns,
        seed=seed,
    )


def tree_split(instances: int) -> tuple[int, int, int, int]:
    """Patients, studies per patient, series per study and instances per series for about
    `instances` instances: two studies of two series each per patient, up to 25 per series.

    >>> tree_split(10_000), tree_split(100), tree_split(1)
    ((100, 2, 2, 25), (1, 2, 2, 25), (1, 2, 2, 1))
    """
    per_series = max(1, min(25, instances // 4))
    return max(1, round(instances / (4 * per_series))), 2, 2, per_series


# The sample data, as data. Each study's folder and UIDs derive from these fields.


@dataclass(frozen=True, slots=True)
class _Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    charset: str | None = None  # None: ASCII, or ISO_IR 192 when the text needs it


@dataclass(frozen=True, slots=True)
class _Series:
    number: int
    modality: str
    description: str
    body_part: str
    instances: int
    size: int = 64
    transfer_syntax: str = ExplicitVRLittleEndian
    extra: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class _Study:
    patient: _Patient
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str
    series: tuple[_Series, ...]


_DOE_JOHN = _Patient("FSQR0001", "DOE^JOHN", "19700101", "M")
_DOE_JANE = _Patient("FSQR0002", "DOE^JANE", "19751230", "F")
_MUELLER = _Patient("FSQR0003", "Müller^Jürgen", "19580412", "M", "ISO_IR 192")
_MUNOZ = _Patient("FSQR0004", "Muñoz^José", "19820907", "M", "ISO_IR 100")
_YAMADA = _Patient(
    "FSQR0005", "Yamada^Hanako=山田^花子=やまだ^はなこ", "19900215", "F", "ISO_IR 192"
)

_T2 = (("RepetitionTime", "4000"), ("EchoTime", "100"), ("EchoTrainLength", "12"))
_STANDARD = (("ConvolutionKernel", "STANDARD"),)
_LUNG = (("ConvolutionKernel", "LUNG"), ("WindowCenter", "-600"), ("WindowWidth", "1500"))

SAMPLE_STUDIES = (
    _Study(_DOE_JOHN, "20240115", "093000", "ACC240001", "1001",
           "CT CHEST WITHOUT CONTRAST", "SMITH^ANNA^^DR", (
               _Series(1, "CT", "AXIAL 5MM", "CHEST", 8, extra=_STANDARD),
               _Series(2, "CT", "AXIAL 5MM LUNG", "CHEST", 4, extra=_LUNG),
           )),
    _Study(_DOE_JOHN, "20240610", "141500", "ACC240002", "1002",
           "MR BRAIN WITH AND WITHOUT CONTRAST", "SMITH^ANNA^^DR", (
               _Series(1, "MR", "T1 AXIAL", "BRAIN", 5),
               _Series(2, "MR", "T2 AXIAL", "BRAIN", 5, extra=_T2),
               _Series(99, "OT", "KEY IMAGES", "BRAIN", 1, size=128,
                       transfer_syntax=DeflatedExplicitVRLittleEndian),
           )),
    _Study(_DOE_JANE, "20230920", "101000", "ACC230917", "907",
           "MR KNEE LEFT", "JONES^PETER^^DR", (
               _Series(1, "MR", "PD FS CORONAL", "KNEE", 4, extra=(("Laterality", "L"),)),
               _Series(2, "MR", "T1 SAGITTAL", "KNEE", 4, extra=(("Laterality", "L"),)),
           )),
    _Study(_MUELLER, "20231103", "163000", "ACC231103", "2001",
           "CT Abdomen/Becken mit KM", "Schröder^Käthe^^Dr.", (
               _Series(1, "CT", "Portalvenöse Phase", "ABDOMEN", 6),
           )),
    _Study(_MUELLER, "20240220", "080500", "ACC240220", "2002",
           "Röntgen Thorax", "Schröder^Käthe^^Dr.", (
               _Series(1, "CR", "Thorax p.a.", "CHEST", 1, size=128,
                       extra=(("ViewPosition", "PA"),)),
               _Series(2, "CR", "Thorax seitlich", "CHEST", 1, size=128,
                       extra=(("ViewPosition", "LL"),)),
           )),
    _Study(_MUNOZ, "20240302", "112000", "ACC240302", "3001",
           "Radiografía de tórax", "Peña^Íñigo^^Dr.", (
               _Series(1, "CR", "Tórax PA", "CHEST", 1, size=128,
                       transfer_syntax=ImplicitVRLittleEndian, extra=(("ViewPosition", "PA"),)),
           )),
    _Study(_YAMADA, "20240805", "103000", "ACC240805", "4001",
           "頭部MRI", "Suzuki^Ichiro=鈴木^一郎=すずき^いちろう", (
               _Series(1, "MR", "T2強調 横断像", "HEAD", 4, extra=_T2),
           )),
)  # fmt: skip


def folder_name(text: str, fallback: str) -> str:
    """`text` as an ASCII folder name: accents dropped, other letters left out.

    >>> folder_name("Portalvenöse Phase", "CT"), folder_name("頭部MRI", "MR"), folder_name("", "OT")
    ('PORTALVENOSE_PHASE', 'MRI', 'OT')
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = "".join(c if c.isalnum() else " " for c in ascii_text.upper()).split()
    return "_".join(words) or fallback


def write_sample_data(root: Path) -> list[Path]:
    """Write the curated sample set (see the module docstring) under `root`; return the paths.

    Nothing already in `root` is removed.
    """
    paths = []
    for study in SAMPLE_STUDIES:
        patient = study.patient
        study_uid = synthetic_uid("sample", patient.patient_id, study.accession)
        first = study.series[0].modality
        study_dir = (
            root / patient.patient_id / f"{study.date}_{folder_name(study.description, first)}"
        )
        for series in study.series:
            series_uid = synthetic_uid("sample", study_uid, series.number)
            name = folder_name(series.description, series.modality)
            for number in range(1, series.instances + 1):
                ds = make_instance(
                    patient_id=patient.patient_id,
                    patient_name=patient.name,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=synthetic_uid("sample", series_uid, number),
                    modality=series.modality,
                    rows=series.size,
                    columns=series.size,
                    instance_number=number,
                    series_number=series.number,
                    study_date=study.date,
                    study_time=study.time,
                    accession_number=study.accession,
                    study_description=study.description,
                    series_description=series.description,
                    birth_date=patient.birth_date,
                    sex=patient.sex,
                    specific_character_set=patient.charset,
                    transfer_syntax_uid=series.transfer_syntax,
                    extra={
                        "StudyID": study.study_id,
                        "ReferringPhysicianName": study.referring,
                        "BodyPartExamined": series.body_part,
                        **dict(series.extra),
                    },
                )
                path = study_dir / f"SE{series.number:02d}_{name}" / f"IMG{number:04d}.dcm"
                paths.append(write_instance(ds, path))
    return paths + write_worklist(root / "worklist")


# The sample Modality Worklist: one scheduled procedure step per item.
SAMPLE_WORKLIST = (
    # PatientID, name, birth date, sex, modality, station AE, date, time, procedure
    ("FSQR0006", "SMITH^ANNA", "19750312", "F", "CT", "CT01", "20241202", "090000", "CT CHEST"),
    (
        "FSQR0007",
        "Nakamura^Yui=中村^結衣",
        "19880705",
        "F",
        "MR",
        "MR01",
        "20241202",
        "103000",
        "MR KNEE RIGHT",
    ),
    ("FSQR0001", "DOE^JOHN", "19600101", "M", "CR", "CR01", "20241203", "140000", "CR CHEST PA"),
)


def write_worklist(folder: Path) -> list[Path]:
    """Write the sample worklist items (.wl files, PS3.4 K.6.1) into `folder`; return paths."""
    paths = []
    for number, row in enumerate(SAMPLE_WORKLIST, 1):
        patient_id, name, birth, sex, modality, station, day, time, procedure = row
        ds = Dataset()
        if not name.isascii():
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.AccessionNumber = f"WL{number:04d}"
        ds.ReferringPhysicianName = "REFERRER^RITA"
        ds.PatientName = name
        ds.PatientID = patient_id
        ds.PatientBirthDate = birth
        ds.PatientSex = sex
        ds.StudyInstanceUID = synthetic_uid("worklist", number, "study")
        ds.RequestedProcedureDescription = procedure
        ds.RequestedProcedureID = f"RP{number:04d}"
        step = Dataset()
        step.Modality = modality
        step.ScheduledStationAETitle = station
        step.ScheduledProcedureStepStartDate = day
        step.ScheduledProcedureStepStartTime = time
        step.ScheduledPerformingPhysicianName = "TECH^TOM"
        step.ScheduledProcedureStepDescription = procedure
        step.ScheduledProcedureStepID = f"SPS{number:04d}"
        step.ScheduledStationName = station
        step.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = [step]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MODALITY_WORKLIST_FIND)
        meta.MediaStorageSOPInstanceUID = UID(synthetic_uid("worklist", number))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        item = FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)
        path = folder / f"item{number:04d}.wl"
        paths.append(write_instance(item, path))
    return paths


def main(argv: list[str] | None = None) -> int:
    """`python -m fsqr.synthetic OUT` writes the sample data; with `--tree N`, a benchmark tree."""
    parser = argparse.ArgumentParser(
        prog="python -m fsqr.synthetic",
        description="Write deterministic synthetic DICOM files: the sample data, or with --tree "
        "a uniform tree for benchmarks.",
    )
    parser.add_argument("out", type=Path, help="folder to write into (created if missing)")
    parser.add_argument(
        "--tree", type=int, metavar="N", help="write a tree of about N instances instead"
    )
    parser.add_argument("--rows", type=int, default=16, help="image rows in a tree (16)")
    parser.add_argument("--columns", type=int, default=16, help="image columns in a tree (16)")
    parser.add_argument("--seed", type=int, default=0, help="varies a tree's IDs and UIDs (0)")
    args = parser.parse_args(argv)
    if args.tree is None:
        paths = write_sample_data(args.out)
    else:
        if args.tree < 1:
            parser.error("--tree needs at least 1 instance")
        paths = write_tree_of_about(
            args.out, args.tree, rows=args.rows, columns=args.columns, seed=args.seed
        )
    size = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} files, {size} bytes, under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
