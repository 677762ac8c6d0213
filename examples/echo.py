"""C-ECHO: is the server there? (PS3.7 9.1.5, the Verification service)

DCMTK:
    $ echoscu -aec FSQR {host} {port}
"""

import argparse

from pynetdicom import AE
from pynetdicom.sop_class import Verification

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("host", nargs="?", default="127.0.0.1")
parser.add_argument("port", nargs="?", type=int, default=11112)
args = parser.parse_args()

ae = AE(ae_title="EXAMPLE")
ae.add_requested_context(Verification)
assoc = ae.associate(args.host, args.port, ae_title="FSQR")
if not assoc.is_established:
    raise SystemExit("no association: is `fsqr serve sample_data` running?")
status = assoc.send_c_echo()
print(f"C-ECHO status 0x{status.Status:04X}")
assoc.release()
raise SystemExit(0 if status.Status == 0 else 1)
