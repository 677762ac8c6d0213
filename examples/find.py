r"""C-FIND: which studies are there? (PS3.4 C.4.1, Study Root, STUDY level)

Every requested key comes back for each match; an empty key asks for the value.

DCMTK:
    $ findscu -S -aec FSQR -k QueryRetrieveLevel=STUDY -k PatientName=DOE* -k PatientID \
        -k StudyDate -k StudyInstanceUID -k ModalitiesInStudy {host} {port}
"""

import argparse

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("port", nargs="?", type=int, default=11112)
parser.add_argument("--name", default="DOE*", help="PatientName to match; * and ? are wildcards")
args = parser.parse_args()

query = Dataset()
query.QueryRetrieveLevel = "STUDY"
query.PatientName = args.name
query.PatientID = ""
query.StudyDate = ""
query.StudyInstanceUID = ""
query.ModalitiesInStudy = ""

ae = AE(ae_title="EXAMPLE")
ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
assoc = ae.associate(args.host, args.port, ae_title="FSQR")
if not assoc.is_established:
    raise SystemExit("no association: is `fsqr serve sample_data` running?")
matches = 0
for status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
    if status is None:
        raise SystemExit("no answer from the server")
    if answer is not None:  # a pending response (FF00) carries one match
        matches += 1
        print(answer.PatientName, answer.PatientID, answer.StudyDate, answer.ModalitiesInStudy)
    else:  # the final response carries only the status
        print(f"final status 0x{status.Status:04X}, {matches} studies")
assoc.release()
raise SystemExit(0 if matches else 1)
