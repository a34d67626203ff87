"""Generates the committed gRPC stubs (dnirecon/v1/recon_pb2*.py) from protos/ with grpcio-tools.

`make proto` runs this; tests/service/test_proto.py regenerates into a temporary folder and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dnirecon.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PROTO_FILES = ["dnirecon/v1/recon.proto"]
GENERATED = ["dnirecon/v1/recon_pb2.py", "dnirecon/v1/recon_pb2.pyi", "dnirecon/v1/recon_pb2_grpc.py"]


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Writes the stubs under out_dir (dnirecon/v1/...) and returns their paths."""
    from grpc_tools import protoc  # build-time tool only; the service runtime never needs it

    include = Path(protoc.__file__).parent / "_proto"
    out_dir = Path(out_dir)
    (out_dir / "dnirecon" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise ConfigError(f"protoc failed on {PROTO_FILES} under {PROTO_ROOT}")
    return [out_dir / g for g in GENERATED]


def main() -> int:
    for path in generate():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
