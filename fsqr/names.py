"""Patients by folded PatientName: what turns a name key with a literal start into a lookup.

A PatientName key such as "DOE^J*" or "MÜLLER" can only match a name one of whose folded terms
(`matching.person_name_terms`: each value's whole name and each component group) starts with
the key's literal start (`matching.person_name_prefixes`), or is that start without its
trailing carets. `PatientNames` keeps every (term, PatientID) pair in order, so that the
patients who may match are found by a range lookup rather than by matching every patient's
name; the query still matches each of them as before, so answers do not change.

The pairs are kept in short sorted runs (at most `2 * _RUN` pairs each) rather than one sorted
list: inserting into one list of a million pairs moves half of it every time, which a start-up
scan adding a patient per file could not afford, while a run is moved whole only when it
splits. Not thread-safe on its own: the `Index` that owns it calls it under its lock.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import islice

from fsqr.matching import person_name_terms

_RUN = 256
_Pair = tuple[str, str]  # a folded term and the PatientID of a name that has it


class PatientNames:
    """The (term, PatientID) pairs of every indexed patient's name, in order."""

    def __init__(self) -> None:
        self._runs: list[list[_Pair]] = []
        self._lasts: list[_Pair] = []  # the last pair of each run, to find a run by bisection

    def add(self, patient_id: str, name: str) -> None:
        """Index the patient `patient_id` under its PatientName `name` (as the record holds it)."""
        for term in person_name_terms(name):
            self._insert((term, patient_id))

    def remove(self, patient_id: str, name: str) -> None:
        """Undo `add(patient_id, name)`: `name` must be the name it was added under."""
        for term in person_name_terms(name):
            self._delete((term, patient_id))

    def candidates(self, prefixes: Iterable[str]) -> set[str]:
        """The PatientIDs whose names have a term starting with one of `prefixes` (literal,
        folded) or equal to one of them without its trailing carets."""
        found: set[str] = set()
        for prefix in prefixes:
            bare = prefix.rstrip("^")
            for term, patient_id in self._from((bare,)) if bare != prefix else ():
                if term != bare:
                    break
                found.add(patient_id)
            for term, patient_id in self._from((prefix,)):
                if not term.startswith(prefix):
                    break
                found.add(patient_id)
        return found

    def __len__(self) -> int:
        return sum(map(len, self._runs))

    def _from(self, low: _Pair | tuple[str]) -> Iterator[_Pair]:
        """Every pair from the first not below `low` on, in order."""
        i = bisect_left(self._lasts, low)
        if i == len(self._runs):
            return
        run = self._runs[i]
        yield from islice(run, bisect_left(run, low), None)
        for run in islice(self._runs, i + 1, None):
            yield from run

    def _insert(self, pair: _Pair) -> None:
        if not self._runs:
            self._runs.append([pair])
            self._lasts.append(pair)
            return
        i = min(bisect_left(self._lasts, pair), len(self._runs) - 1)
        run = self._runs[i]
        insort(run, pair)
        self._lasts[i] = run[-1]
        if len(run) > 2 * _RUN:
            self._runs.insert(i + 1, run[_RUN:])
            self._lasts.insert(i + 1, run[-1])
            del run[_RUN:]
            self._lasts[i] = run[-1]

    def _delete(self, pair: _Pair) -> None:
        i = bisect_left(self._lasts, pair)
        if i == len(self._runs):
            return
        run = self._runs[i]
        j = bisect_left(run, pair)
        if j == len(run) or run[j] != pair:
            return
        del run[j]
        if run:
            self._lasts[i] = run[-1]
        else:
            del self._runs[i], self._lasts[i]
