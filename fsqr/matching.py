"""C-FIND attribute matching (PS3.4 C.2.2.2): one query key against one stored value.

This module owns the rules that decide whether a stored attribute value matches the value of a
Key Attribute in a C-FIND Identifier: Single Value, List of UID, Universal, Wild Card and Range
Matching, and how Person Names are compared. It works on decoded `str` only: no I/O, no pydicom
`Dataset`, no pynetdicom, no index. Sequence Matching (C.2.2.2.6) walks datasets and belongs to
the query layer, which calls back in here for each item's keys.

Both sides arrive as Python strings: the key as the peer sent it, the stored value as the index
holds it, multiple values joined by a backslash and an absent attribute as "". `match` never
raises: a key that makes no sense (a malformed range, say) matches nothing, because nothing a
peer sends may stop the server.

Choices where PS3.4 leaves the SCP free (they belong in the Conformance Statement):

- PN is matched case and accent insensitively (`fold_person_name`), and a key without "=" is
  compared with the whole name and with each component group (alphabetic, ideographic,
  phonetic) alone; trailing empty components ("DOE^JOHN^^^") are insignificant.
- A multi-valued key matches when any of its values matches any stored value (the semantics are
  undefined without Extended Negotiation of Multiple Value Matching, C.2.2.2.8 Note 4; "any"
  is what List of UID Matching does too).
- Range Matching compares DT values in UTC where the key and the value both give their offset
  from UTC, and as written where either leaves it out; it treats a partial bound as covering its
  whole period ("-1100" includes 11:00:59; "2020" as a DA is the whole year) and treats a
  single DA/TM/DT value as the range from it to itself, so "10" as a TM matches any time in
  hour 10.
- Extended Negotiation (fuzzy matching, combined date-time, Empty Value Matching C.2.2.2.7,
  Multiple Value Matching C.2.2.2.8) is not supported.
"""

from __future__ import annotations

import calendar
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache, wraps
from typing import Any, TypeVar, cast

__all__ = [
    "Matcher",
    "fold_person_name",
    "is_universal",
    "match",
    "match_wildcard",
    "match_wildcard_compiled",
    "matcher",
    "person_name_prefixes",
    "person_name_terms",
]

Matcher = Callable[[str], bool]
"""A compiled Key Attribute: takes a stored value, says whether it matches."""


# Text longer than this is never kept in a cache: a peer's key may be megabytes (a UID list, a
# wild card of 200,000 "*"), and every distinct one kept made a server grow without bound
# (26 MB a query). Compiling such a key again costs little next to matching it.
_CACHED_UP_TO = 1024  # characters of all the arguments together

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _cache_when_short(maxsize: int) -> Callable[[_Function], _Function]:
    """`functools.lru_cache(maxsize)`, for calls whose text arguments are short only."""

    def wrap(function: _Function) -> _Function:
        cached = lru_cache(maxsize=maxsize)(function)

        @wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if sum(len(a) for a in args if isinstance(a, str)) > _CACHED_UP_TO:
                return function(*args, **kwargs)
            return cached(*args, **kwargs)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return cast(_Function, call)

    return wrap


# PS3.4 C.2.2.2.4: the VRs on which "*" and "?" are Wild Card Matching. On every other VR a
# key of "*" alone is still Universal Matching (C.2.2.2.4 Note 1) and any other "*" is literal.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# PS3.4 C.2.2.2.5: the VRs on which "-" is Range Matching.
RANGE_VRS = frozenset({"DA", "TM", "DT"})
# Numbers: C.2.2.2.1 asks for an exact match; we compare them as numbers, so "1.0" is "1".
NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "UV", "SS", "SL", "SV", "FL", "FD"})
# PS3.5 6.4: these text VRs have a VM of 1 and may contain a backslash, which is then text.
_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})
# PS3.5 Table 6.2-1: on these only trailing spaces are padding; leading spaces are text.
_TRAILING_PADDING_ONLY = frozenset({"LT", "ST", "UT", "UC", "UR"})

# Diacritics are dropped by `fold_person_name`: the Combining Diacritical Marks blocks only, so
# that the voiced marks of kana (U+3099, U+309A), which change the sound, are kept.
_DIACRITICS = dict.fromkeys(
    [
        *range(0x0300, 0x0370),
        *range(0x1AB0, 0x1B00),
        *range(0x1DC0, 0x1E00),
        *range(0x20D0, 0x2100),
        *range(0xFE20, 0xFE30),
    ]
)

# PS3.5 Table 6.2-1: digits before and after the point at full precision: DA YYYYMMDD,
# TM HHMMSS.FFFFFF, DT YYYYMMDDHHMMSS.FFFFFF (the DT offset &ZZXX is removed first).
_PRECISION = {"DA": (8, 0), "TM": (6, 6), "DT": (14, 6)}
_DT_OFFSET = re.compile(r"([+-])(\d\d)(\d\d)\Z")
_DT_PART = r"\s*([0-9.]*(?:[+-]\d{4})?)\s*"
_DT_RANGE = re.compile(_DT_PART + "-" + _DT_PART)
_DICOM_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")
_FL_TOLERANCE = 2.0**-23  # PS3.5 Table 6.2-1: FL is IEEE 754 binary32, about 7 digits


def match(vr: str, pattern: str, value: str) -> bool:
    """Return True if the stored `value` matches the Key Attribute `pattern` (PS3.4 C.2.2.2).

    Universal Matching (C.2.2.2.3): an empty key, or "*" alone (C.2.2.2.4 Note 1), matches
    anything, an absent value included.

    >>> match("LO", "", ""), match("DA", "*", "")
    (True, True)

    Single Value Matching (C.2.2.2.1) is exact and case sensitive; padding spaces don't count.

    >>> match("CS", "CT", "CT "), match("CS", "ct", "CT"), match("LO", "AB", "")
    (True, False, False)

    Wild Card Matching (C.2.2.2.4): "*" is any run of characters, "?" exactly one.

    >>> match("LO", "CHEST*", "CHEST PA"), match("SH", "A?C", "ABBC")
    (True, False)

    Person Names are folded first, and each component group is matched on its own.

    >>> match("PN", "muller*", "Müller^Jürgen"), match("PN", "山田*", "Yamada^Tarou=山田^太郎")
    (True, True)

    List of UID Matching (C.2.2.2.2) and Range Matching (C.2.2.2.5):

    >>> match("UI", "1.2.3\\\\1.2.4", "1.2.4"), match("DA", "20200101-20200131", "20200115")
    (True, True)

    Numbers compare as numbers; a multi-valued stored value matches if any value does.

    >>> match("IS", "1", "01"), match("CS", "AXIAL", "ORIGINAL\\\\PRIMARY\\\\AXIAL")
    (True, True)
    """
    return matcher(vr, pattern)(value)


@_cache_when_short(maxsize=4096)
def matcher(vr: str, pattern: str) -> Matcher:
    """Compile a Key Attribute once; the result is called per candidate.

    A query compares one key with thousands of stored values, so everything that depends on
    the key alone (splitting, folding, parsing ranges, building wild card tests) happens here,
    once, and is cached.

    >>> is_study_2020 = matcher("DA", "2020")
    >>> is_study_2020("20201231"), is_study_2020("20210101")
    (True, False)
    """
    vr = _canonical_vr(vr)
    keys = _key_values(vr, pattern)
    if keys is None:
        return _universal
    if vr == "PN":
        return _person_name_matcher(keys)
    if vr in RANGE_VRS:
        return _range_matcher(vr, keys)
    if vr == "UI":
        # C.2.2.2.2: each UID in the list may generate a match; UIDs are padded with NUL.
        uids = frozenset(k.strip(" \0") for k in keys)
        return _each_value(uids.__contains__, split=True, strip=lambda v: v.strip(" \0"))
    if vr in NUMERIC_VRS:
        return _each_value(_numeric_test(vr, keys), split=True, strip=str.strip)
    # Text: Single Value Matching (C.2.2.2.1) unless the key has a wild card (C.2.2.2.4).
    strip = _stripper(vr)
    split = vr not in _SINGLE_VALUED_TEXT
    keys = [strip(k) for k in keys]
    wild = [k for k in keys if vr in WILDCARD_VRS and _has_wildcard(k)]
    exact = frozenset(keys).difference(wild)
    if not wild:
        return _each_value(exact.__contains__, split=split, strip=strip)
    globs = [match_wildcard_compiled(k) for k in wild]
    return _each_value(
        lambda v: v in exact or any(g(v) for g in globs),
        split=split,
        strip=strip,
    )


def is_universal(vr: str, pattern: str) -> bool:
    """Return True if `pattern` matches every entity (PS3.4 C.2.2.2.3 and C.2.2.2.4 Note 1).

    The query layer uses this to skip keys that are only asking for a value to be returned.

    >>> is_universal("PN", ""), is_universal("DA", "*"), is_universal("PN", "DOE*")
    (True, True, False)
    """
    return matcher(vr, pattern) is _universal


@_cache_when_short(maxsize=65536)
def fold_person_name(text: str) -> str:
    """Fold a Person Name for case- and accent-insensitive matching.

    PS3.4 C.2.2.2.1 and C.2.2.2.4 leave PN matching to the implementation, so fsqr folds both
    the key and the stored value: Unicode compatibility decomposition (NFKD, so full-width
    Latin letters become ASCII), case folding, removal of combining diacritical marks, and
    recomposition (NFC). Letters that are not a base letter plus an accent stay distinct (ø,
    ł, æ), and so do kana with and without their voiced marks (だ is not た).

    >>> fold_person_name("Müller^Jürgen"), fold_person_name("\\uff24\\uff2f\\uff25^John")
    ('muller^jurgen', 'doe^john')
    >>> fold_person_name("やまだ^たろう") == "やまだ^たろう"
    True
    """
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return unicodedata.normalize("NFC", decomposed.translate(_DIACRITICS))


def match_wildcard(pattern: str, value: str) -> bool:
    """Return True if `value` matches `pattern`, where `*` is any run and `?` one character.

    PS3.4 C.2.2.2.4: the whole value must match, and the match is case sensitive (fold PN
    first).

    >>> match_wildcard("DOE^J*", "DOE^JOHN"), match_wildcard("DOE", "DOE^JOHN")
    (True, False)
    """
    return match_wildcard_compiled(pattern)(value)


@_cache_when_short(maxsize=4096)
def match_wildcard_compiled(pattern: str, *, padded: bool = False) -> Matcher:
    """Compile a wild card pattern into a test that takes linear time in the value's length.

    A regular expression with several "*" can backtrack for a very long time on a long text
    (LT, UT): a peer's query must not stall an association. The pattern is cut at each "*"
    into fixed-length pieces; the first must start the value, the last end it, and the others
    are found in order, each as early as possible (which is always safe: an earlier place
    leaves more room for the rest).

    >>> test = match_wildcard_compiled("*A?C*E")
    >>> test("xxABCxE"), test("ABCE"), test("ACE")
    (True, True, False)

    `padded`: the value is a name group whose left-out components were added back as `_PAD`
    (`_pad_components`): a "^" of the pattern matches them, a "*" spans them, and nothing else
    does, "?" included: they are not characters of the value (PS3.4 C.2.2.2.4).
    """
    pieces = [_Piece(p, padded) for p in pattern.split("*")]
    if len(pieces) == 1:
        return pieces[0].is_whole
    head, *middle, tail = pieces
    minimum = sum(p.size for p in pieces)

    def test(value: str) -> bool:
        end = len(value) - tail.size
        if len(value) < minimum or not head.is_at(value, 0) or not tail.is_at(value, end):
            return False
        position = head.size
        for piece in middle:
            found = piece.find(value, position, end)
            if found < 0:
                return False
            position = found + piece.size
        return True

    return test


class _Piece:
    """A run of a wild card pattern between two "*": literal characters and "?"."""

    __slots__ = ("regex", "size", "text")

    def __init__(self, text: str, padded: bool = False) -> None:
        self.text = text
        self.size = len(text)
        any_character, caret = ("[^" + _PAD + "]", "[\\^" + _PAD + "]") if padded else (".", "\\^")
        needs_regex = "?" in text or (padded and "^" in text)
        self.regex = (
            re.compile(
                "".join(
                    any_character if c == "?" else caret if c == "^" else re.escape(c) for c in text
                ),
                re.DOTALL,
            )
            if needs_regex
            else None
        )

    def is_whole(self, value: str) -> bool:
        if self.regex is None:
            return value == self.text
        return len(value) == self.size and self.regex.match(value) is not None

    def is_at(self, value: str, position: int) -> bool:
        if self.regex is None:
            return value.startswith(self.text, position)
        return self.regex.match(value, position) is not None

    def find(self, value: str, start: int, end: int) -> int:
        if self.regex is None:
            return value.find(self.text, start, end)
        found = self.regex.search(value, start, end)
        return -1 if found is None else found.start()


def _universal(value: str) -> bool:
    return True


def _never(value: str) -> bool:
    return False


def _canonical_vr(vr: str) -> str:
    """pydicom spells an ambiguous VR "US or SS"; the first is as good as any for matching."""
    return vr.strip().upper().split(" ", 1)[0]


def _key_values(vr: str, pattern: str) -> list[str] | None:
    """The key's values, or None if the key is universal (C.2.2.2.3, C.2.2.2.4 Note 1).

    Empty values inside a multi-valued key are dropped; a key of "*" among them makes the
    whole key universal, as "*" alone would be.
    """
    if not pattern.strip(" \0") or pattern.strip(" ") == "*":
        return None
    raw = [pattern] if vr in _SINGLE_VALUED_TEXT else pattern.split("\\")
    keys = [k for k in raw if k.strip(" \0")]
    if not keys or any(k.strip(" ") == "*" for k in keys):
        return None
    return keys


def _stripper(vr: str) -> Callable[[str], str]:
    # PS3.5 Table 6.2-1: leading and trailing spaces are padding for AE, CS, LO, SH, AS...;
    # for the long texts, UC and UR only trailing spaces are.
    if vr in _TRAILING_PADDING_ONLY:
        return lambda v: v.rstrip(" ")
    return lambda v: v.strip(" ")


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _each_value(test: Matcher, *, split: bool, strip: Callable[[str], str]) -> Matcher:
    """Apply `test` to each stored value: a multi-valued attribute matches if any value does."""
    if not split:
        return lambda value: test(strip(value))
    return lambda value: any(test(strip(v)) for v in value.split("\\"))


# --- Person Names ----------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _name_groups(name: str, by_character: bool = False) -> tuple[str, ...]:
    """One PN value as folded component groups, without trailing empty components or groups.

    `by_character`: each character folded on its own into one character (`_fold_character`),
    so that a "?" of a key still stands for one character of the name: folding the whole name
    makes "ß" two ("ss") and a half-width kana and its voiced mark one.

    >>> _name_groups("Doe^John^^^=^ "), _name_groups("Größe", by_character=True)[0][:3]
    (('doe^john',), 'gro')
    """
    fold = _fold_by_character if by_character else fold_person_name
    groups = [fold(g).rstrip("^ ").lstrip(" ") for g in name.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return tuple(groups)


def _key_name_groups(key: str, by_character: bool = False) -> tuple[str, ...]:
    """`_name_groups` of a key, kept in its cache only when short (see `_CACHED_UP_TO`). The
    stored names go straight to the cache: they are matched, each, on every query."""
    if len(key) > _CACHED_UP_TO:
        return _name_groups.__wrapped__(key, by_character)
    return _name_groups(key, by_character)


def _fold_by_character(text: str) -> str:
    """`fold_person_name` of each character of `text` (composed first, NFC), each one
    character: one that folds into several ("ß" -> "ss") is stood for by a character of a
    private-use plane, the same for every character that folds alike.

    >>> len(_fold_by_character("Strauß")), len(_fold_by_character("\uff76\uff9e\uff84\uff73"))
    (6, 4)
    """
    return "".join(map(_fold_character, unicodedata.normalize("NFC", text)))


_SEVERAL: dict[str, str] = {}  # what a character folds into, when several: its one character


@lru_cache(maxsize=4096)
def _fold_character(character: str) -> str:
    folded = fold_person_name(character)
    if len(folded) == 1:
        return folded
    # Supplementary Private Use Area-B: no name holds it, and each folding gets its own.
    return _SEVERAL.setdefault(folded, chr(0x100000 + len(_SEVERAL) % 0xFFFE))


# The components a name group leaves out, added back for matching: a private-use character
# that no folded name holds, so that only a "^" or a "*" of the key matches it.
_PAD = "\ue000"


def _pad_components(group: str) -> str:
    """A name group with all five components, so that "DOE^*" also matches a bare "DOE"."""
    return group + _PAD * max(0, 4 - group.count("^"))


def _group_test(key_group: str) -> Callable[[str], bool]:
    """A folded key group with a wild card against a folded name group: "DOE^*" matches "DOE"
    (left-out components are empty ones), but "DOE?*" and "????" do not match "DOE" and "",
    as "?" is one character of the value.

    >>> [_group_test(k)("doe") for k in ("doe^*", "doe?*", "doe^???", "d?e", "*")]
    [True, False, False, True, True]
    >>> [_group_test(k)("") for k in ("????", "?*", "^*")]
    [False, False, True]
    """
    if not _has_wildcard(key_group):
        return key_group.__eq__
    glob = match_wildcard_compiled(key_group)
    padded = match_wildcard_compiled(key_group, padded=True)
    return lambda group: glob(group) or padded(_pad_components(group))


NameTest = Callable[[tuple[str, ...]], bool]


def _person_name_matcher(keys: Iterable[str]) -> Matcher:
    """PN: folded, and without "=" in the key, matched against each component group.

    A key without "=" matches the whole name or any one of its groups, so "山田*" finds
    "Yamada^Tarou=山田^太郎". A key with "=" is compared group by group, and an empty group in
    the key accepts any value in that group ("=山田^太郎" finds the same name). PS3.4 C.2.2.2.4
    Note 3 leaves this to the implementation. A key whose groups are all empty once folded
    ("^", "==") asks for nothing and is universal.
    """
    tests: list[tuple[bool, NameTest]] = []
    for key in keys:
        # A "?" counts characters: then both sides are folded a character at a time.
        by_character = "?" in key
        key_groups = _key_name_groups(key, by_character)
        if not any(key_groups):
            return _universal
        group_test = _any_group if "=" not in key else None
        tests.append(
            (by_character, group_test(key_groups[0]) if group_test else _each_group(key_groups))
        )

    def test(value: str) -> bool:
        for name in value.split("\\"):
            if any(t(_name_groups(name, by_character)) for by_character, t in tests):
                return True
        return False

    return test


def person_name_terms(value: str) -> frozenset[str]:
    """The folded strings a stored PN value is matched on, empty ones left out: for each of
    its values, the whole name and each component group alone.

    An index of names by these terms finds every name a key with a literal start can match
    (see `person_name_prefixes`).

    >>> sorted(person_name_terms("Yamada^Tarou=山田^太郎\\\\DOE^John^^"))
    ['doe^john', 'yamada^tarou', 'yamada^tarou=山田^太郎', '山田^太郎']
    """
    terms: set[str] = set()
    for name in value.split("\\"):
        groups = _name_groups(name)
        terms.add("=".join(groups))
        terms.update(groups)
    terms.discard("")
    return frozenset(terms)


def person_name_prefixes(pattern: str) -> tuple[str, ...] | None:
    """What a stored PN value must begin with to match the Key Attribute `pattern`.

    A value matches only if one of its `person_name_terms` starts with one of these folded,
    literal prefixes (a key value up to its first wild card) or is one without its trailing
    carets: "DOE^*" also matches a bare "DOE", whose missing components the matcher pads. A
    key with "=" needs every group it gives to match, so the group with the longest literal
    start stands for it. None when the key is universal or one of its values has no literal
    start ("*SMITH", "?OE", "^*"): then every name must be matched.

    >>> person_name_prefixes("Doe^J*\\\\MÜLLER"), person_name_prefixes("=山田*")
    (('doe^j', 'muller'), ('山田',))
    >>> person_name_prefixes("*SMITH"), person_name_prefixes("^*"), person_name_prefixes("*")
    (None, None, None)
    """
    keys = _key_values("PN", pattern)
    if keys is None:
        return None
    prefixes = []
    for key in keys:
        starts = [_literal_start(g) for g in _key_name_groups(key) if g]
        longest = max(starts, key=lambda start: len(start.rstrip("^")), default="")
        if not longest.rstrip("^"):
            return None
        prefixes.append(longest)
    return tuple(dict.fromkeys(prefixes))


def _literal_start(text: str) -> str:
    """`text` up to its first wild card."""
    return text[: min((text.find(c) for c in "*?" if c in text), default=len(text))]


def _any_group(key_group: str) -> NameTest:
    group_test = _group_test(key_group)

    def test(groups: tuple[str, ...]) -> bool:
        if len(groups) == 1:  # most names: the whole name is its one group, tested once
            return group_test(groups[0])
        return group_test("=".join(groups)) or any(map(group_test, groups))

    return test


def _each_group(key_groups: tuple[str, ...]) -> NameTest:
    group_tests = [(i, _group_test(g)) for i, g in enumerate(key_groups) if g]

    def test(groups: tuple[str, ...]) -> bool:
        return all(t(groups[i] if i < len(groups) else "") for i, t in group_tests)

    return test


# --- Numbers ---------------------------------------------------------------------------------


def _number(text: str) -> Decimal | None:
    """A DICOM IS/DS-style number, or None; Decimal keeps "1.0" == "1" exact for large values."""
    text = text.strip()
    return Decimal(text) if _DICOM_NUMBER.fullmatch(text) else None


def _numeric_test(vr: str, keys: Iterable[str]) -> Matcher:
    texts = frozenset(k.strip() for k in keys)
    numbers = frozenset(n for n in map(_number, texts) if n is not None)
    if vr == "FL":
        floats = [float(n) for n in numbers]

        def close(value: str) -> bool:
            number = _number(value)
            return value in texts or (
                number is not None
                and any(math.isclose(float(number), f, rel_tol=_FL_TOLERANCE) for f in floats)
            )

        return close

    def equal(value: str) -> bool:
        # Equal Decimals hash equally (Decimal("1.0") == Decimal("1")), so a set lookup works.
        return value in texts or _number(value) in numbers

    return equal


# --- Dates and times -------------------------------------------------------------------------


def _instant(vr: str, text: str, fill: str) -> str | None:
    """A DA/TM/DT value at full precision, comparable as a string, or None if malformed.

    Missing digits are filled with `fill`: "0" for a lower bound or a stored value, "9" for
    an upper bound, so "11" as an upper bound takes in all of hour 11.

    >>> _instant("TM", "10:30", "0"), _instant("TM", "1030", "9")
    ('103000.000000', '103099.999999')
    >>> _instant("DA", "2020.01.15", "0"), _instant("DA", "2020-01", "0") is None
    ('20200115.', True)
    """
    text = text.strip()
    if vr == "DA":
        text = text.replace(".", "")  # PS3.5 Table 6.2-1 DA Note: ACR-NEMA "YYYY.MM.DD"
    elif vr == "TM":
        text = text.replace(":", "")  # PS3.5 Table 6.2-1 TM Note: ACR-NEMA "HH:MM:SS.frac"
    else:
        text = _DT_OFFSET.sub("", text)  # the clock time as written (see `_utc`)
    whole, _, fraction = text.partition(".")
    whole_digits, fraction_digits = _PRECISION[vr]
    if not _digits(whole, whole_digits) or (fraction and not _digits(fraction, fraction_digits)):
        return None
    return whole.ljust(whole_digits, fill) + "." + fraction.ljust(fraction_digits, fill)


def _digits(text: str, at_most: int) -> bool:
    return 0 < len(text) <= at_most and text.isascii() and text.isdigit()


def _is_utc_offset(text: str) -> bool:
    """PS3.5 Table 6.2-1 DT: &ZZXX is -1200 to +1400."""
    found = _DT_OFFSET.search(text)
    if found is None:
        return False
    sign, hours, minutes = found.groups()
    return int(minutes) < 60 and int(hours) <= (14 if sign == "+" else 12)


def _bounds(vr: str, key: str) -> tuple[str | None, str | None] | None:
    """A key's lower and upper bound (None where open), or None if it is malformed.

    PS3.4 C.2.2.2.5: "A-B" inclusive, "A-" from A on, "-B" up to B; a single value is the
    range from it to itself. A DT such as "20200101-0500" is one value with a UTC offset, not
    a range, when the part after "-" is a valid offset.
    """
    if vr == "DT" and _is_utc_offset(key.strip()) and _instant(vr, key, "0") is not None:
        parts: list[str] = [key]
    elif vr == "DT":
        found = _DT_RANGE.fullmatch(key)
        parts = list(found.groups()) if found else [key]
    else:
        parts = key.split("-")
    if len(parts) == 1:
        low = high = parts[0]
    elif len(parts) == 2:
        low, high = parts
    else:
        return None
    lower = _instant(vr, low, "0") if low.strip() else None
    upper = _instant(vr, high, "9") if high.strip() else None
    if (low.strip() and lower is None) or (high.strip() and upper is None):
        return None
    return lower, upper


def _range_matcher(vr: str, keys: Iterable[str]) -> Matcher:
    ranges = [b for b in (_bounds(vr, k) for k in keys) if b is not None]
    if not ranges:
        return _never  # only malformed ranges: nothing matches, nothing raises
    if vr == "DT":
        return _dt_range_matcher([k for k in keys if _bounds(vr, k) is not None], ranges)

    def test(value: str) -> bool:
        instant = _instant(vr, value, "0")
        return instant is not None and any(
            (low is None or low <= instant) and (high is None or instant <= high)
            for low, high in ranges
        )

    return _each_value(test, split=True, strip=str.strip)


def _dt_range_matcher(keys: list[str], ranges: list[tuple[str | None, str | None]]) -> Matcher:
    """DT: where the key's bound and the stored value both give their offset from UTC, they
    are compared as instants in UTC (PS3.4 C.2.2.2.5: the offset "shall be taken into
    account"); where either leaves it out, its zone is not known, and the clock times are
    compared as written.

    >>> m = matcher("DT", "20240115225951.5+0000")
    >>> m("20240115235951.5+0100"), m("20240115235951.5-0500"), m("20240115225951.5")
    (True, False, True)
    >>> matcher("DT", "2024011523+0100-2024011523+0100")("20240115223000+0000")
    True
    """
    utc_ranges = []
    for key, (low, high) in zip(keys, ranges, strict=True):
        parts = _dt_range_parts(key)
        low_utc = _utc(parts[0], low, "0") if low is not None else None
        high_utc = _utc(parts[-1], high, "9") if high is not None else None
        utc_ranges.append((low, high, low_utc, high_utc))

    def test(value: str) -> bool:
        instant = _instant("DT", value, "0")
        if instant is None:
            return False
        at_utc = _utc(value, instant, "0")
        for low, high, low_utc, high_utc in utc_ranges:
            below = (low_utc, at_utc) if low_utc and at_utc else (low, instant)
            above = (at_utc, high_utc) if high_utc and at_utc else (instant, high)
            if (below[0] is None or below[0] <= below[1]) and (
                above[1] is None or above[0] <= above[1]
            ):
                return True
        return False

    return _each_value(test, split=True, strip=str.strip)


def _dt_range_parts(key: str) -> list[str]:
    """A DT key's one or two bound texts, as `_bounds` cuts it."""
    if _is_utc_offset(key.strip()) and _instant("DT", key, "0") is not None:
        return [key]
    found = _DT_RANGE.fullmatch(key)
    return list(found.groups()) if found else [key]


def _utc(text: str, instant: str, fill: str) -> str | None:
    """`instant` (as `_instant` made it from the DT `text`) moved to UTC, at full precision;
    None when `text` gives no offset from UTC. A bound filled with "9"s is first brought to
    the last valid moment it stands for (month 12, the month's last day, 23:59:59)."""
    found = _DT_OFFSET.search(text.strip())
    if found is None or not _is_utc_offset(text.strip()):
        return None
    sign, hours, minutes = found.groups()
    digits, fraction = instant.split(".")
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:8])
    month = min(max(month, 1), 12)
    last_day = calendar.monthrange(year, month)[1] if 1 <= year <= 9999 else 28
    day = min(max(day, 1), last_day)
    hour, minute, second = int(digits[8:10]), int(digits[10:12]), int(digits[12:14])
    try:
        moment = datetime(
            year, month, day, min(hour, 23), min(minute, 59), min(second, 59), int(fraction)
        )
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        moment = moment - offset if sign == "+" else moment + offset
    except (ValueError, OverflowError):  # no such day, or UTC falls outside years 1-9999
        return None
    # Zero-padded by hand: strftime's %Y gives "900" for the year 900 on glibc.
    m = moment
    return f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}" + (
        f".{m.microsecond:06d}"
    )
