"""C-FIND as data: an identifier becomes a `Query`, a `Query` meets the index, and each match
becomes a new response `Dataset` (PS3.4 C.4.1).

`parse_identifier` checks what the SCU asked for and raises `InvalidIdentifier` when the request
cannot be answered. `find` yields one response identifier per match, lazily, so that the handler
can honour a C-CANCEL between any two of them. No sockets, no pynetdicom.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as Items
from pydicom.tag import Tag

from fsqr.errors import InvalidIdentifier
from fsqr.index import Entity, Index, InstanceView, PatientView, SeriesView, StudyView, View
from fsqr.keys import (
    KEY_BY_TAG,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    Key,
    Level,
    Model,
    unique_key,
)
from fsqr.matching import Matcher, is_universal, match, matcher, person_name_prefixes
from fsqr.records import Instance, Patient, Series, Study
from fsqr.scan import HeaderCache, element_text, with_items_decoded

# Return keys fsqr always fills in itself (PS3.4 C.4.1.1.3.2): never matched, never echoed.
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
_FILLED_BY_US = frozenset(
    {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY}
)
# Query/Retrieve View selects a view of Enhanced Multi-frame images, and only after Extended
# Negotiation of that (C.4.1.1.3.1), which fsqr does not accept: not a key, so ignored.
QUERY_RETRIEVE_VIEW = 0x00080053
# Timezone Offset From UTC in a request says which zone its times are in (C.2.2.2.5): not a
# key either. It is returned as each file says, which tells the zone of the times returned.
TIMEZONE_OFFSET_FROM_UTC = 0x00080201
_WILDCARDS = frozenset("*?")
UTF8 = "ISO_IR 192"


class Source(enum.Enum):
    """Where the value of a key comes from."""

    INDEX = "index"  # a record of the index holds it
    COMPUTED = "computed"  # counted from the index (NumberOf..., ModalitiesInStudy, ...)
    FILE = "file"  # read from a file's header on demand: any attribute works
    NONE = "none"  # a key of a level below the query level: returned empty, never matched


@dataclass(frozen=True, slots=True)
class QueryKey:
    tag: int
    keyword: str
    vr: str
    pattern: str  # decoded text, values joined by backslash; "" is universal matching
    source: Source
    table_level: Level  # the key table it comes from; decides which record holds the value
    element: DataElement  # as received: echoed when the key is a sequence read from file


@dataclass(frozen=True, slots=True)
class Query:
    model: Model
    level: Level
    keys: tuple[QueryKey, ...]
    relational: bool
    private_keys: tuple[int, ...] = ()  # neither matched nor returned

    def keys_not_matched(self) -> list[str]:
        """The keys that ask for matching (a value other than universal) that this query cannot
        do: a key of a level below the query's, a computed key of another level, a value inside
        a sequence's item; and private keys, not even returned. PS3.4 C.4.1.1.4 has the SCP
        say so, FF01 in each pending response.
        """
        return [
            key.keyword or str(Tag(key.tag))
            for key in self.keys
            if (key.vr == "SQ" and _items_hold_values(key.element))
            or (key.source is Source.NONE and not is_universal(key.vr, key.pattern))
        ] + [str(Tag(tag)) for tag in self.private_keys]

    def narrowing(self) -> dict[Level, Sequence[str]]:
        """Unique-key values that let the index look entities up instead of scanning."""
        wanted: dict[Level, Sequence[str]] = {}
        for key in self.keys:
            if key.source is not Source.INDEX or unique_key(key.table_level).tag != key.tag:
                continue
            values = [v.strip() for v in key.pattern.split("\\")]
            if not key.pattern.strip() or any(_WILDCARDS & set(v) for v in values):
                continue
            if key.vr != "UI" and len(values) > 1:
                continue  # a PatientID list is not a lookup the Standard defines
            wanted[key.table_level] = values
        return wanted


def _items_hold_values(element: DataElement) -> bool:
    """True if a sequence key's items hold any value to match (Specific Character Set aside)."""
    return any(
        e.VR != "SQ" and e.tag != SPECIFIC_CHARACTER_SET and element_text(e)
        for item in element.value or ()
        for e in item.iterall()
    )


def parse_identifier(identifier: Dataset, model: Model, *, relational: bool) -> Query:
    """Check a C-FIND identifier and turn it into a `Query`.

    Raises InvalidIdentifier (A900, with an ErrorComment) when the level is missing, unknown
    or not in the model, when an element cannot be decoded, or when a hierarchical query lacks
    the unique key of a level above the one it asks for (PS3.4 C.4.1.2.1).
    """
    level = _query_level(identifier, model)
    keys = []
    private_keys = []
    tags = identifier.keys()  # iterating a Dataset yields elements, decoding each one
    for tag in tags:
        if tag.group in (0x0000, 0x0002) or tag in _FILLED_BY_US or tag == QUERY_RETRIEVE_VIEW:
            continue
        if tag.is_private:
            if tag.element > 0x00FF:  # a private creator (gggg,00xx) is no key of its own
                private_keys.append(int(tag))
            continue
        element = _decoded(identifier, tag)
        keys.append(_query_key(element, model, level))
    query = Query(model, level, tuple(keys), relational, tuple(private_keys))
    if not relational:
        _check_hierarchical(query)
    return query


def _query_level(identifier: Dataset, model: Model) -> Level:
    text = (
        element_text(_decoded(identifier, QUERY_RETRIEVE_LEVEL))
        if (QUERY_RETRIEVE_LEVEL in identifier)
        else ""
    )
    if not text:
        raise InvalidIdentifier("QueryRetrieveLevel (0008,0052) is missing")
    try:
        level = Level(text.strip().upper())
    except ValueError:
        raise InvalidIdentifier(f"unknown QueryRetrieveLevel {text!r}") from None
    if level not in model.levels:
        raise InvalidIdentifier(f"{level.value} level is not in the {model.value} model")
    return level


# What pydicom only warns of while decoding a value, but that leaves it other than the SCU
# meant: a character set it does not know, bytes that character set cannot decode.
UNDECODABLE = ("Unknown encoding", "Failed to decode", "cannot be used as code extension")


def _decoded(identifier: Dataset, tag: int) -> DataElement:
    """The identifier's element at `tag`, its value decoded; InvalidIdentifier (A900) when it
    cannot be. A value that decodes but breaks its VR's rules (a UID component with a leading
    zero, a value over the VR's length) is taken as sent, as the files that hold such values
    are indexed as they are: archives are full of them, and DCMTK and Orthanc match them too.
    """
    where = str(Tag(tag))
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            element = identifier[tag]
            element_text(element)  # forces the value to decode
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode {where}: {exc}") from None
    for warning in warned:
        message = str(warning.message)
        if any(problem in message for problem in UNDECODABLE):
            raise InvalidIdentifier(f"cannot decode {where}: {message}")
    return element


def _query_key(element: DataElement, model: Model, level: Level) -> QueryKey:
    table_key: Key | None = KEY_BY_TAG.get(element.tag)
    pattern = "" if element.tag == TIMEZONE_OFFSET_FROM_UTC else element_text(element)
    if table_key is None:
        # Not in the key tables: read from the matched entity's files, at the query level.
        return QueryKey(
            element.tag, element.keyword, element.VR, pattern, Source.FILE, level, element
        )
    key_level = model.level_of(table_key)
    if key_level.depth > level.depth:
        source = Source.NONE
    elif table_key.computed:
        source = Source.COMPUTED if key_level is level else Source.NONE
    else:
        source = Source.INDEX
    return QueryKey(
        table_key.tag, table_key.keyword, table_key.vr, pattern, source, table_key.level, element
    )


def _check_hierarchical(query: Query) -> None:
    """PS3.4 C.4.1.2.1: a hierarchical query names one entity at every level above its own."""
    given = {k.tag: k.pattern.strip() for k in query.keys}
    for level in query.model.levels:
        if level.depth >= query.level.depth:
            return
        key = unique_key(level)
        value = given.get(key.tag, "")
        if not value or "\\" in value or _WILDCARDS & set(value):
            raise InvalidIdentifier(
                f"{query.level.value} query needs one {key.keyword}; or ask relational"
            )


def parse_retrieve_identifier(identifier: Dataset, model: Model, *, relational: bool) -> Query:
    """Check a C-MOVE/C-GET identifier and turn it into a `Query` of unique keys only.

    PS3.4 C.4.2.2.1: a retrieve identifier holds the Query/Retrieve Level and the Unique Keys of
    that level and the levels above; at the retrieve level a single value or, for a UID, a list
    of UIDs; no wildcards anywhere. A unique key of a level above may be left out (a UID alone
    names its entity), but when it is given it narrows, one value unless the retrieve is
    relational. Other keys are ignored. Raises InvalidIdentifier (A900) otherwise.
    """
    level = _query_level(identifier, model)
    keys = []
    for key_level in model.levels:
        if key_level.depth > level.depth:
            break
        unique = unique_key(key_level)
        element = _decoded(identifier, unique.tag) if unique.tag in identifier else None
        text = element_text(element).strip()
        if element is None or not text:
            if key_level is level:
                raise InvalidIdentifier(f"a {level.value} retrieve needs {unique.keyword}")
            continue
        values = [v.strip() for v in text.split("\\")]
        if any(_WILDCARDS & set(v) for v in values) or not all(values):
            raise InvalidIdentifier(f"{unique.keyword} must be whole values, no wildcards")
        if len(values) > 1 and (unique.vr != "UI" or (key_level is not level and not relational)):
            raise InvalidIdentifier(f"{unique.keyword} must be one value above the retrieve level")
        pattern = "\\".join(values)
        keys.append(
            QueryKey(
                unique.tag, unique.keyword, unique.vr, pattern, Source.INDEX, unique.level, element
            )
        )
    return Query(model, level, tuple(keys), relational)


# -- answering ------------------------------------------------------------------------------


_BATCH = 64  # matches turned into views per visit to the index's lock


def find(
    index: Index,
    query: Query,
    ae_title: str,
    headers: HeaderCache,
    stopped: Callable[[], bool] = lambda: False,
) -> Iterator[Dataset]:
    """Yield a response identifier for every entity that matches `query`, one at a time; end
    early once `stopped()` (a C-CANCEL, an association gone), which is asked while matching
    too: a key read from every file's header can take minutes over a big tree between two
    answers, and a cancel must not wait for them, nor an abandoned query hold a thread.

    The work grows with what matches, not with what is indexed:

    1. Keys of a level above the query level that the index holds (a PatientName wildcard at
       STUDY level, say) are matched against that level's records first, and the entities that
       match narrow the query like unique keys do: the patients whose name matches, then only
       their studies. A PatientName with a literal start is looked up by name first, so that
       only the patients it may match are matched.
    2. The query level's candidates are copied out as records alone and every indexed key is
       matched against them, outside the index's lock.
    3. Only the entities that match are counted (NumberOf..., ModalitiesInStudy), a batch at
       a time; keys that are computed or read from a file are matched then.
    """
    tests = _record_tests(query)
    narrowing = _narrowed(index, query, tests)
    later = [k for k in query.keys if k.source in (Source.COMPUTED, Source.FILE)]
    matched: list[Entity] = []
    for n, entity in enumerate(index.entities(query.level, narrowing)):
        if n % _LOOK_EVERY == 0 and stopped():
            return
        if all(test(_record(entity, level).get(keyword)) for level, keyword, test in tests):
            matched.append(entity)
    # A header read takes a look each; otherwise every _LOOK_EVERY views, as the caller looks
    # between two answers anyway.
    look_every = 1 if any(k.source is Source.FILE for k in later) else _LOOK_EVERY
    for start in range(0, len(matched), _BATCH):
        for n, view in enumerate(index.views(matched[start : start + _BATCH]), start):
            if n % look_every == 0 and stopped():
                return
            if all(_key_matches(key, view, headers) for key in later):
                yield response(query, view, ae_title, headers)


_LOOK_EVERY = 4096  # candidates matched between two looks at whether to stop


_RecordTest = tuple[Level, str, Matcher]  # the record's level, the keyword, the compiled key


def _record_tests(query: Query) -> list[_RecordTest]:
    """The keys the index's records hold that are not universal, each compiled once."""
    return [
        (key.table_level, key.keyword, matcher(key.vr, key.pattern))
        for key in query.keys
        if key.source is Source.INDEX and key.vr != "SQ" and not is_universal(key.vr, key.pattern)
    ]


def _narrowed(index: Index, query: Query, tests: list[_RecordTest]) -> dict[Level, Sequence[str]]:
    """`query.narrowing()`, narrowed further by matching the levels above the query level.

    Each level above that has keys to match is matched on its own records, top first, and the
    Unique Keys of those that match narrow every level below. A level is not matched ahead when
    a unique key below it already names the candidates: looking those up is cheaper than
    matching every entity of the level. Before all that, when no unique key is given, a
    PatientName key with a literal start ("DOE^*") names the patients it may match through the
    index's names, so that only those are matched. Only entities that cannot match are ever
    dropped: the query level matches every key again.
    """
    given = query.narrowing()
    narrowing = dict(given)
    by_name = None if given else _patients_by_name(index, query)
    if by_name is not None:
        narrowing[Level.PATIENT] = by_name
    for level in Level:
        if level.depth >= query.level.depth:
            break
        own = [(keyword, test) for at, keyword, test in tests if at is level]
        if not own or any(named.depth > level.depth for named in given):
            continue
        keyword = unique_key(level).keyword
        if level is Level.PATIENT:
            # Below PATIENT each study answers with the patient its own files describe: a
            # patient may match through any of its studies.
            records: Sequence[Patient | Study | Series | Instance] = index.study_patients(narrowing)
        else:
            records = [_record(entity, level) for entity in index.entities(level, narrowing)]
        narrowing[level] = list(
            dict.fromkeys(
                r.get(keyword) for r in records if all(test(r.get(kw)) for kw, test in own)
            )
        )
    return narrowing


def _patients_by_name(index: Index, query: Query) -> list[str] | None:
    """The patients a PatientName key with a literal start ("DOE^*", "MÜLLER") may match,
    looked up by name; None when there is no such key ("*SMITH" matches every name in turn)."""
    for key in query.keys:
        if key.source is Source.INDEX and key.keyword == "PatientName":
            prefixes = person_name_prefixes(key.pattern)
            return None if prefixes is None else index.patients_named(prefixes)
    return None


def instances_to_retrieve(index: Index, query: Query) -> list[Instance]:
    """The instances a retrieve `query` (from `parse_retrieve_identifier`) names, in order.

    Every instance of every matching entity (PS3.4 C.4.2.3.1), series by series in the order
    the index holds them, each series by Instance Number; an instance named twice goes once.
    """
    views = index.candidates(Level.IMAGE, query.narrowing())
    headers = HeaderCache(capacity=0)  # unique keys come from the index; no file is read
    chosen = [
        view.instance
        for view in views
        if isinstance(view, InstanceView)
        and all(_key_matches(key, view, headers) for key in query.keys)
    ]
    series_order = {uid: i for i, uid in enumerate(dict.fromkeys(i.series_uid for i in chosen))}
    return sorted(
        chosen,
        key=lambda i: (series_order[i.series_uid], _instance_number(i), i.sop_instance_uid),
    )


def _instance_number(instance: Instance) -> int:
    text = instance.get("InstanceNumber").strip()
    return int(text) if text.lstrip("+-").isdigit() else 2**31  # no number: last


def _key_matches(key: QueryKey, view: View, headers: HeaderCache) -> bool:
    if not key.pattern or key.source is Source.NONE or key.vr == "SQ":
        return True  # universal matching (PS3.4 C.2.2.2.3); sequences match universally
    return match(key.vr, key.pattern, _value_text(key, view, headers))


def _value_text(key: QueryKey, view: View, headers: HeaderCache) -> str:
    if key.source is Source.INDEX:
        return _record(view, key.table_level).get(key.keyword)
    if key.source is Source.COMPUTED:
        return _computed(key.keyword, view)
    if key.source is Source.FILE:
        header = headers.get(view.first_path)
        return element_text(header.get(key.tag)) if header is not None else ""
    return ""


def _record(view: View | Entity, level: Level) -> Patient | Study | Series | Instance:
    if isinstance(view, Entity):
        found = (view.patient, view.study, view.series, view.instance)[level.depth]
        if found is None:
            raise AssertionError(f"a {view.level.value} entity has no {level.value} record")
        return found
    if level is Level.PATIENT:
        return view.patient
    if level is Level.STUDY and not isinstance(view, PatientView):
        return view.study
    if level is Level.SERIES and isinstance(view, SeriesView | InstanceView):
        return view.series
    if level is Level.IMAGE and isinstance(view, InstanceView):
        return view.instance
    raise AssertionError(f"a {type(view).__name__} has no {level.value} record")


def _computed(keyword: str, view: View) -> str:
    if isinstance(view, PatientView | StudyView):
        patient_counts = {
            "NumberOfPatientRelatedStudies": view.patient_studies,
            "NumberOfPatientRelatedSeries": view.patient_series,
            "NumberOfPatientRelatedInstances": view.patient_instances,
        }
        if keyword in patient_counts:
            return str(patient_counts[keyword])
    if isinstance(view, StudyView):
        study_values = {
            "NumberOfStudyRelatedSeries": str(view.series),
            "NumberOfStudyRelatedInstances": str(view.instances),
            "ModalitiesInStudy": "\\".join(view.modalities),
            "SOPClassesInStudy": "\\".join(view.sop_classes),
        }
        return study_values.get(keyword, "")
    if isinstance(view, SeriesView) and keyword == "NumberOfSeriesRelatedInstances":
        return str(view.instances)
    return ""


def response(query: Query, view: View, ae_title: str, headers: HeaderCache) -> Dataset:
    """A new identifier answering `query` for one matching entity (PS3.4 C.4.1.1.3.2)."""
    ds = Dataset()
    for key in query.keys:
        if key.source is Source.FILE:
            header = headers.get(view.first_path)
            found = header.get(key.tag) if header is not None else None
            ds.add(
                _requested(key.element, found)
                if found is not None
                else _element(key.tag, key.vr, "")
            )
            continue
        ds.add(_element(key.tag, key.vr, _value_text(key, view, headers)))
    # PS3.4 C.4.1.2.1: the unique keys of the query level and the levels above always return.
    for level in query.model.levels:
        if level.depth > query.level.depth:
            break
        unique = unique_key(level)
        if unique.tag not in ds:
            ds.add(_element(unique.tag, unique.vr, _record(view, level).get(unique.keyword)))
    ds.QueryRetrieveLevel = query.level.value
    ds.RetrieveAETitle = ae_title
    ds.InstanceAvailability = "ONLINE"
    if not _is_ascii(ds):
        # Values are held decoded; UTF-8 carries every repertoire, whatever the file used.
        ds.SpecificCharacterSet = UTF8
    return ds


def _requested(key: DataElement, found: DataElement) -> DataElement:
    """What a file holds for a key read from it. For a sequence, each item holds only the
    attributes the key's item asks for (PS3.4 C.2.2.2.6), with nested sequences alike; a key
    with no item, or an empty one, asks for the whole sequence. Every item is returned: fsqr
    does not match inside sequences (such a key gets FF01)."""
    found = with_items_decoded(found)
    if key.VR != "SQ" or found.VR != "SQ" or not key.value or not len(key.value[0]):
        return found
    wanted = [e for e in key.value[0] if e.tag != SPECIFIC_CHARACTER_SET]
    items = []
    for stored in found.value or ():
        item = Dataset()
        for asked in wanted:
            held = stored.get(asked.tag)
            item.add(_element(asked.tag, asked.VR, "") if held is None else _requested(asked, held))
        items.append(item)
    return DataElement(found.tag, "SQ", Items(items))


# The binary numeric VRs (PS3.5 6.2): held as text like every value, encoded as numbers.
_NUMBER_OF_VR: dict[str, type[int] | type[float]] = {
    "US": int,
    "SS": int,
    "UL": int,
    "SL": int,
    "UV": int,
    "SV": int,
    "FL": float,
    "FD": float,
}


def _element(tag: int, vr: str, text: str) -> DataElement:
    """An answer's element from the text the index holds (values separated by backslashes).

    >>> _element(0x00280010, "US", "512").value, _element(0x00280010, "US", "").value
    (512, None)
    >>> list(_element(0x00280010, "US", "8\\\\8").value)
    [8, 8]
    """
    value: Any = text or None
    number = _NUMBER_OF_VR.get(vr)
    if number is not None and text:
        try:
            numbers = [number(part) for part in text.split("\\")]
        except ValueError:  # not what a file could hold as this VR: answered empty
            numbers = []
        value = numbers[0] if len(numbers) == 1 else (numbers or None)
    # Not validated again: the value is what a file holds, and an answer echoes it as stored.
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _is_ascii(ds: Dataset) -> bool:
    for element in ds.iterall():
        value = element.value
        if element.VR in ("SQ", "UN", "OB", "OW") or value is None:
            continue
        if not element_text(element).isascii():
            return False
    return True
