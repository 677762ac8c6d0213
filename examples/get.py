r"""C-GET: the instances of a series come back over your own association (PS3.4 C.4.3).

No AE table is needed: you accept the Storage SOP Classes in the SCP role (SCP/SCU Role
Selection, PS3.7 D.3.3.4) and the server sends each instance to you as a C-STORE on the
association you opened.

DCMTK:
    $ getscu -S -aec FSQR -od {out} -k QueryRetrieveLevel=SERIES \
        -k StudyInstanceUID={study} -k SeriesInstanceUID={series} {host} {port}
"""

import argparse
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

STORAGE = [
    CTImageStorage,
    MRImageStorage,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("port", nargs="?", type=int, default=11112)
parser.add_argument("--out", type=Path, default=Path("received"), help="folder to write them to")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)


def on_store(event):
    """Each C-STORE sub-operation on our own association: write the instance, answer Success."""
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as(args.out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return 0x0000


ae = AE(ae_title="EXAMPLE")
ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
for uid in STORAGE:
    ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
roles = [build_role(uid, scp_role=True) for uid in STORAGE]
assoc = ae.associate(
    args.host,
    args.port,
    ae_title="FSQR",
    ext_neg=roles,
    evt_handlers=[(evt.EVT_C_STORE, on_store)],
)
if not assoc.is_established:
    raise SystemExit("no association: is `fsqr serve sample_data` running?")

# Pick the first series of the first study.
query = Dataset()
query.QueryRetrieveLevel = "STUDY"
query.StudyInstanceUID = ""
# Read every response: a C-FIND left half-read leaves its answers queued on the association.
find = StudyRootQueryRetrieveInformationModelFind
studies = [a.StudyInstanceUID for _, a in assoc.send_c_find(query, find) if a]
study = studies[0]
query = Dataset()
query.QueryRetrieveLevel = "SERIES"
query.StudyInstanceUID = study
query.SeriesInstanceUID = ""
series = [a.SeriesInstanceUID for _, a in assoc.send_c_find(query, find) if a]

identifier = Dataset()
identifier.QueryRetrieveLevel = "SERIES"
identifier.StudyInstanceUID = study
identifier.SeriesInstanceUID = series[0]
final = None
for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
    if status is None:
        raise SystemExit("no answer from the server")
    final = status
    done = status.get("NumberOfCompletedSuboperations", "-")
    print(f"status 0x{status.Status:04X}, completed {done}")
assoc.release()
print(f"{len(list(args.out.glob('*.dcm')))} instances in {args.out}")
raise SystemExit(0 if final is not None and final.Status == 0 else 1)
