"""`dnirecon serve` and `dnirecon client ...`: thin layers over service.server and service.client.

Registration imports nothing heavy; handlers import when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register_serve(subparsers) -> None:
    from service.config import add_serve_arguments

    p = subparsers.add_parser("serve", help="run the gRPC reconstruction service",
                              description="Settings come from flags, else DNIRECON_* environment variables.")
    add_serve_arguments(p)
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from service.config import settings_from
    from service.server import serve

    return serve(settings_from(args))


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("DNIRECON_SERVER", "localhost:50051"), help="HOST:PORT")
    p.add_argument("--token-file", default=os.environ.get("DNIRECON_CLIENT_TOKEN_FILE"), help="bearer token file")
    p.add_argument("--ca-file", default=os.environ.get("DNIRECON_CLIENT_CA_FILE"), help="CA of the server (enables TLS)")
    p.add_argument("--cert-file", default=os.environ.get("DNIRECON_CLIENT_CERT_FILE"), help="client certificate (mutual TLS)")
    p.add_argument("--key-file", default=os.environ.get("DNIRECON_CLIENT_KEY_FILE"), help="client key (mutual TLS)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")


def register_client(subparsers) -> None:
    p = subparsers.add_parser("client", help="scanner-side client of the reconstruction service")
    sub = p.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    r = sub.add_parser("reconstruct", help="stream every slice of a fastMRI-layout HDF5 file")
    r.add_argument("file", type=Path, help="FILE.h5")
    _add_connection(r)
    r.add_argument("--alpha", type=float, default=None, help="interpolation coefficient in [0, 1]")
    r.add_argument("--accel", type=int, default=4, choices=(4, 8), help="retrospective acceleration (fully sampled files)")
    r.add_argument("--model", default="", help="model name or alias the server must be serving")
    r.add_argument("--out", type=Path, default=Path("recon"), help="output folder (HDF5 and PNGs)")
    r.set_defaults(func=_reconstruct)
    i = sub.add_parser("info", help="served models, alphas and the providers really in use")
    _add_connection(i)
    i.set_defaults(func=_info)


def _client(args):
    from service.client import ReconClient

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return ReconClient(args.server, token=token, root_cert=args.ca_file, client_cert=args.cert_file, client_key=args.key_file)


def _reconstruct(args) -> int:
    from service.client import reconstruct_file, write_outputs

    with _client(args) as client:
        result = reconstruct_file(client, args.file, accel=args.accel, alpha=args.alpha, model=args.model,
                                  timeout=args.timeout, progress=True)
    h5, pngs = write_outputs(result, args.file, args.out)
    print(f"{h5} ({len(pngs)} PNGs in {pngs[0].parent if pngs else args.out}); model {result.model}, alpha {result.alpha}, "
          f"{result.bytes_sent} k-space bytes sent")
    for index, reason in sorted(result.errors.items()):
        print(f"slice {index}: {reason}", file=sys.stderr)
    return 1 if result.errors else 0


def _info(args) -> int:
    with _client(args) as client:
        info = client.server_info()
        models = client.list_models()
        health = client.health()
    print(f"health: {health}")
    print(f"providers in use: {', '.join(info.providers)} (requested {', '.join(info.requested_providers)})"
          + ("  WARNING: fallback, a requested provider is not in use" if info.provider_fallback else ""))
    print(f"onnxruntime {info.onnxruntime_version}, max batch {info.max_batch}, max queue {info.max_queue}")
    for m in models.models:
        print(f"model {m.name} version {m.version} ({m.uri}): alphas {[round(a, 4) for a in m.alphas]}"
              + (", continuous" if m.continuous else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m service.cli serve|client ...`: the service's commands without the other areas' CLIs."""
    import logging

    from dnirecon.errors import DniReconError

    parser = argparse.ArgumentParser(prog="dnirecon-service")
    sub = parser.add_subparsers(dest="command", required=True)
    register_serve(sub)
    register_client(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DniReconError as exc:
        print(f"dnirecon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
