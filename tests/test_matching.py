"""C-FIND attribute matching, rule by rule as PS3.4 C.2.2.2 states it (fsqr/matching.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsqr.matching import (
    fold_person_name,
    is_universal,
    match,
    match_wildcard,
    matcher,
    person_name_prefixes,
    person_name_terms,
)

YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # PS3.5 Annex H, a Japanese name in three groups


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("PN", "", "DOE^JOHN", True),
        ("PN", "", "", True),  # an absent value matches a universal key too
        ("LO", "   ", "ANYTHING", True),  # padding only: zero length once stripped
        ("DA", "", "20200101", True),
        ("UI", "", "1.2.3", True),
        ("CS", "*", "CT", True),  # C.2.2.2.4 Note 1: "*" is Universal Matching
        ("CS", "*", "", True),
        ("DA", "*", "20200101", True),  # "*" alone is universal even where wild cards are not
        ("TM", "*", "", True),
        ("UI", "*", "1.2.3", True),
        ("IS", "*", "7", True),
        ("CS", "\\", "CT", True),  # a key of empty values only asks for nothing
    ],
    ids=[
        "pn-empty",
        "empty-matches-absent",
        "spaces-only",
        "da-empty",
        "ui-empty",
        "star",
        "star-matches-absent",
        "da-star",
        "tm-star-absent",
        "ui-star",
        "is-star",
        "empty-values-only",
    ],
)
def test_universal_matching(vr: str, pattern: str, value: str, expected: bool) -> None:
    """PS3.4 C.2.2.2.3: a zero-length key matches all entities."""
    assert match(vr, pattern, value) is expected
    assert is_universal(vr, pattern)


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("CS", "CT", "CT", True),
        ("CS", "CT", "MR", False),
        ("CS", "ct", "CT", False),  # C.2.2.2.1: case sensitive except PN
        ("LO", "Chest", "CHEST", False),
        ("LO", "CHEST", "CHEST PA", False),  # no wild card: the whole value must match
        ("LO", "CHEST", "", False),  # an absent value matches no real key
        ("CS", "CT", "CT ", True),  # PS3.5 6.2: trailing padding is not significant
        ("SH", " ACC1 ", "ACC1", True),  # ...nor is leading padding for SH, LO, CS, AE
        ("AE", "STORESCP", " STORESCP ", True),
        ("LT", " note", "note", False),  # for LT, ST, UT leading spaces are text
        ("LT", "note  ", "note", True),
        ("UC", " x", "x", False),
        ("AS", "045Y", "045Y", True),
        ("AS", "045Y", "045M", False),
    ],
    ids=[
        "equal",
        "different",
        "case-sensitive",
        "lo-case-sensitive",
        "whole-value",
        "absent-value",
        "trailing-padding",
        "leading-padding",
        "ae-padding",
        "lt-leading-space-significant",
        "lt-trailing-padding",
        "uc-leading-space-significant",
        "as-equal",
        "as-different",
    ],
)
def test_single_value_matching(vr: str, pattern: str, value: str, expected: bool) -> None:
    """PS3.4 C.2.2.2.1: only values that exactly match are matched."""
    assert match(vr, pattern, value) is expected


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("LO", "CHEST*", "CHEST PA", True),
        ("LO", "CHEST*", "CHEST", True),  # "*" matches a zero length run
        ("LO", "*PA", "CHEST PA", True),
        ("LO", "*ST P*", "CHEST PA", True),
        ("LO", "CHEST*", "ABDOMEN CHEST", False),  # the whole value must match
        ("LO", "*ST", "CHEST PA", False),
        ("SH", "A?C", "ABC", True),
        ("SH", "A?C", "AC", False),  # "?" is exactly one character
        ("SH", "A?C", "ABBC", False),
        ("SH", "???", "AB", False),
        ("CS", "C?", "CT", True),
        ("CS", "c*", "CT", False),  # wild card matching is case sensitive except for PN
        ("AE", "STORE*", "STORESCP", True),
        ("ST", "*needle*", "hay needle hay", True),
        ("UT", "a*b*c", "a\\b\\c", True),  # UT is one value: the backslash is text
        ("UR", "http://*", "http://example.com/a", True),
        ("LO", "?*", "", False),
        ("LO", "**", "", True),
        ("LO", "*a*a*a*a*a*a*a*a*b", "a" * 5000, False),  # no catastrophic backtracking
        ("LO", "a.c", "abc", False),  # other characters are literal, not regex
        ("LO", "a+", "aa", False),
        ("IS", "1*", "12", False),  # no wild cards on IS: "1*" is a literal value
        ("UI", "1.2.*", "1.2.3", False),  # nor on UI
        ("DA", "2020*", "20200101", False),  # nor on DA
    ],
    ids=[
        "trailing-star",
        "star-matches-empty-run",
        "leading-star",
        "inner-star",
        "anchored-start",
        "anchored-end",
        "question",
        "question-needs-one",
        "question-only-one",
        "questions-count",
        "cs-question",
        "case-sensitive",
        "ae",
        "st",
        "ut-backslash-is-text",
        "ur",
        "question-star-absent",
        "double-star-absent",
        "pathological",
        "dot-literal",
        "plus-literal",
        "is-no-wildcards",
        "ui-no-wildcards",
        "da-no-wildcards",
    ],
)
def test_wildcard_matching(vr: str, pattern: str, value: str, expected: bool) -> None:
    """PS3.4 C.2.2.2.4: "*" any run, "?" one character, on AE CS LO LT PN SH ST UC UR UT."""
    assert match(vr, pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("DOE^J*", "DOE^JOHN", True),
        ("DOE", "DOE^JOHN", False),
        ("*", "", True),
        ("?", "", False),
    ],
    ids=["star", "exact-only", "star-empty", "question-empty"],
)
def test_match_wildcard(pattern: str, value: str, expected: bool) -> None:
    assert match_wildcard(pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("DOE^JOHN", "DOE^JOHN", True),
        ("doe^john", "DOE^JOHN", True),  # our choice: PN is case insensitive
        ("DOE^JANE", "DOE^JOHN", False),
        ("DOE", "DOE^JOHN", False),  # no wild card: the whole name
        ("DOE*", "DOE^JOHN", True),
        ("DOE^J*", "doe^john", True),
        ("muller*", "Müller^Jürgen", True),  # ...and accent insensitive
        ("MULLER^JURGEN", "Müller^Jürgen", True),
        ("Müller^Jürgen", "MULLER^JURGEN", True),
        ("M?ller*", "Müller^Jürgen", True),  # "?" takes the folded ü as one letter
        ("BJORK", "Björk", True),
        ("ORSTED", "Ørsted", False),  # ø is a letter of its own, not o with an accent
        ("DOE^JOHN", "DOE^JOHN^^^", True),  # trailing empty components are insignificant
        ("DOE^JOHN^^", "DOE^JOHN", True),
        ("DOE^*", "DOE", True),  # a missing component is an empty one
        ("DOE^JOHN", "DOE^JOHN ", True),  # PN trailing padding
        ("\uff24\uff2f\uff25*", "Doe^John", True),  # full-width letters fold to ASCII
        ("山田*", YAMADA, True),  # a key without "=" may match any one component group
        ("やまだ^たろう", YAMADA, True),
        ("Yamada^Tarou", YAMADA, True),
        ("やまた*", YAMADA, False),  # kana voiced marks are kept: だ is not た
        ("*太郎", YAMADA, True),
        ("山田^次郎", YAMADA, False),
        (YAMADA, YAMADA, True),  # all groups given: each must match
        ("=山田^太郎", YAMADA, True),  # an empty group in the key accepts any value there
        ("==やまだ*", YAMADA, True),
        ("Yamada^Tarou=山田^次郎", YAMADA, False),
        ("=山田^太郎", "Yamada^Tarou", False),  # the name has no ideographic group
        ("Yamada*=", YAMADA, True),
        ("DOE^JOHN", "SMITH^ANN\\DOE^JOHN", True),  # Other Patient Names: any value
        ("DOE*", "", False),
        ("^", "DOE^JOHN", True),  # nothing left once folded: universal
        ("DOE?*", "DOE", False),  # "?" is a character of the value, not a left-out component
        ("DOE^???", "DOE", False),
        ("????", "", False),
        ("?*", "", False),
        ("D?E^*", "DOE", True),
        ("Gr??e^*", "Größe^Ärzt", True),  # "?" is one character, whatever it folds into
        ("Gr???e^*", "Größe^Ärzt", False),
        ("Strau?^Anna", "Strauß^Anna", True),
        ("????^Taro", "\uff76\uff9e\uff84\uff73^Taro", True),  # half-width kana, voiced mark
        ("STRAUSS^ANNA", "Strauß^Anna", True),  # without "?", the whole name folds: ß is ss
    ],
    ids=[
        "exact",
        "case-insensitive",
        "different",
        "whole-name",
        "star",
        "folded-wildcard",
        "accent-insensitive-wildcard",
        "accent-insensitive-exact",
        "accent-in-key",
        "question-accent",
        "bjork",
        "o-slash-distinct",
        "trailing-components",
        "trailing-components-in-key",
        "missing-component",
        "trailing-space",
        "full-width",
        "ideographic-group",
        "phonetic-group",
        "alphabetic-group",
        "kana-voiced-marks-kept",
        "ideographic-suffix",
        "ideographic-different",
        "all-groups",
        "one-group-given",
        "phonetic-group-given",
        "group-mismatch",
        "absent-group",
        "alphabetic-group-given",
        "multi-valued",
        "absent-value",
        "components-empty",
        "question-not-a-missing-component",
        "questions-not-missing-components",
        "questions-not-an-absent-name",
        "question-star-not-an-absent-name",
        "question-then-missing-component",
        "questions-count-characters-not-foldings",
        "questions-count-characters-not-foldings-miss",
        "question-for-sharp-s",
        "questions-for-half-width-kana",
        "sharp-s-folds-to-ss",
    ],
)
def test_person_name_matching(pattern: str, value: str, expected: bool) -> None:
    """PS3.4 C.2.2.2.1 and C.2.2.2.4 leave PN matching to the SCP; fsqr folds both sides."""
    assert match("PN", pattern, value) is expected


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Müller^Jürgen", "muller^jurgen"),
        ("ÉLODIE^Noël", "elodie^noel"),
        ("Straße", "strasse"),
        ("\uff2a\uff2f\uff28\uff2e", "john"),
        ("山田^太郎", "山田^太郎"),
        ("だ", "だ"),
        ("ﾀﾞ", "ダ"),  # half-width katakana and its voiced mark recompose
    ],
    ids=["umlaut", "acute-diaeresis", "sharp-s", "full-width", "kanji", "kana", "half-width"],
)
def test_fold_person_name(text: str, folded: str) -> None:
    assert fold_person_name(text) == folded


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "1.2.30", False),
        ("1.2.3", "1.2", False),
        ("1.2\\1.3", "1.3", True),  # C.2.2.2.2: each UID in the list may generate a match
        ("1.2\\1.3", "1.4", False),
        ("1.2\\\\1.3", "1.2", True),  # an empty item in the list is ignored
        ("1.2.3\0", "1.2.3", True),  # UI values are padded with NUL
        ("1.2.3", "1.4\\1.2.3", True),  # a multi-valued stored UI: any value
        ("1.2.3", "", False),
    ],
    ids=[
        "single",
        "prefix-is-not-equal",
        "shorter",
        "list-hit",
        "list-miss",
        "list-empty-item",
        "nul-padding",
        "stored-multi-valued",
        "absent",
    ],
)
def test_uid_list_matching(pattern: str, value: str, expected: bool) -> None:
    assert match("UI", pattern, value) is expected


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("DA", "20200101-20200131", "20200115", True),  # C.2.2.2.5 "<date1> - <date2>"
        ("DA", "20200101-20200131", "20200101", True),  # inclusive
        ("DA", "20200101-20200131", "20200131", True),
        ("DA", "20200101-20200131", "20200201", False),
        ("DA", "20200101-20200131", "20191231", False),
        ("DA", "20200101-", "20991231", True),  # "<date1> -": on or after
        ("DA", "20200101-", "20191231", False),
        ("DA", "-20200101", "19000101", True),  # "- <date1>": on or before
        ("DA", "-20200101", "20200102", False),
        ("DA", "20200101 - 20200131", "20200110", True),  # spaces as the Standard prints it
        ("DA", "20200131-20200101", "20200115", False),  # reversed: matches nothing
        ("DA", "20200101", "20200101", True),  # single value
        ("DA", "20200101", "20200102", False),
        ("DA", "2020.01.01-2020.01.31", "20200115", True),  # ACR-NEMA form in the key
        ("DA", "20200115", "2020.01.15", True),  # ...and in the stored value
        ("DA", "2020", "20200615", True),  # our choice: a partial date is its whole period
        ("DA", "202001-202002", "20200229", True),
        ("DA", "20200101-", "", False),  # an absent value is not in any range
        ("DA", "-", "20200101", True),  # both ends open: any date
        ("DA", "-", "", False),
        ("TM", "1000-1100", "103000.123", True),
        ("TM", "1000-1100", "1100", True),
        ("TM", "1000-1100", "110059.999999", True),  # "-1100" includes all of 11:00
        ("TM", "1000-1100", "1101", False),
        ("TM", "1000-1100", "095959", False),
        ("TM", "1000-", "2359", True),
        ("TM", "-0900", "0900", True),
        ("TM", "-0900", "090100", False),
        ("TM", "10", "105959.5", True),  # a single partial time: its whole hour
        ("TM", "10", "110000", False),
        ("TM", "103000", "103000.123", True),
        ("TM", "103000.123", "103000.1239", True),
        ("TM", "10:00-11:00", "10:30:00", True),  # ACR-NEMA form
        ("DT", "20200101-20200131", "20200115123000", True),
        ("DT", "20200101-20200131", "20200131235959.999999", True),
        ("DT", "20200101-20200131", "20200201000000", False),
        ("DT", "2019-2020", "20201231", True),  # years
        ("DT", "2019-2020", "2021", False),
        ("DT", "20200101120000-", "20200101120000", True),
        ("DT", "-20200101120000", "20200101120001", False),
        ("DT", "20200101-0500", "20200101080000", True),  # one value with a UTC offset
        ("DT", "20200101120000+0100", "20200101120000-0500", False),  # 6 h apart in UTC
        ("DT", "20200101110000+0000", "20200101120000+0100", True),  # the same instant
        ("DT", "20200101120000+0100", "20200101120000", True),  # one zone unknown: as written
        ("DT", "20200101000000+0100-20200101235959+0100", "20200101123000", True),
        ("DT", "2020010123+0100-2020010123+0100", "20200101223000+0000", True),  # an hour
        ("DT", "2020010123+0100-2020010123+0100", "20200101233000+0000", False),
        ("DT", "2020+1400-", "20191231100000+0000", True),  # 2020 began then, UTC+14
    ],
    ids=[
        "da-closed",
        "da-closed-lower-inclusive",
        "da-closed-upper-inclusive",
        "da-after",
        "da-before",
        "da-open-upper",
        "da-open-upper-miss",
        "da-open-lower",
        "da-open-lower-miss",
        "da-spaces",
        "da-reversed",
        "da-single",
        "da-single-miss",
        "da-acr-nema-key",
        "da-acr-nema-value",
        "da-year",
        "da-months",
        "da-absent",
        "da-dash",
        "da-dash-absent",
        "tm-closed-fraction",
        "tm-upper-bound",
        "tm-upper-minute",
        "tm-after",
        "tm-before",
        "tm-open-upper",
        "tm-open-lower-inclusive",
        "tm-open-lower-miss",
        "tm-single-hour",
        "tm-single-hour-miss",
        "tm-single-seconds",
        "tm-single-fraction",
        "tm-colons",
        "dt-closed",
        "dt-closed-end-of-day",
        "dt-after",
        "dt-years",
        "dt-years-miss",
        "dt-open-upper",
        "dt-open-lower-miss",
        "dt-offset-not-range",
        "dt-offsets-in-utc",
        "dt-offsets-same-instant",
        "dt-one-offset-as-written",
        "dt-range-with-offsets",
        "dt-hour-with-offset",
        "dt-hour-with-offset-miss",
        "dt-year-with-offset",
    ],
)
def test_range_matching(vr: str, pattern: str, value: str, expected: bool) -> None:
    """PS3.4 C.2.2.2.5, without Extended Negotiation of combined date-time matching."""
    assert match(vr, pattern, value) is expected


@pytest.mark.parametrize(
    ("vr", "pattern", "value"),
    [
        ("DA", "2020-01-01", "20200101"),  # three parts: not a range
        ("DA", "a-b", "20200101"),
        ("DA", "20200101--", "20200101"),
        ("DA", "202001011-", "20200101"),  # too many digits
        ("DA", "\uff12\uff10\uff12\uff10\uff10\uff11\uff10\uff11", "20200101"),  # full-width
        ("TM", "25:61:61:61", "103000"),
        ("TM", "10.5.5", "103000"),
        ("TM", "1000-1100", "garbage"),  # a malformed stored value is in no range
        ("DT", "2020-01-01T10:00", "20200101100000"),
        ("DT", "--", "20200101"),
        ("UI", "1.2.3\\", "1.2.4"),
        ("IS", "1-", "1"),
    ],
    ids=[
        "da-three-parts",
        "da-letters",
        "da-double-dash",
        "da-too-long",
        "da-full-width-digits",
        "tm-nonsense",
        "tm-two-points",
        "tm-bad-value",
        "dt-iso-8601",
        "dt-double-dash",
        "ui-trailing-backslash",
        "is-dash",
    ],
)
def test_malformed_keys_match_nothing(vr: str, pattern: str, value: str) -> None:
    """Nothing a peer sends may raise: a key that makes no sense simply matches nothing."""
    assert match(vr, pattern, value) is False


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("IS", "1", "01", True),
        ("IS", "1", "+1", True),
        ("IS", "1", " 1 ", True),
        ("IS", "1", "10", False),
        ("IS", "12345678901234567890", "12345678901234567891", False),  # exact, not float
        ("DS", "1.0", "1", True),
        ("DS", "1.5", "1.50", True),
        ("DS", "1e2", "100", True),
        ("DS", ".5", "0.5", True),
        ("DS", "1.5", "1.6", False),
        ("US", "512", "512", True),
        ("SL", "-3", "-03", True),
        ("FD", "0.5", "0.5", True),
        ("FL", "0.1", "0.10000000149011612", True),  # the float32 0.1 as pydicom prints it
        ("FL", "0.1", "0.1001", False),
        ("IS", "abc", "abc", True),  # neither is a number: compared as text
        ("IS", "1", "", False),
        ("IS", "nan", "nan", True),
        ("DS", "nan", "NaN", False),  # NaN is not a DICOM number: text, case sensitive
        ("US or SS", "5", "05", True),  # pydicom's ambiguous VR
    ],
    ids=[
        "is-leading-zero",
        "is-plus",
        "is-padding",
        "is-different",
        "is-big",
        "ds-point-zero",
        "ds-trailing-zero",
        "ds-exponent",
        "ds-leading-point",
        "ds-different",
        "us",
        "sl-negative",
        "fd",
        "fl-precision",
        "fl-different",
        "text-fallback",
        "absent",
        "nan-text",
        "nan-case",
        "ambiguous-vr",
    ],
)
def test_numeric_single_value_matching(vr: str, pattern: str, value: str, expected: bool) -> None:
    """Our choice on C.2.2.2.1 for numbers: equal as numbers when both sides are numbers."""
    assert match(vr, pattern, value) is expected


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "expected"),
    [
        ("CS", "AXIAL", "ORIGINAL\\PRIMARY\\AXIAL", True),  # any stored value may match
        ("CS", "LOCALIZER", "ORIGINAL\\PRIMARY\\AXIAL", False),
        ("CS", "CT\\MR", "MR", True),  # our choice: any key value (C.2.2.2.8 Note 4)
        ("CS", "CT\\MR", "PT\\MR", True),
        ("CS", "CT\\MR", "PT\\US", False),
        ("CS", "CT\\", "CT", True),  # empty key values are dropped
        ("CS", "CT\\*", "PT", True),  # "*" among the values is universal, as alone
        ("LO", "A*\\B*", "BX", True),
        ("LO", "A*\\BX", "BX", True),
        ("DA", "20200101\\20200105", "20200105", True),
        ("DA", "-20191231\\20210101-", "20200615", False),
        ("DA", "bad\\20200101", "20200101", True),  # a malformed value spoils only itself
        ("LT", "a\\b", "a", False),  # LT is one value: the backslash is text
    ],
    ids=[
        "stored-any",
        "stored-none",
        "key-any",
        "both-multi-valued",
        "none-common",
        "empty-key-value",
        "star-key-value",
        "wildcard-values",
        "wildcard-and-exact",
        "dates",
        "date-ranges",
        "malformed-among-good",
        "lt-single-valued",
    ],
)
def test_multiple_values(vr: str, pattern: str, value: str, expected: bool) -> None:
    assert match(vr, pattern, value) is expected


def test_matcher_is_compiled_once() -> None:
    """A query compiles each key once and calls it per candidate."""
    assert matcher("PN", "DOE*") is matcher("PN", "DOE*")
    assert not is_universal("PN", "DOE*")


VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH"]
VRS += ["SL", "SQ", "SS", "ST", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "XX", ""]
TEXT_VRS = ["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "UI", "AS"]
SPECIAL = st.sampled_from([*"*?\\=^-.:+ \0", "", "0", "9", "ü", "山", "ﾀﾞ", "\uff0a"])
TEXTS = st.lists(st.one_of(SPECIAL, st.text(max_size=4)), max_size=12).map("".join)


@settings(database=None, max_examples=500, deadline=None)
@given(vr=st.sampled_from(VRS), pattern=TEXTS, value=TEXTS)
def test_match_never_raises(vr: str, pattern: str, value: str) -> None:
    assert match(vr, pattern, value) in (True, False)


@settings(database=None, max_examples=300, deadline=None)
@given(vr=st.sampled_from(TEXT_VRS), value=TEXTS)
def test_text_value_matches_itself(vr: str, value: str) -> None:
    """A stored text value used as the key finds itself, wild cards and delimiters included."""
    assert match(vr, value, value)


# -- what an index of names may rely on --------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefixes"),
    [
        ("DOE^*", ("doe^",)),  # also admits a bare "DOE", padded to "DOE^^^^" by the matcher
        ("Doe^J?hn", ("doe^j",)),
        ("DOE^JOHN", ("doe^john",)),  # no wild card: the whole key
        ("müller*\\SMITH", ("muller", "smith")),  # folded; one prefix per value
        ("\uff24\uff2f\uff25*", ("doe",)),  # full-width letters fold to ASCII
        ("=山田*", ("山田",)),  # "=": any group it gives stands for the key
        ("Yamada^T*=山田^太*", ("yamada^t",)),  # ... the one with the longest literal start
        ("*SMITH", None),  # no literal start: every name must be matched
        ("?OE", None),
        ("DOE*\\*SMITH", None),  # one value without a literal start is enough
        ("^*", None),  # carets only: an empty name matches it, padded
        ("*", None),  # universal
        ("", None),
        ("^", None),
    ],
)
def test_person_name_prefixes(pattern: str, prefixes: tuple[str, ...] | None) -> None:
    assert person_name_prefixes(pattern) == prefixes


NAME_PIECES = st.sampled_from(
    [*"*?\\=^ ", "^*", "", "DOE", "doe", "Dö", "E", "J", "\uff24", "山田", "だ", "Yamada", "\u0301"]
)
NAMES = st.lists(st.one_of(NAME_PIECES, st.text(max_size=3)), max_size=8).map("".join)


@settings(database=None, max_examples=1500, deadline=None)
@given(pattern=NAMES, value=NAMES, from_key=st.booleans())
def test_a_name_that_matches_has_a_term_with_a_prefix_of_the_key(
    pattern: str, value: str, from_key: bool
) -> None:
    """What lets an index find names by their literal start: no name that matches is missed."""
    if from_key:  # a name made from the key, that often matches it: "DOE^*" gives "DOE^"
        value = pattern.replace("*", value).replace("?", "E")
    prefixes = person_name_prefixes(pattern)
    if prefixes is None or not match("PN", pattern, value):
        return
    assert any(
        term.startswith(prefix) or term == prefix.rstrip("^")
        for term in person_name_terms(value)
        for prefix in prefixes
    )


def test_a_long_key_is_matched_but_never_kept() -> None:
    """Each distinct key of megabytes stayed in the compiled-key caches: a peer sending such
    queries made the server grow by 26 MB a query, for good."""
    before = matcher.cache_info().currsize  # type: ignore[attr-defined]
    for n in range(5):
        key = f"*{n}" + "*ab" * 2000 + "*"
        assert match("LO", key, f"x{n}" + "ab" * 2000 + "y")
        assert match("PN", key, f"{n}" + "ab" * 2000)
    assert matcher.cache_info().currsize == before  # type: ignore[attr-defined]
    assert match("LO", "DOE*", "DOE^JOHN")  # a short one still is
    assert matcher.cache_info().currsize <= before + 1  # type: ignore[attr-defined]


def test_dt_offsets_at_the_edges_of_the_calendar() -> None:
    """A stored DT whose UTC falls outside years 1-9999 raised OverflowError and failed the
    whole C-FIND; a year before 1000 compared wrongly (strftime does not pad it)."""
    assert matcher("DT", "20240101-")("00010101000000+0100") is False  # as written: year 1
    assert matcher("DT", "-20240101+0000")("99991231235959-0100") is False
    assert matcher("DT", "00010101000000+0100")("") is False
    assert matcher("DT", "-09001231+0000")("20240101+0000") is False  # up to the year 900
    assert matcher("DT", "-09001231+0000")("08991231+0000") is True
