"""Modality Worklist from a folder (PS3.4 Annex K): each file in the folder is one worklist item.

This is the job of DCMTK's `wlmscpfs`, not of Query/Retrieve: a modality asks "what is scheduled
for me?" and gets the Scheduled Procedure Steps whose keys match. Items are DICOM data sets in
`.wl` or `.dcm` files (with or without File Meta Information), read again whenever a file's
size or mtime changes, so the folder is live without a watcher. Matching is PS3.4 C.2.2.2, with
Sequence Matching (C.2.2.2.6) for the Scheduled Procedure Step Sequence. No networking here.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fsqr.errors import InvalidIdentifier
from fsqr.matching import match
from fsqr.scan import element_text, with_items_decoded

log = logging.getLogger(__name__)

SUFFIXES = (".wl", ".dcm")
SPECIFIC_CHARACTER_SET = 0x00080005
UTF8 = "ISO_IR 192"


class Worklist:
    """The worklist items of one folder, re-read as its files change. Thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._items: dict[str, tuple[tuple[int, int], Dataset | None]] = {}

    def items(self) -> list[Dataset]:
        """Every readable item now in the folder; broken files are reported once each."""
        try:
            entries = [e for e in os.scandir(self.folder) if e.name.lower().endswith(SUFFIXES)]
        except OSError as exc:
            log.warning("cannot read the worklist folder %s: %s", self.folder, exc)
            return []
        current: dict[str, tuple[tuple[int, int], Dataset | None]] = {}
        with self._lock:
            known = dict(self._items)
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                st = entry.stat()
            except OSError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            cached = known.get(entry.path)
            current[entry.path] = (
                cached if cached is not None and cached[0] == stamp else (stamp, _read(entry.path))
            )
        with self._lock:
            self._items = current
        return [ds for _, ds in current.values() if ds is not None]


def _read(path: str) -> Dataset | None:
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            ds = dcmread(path, force=True)
            ds.ScheduledProcedureStepSequence  # noqa: B018 - a worklist item must have one
        return ds
    except Exception as exc:
        log.warning("worklist file %s skipped: %s", path, exc)
        return None


def find_worklist(worklist: Worklist, identifier: Dataset) -> Iterator[Dataset]:
    """Yield a response for every worklist item that matches `identifier` (PS3.4 K.4.1.3)."""
    if "QueryRetrieveLevel" in identifier:
        # PS3.4 K.6.1.2.1: a worklist identifier has no level; this is a Q/R query sent to the
        # worklist service by mistake, and an empty answer would hide that.
        raise InvalidIdentifier("a worklist query has no QueryRetrieveLevel")
    for item in worklist.items():
        answer = match_dataset(identifier, item)
        if answer is not None:
            if not _is_ascii(answer):
                answer.SpecificCharacterSet = UTF8
            yield answer


def match_dataset(keys: Dataset, stored: Dataset) -> Dataset | None:
    """The response to `keys` from `stored`, or None if any key does not match.

    Every key is returned with the stored value (empty if absent). A sequence key with one item
    matches if any stored item matches all of that item's keys, and returns the matching items
    (PS3.4 C.2.2.2.6); a sequence key with no item returns the stored sequence whole.
    """
    answer = Dataset()
    for key in keys:
        if key.tag == SPECIFIC_CHARACTER_SET or key.tag.group in (0x0000, 0x0002):
            continue
        found = stored.get(key.tag)
        if key.VR == "SQ":
            element = _match_sequence(key, found)
            if element is None:
                return None
            answer.add(element)
            continue
        pattern = _text(key)
        value = _text(found) if found is not None else ""
        if pattern and not match(key.VR, pattern, value):
            return None
        answer.add(DataElement(key.tag, key.VR, value or None, validation_mode=config.IGNORE))
    return answer


def _match_sequence(key: DataElement, found: DataElement | None) -> DataElement | None:
    stored_items = (
        list(with_items_decoded(found).value) if found is not None and found.VR == "SQ" else []
    )
    if not key.value:
        return DataElement(key.tag, "SQ", Sequence(stored_items))
    wanted = key.value[0]
    matches = [m for m in (match_dataset(wanted, item) for item in stored_items) if m is not None]
    if not matches and _has_matching_keys(wanted):
        return None
    return DataElement(key.tag, "SQ", Sequence(matches))


def _has_matching_keys(keys: Dataset) -> bool:
    """True if any key in `keys` (or its items) is not universal matching."""
    for key in keys:
        if key.VR == "SQ":
            if key.value and _has_matching_keys(key.value[0]):
                return True
        elif key.tag != SPECIFIC_CHARACTER_SET and _text(key):
            return True
    return False


def _text(element: DataElement) -> str:
    try:
        return element_text(element)
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode {element.keyword or element.tag}: {exc}") from None


def _is_ascii(ds: Dataset) -> bool:
    return all(
        element.VR == "SQ" or element.value is None or element_text(element).isascii()
        for element in ds.iterall()
    )
