"""The Conformance Statement in docs/ is what the code says, word for word."""

from __future__ import annotations

from fsqr.conformance import statement
from tests.conftest import REPO


def test_the_committed_statement_is_up_to_date() -> None:
    committed = (REPO / "docs" / "conformance.md").read_text(encoding="utf-8")
    assert committed == statement(), "run: python -m fsqr.conformance > docs/conformance.md"


def test_it_names_what_the_server_does() -> None:
    text = statement()
    for expected in (
        "Study Root Query/Retrieve Information Model - MOVE",
        "Modality Worklist Information Model - FIND",
        "| PatientName | (0010,0010) | PN | indexed |",
        "| ModalitiesInStudy | (0008,0061) | CS | computed |",
        "| C-MOVE, C-GET | A801 | MOVE_DESTINATION_UNKNOWN |",
        "`ISO 2022 IR 87`",
        "`faults:` in fsqr.yaml",
    ):
        assert expected in text
