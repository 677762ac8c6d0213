"""Helpers for tests against a running server: waiting for another thread without sleeping a
fixed time, and a one-shot C-FIND."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from fsqr.server import Server
from fsqr.synthetic import synthetic_uid


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, every: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; return its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(every)


def c_find_image(server: Server, uid: str, patient: str = "PID1") -> int:
    """How many instances a C-FIND at IMAGE level for SOP Instance UID `uid` matches, in the
    study and series that the conftest `instance` factory gives `patient`."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = synthetic_uid("study", patient)
    identifier.SeriesInstanceUID = synthetic_uid("series", patient)
    identifier.SOPInstanceUID = uid
    responses = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    assert responses[-1][0].Status == 0x0000
    return sum(answer is not None for _, answer in responses)
