"""`dnirecon client mrd FILE`: registration imports nothing heavy; the handler imports service.mrd_client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_SERVER = "localhost:9002"


def register(sub) -> None:
    """`dnirecon client mrd FILE`."""
    p = sub.add_parser("mrd", help="stream an ISMRMRD raw HDF5 file to the MRD endpoint, as a scanner does")
    p.add_argument("file", type=Path, help="ISMRMRD raw FILE.h5 (dnirecon data to-ismrmrd makes one from a fastMRI file)")
    p.add_argument("--server", default=os.environ.get("DNIRECON_MRD_SERVER", DEFAULT_SERVER),
                   help=f"HOST:PORT of the MRD endpoint [env DNIRECON_MRD_SERVER, default {DEFAULT_SERVER}]")
    p.add_argument("--group", default="dataset", help="dataset group in the file (default dataset)")
    p.add_argument("--config", default="dnirecon", help="config name: dnirecon, or a served model name or alias")
    p.add_argument("--alpha", type=float, default=None, help="interpolation coefficient in [0, 1]")
    p.add_argument("--datatype", choices=("float32", "uint16"), default=None, help="pixel type of the images")
    p.add_argument("--out", type=Path, default=Path("recon"), help="output folder (ISMRMRD HDF5 and PNGs)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds without progress before giving up")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from service.mrd_client import stream_file, write_outputs

    params = {k: v for k, v in (("alpha", args.alpha), ("datatype", args.datatype)) if v is not None}
    result = stream_file(args.server, args.file, group=args.group, config=args.config, params=params or None,
                         timeout=args.timeout)
    for t in result.texts:
        print(t, file=sys.stderr)
    if result.images:
        h5, pngs = write_outputs(result, args.file, args.out)
        print(f"{h5} ({len(pngs)} PNGs in {pngs[0].parent}); {len(result.images)} images, "
              f"{result.bytes_sent} bytes sent, {result.bytes_received} received in {result.seconds:.2f} s")
    return 1 if result.errors or not result.closed or not result.images else 0
