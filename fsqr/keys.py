"""The Query/Retrieve key tables of PS3.4 C.6.1.1 and C.6.2.1, as data, stated once.

Which tags the start-up scan reads, which attributes the index holds per level, which keys are
unique, which are computed from the index rather than read from a file, and which levels each
information model has: all of it derives from the tables below. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache


class Level(str, enum.Enum):
    """A Query/Retrieve Level (0008,0052), PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for PATIENT down to 3 for IMAGE.

        >>> Level.SERIES.depth
        2
        """
        return _DEPTH[self]  # looked up per record a query matches: not `list(Level).index`


_DEPTH = {level: depth for depth, level in enumerate(Level)}


@dataclass(frozen=True, slots=True)
class Key:
    """One row of a key table: an attribute that can be matched or returned at a level."""

    keyword: str
    tag: int
    vr: str
    level: Level
    unique: bool = False  # the level's Unique Key, PS3.4 C.2.2.1.1
    computed: bool = False  # derived from the index (counts, ModalitiesInStudy), never read


def _keys(level: Level, *rows: tuple[str, int, str]) -> tuple[Key, ...]:
    return tuple(Key(keyword, tag, vr, level) for keyword, tag, vr in rows)


_U = True  # marks a Unique Key in the tables below, for readability

# PS3.4 Table C.6-1: Patient Root, Patient level.
PATIENT_KEYS = (
    Key("PatientID", 0x00100020, "LO", Level.PATIENT, unique=_U),
    *_keys(
        Level.PATIENT,
        ("PatientName", 0x00100010, "PN"),
        ("IssuerOfPatientID", 0x00100021, "LO"),
        ("PatientBirthDate", 0x00100030, "DA"),
        ("PatientBirthTime", 0x00100032, "TM"),
        ("PatientSex", 0x00100040, "CS"),
        ("OtherPatientNames", 0x00101001, "PN"),
        ("EthnicGroup", 0x00102160, "SH"),
        ("PatientComments", 0x00104000, "LT"),
    ),
    Key("NumberOfPatientRelatedStudies", 0x00201200, "IS", Level.PATIENT, computed=True),
    Key("NumberOfPatientRelatedSeries", 0x00201202, "IS", Level.PATIENT, computed=True),
    Key("NumberOfPatientRelatedInstances", 0x00201204, "IS", Level.PATIENT, computed=True),
)

# PS3.4 Table C.6-2: Patient Root, Study level.
STUDY_KEYS = (
    Key("StudyInstanceUID", 0x0020000D, "UI", Level.STUDY, unique=_U),
    *_keys(
        Level.STUDY,
        ("StudyDate", 0x00080020, "DA"),
        ("StudyTime", 0x00080030, "TM"),
        ("AccessionNumber", 0x00080050, "SH"),
        ("StudyID", 0x00200010, "SH"),
        ("ReferringPhysicianName", 0x00080090, "PN"),
        ("StudyDescription", 0x00081030, "LO"),
        ("NameOfPhysiciansReadingStudy", 0x00081060, "PN"),
        ("AdmittingDiagnosesDescription", 0x00081080, "LO"),
        ("PatientAge", 0x00101010, "AS"),
        ("PatientSize", 0x00101020, "DS"),
        ("PatientWeight", 0x00101030, "DS"),
        ("Occupation", 0x00102180, "SH"),
        ("AdditionalPatientHistory", 0x001021B0, "LT"),
    ),
    Key("ModalitiesInStudy", 0x00080061, "CS", Level.STUDY, computed=True),
    Key("SOPClassesInStudy", 0x00080062, "UI", Level.STUDY, computed=True),
    Key("NumberOfStudyRelatedSeries", 0x00201206, "IS", Level.STUDY, computed=True),
    Key("NumberOfStudyRelatedInstances", 0x00201208, "IS", Level.STUDY, computed=True),
)

# PS3.4 Table C.6-3: Patient Root, Series level.
SERIES_KEYS = (
    Key("SeriesInstanceUID", 0x0020000E, "UI", Level.SERIES, unique=_U),
    *_keys(
        Level.SERIES,
        ("Modality", 0x00080060, "CS"),
        ("SeriesNumber", 0x00200011, "IS"),
        ("SeriesDescription", 0x0008103E, "LO"),
        ("SeriesDate", 0x00080021, "DA"),
        ("SeriesTime", 0x00080031, "TM"),
        ("BodyPartExamined", 0x00180015, "CS"),
        ("Laterality", 0x00200060, "CS"),
    ),
    Key("NumberOfSeriesRelatedInstances", 0x00201209, "IS", Level.SERIES, computed=True),
)

# PS3.4 Table C.6-4: Patient Root, Composite Object Instance (IMAGE) level.
IMAGE_KEYS = (
    Key("SOPInstanceUID", 0x00080018, "UI", Level.IMAGE, unique=_U),
    *_keys(
        Level.IMAGE,
        ("SOPClassUID", 0x00080016, "UI"),
        ("InstanceNumber", 0x00200013, "IS"),
        ("ContentDate", 0x00080023, "DA"),
        ("ContentTime", 0x00080033, "TM"),
        ("AcquisitionDate", 0x00080022, "DA"),
        ("AcquisitionTime", 0x00080032, "TM"),
        ("ImageType", 0x00080008, "CS"),
        ("Rows", 0x00280010, "US"),
        ("Columns", 0x00280011, "US"),
        ("BitsAllocated", 0x00280100, "US"),
        ("NumberOfFrames", 0x00280008, "IS"),
    ),
)

KEYS_OF_LEVEL: dict[Level, tuple[Key, ...]] = {
    Level.PATIENT: PATIENT_KEYS,
    Level.STUDY: STUDY_KEYS,
    Level.SERIES: SERIES_KEYS,
    Level.IMAGE: IMAGE_KEYS,
}

KEY_BY_KEYWORD: dict[str, Key] = {k.keyword: k for keys in KEYS_OF_LEVEL.values() for k in keys}
KEY_BY_TAG: dict[int, Key] = {k.tag: k for k in KEY_BY_KEYWORD.values()}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052


@cache
def indexed_keys(level: Level) -> tuple[Key, ...]:
    """The keys of `level` that the index stores, in the order records hold their values.

    >>> [k.keyword for k in indexed_keys(Level.SERIES)][:3]
    ['SeriesInstanceUID', 'Modality', 'SeriesNumber']
    """
    return tuple(k for k in KEYS_OF_LEVEL[level] if not k.computed)


@cache
def value_position(level: Level, keyword: str) -> int:
    """Where a record of `level` holds the value of `keyword`.

    >>> value_position(Level.PATIENT, "PatientName")
    1
    """
    return [k.keyword for k in indexed_keys(level)].index(keyword)


def unique_key(level: Level) -> Key:
    """The Unique Key of a level (PS3.4 C.2.2.1.1).

    >>> unique_key(Level.STUDY).keyword
    'StudyInstanceUID'
    """
    return KEYS_OF_LEVEL[level][0]


def header_tags() -> frozenset[int]:
    """Every tag the start-up scan must read from a file to fill the index."""
    return frozenset(k.tag for k in KEY_BY_KEYWORD.values() if not k.computed)


class Model(enum.Enum):
    """A Query/Retrieve information model (PS3.4 C.6.1 and C.6.2) and the levels it has."""

    PATIENT_ROOT = "Patient Root"
    STUDY_ROOT = "Study Root"

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels of the model, top first.

        >>> [lvl.value for lvl in Model.STUDY_ROOT.levels]
        ['STUDY', 'SERIES', 'IMAGE']
        """
        if self is Model.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)

    def level_of(self, key: Key) -> Level:
        """The level at which `key` lives in this model.

        In the Study Root model the patient's attributes are attributes of the study
        (PS3.4 C.6.2.1.2), so they are matched and returned at STUDY level.

        >>> Model.STUDY_ROOT.level_of(KEY_BY_KEYWORD["PatientName"]).value
        'STUDY'
        """
        if self is Model.STUDY_ROOT and key.level is Level.PATIENT:
            return Level.STUDY
        return key.level


# SOP Class UIDs of the Query/Retrieve services (PS3.4 Annex B.5 / C.6).
FIND_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": Model.STUDY_ROOT,
}
MOVE_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.2": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": Model.STUDY_ROOT,
}
GET_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.3": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": Model.STUDY_ROOT,
}
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"  # PS3.4 K.6.1.2: Modality Worklist FIND
