"""The architecture of DESIGN.md, checked: imports go one way, and only the edges touch
pynetdicom and watchdog. Parses the source; imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fsqr"

# Who may import whom inside fsqr (beyond the shared leaves records, keys, status, errors, tree,
# implementation).
LEAVES = {"records", "keys", "status", "errors", "tree", "implementation"}
ALLOWED = {
    "keys": set(),
    "tree": set(),  # the files of a served tree and the walk that finds them
    "implementation": set(),  # who fsqr says it is, in associations and in the files it writes
    "records": {"keys"},
    "status": set(),
    "errors": {"status"},
    "config": set(),
    "matching": set(),
    "synthetic": {"keys"},  # writes test and sample files; nothing in the server uses it
    "names": {"matching"},  # patients by folded PatientName, folded as matching folds them
    "index": LEAVES | {"names"},
    "header": LEAVES,
    "scan": LEAVES | {"header"},
    "query": LEAVES | {"matching", "index", "scan"},
    "explain": {"status"},  # the words of --explain; handed plain values, imports nothing else
    "retrieve": LEAVES | {"index", "scan", "query", "explain"},
    "storage": LEAVES | {"index", "scan", "config"},
    "watch": LEAVES | {"index", "scan", "config"},
    "security": {"config"},
    "faults": LEAVES | {"config"},  # which fault rule applies, and what it does; pure
    "operations": set(),  # the record of the operations served
    # The index between runs; writes as C-STORE does (storage, imported only when writing: its
    # stat pass runs in a process that must start without pydicom).
    "snapshot": LEAVES | {"storage"},
    # fsqr's DIMSE below pynetdicom's API (hand-encoded messages, C-CANCEL, --explain's account
    # of a negotiation), and C-MOVE/C-GET's links and responder over it.
    "dimse": {"explain", "status"},
    "links": LEAVES | {"config", "dimse", "explain", "faults", "reactor", "retrieve"},
    "handlers": LEAVES
    | {
        "config",
        "dimse",
        "links",
        "index",
        "scan",
        "query",
        "retrieve",
        "storage",
        "worklist",
        "security",
        "explain",
        "faults",
        "operations",
        "reactor",
    },
    "server": LEAVES
    | {
        "config",
        "handlers",
        "index",
        "scan",
        "watch",
        "storage",
        "security",
        "operations",
        "snapshot",
    },
    "reactor": set(),  # pynetdicom's association loops, waiting instead of polling
    "inventory": LEAVES | {"scan", "index"},  # indexes what it scans as the server does
    "worklist": LEAVES | {"matching", "scan"},
    "cli": {"config", "server", "inventory"},
    "pytest_plugin": {"server", "reactor"},
    "conformance": {"status", "config", "keys", "matching", "server", "implementation"},
    "__main__": {"cli"},
    "__init__": {"server", "config"},
}
ONLY_HERE = {
    "pynetdicom": {"handlers", "dimse", "links", "server", "reactor"},
    "watchdog": {"watch"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_imports_follow_the_design(module: str) -> None:
    assert module in ALLOWED, f"fsqr/{module}.py is new: add it to ALLOWED in this test"
    imported = imports_of(PACKAGE / f"{module}.py")
    inside = {name.split(".")[1] for name in imported if name.startswith("fsqr.")}
    assert inside <= ALLOWED[module], f"fsqr.{module} imports {inside - ALLOWED[module]}"
    for library, allowed in ONLY_HERE.items():
        if any(name == library or name.startswith(library + ".") for name in imported):
            assert module in allowed, f"only {sorted(allowed)} may import {library}"
