"""What the index keeps of a file's header, and a fast reader for it: the indexed attributes of a
DICOM Part-10 file, read in pure Python with exactly the values pydicom gives, or no answer at all.

This module owns three things, so that the scan's two readers cannot drift apart:

- `element_text`: how the index stores one element's value (decoded text, values joined by `\\`);
- `records_from`: how a header's values split into the Patient / Study / Series / Instance records,
  and which files are skipped for lacking a UID;
- `read_indexed(path)`: the fast reader. It returns a `Parsed`, a `Skipped` (empty, not DICOM, a
  DICOMDIR, truncated pixel data, an image without pixel data, a missing UID), or None, which
  means "not sure: ask pydicom". `scan.read_header` calls it first and falls back to pydicom's
  `read_partial` on None.

It stays out of the index, of networking, and of pydicom's data sets except where it asks pydicom
to decode a value it does not decode itself. Nothing here raises out of `read_indexed`.

Why a second reader. pydicom turns every element of a header into objects and converts values as
they are asked for; the index needs some 45 elements, as text. This reader walks the elements by
their lengths (PS3.5 7.1.2 Explicit VR, 7.1.3 Implicit VR), keeps the raw bytes of the wanted ones,
steps over sequences without parsing them (PS3.5 7.5), stops at the pixel data, and decodes each
wanted value with the very steps pydicom's converter for its VR takes (`pydicom.values`), written
out for the common cases: text without ISO 2022 escapes in the file's character set, integer and
decimal strings, binary US. Anything else is handed to pydicom itself, for just that element
(`_pydicom_text`), so that Japanese names in ISO 2022 come out as pydicom decodes them. The
differential tests (tests/test_header.py) hold the two readers to identical records over generated
files, random ones, and every file of pydicom's own test data.

Why a path and not bytes (`read_indexed(path)` rather than a parser over a buffer): the reader
reads 64 KiB at a time, steps over large values without reading them, and checks the pixel data's
length against the file's size, as `scan._is_complete` does; one open file serves all three.

What it leaves to pydicom (returns None): files without preamble or File Meta Information,
Explicit VR Big Endian, Deflated and private transfer syntaxes, unknown VR bytes, an undefined
length on anything but a sequence or the pixel data, a length that runs past the end of the file,
group 0000 or item tags at the top level, a first element that contradicts the transfer syntax,
sequences nested deeper than 32, pydicom configured away from its defaults, and any exception.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import struct
import sys
import warnings
from collections.abc import Callable
from operator import itemgetter
from typing import TypeVar

from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom import valuerep
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from fsqr.keys import SPECIFIC_CHARACTER_SET, Level, header_tags, indexed_keys
from fsqr.records import (
    Instance,
    Parsed,
    Patient,
    Series,
    Skipped,
    Study,
    file_stamp,
    stat_stamp,
)
from fsqr.tree import open_served

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # PS3.4 Annex F: the DICOMDIR's SOP Class
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # float, double, plain pixel data
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # PS3.5 7.5: ends encapsulated pixels
UNDEFINED_LENGTH = 0xFFFFFFFF

# Why a file is skipped; the pydicom path (scan.py) uses the same words.
EMPTY = "empty file"
NOT_DICOM = "not a DICOM file"
DICOMDIR = "DICOMDIR (a media directory, not an instance)"
TRUNCATED = "truncated: pixel data runs past the end of the file"
NO_PIXEL_DATA = "truncated: an image without its pixel data"

# PS3.5 A.6: JPIP Referenced transfer syntaxes carry a Pixel Data Provider URL, not pixel data.
_JPIP_REFERENCED = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95"})

_MEDIA_STORAGE_SOP_CLASS = 0x00020002
_TRANSFER_SYNTAX = 0x00020010
_ITEM = 0xFFFEE000  # PS3.5 7.5.2: Item, Item Delimitation Item, Sequence Delimitation Item
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_FIRST_PIXEL_GROUP = min(PIXEL_TAGS) >> 16
_MAX_DEPTH = 32  # sequences nested deeper than this are left to pydicom

# PS3.5 Table 7.1-1: these VRs are followed by 2 reserved bytes and a 32-bit length; all other
# VRs of Table 6.2-1 (Table 7.1-2) by a 16-bit length.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
# The pixel VRs whose 12-byte header scan._is_complete counts (PS3.5 7.1.2); others count 8.
_PIXEL_VRS_WITH_RESERVED_BYTES = frozenset({b"OB", b"OW", b"OF", b"OD", b"UN"})

# The elements the reader keeps: every indexed attribute and Specific Character Set, each with
# its VR from pydicom's dictionary (in Implicit VR the dictionary is the only source, PS3.5 7.1.3).
_WANTED = header_tags() | {SPECIFIC_CHARACTER_SET}
_DICTIONARY_VR = {tag: str(dictionary_VR(tag)).encode("ascii") for tag in _WANTED}
_WANTED_SWAPPED = {(tag & 0xFFFF) << 16 | tag >> 16: tag for tag in _WANTED}
_VR_NAMES = {int.from_bytes(vr, "little"): vr for vr in _SHORT_VRS | _LONG_VRS}
_SHORT_VR_CODES = frozenset(int.from_bytes(vr, "little") for vr in _SHORT_VRS)
_LONG_VR_CODES = frozenset(int.from_bytes(vr, "little") for vr in _LONG_VRS)
_NO_TEXTS = dict.fromkeys(header_tags(), "")  # what the index stores for an absent element

_BLOCK = 64 * 1024  # read this much at once: a whole header, most of the time
# The walk reads the tag as one little-endian 32-bit number: (element << 16) | group. And the VR
# as a 16-bit number: b"UI" is 0x4955.
_EXPLICIT_SWAPPED = struct.Struct("<LHH").unpack_from
_IMPLICIT_SWAPPED = struct.Struct("<LL").unpack_from
_EXPLICIT = struct.Struct("<HH2sH").unpack_from  # PS3.5 7.1.2: group, element, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHL").unpack_from  # PS3.5 7.1.3 and 7.5: group, element, length
_UINT32 = struct.Struct("<L").unpack_from


def _seek_and_read(fd: int, n: int, pos: int) -> bytes:
    os.lseek(fd, pos, os.SEEK_SET)
    return os.read(fd, n)


_read_at = getattr(os, "pread", _seek_and_read)  # one system call where there is pread (POSIX)


def element_text(element: DataElement | None) -> str:
    """An element's value as the index stores it: decoded text, values joined by backslash.

    >>> from pydicom.dataelem import DataElement
    >>> element_text(DataElement(0x00080060, "CS", "MR"))
    'MR'
    >>> element_text(DataElement(0x00080061, "CS", ["CT", "MR"]))
    'CT\\\\MR'
    >>> element_text(None)
    ''
    """
    if element is None or element.VR == "SQ":
        return ""
    value = element.value
    if value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value).strip()


# Each level's values, in one call: `itemgetter(*tags)(texts)` is the tuple of their texts.
_VALUES_OF_LEVEL = tuple(itemgetter(*(k.tag for k in indexed_keys(level))) for level in Level)
# What a file lacking a level's UID is skipped for, in the order it is checked (PATIENT: never).
_NO_UID = tuple(f"no {indexed_keys(level)[0].keyword}" for level in Level)
_SOP_CLASS_UID = 0x00080016
_intern = sys.intern

# The patient, study and series records of the files read lately, by their values: the files of
# a series repeat all three, and one shared object costs less to make and to keep. A study's
# record also holds its patient's ID, and a series' its study's UID: those are checked on a hit.
# Dict operations are atomic, so threads may share these; each is forgotten all at once when full.
_RECENT_PATIENTS: dict[tuple[str, ...], Patient] = {}
_RECENT_STUDIES: dict[tuple[str, ...], Study] = {}
_RECENT_SERIES: dict[tuple[str, ...], Series] = {}
_Record = TypeVar("_Record", Patient, Study, Series)
_RECENT_MAX = 4096


def indexed_texts(text: Callable[[int], str]) -> dict[int, str]:
    """What `records_from` takes: every indexed tag's value, from `text(tag)`, interned.

    >>> indexed_texts(lambda tag: "MR" if tag == 0x00080060 else "")[0x00080060]
    'MR'
    """
    return {tag: _intern(text(tag)) for tag in _NO_TEXTS}


def records_from(
    texts: dict[int, str],
    media_sop_class: Callable[[], str],
    *,
    path: str,
    size: int,
    mtime_ns: int,
    transfer_syntax: str,
    ctime_ns: int = 0,
) -> Parsed | Skipped:
    """Split a header into the records of its four levels, or say which UID it lacks.

    `texts` holds every indexed tag's value as `element_text` gives it, interned (a study's 500
    instances then share one copy of each repeated string): as `indexed_texts` makes it.
    `media_sop_class()` gives the File Meta Information's Media Storage SOP Class UID, used
    when the data set has no SOP Class UID.

    >>> values = {0x0020000D: "1.2", 0x0020000E: "1.2.3", 0x00080018: "1.2.3.4"}
    >>> file = {"path": "/x.dcm", "size": 10, "mtime_ns": 0, "transfer_syntax": "1.2.840.10008.1.2"}
    >>> parsed = records_from(indexed_texts(lambda t: values.get(t, "")), lambda: "1.2.3.9", **file)
    >>> parsed.series.study_uid, parsed.instance.sop_class_uid
    ('1.2', '1.2.3.9')
    >>> records_from(indexed_texts(lambda tag: ""), lambda: "", **file).reason
    'no StudyInstanceUID'
    """
    # Each level's first value is its UID (`keys.indexed_keys`).
    patient, study, series, image = (values_of(texts) for values_of in _VALUES_OF_LEVEL)
    if not study[0] or not series[0] or not image[0]:
        return Skipped(path, _NO_UID[1] if not study[0] else _NO_UID[2 if not series[0] else 3])
    sop_class = texts[_SOP_CLASS_UID] or media_sop_class()
    if not sop_class:
        return Skipped(path, "no SOPClassUID")
    patient_record = _RECENT_PATIENTS.get(patient)
    if patient_record is None:  # (its ID is its values' first)
        patient_record = _remember(_RECENT_PATIENTS, patient, Patient(patient[0], patient))
    study_record = _RECENT_STUDIES.get(study)
    if study_record is None or study_record.patient_id != patient[0]:
        study_record = _remember(_RECENT_STUDIES, study, Study(study[0], patient[0], study))
    series_record = _RECENT_SERIES.get(series)
    if series_record is None or series_record.study_uid != study[0]:
        series_record = _remember(_RECENT_SERIES, series, Series(series[0], study[0], series))
    cut = path.rfind(os.sep) + 1
    return Parsed(
        patient_record,
        study_record,
        series_record,
        Instance.of_shared(
            image[0],
            series[0],
            _intern(sop_class),
            _intern(transfer_syntax),
            _intern(path[:cut]),
            _intern(path[cut:]),
            file_stamp(size, mtime_ns, ctime_ns),
            image,
        ),
    )


def _remember(
    recent: dict[tuple[str, ...], _Record], values: tuple[str, ...], record: _Record
) -> _Record:
    if len(recent) >= _RECENT_MAX:
        recent.clear()
    recent[values] = record
    return record


def without_pixel_data(parsed: Parsed | Skipped, has_pixel_data: bool) -> Parsed | Skipped:
    """`parsed`, or Skipped when it is an image whose file holds no pixel data.

    An image's Pixel Data (7FE0,0010) is its last element but for padding (PS3.5 7.1: elements
    in ascending tag order), so an image without it is almost always a file cut short between
    two elements, which pydicom reads without complaint. Served, it would reach a viewer as an
    image it cannot show; skipped, it is served again once it is whole (the watcher sees it).
    An image here is any SOP Class named "... Image Storage" (PS3.4 Annex B).

    >>> without_pixel_data(Skipped("x.dcm", "empty file"), False).reason
    'empty file'
    """
    if has_pixel_data or not isinstance(parsed, Parsed):
        return parsed
    instance = parsed.instance
    if instance.transfer_syntax_uid in _JPIP_REFERENCED:
        return parsed
    if "Image Storage" not in UID(instance.sop_class_uid).name:
        return parsed
    return Skipped(instance.path, NO_PIXEL_DATA)


def looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without preamble starts like a little-endian data set (group 0002-0008).

    >>> looks_like_raw_dataset(bytes.fromhex("08000500") + b"CS" + bytes.fromhex("0a00"))
    True
    >>> looks_like_raw_dataset(b"%PDF-1.7")
    False
    """
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    return group in (0x0002, 0x0008)


# --- Values: pydicom's converters (pydicom.values), step by step, for the common cases ---------
# Each takes the raw bytes of a non-empty value and the codec to decode text with, and returns
# what `element_text` gives for pydicom's converted value, or None when pydicom must decide.


def _string_text(raw: bytes, codec: str) -> str | None:
    """AS, CS, DA, TM (`convert_string`): padding and NULs go from the end; one value is stripped.

    >>> _string_text(b"ORIGINAL\\\\PRIMARY ", "latin-1"), _string_text(b" MR ", "latin-1")
    ('ORIGINAL\\\\PRIMARY', 'MR')
    """
    value = raw.decode("latin-1").rstrip(" \x00")
    return value if "\\" in value else value.strip()


def _uid_text(raw: bytes, codec: str) -> str | None:
    """UI (`convert_UI`): trailing NUL padding goes (PS3.5 9.1), and each UID strips itself.

    >>> _uid_text(b"1.2.840.10008.1.2\\x00", "latin-1")
    '1.2.840.10008.1.2'
    """
    value = raw.decode("latin-1").rstrip("\x00 ")
    if "\\" not in value:
        return value.strip()
    return "\\".join(v.strip() for v in value.split("\\"))


def _text_text(raw: bytes, codec: str) -> str | None:
    """LO, SH, UC (`convert_text`): decoded, split, each value loses trailing spaces and NULs.

    >>> _text_text("Müller \\\\Jürgen".encode(), "utf-8")
    'Müller\\\\Jürgen'
    """
    values = raw.decode(codec).split("\\")
    if len(values) == 1:
        return values[0].rstrip("\x00 ").strip()
    return "\\".join(v.rstrip("\x00 ") for v in values)


def _single_text(raw: bytes, codec: str) -> str | None:
    """LT, ST, UT (`convert_single_string`): one value, backslash included, trailing padding gone.

    >>> _single_text(b"a\\\\b  ", "latin-1")
    'a\\\\b'
    """
    return raw.decode(codec).rstrip("\x00 ").strip()


def _name_text(raw: bytes, codec: str) -> str | None:
    """PN (`convert_PN`): padding goes before decoding; empty trailing component groups go too.

    >>> _name_text(b"DOE^JOHN== ", "latin-1"), _name_text(b"A\\\\B=", "latin-1")
    ('DOE^JOHN', 'A\\\\B')
    """
    names = []
    for name in raw.rstrip(b"\x00 ").decode(codec).split("\\"):
        groups = name.split("=")  # PS3.5 6.2.1.1: alphabetic, ideographic, phonetic
        while groups and not groups[-1]:
            groups.pop()
        names.append("=".join(groups))
    return names[0].strip() if len(names) == 1 else "\\".join(names)


_INTEGER = re.compile(r" *[+-]?[0-9]+ *")
_DECIMAL = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")


def _numbers_text(values: list[str], number: re.Pattern[str]) -> str | None:
    """IS and DS keep the string they were read from, stripped (`IS.original_string`); a blank
    value stays the blank string it was. Anything int()/float() might read otherwise, pydicom
    decides."""
    texts = []
    for value in values:
        if not value.strip():
            texts.append(value)
        elif number.fullmatch(value):
            texts.append(value.strip())
        else:
            return None
    return texts[0].strip() if len(texts) == 1 else "\\".join(texts)


def _integer_text(raw: bytes, codec: str) -> str | None:
    """IS (`convert_IS_string`).

    >>> _integer_text(b"+12\\\\ 7 ", "latin-1"), _integer_text(b"1.5", "latin-1")
    ('+12\\\\7', None)
    """
    return _numbers_text(raw.decode("latin-1").rstrip(" \x00").split("\\"), _INTEGER)


def _decimal_text(raw: bytes, codec: str) -> str | None:
    """DS (`convert_DS_string`): the whole string is stripped first.

    >>> _decimal_text(b" 70.5 \\\\1e3", "latin-1")
    '70.5\\\\1e3'
    """
    values = raw.decode("latin-1").strip().rstrip(" \x00").split("\\")
    return _numbers_text(values, _DECIMAL)


def _us_text(raw: bytes, codec: str) -> str | None:
    """US (`convert_numbers`): unsigned 16-bit little-endian integers.

    >>> _us_text(bytes.fromhex("4000"), ""), _us_text(bytes.fromhex("01000200"), "")
    ('64', '1\\\\2')
    >>> _us_text(b"x", "") is None
    True
    """
    if len(raw) % 2:
        return None  # pydicom refuses this value: let it say how
    return "\\".join(str(v) for v in struct.unpack(f"<{len(raw) // 2}H", raw))


# PS3.5 6.1.2.3: only SH, LO, UC, ST, LT, UT and PN use the Specific Character Set (True below);
# the other VRs are ASCII, which pydicom decodes as Latin-1: it agrees on ASCII and never fails.
_FAST: dict[bytes, tuple[Callable[[bytes, str], str | None], bool]] = {
    b"AS": (_string_text, False),
    b"CS": (_string_text, False),
    b"DA": (_string_text, False),
    b"TM": (_string_text, False),
    b"UI": (_uid_text, False),
    b"IS": (_integer_text, False),
    b"DS": (_decimal_text, False),
    b"US": (_us_text, False),
    b"LO": (_text_text, True),
    b"SH": (_text_text, True),
    b"UC": (_text_text, True),
    b"LT": (_single_text, True),
    b"ST": (_single_text, True),
    b"UT": (_single_text, True),
    b"PN": (_name_text, True),
}


# --- The encodings of (0008,0005) Specific Character Set, as pydicom works them out -----------

_Raw = tuple[bytes | None, bytes, int]  # VR as found (None in Implicit VR), value, value offset


def _raw_element(tag: int, raw: _Raw, implicit: bool) -> RawDataElement:
    """The element as pydicom's `data_element_generator` would have yielded it."""
    vr, value, value_tell = raw
    return RawDataElement(
        BaseTag(tag),
        None if vr is None else vr.decode("ascii"),
        len(value),
        value,
        value_tell,
        implicit,
        True,
    )


_CODECS: dict[tuple[bytes | None, bytes] | None, str | None] = {}


def _codec_for(charset: _Raw | None, implicit: bool) -> str | None:
    """The Python codec pydicom decodes unescaped text with (PS3.5 6.1.2.5.3: the first value of
    Specific Character Set, or the default repertoire); None when it is not a codec at all."""
    key = None if charset is None else (charset[0], charset[1])
    if key not in _CODECS:
        if charset is None:
            encodings: str | list[str] = Dataset()._character_set
        else:
            raw = _raw_element(SPECIFIC_CHARACTER_SET, charset, implicit)
            with warnings.catch_warnings(record=True):  # pydicom warns about unknown terms
                warnings.simplefilter("always")
                encodings = Dataset({raw.tag: raw})._character_set
        first = encodings if isinstance(encodings, str) else encodings[0]
        try:
            codec: str | None = codecs.lookup(first).name  # 'iso8859' is spelt 'iso8859-1'
        except LookupError:
            codec = None
        if len(_CODECS) > 256:  # only a few character sets exist; never let this grow
            _CODECS.clear()
        _CODECS[key] = codec
    return _CODECS[key]


def _pydicom_text(tag: int, raw: _Raw, charset: _Raw | None, implicit: bool) -> str:
    """Let pydicom decode one element, with the file's Specific Character Set: the same steps as
    `element_text(ds.get(tag))` on the data set `read_partial` returns."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        BaseTag(tag): _raw_element(tag, raw, implicit)
    }
    if charset is not None:
        elements[BaseTag(SPECIFIC_CHARACTER_SET)] = _raw_element(
            SPECIFIC_CHARACTER_SET, charset, implicit
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = element_text(Dataset(elements).get(tag))
    for warning in caught:
        log.debug("(%08X): %s", tag, warning.message)
    return text


# Values repeat from file to file (a study's dates, names and UIDs): converted ones are kept,
# keyed by all that decides them, and forgotten all at once when there are many. Dict operations
# are atomic, so threads may share this.
_CONVERTED: dict[tuple[bytes, bytes, str | None], str] = {}
_CONVERTED_MAX = 16384


def _value_text(
    tag: int, raw: _Raw, codec: str | None, charset: _Raw | None, implicit: bool
) -> str:
    """One value as `element_text` gives it, interned: by the converters above where they are
    sure, by pydicom otherwise. Kept in `_CONVERTED`, which the walk looks in first."""
    vr, value, _ = raw
    if not value:
        return ""  # PS3.5 7.1.1: a zero length is an empty value, whatever the VR
    if vr is None:
        vr = _DICTIONARY_VR[tag]
    key = (vr, value, codec)
    text = None
    fast = _FAST.get(vr)
    if fast is not None:
        convert, uses_charset = fast
        if not uses_charset:
            text = convert(value, "latin-1")
        elif codec is not None and b"\x1b" not in value:  # no ISO 2022 escape (PS3.5 6.1.2.5)
            try:
                text = convert(value, codec)
            except UnicodeDecodeError:
                text = None  # pydicom replaces what it cannot decode, and warns
    if text is None:
        return _intern(_pydicom_text(tag, raw, charset, implicit))
    if len(_CONVERTED) >= _CONVERTED_MAX:
        _CONVERTED.clear()
    _CONVERTED[key] = text = _intern(text)
    return text


# --- Bytes: the file, read in blocks ------------------------------------------------------------


class _File:
    """One open file, and the block of it last read: `data` holds the file from offset `base`."""

    __slots__ = ("base", "data", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.base = fd, size, 0
        self.data = _read_at(fd, min(size, _BLOCK), 0)

    def read(self, pos: int, n: int) -> bytes:
        return _read_at(self.fd, n, pos)

    def hold(self, pos: int, n: int) -> None:
        """Make `data` cover `n` bytes from `pos` (fewer where the file ends first)."""
        if pos < self.base or pos + n > self.base + len(self.data):
            self.base, self.data = pos, self.read(pos, max(n, _BLOCK))

    def bytes_at(self, pos: int, n: int) -> bytes:
        """`n` bytes from `pos`, fewer where the file ends first."""
        self.hold(pos, n)
        off = pos - self.base
        return self.data[off : off + n]


# --- Structure: elements (PS3.5 7.1), sequences and items (PS3.5 7.5) ---------------------------


def _is_sequence(f: _File, value_pos: int, tag: int, vr: bytes | None) -> bool:
    """Whether an element of undefined length is a sequence, decided as pydicom decides it."""
    if vr is not None:
        return vr in (b"SQ", b"UN")  # PS3.5 6.2.2: UN of undefined length is an implicit VR SQ
    try:
        return dictionary_VR(tag) == "SQ"  # PS3.5 7.1.3: Implicit VR, the dictionary tells
    except KeyError:  # a private or unknown tag: a sequence if an item follows
        head = f.bytes_at(value_pos, 4)
        return len(head) == 4 and _UINT32(head)[0] == 0xE000FFFE


def _skip_sequence(f: _File, pos: int, implicit: bool, depth: int) -> int:
    """Step over a sequence of undefined length (PS3.5 7.5.2) whose value starts at `pos`: items
    of defined length by their length, the others element by element, to the Sequence
    Delimitation Item. Returns the position after it, or -1 when the bytes do not follow PS3.5."""
    if depth > _MAX_DEPTH:
        return -1
    while True:
        head = f.bytes_at(pos, 8)
        if len(head) < 8:
            return -1
        group, element, length = _IMPLICIT(head)  # PS3.5 7.5: items are always tag + length
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            return -1
        if length == UNDEFINED_LENGTH:
            pos = _skip_item(f, pos, implicit, depth)
            if pos < 0:
                return -1
        else:
            pos += length
            if pos > f.size:
                return -1


def _skip_item(f: _File, pos: int, implicit: bool, depth: int) -> int:
    """Step over the elements of an item of undefined length to its Item Delimitation Item."""
    if not implicit:
        # pydicom reads an item as Implicit VR when its first element has no VR letters (what
        # PS3.5 6.2.2 asks of a UN sequence's content; some writers do it in any SQ).
        head = f.bytes_at(pos, 6)
        if len(head) < 6:
            return -1
        implicit = not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
    while True:
        head = f.bytes_at(pos, 12)
        if len(head) < 8:
            return -1
        group, element, length = _IMPLICIT(head)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8
        if group == 0xFFFE:
            return -1
        vr, header = None, 8
        if not implicit:
            _, _, vr, length = _EXPLICIT(head)
            if vr in _LONG_VRS and len(head) == 12:
                length, header = _UINT32(head, 8)[0], 12
            elif vr not in _SHORT_VRS:
                return -1
        if length == UNDEFINED_LENGTH:
            if not _is_sequence(f, pos + header, tag, vr):
                return -1  # e.g. encapsulated pixel data in an icon: left to pydicom
            pos = _skip_sequence(f, pos + header, implicit, depth + 1)
            if pos < 0:
                return -1
        else:
            pos += header + length
            if pos > f.size:
                return -1


class _Header:
    """What the walk over a data set found: the indexed elements' texts, and where the pixel
    data is."""

    __slots__ = ("pixel", "texts")

    def __init__(self, texts: dict[int, str], pixel: tuple[int, bytes | None, int] | None) -> None:
        self.texts = texts  # every indexed tag's, "" for those absent, interned
        self.pixel = pixel  # (offset of its element, VR or None, length)


def _walk(f: _File, pos: int, implicit: bool) -> _Header | None:  # noqa: PLR0915 (one hot loop)
    """Walk the top-level elements from `pos` to the pixel data or the end of the file, decoding
    the indexed ones. None when anything is not as PS3.5 7.1 and 7.5 say.

    This loop runs some 60 times per file, so it is written for speed: offsets into the block
    held (`off`) rather than into the file; each element's tag read as one 32-bit number with
    the element number in its high half (`_WANTED_SWAPPED`), and its VR as a 16-bit number, so
    that no bytes object is made for an element that is not wanted; a wanted value looked up
    among those converted before (`_CONVERTED`) as soon as it is found; the rare cases (pixel
    data, undefined lengths, items out of place) behind one comparison.
    """
    texts = _NO_TEXTS.copy()
    wanted, short_vrs, long_vrs, uint32 = _WANTED_SWAPPED, _SHORT_VR_CODES, _LONG_VR_CODES, _UINT32
    vr_names, pixel_group, undefined = _VR_NAMES, _FIRST_PIXEL_GROUP, UNDEFINED_LENGTH
    dictionary_vr, converted = _DICTIONARY_VR, _CONVERTED
    unpack = _IMPLICIT_SWAPPED if implicit else _EXPLICIT_SWAPPED
    # PS3.5 6.1.2.5: the character set is the data set's first element that has one of its own
    # (0008,0005), so elements in ascending order (PS3.5 7.1) meet it before any text.
    charset: _Raw | None = None
    codec = _codec_for(None, implicit)
    decoded_any = False
    f.hold(pos, 12)  # from here on `off` only grows: never before the block held
    data, base = f.data, f.base
    held = len(data) - 12  # from offsets up to here, `data` holds a whole element header
    last = f.size - 8 - base  # pydicom too takes fewer than 8 bytes left for the data set's end
    off = pos - base
    vr: int | None = None
    while off <= last:
        if off > held:
            f.hold(base + off, 12)
            off, last = off + base - f.base, last + base - f.base
            data, base = f.data, f.base
            held = len(data) - 12
        if implicit:  # PS3.5 7.1.3: tag, 32-bit length, value
            swapped, length = unpack(data, off)
        else:  # PS3.5 7.1.2: tag, VR, 16-bit length, value; or tag, VR, 0000, 32-bit length
            swapped, vr, length = unpack(data, off)
            if vr not in short_vrs:
                if vr not in long_vrs or off > held:
                    return None  # unknown VR bytes, or the file ends inside the header
                length = uint32(data, off + 8)[0]
                off += 4  # from here on the element is taken as if its header were 8 bytes
        if swapped in wanted:
            if length == undefined:
                return None
            start = off + 8
            end = start + length
            value = data[start:end] if end <= len(data) else f.read(base + start, length)
            tag = wanted[swapped]
            vr_name = dictionary_vr[tag] if vr is None else vr_names[vr]
            if tag == SPECIFIC_CHARACTER_SET:
                if decoded_any:
                    return None  # out of order: pydicom decodes what came before with it too
                charset = (None if vr is None else vr_name, value, base + start)
                codec = _codec_for(charset, implicit)
            elif value:  # PS3.5 7.1.1: a zero length is an empty value, whatever the VR
                decoded_any = True
                text = converted.get((vr_name, value, codec))
                if text is None:
                    raw = (None if vr is None else vr_name, value, base + start)
                    text = _value_text(tag, raw, codec, charset, implicit)
                texts[tag] = text
            else:
                texts[tag] = ""  # as the value of a tag found twice (the last one counts)
        elif (swapped & 0xFFFF) >= pixel_group or length == undefined:
            tag = (swapped & 0xFFFF) << 16 | swapped >> 16
            found_vr = None if vr is None else vr_names[vr]
            if tag in PIXEL_TAGS:  # pydicom stops here too
                element = off - 4 if vr in long_vrs else off
                return _Header(texts, (base + element, found_vr, length))
            if tag >> 16 == 0xFFFE:
                return None  # an item tag out of place: pydicom reads those its own way
            if length == undefined:
                pos = base + off + 8
                if not _is_sequence(f, pos, tag, found_vr):
                    return None
                pos = _skip_sequence(f, pos, implicit, 1)
                if pos < 0:
                    return None
                last = last + base - f.base
                data, base = f.data, f.base
                held = len(data) - 12
                off = pos - base
                continue
        off += 8 + length
    if base + off > f.size:
        return None  # the last value runs past the end of the file
    return _Header(texts, None)


def _meta(f: _File) -> tuple[int, dict[int, str]] | None:
    """Read the File Meta Information (PS3.10 7.1): Explicit VR Little Endian elements of group
    0002 after the 128-byte preamble and 'DICM'. Returns where the data set starts and the two
    UIDs as pydicom's values (UI, stripped), or None when pydicom might read it otherwise."""
    data, pos = f.data, 132
    uids: dict[int, str] = {}
    whole = len(data) == f.size  # else the group must end 12 bytes before the block does
    end_of_file = f.size - 8
    while pos <= end_of_file:
        if not whole and pos + 12 > len(data):
            return None  # the group goes on past the first block: pydicom reads such a file
        group, element, vr, length = _EXPLICIT(data, pos)
        if group != 0x0002:
            break
        header = 8
        if vr in _LONG_VRS and pos + 12 <= len(data):
            length, header = _UINT32(data, pos + 8)[0], 12
        elif vr not in _SHORT_VRS:
            return None  # pydicom would retry the meta information as Implicit VR
        if pos == 132 and not _meta_first_converts(vr, length):
            return None
        end = pos + header + length
        if length == UNDEFINED_LENGTH or end > len(data):
            return None
        if element in _META_UIDS:
            if vr != b"UI":
                return None
            value = data[pos + header : end].decode("latin-1").rstrip("\x00 ")
            if "\\" in value:
                return None  # a multi-valued UID: pydicom's str() of a list is no UID
            uids[_META_UIDS[element]] = value.strip()
        pos = end
    return pos, uids


_META_UIDS = {_MEDIA_STORAGE_SOP_CLASS & 0xFFFF: _MEDIA_STORAGE_SOP_CLASS, 0x0010: _TRANSFER_SYNTAX}
_BINARY_SIZES = {b"AT": 4, b"FD": 8, b"FL": 4, b"SL": 4, b"SS": 2, b"SV": 8, b"UL": 4, b"US": 2}


def _meta_first_converts(vr: bytes, length: int) -> bool:
    """pydicom decodes the first meta element to test the encoding; a binary value of the wrong
    length makes it raise."""
    return vr != b"SQ" and (length == UNDEFINED_LENGTH or length % _BINARY_SIZES.get(vr, 1) == 0)


def _pydicom_is_default() -> bool:
    """The reader copies pydicom's default behaviour; any other configuration goes to pydicom."""
    c = pydicom_config
    return (
        c.settings.reading_validation_mode != c.RAISE
        and not c.datetime_conversion
        and not c.use_DS_decimal
        and not c.use_DS_numpy
        and not c.use_IS_numpy
        and not c.use_none_as_empty_text_VR_value
        and c.replace_un_with_known_vr
        and c.settings.infer_sq_for_un_vr
        and c.assume_implicit_vr_switch
        and c.data_element_callback is None
        and valuerep.DSclass is valuerep.DSfloat
        and pydicom_hooks.hooks.raw_element_vr is pydicom_hooks.raw_element_vr
        and pydicom_hooks.hooks.raw_element_value is pydicom_hooks.raw_element_value
        and not pydicom_hooks.hooks.raw_element_kwargs
    )


# --- The reader -------------------------------------------------------------------------------


def read_indexed(path: str) -> Parsed | Skipped | None:
    """Read one file's indexed attributes; None means "not sure: read it with pydicom".

    Never raises: an exception of any kind is a None, and pydicom gets the file.
    """
    try:
        if not _pydicom_is_default():
            return None
        fd, st = open_served(path)
        try:
            result = _read(_File(fd, st.st_size), path, st) if st.st_size else Skipped(path, EMPTY)
            if isinstance(result, Skipped):  # remembered by this stamp in an index snapshot
                return Skipped(path, result.reason, stat_stamp(st))
            return result
        finally:
            os.close(fd)
    except Exception as exc:  # whatever this reader trips over, pydicom reads the file
        log.debug("%s: fast header reader gave up (%s: %s)", path, type(exc).__name__, exc)
        return None


def _read(f: _File, path: str, st: os.stat_result) -> Parsed | Skipped | None:
    """Meta information, data set, the checks of `scan._read_header` in its order, records."""
    if f.data[128:132] != b"DICM":  # PS3.10 7.1: preamble, then the prefix
        return None if looks_like_raw_dataset(f.data[:8]) else Skipped(path, NOT_DICOM)
    meta = _meta(f)
    if meta is None:
        return None
    pos, uids = meta
    transfer_syntax = uids.get(_TRANSFER_SYNTAX)
    if not transfer_syntax:
        return None  # pydicom guesses the encoding
    # PS3.5 A.1-A.2: Implicit VR Little Endian; every other syntax pydicom does not special-case
    # encodes its data set in Explicit VR Little Endian (PS3.5 A.4 for the compressed ones).
    implicit = transfer_syntax == ImplicitVRLittleEndian
    if transfer_syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian) or (
        transfer_syntax in PrivateTransferSyntaxes
    ):
        return None
    head = f.data[pos : pos + 6] if pos + 6 <= len(f.data) else f.bytes_at(pos, 6)
    if len(head) == 6:
        if head[:2] == b"\x00\x00":
            return None  # a command set (group 0000): pydicom reads it as Implicit VR
        # pydicom checks the first element against the transfer syntax and believes the element.
        if implicit == (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B):
            return None
    header = _walk(f, pos, implicit)
    if header is None:
        return None
    if uids.get(_MEDIA_STORAGE_SOP_CLASS) == MEDIA_STORAGE_DIRECTORY:
        return Skipped(path, DICOMDIR)
    if header.pixel is not None and not _is_complete(f, header.pixel, implicit):
        return Skipped(path, TRUNCATED)

    parsed = records_from(  # each text is interned already: by `_value_text`, or ""
        header.texts,
        lambda: uids.get(_MEDIA_STORAGE_SOP_CLASS, ""),
        path=path,
        size=f.size,
        mtime_ns=st.st_mtime_ns,
        transfer_syntax=transfer_syntax,
        ctime_ns=st.st_ctime_ns,
    )
    return without_pixel_data(parsed, header.pixel is not None)


def _is_complete(f: _File, pixel: tuple[int, bytes | None, int], implicit: bool) -> bool:
    """The pixel data's value lies inside the file (the same rule as `scan._is_complete`)."""
    start, vr, length = pixel
    if length == UNDEFINED_LENGTH:  # PS3.5 A.4: encapsulated fragments end with a delimiter
        return SEQUENCE_DELIMITER in f.bytes_at(max(f.size - 64, 0), 64)
    header = 12 if not implicit and vr in _PIXEL_VRS_WITH_RESERVED_BYTES else 8
    return start + header + length <= f.size
