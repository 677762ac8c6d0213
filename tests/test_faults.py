"""fsqr as a test double, without a socket: the `faults:` rules as fsqr.yaml states them, which
rule applies to a request (fsqr/faults.py), and the record of what was served
(fsqr/operations.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fsqr.config import ConfigError, FaultRule, config_from_mapping, load_config
from fsqr.faults import Fault, InjectedFault, rule_for
from fsqr.operations import Operations, Served


def test_rules_in_fsqr_yaml_become_fault_rules(tmp_path: Path) -> None:
    path = tmp_path / "fsqr.yaml"
    path.write_text(
        "faults:\n"
        "  - {operation: FIND, caller: ' FLAKY ', status: 'a700', comment: busy}\n"
        "  - {operation: move, delay_ms: 200, abort_after: 2}\n"
        "  - {operation: store, status: '0124'}\n",
        encoding="utf-8",
    )
    assert load_config(path).faults == (
        FaultRule("find", "FLAKY", status=0xA700, comment="busy"),
        FaultRule("move", delay_ms=200, abort_after=2),
        FaultRule("store", status=0x0124),
    )


def test_rules_given_to_server_as_arguments_are_the_same_rules() -> None:
    rule = FaultRule("get", abort_after=0)
    given = config_from_mapping({"faults": [rule, {"operation": "echo", "status": "0122"}]})
    assert given.faults == (rule, FaultRule("echo", status=0x0122))
    # a FaultRule built by hand is checked like any other value
    with pytest.raises(ConfigError, match=r"faults\[0\]: does nothing"):
        config_from_mapping({"faults": [FaultRule("find")]})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"status": "A700"}, r"faults\[0\]\.operation: is missing"),
        ({"operation": "query", "status": "A700"}, r"faults\[0\]\.operation: must be one of"),
        ({"operation": "find", "status": 0o124}, r"faults\[0\]\.status: must be a status as 4 hex"),
        ({"operation": "find", "status": "A70"}, r"faults\[0\]\.status: must be a status as 4 hex"),
        ({"operation": "find", "status": "0000"}, r"faults\[0\]\.status: must be a failure"),
        ({"operation": "find", "status": "FF00"}, r"faults\[0\]\.status: must be a failure"),
        ({"operation": "find", "comment": "why"}, r"faults\[0\]\.comment: is the Error Comment"),
        (
            {"operation": "find", "status": "A700", "comment": "x" * 65},
            r"faults\[0\]\.comment: must be text of at most 64",
        ),
        ({"operation": "find", "delay_ms": -1}, r"faults\[0\]\.delay_ms: must be an integer"),
        ({"operation": "store", "abort_after": 1}, r"faults\[0\]\.abort_after: counts matches"),
        (
            {"operation": "move", "status": "C000", "abort_after": 1},
            r"faults\[0\]\.abort_after: cannot go with status",
        ),
        ({"operation": "find", "caller": "X" * 17, "status": "A700"}, r"faults\[0\]\.caller:"),
        ({"operation": "find"}, r"faults\[0\]: does nothing"),
        ({"operation": "find", "delay": 5}, r"faults\[0\]\.delay: unknown key"),
    ],
    ids=[
        "no-operation",
        "unknown-operation",
        "status-as-a-yaml-number",
        "status-too-short",
        "success",
        "pending",
        "comment-without-status",
        "comment-too-long",
        "negative-delay",
        "abort-of-a-store",
        "abort-and-status",
        "bad-caller",
        "rule-that-does-nothing",
        "misspelt-key",
    ],
)
def test_a_bad_rule_is_refused_naming_its_key(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"faults": [rule]})


def test_faults_must_be_a_list() -> None:
    with pytest.raises(ConfigError, match=r"^<arguments>: faults: must be a list of rules"):
        config_from_mapping({"faults": {"operation": "find", "status": "A700"}})


def test_the_first_rule_that_fits_applies() -> None:
    flaky = FaultRule("find", "FLAKY", status=0xA700)
    everyone = FaultRule("find", delay_ms=10)
    rules = [flaky, everyone, FaultRule("find", "FLAKY", status=0xC000)]
    assert rule_for(rules, "find", "FLAKY") is flaky
    assert rule_for(rules, "find", "FLAKY   ") is flaky  # AE titles: spaces around do not count
    assert rule_for(rules, "find", "flaky") is everyone  # but case does
    assert rule_for(rules, "get", "FLAKY") is None


def test_a_fault_waits_answers_its_status_and_counts_to_its_abort() -> None:
    waits: list[float] = []
    fault = Fault(FaultRule("move", delay_ms=250, abort_after=2), sleep=waits.append)
    fault.raise_status()  # no status: the request is served
    steps = []
    while not fault.cut_short:
        fault.pause()
        fault.step()
        steps.append(fault.steps)
    assert (steps, waits) == ([1, 2], [0.25, 0.25])

    refusing = Fault(FaultRule("store", status=0xA700))
    with pytest.raises(InjectedFault) as refused:
        refusing.raise_status()
    assert (refused.value.status, refused.value.comment) == (
        0xA700,
        "fault injected by fsqr (faults: in fsqr.yaml)",
    )


def served(n: int) -> Served:
    return Served("C-ECHO", f"AE{n}", "127.0.0.1:1", 0, "2026-01-01T00:00:00.000Z", 0.1)


def test_the_record_is_appended_from_many_threads_and_read_as_snapshots() -> None:
    operations = Operations()
    threads = [
        threading.Thread(target=lambda k=k: [operations.append(served(k)) for _ in range(200)])
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    seen = list(operations)  # iterating a snapshot while others append
    for thread in threads:
        thread.join()
    assert len(operations) == 800
    assert seen == list(operations)[: len(seen)]  # a snapshot is what was there, in order
    assert sorted({s.calling_ae for s in operations}) == ["AE0", "AE1", "AE2", "AE3"]
    assert operations.of("C-ECHO") == list(operations)
    assert operations[-1] == operations[799]


def test_a_record_as_json_writes_the_status_as_dicom_does() -> None:
    record = Served(
        "C-MOVE",
        "ME",
        "127.0.0.1:5",
        0xB000,
        "2026-01-01T00:00:00.000Z",
        12.5,
        sop_instance_uids=("1.2.3",),
    )
    as_json = record.as_json()
    assert (as_json["status"], as_json["sop_instance_uids"]) == ("B000", ["1.2.3"])
    assert Served("C-GET", "ME", "h:1", None, "t", 1.0).as_json()["status"] is None
    with pytest.raises(AttributeError):
        record.status = 0  # type: ignore[misc]  # frozen
