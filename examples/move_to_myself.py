r"""C-MOVE to yourself: the server sends a study to you over a second association (PS3.4 C.4.2).

You run a Storage SCP, ask the server to move a study to your own AE title, and the server
looks that title up in its `ae_table`, opens an association to you, and sends each instance as
a C-STORE sub-operation, while telling you over the first association how many remain. For
this to work the server's fsqr.yaml must list you:

    ae_table:
      EXAMPLE: {host: 127.0.0.1, port: 11113}

DCMTK (movescu receives the instances itself with --port):
    $ movescu -S -aec FSQR -aet EXAMPLE -aem EXAMPLE --port {my_port} -od {out} \
        -k QueryRetrieveLevel=STUDY -k StudyInstanceUID={study} {host} {port}
"""

import argparse
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("port", nargs="?", type=int, default=11112)
parser.add_argument("--my-port", type=int, default=11113, help="where we receive instances")
parser.add_argument("--out", type=Path, default=Path("received"), help="folder to write them to")
parser.add_argument("--study", help="StudyInstanceUID to move (default: the first one found)")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)


def on_store(event):
    """Each C-STORE sub-operation: write the instance, answer Success."""
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as(args.out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return 0x0000


ae = AE(ae_title="EXAMPLE")
ae.supported_contexts = AllStoragePresentationContexts
receiver = ae.start_server(
    ("127.0.0.1", args.my_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
)

ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
assoc = ae.associate(args.host, args.port, ae_title="FSQR")
if not assoc.is_established:
    raise SystemExit("no association: is `fsqr serve sample_data` running?")

study = args.study
if study is None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for _, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if answer is not None and study is None:
            study = answer.StudyInstanceUID

identifier = Dataset()
identifier.QueryRetrieveLevel = "STUDY"
identifier.StudyInstanceUID = study
final = None
for status, _ in assoc.send_c_move(
    identifier, "EXAMPLE", StudyRootQueryRetrieveInformationModelMove
):
    if status is None:
        raise SystemExit("no answer from the server")
    final = status
    counts = [
        status.get(f"Number Of {kind} Suboperations".replace(" ", ""), "-")
        for kind in ("Remaining", "Completed", "Failed", "Warning")
    ]
    print(f"status 0x{status.Status:04X}: remaining/completed/failed/warning {counts}")
assoc.release()
receiver.shutdown()
print(f"{len(list(args.out.glob('*.dcm')))} instances in {args.out}")
raise SystemExit(0 if final is not None and final.Status == 0 else 1)
