"""C-STORE: send an instance to the server, which writes it under its root (PS3.4 B.2).

The server files it as incoming/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/
<SOPInstanceUID>.dcm (its `storage.layout` setting) and indexes it at once: a C-FIND right
after the C-STORE response finds it. Without a file argument this sends pydicom's example CT.

DCMTK:
    $ storescu -aec FSQR {host} {port} {file}
"""

import argparse

from pydicom import dcmread, examples
from pynetdicom import AE

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("port", nargs="?", type=int, default=11112)
parser.add_argument("file", nargs="?", help="a DICOM file to send")
args = parser.parse_args()

ds = dcmread(args.file) if args.file else examples.ct

ae = AE(ae_title="EXAMPLE")
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate(args.host, args.port, ae_title="FSQR")
if not assoc.is_established:
    raise SystemExit("no association: is `fsqr serve sample_data` running?")
status = assoc.send_c_store(ds)
print(f"C-STORE of {ds.SOPInstanceUID}: status 0x{status.Status:04X}")
assoc.release()
raise SystemExit(0 if status.Status == 0 else 1)
