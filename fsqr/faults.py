"""Misbehaving on purpose: which `faults:` rule of fsqr.yaml applies to a request, and what it
makes of it. Pure decisions and a sleep: no pynetdicom, no sockets; handlers.py applies them.

A client's tests use fsqr as a test double: a PACS that answers a failure status, answers
slowly, or drops the association halfway through a transfer, on cue. A rule names an operation
(and optionally the calling AE title it applies to); the first rule that fits a request applies:

- `status` (and `comment`): the request is not served; this status is the answer.
- `delay_ms`: wait this long before each response (C-ECHO, C-FIND, C-STORE), or before each
  C-STORE sub-operation (C-MOVE, C-GET).
- `abort_after`: after this many matches (C-FIND) or sub-operations (C-MOVE, C-GET), A-ABORT the
  association instead of going on; a C-MOVE sub-association is released first, so exactly that
  many instances reach the destination.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fsqr.config import DEFAULT_FAULT_COMMENT, FaultRule, Operation
from fsqr.errors import DimseError


class InjectedFault(DimseError):
    """The status a fault rule answers instead of serving the request."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.status = code


def rule_for(rules: Sequence[FaultRule], operation: Operation, calling_ae: str) -> FaultRule | None:
    """The first rule for `operation` that fits `calling_ae` (spaces around it do not count).

    >>> from fsqr.config import FaultRule
    >>> rules = [FaultRule("find", "FLAKY", status=0xA700), FaultRule("find", delay_ms=5)]
    >>> rule_for(rules, "find", "FLAKY ").status, rule_for(rules, "find", "OTHER").delay_ms
    (42752, 5)
    >>> rule_for(rules, "move", "FLAKY") is None
    True
    """
    calling = calling_ae.strip(" ")
    for rule in rules:
        if rule.operation == operation and rule.caller in (None, calling):
            return rule
    return None


_LOOK_EVERY = 0.05  # seconds between looks at the association during a delay


class Fault:
    """A rule at work on one request: it waits before each step, answers its status, and counts
    the steps done (`step`) until `cut_short` says the association is to be aborted."""

    def __init__(
        self,
        rule: FaultRule,
        sleep: Callable[[float], None] = time.sleep,
        ended: Callable[[], bool] | None = None,
    ) -> None:
        self.rule = rule
        self.steps = 0
        self._sleep = sleep
        self._ended = ended  # the association is over: nobody waits for the answer any more

    def pause(self) -> bool:
        """Wait `delay_ms` before a response or a sub-operation; False when the association
        ended meanwhile (a client that gave up, a server stopping), which ends the wait too:
        a delay longer than the client's patience is how a test fakes a PACS that never
        answers, and it kept a thread busy, and a stop waiting, for the whole delay."""
        delay = self.rule.delay_ms / 1000
        if self._ended is None:
            if delay:
                self._sleep(delay)
            return True
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self._ended():
                return False
            self._sleep(min(left, _LOOK_EVERY))
        return not self._ended()

    def raise_status(self) -> None:
        """Raise InjectedFault when the rule answers a status instead of the request."""
        if self.rule.status is not None:
            raise InjectedFault(self.rule.status, self.rule.comment or DEFAULT_FAULT_COMMENT)

    def step(self) -> None:
        """One match sent (C-FIND) or one sub-operation done (C-MOVE, C-GET)."""
        self.steps += 1

    @property
    def cut_short(self) -> bool:
        """True once `abort_after` steps are done: abort rather than go on.

        >>> fault = Fault(FaultRule("move", abort_after=1))
        >>> before = fault.cut_short
        >>> fault.step()
        >>> before, fault.cut_short
        (False, True)
        """
        return self.rule.abort_after is not None and self.steps >= self.rule.abort_after

    def describe(self) -> str:
        """The rule in words, for the log.

        >>> Fault(FaultRule("find", "FLAKY", status=0xA700, delay_ms=50)).describe()
        'status A700, delay 50 ms, for FLAKY'
        """
        rule = self.rule
        parts = []
        if rule.status is not None:
            parts.append(f"status {rule.status:04X}")
        if rule.delay_ms:
            parts.append(f"delay {rule.delay_ms} ms")
        if rule.abort_after is not None:
            parts.append(f"abort after {rule.abort_after}")
        if rule.caller is not None:
            parts.append(f"for {rule.caller}")
        return ", ".join(parts)
