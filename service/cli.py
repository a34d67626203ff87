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
    p.add_argument("--server", default=os.environ.get("DNIRECON_SERVER", "localhost:50051"),
                   help="HOST:PORT [env DNIRECON_SERVER, default localhost:50051]")
    p.add_argument("--token-file", default=os.environ.get("DNIRECON_CLIENT_TOKEN_FILE"),
                   help="bearer token file [env DNIRECON_CLIENT_TOKEN_FILE]")
    p.add_argument("--ca-file", default=os.environ.get("DNIRECON_CLIENT_CA_FILE"),
                   help="CA of the server (enables TLS) [env DNIRECON_CLIENT_CA_FILE]")
    p.add_argument("--cert-file", default=os.environ.get("DNIRECON_CLIENT_CERT_FILE"),
                   help="client certificate (mutual TLS, needs --ca-file) [env DNIRECON_CLIENT_CERT_FILE]")
    p.add_argument("--key-file", default=os.environ.get("DNIRECON_CLIENT_KEY_FILE"),
                   help="client key (mutual TLS, needs --ca-file) [env DNIRECON_CLIENT_KEY_FILE]")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds of each call (default: none)")
    p.add_argument("--keepalive-seconds", type=float, default=os.environ.get("DNIRECON_CLIENT_KEEPALIVE_SECONDS", "30"),
                   help="ping the server after this long without traffic; no answer in 10 s fails the call "
                        "UNAVAILABLE (0: no pings; the server must allow it: serve --min-client-ping-seconds) "
                        "[env DNIRECON_CLIENT_KEEPALIVE_SECONDS, default 30]")


def register_client(subparsers) -> None:
    p = subparsers.add_parser("client", help="scanner-side client of the reconstruction service")
    sub = p.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    r = sub.add_parser("reconstruct", help="stream every slice of a fastMRI-layout HDF5 file")
    r.add_argument("file", type=Path, help="FILE.h5")
    _add_connection(r)
    r.add_argument("--alpha", type=float, default=None, help="interpolation coefficient in [0, 1]")
    r.add_argument("--accel", type=int, default=None, choices=(4, 8),
                   help="undersample a fully sampled file to this acceleration (default 4); on a file that is already "
                        "undersampled an error, unless --re-undersample")
    r.add_argument("--re-undersample", action="store_true",
                   help="with --accel on an already undersampled file: send only its acquired columns that the "
                        "--accel mask also holds")
    r.add_argument("--model", default="", help="model name or alias the server must be serving")
    r.add_argument("--out", type=Path, default=Path("recon"), help="output folder (HDF5 and PNGs)")
    r.add_argument("--resumes", type=int, default=2,
                   help="a stream ended UNAVAILABLE (server drained, connection lost) is resumed this often with "
                        "the slices not yet answered, on the same model version (default 2; 0: never)")
    r.set_defaults(func=_reconstruct)
    i = sub.add_parser("info", help="served models, alphas and the providers really in use")
    _add_connection(i)
    i.set_defaults(func=_info)
    from service.mrd_cli import register as register_mrd

    register_mrd(sub)


_CONNECTION_FILES = (("token_file", "--token-file", "DNIRECON_CLIENT_TOKEN_FILE"), ("ca_file", "--ca-file", "DNIRECON_CLIENT_CA_FILE"),
                     ("cert_file", "--cert-file", "DNIRECON_CLIENT_CERT_FILE"), ("key_file", "--key-file", "DNIRECON_CLIENT_KEY_FILE"))


def _client(args):
    """The ReconClient of the connection flags; a file that cannot be read is a ConfigError naming it."""
    from dnirecon.errors import ConfigError
    from service.client import ReconClient

    data = {}
    for name, flag, env in _CONNECTION_FILES:
        path = getattr(args, name)
        if path:
            try:
                data[name] = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{flag} / {env} {path}: cannot read ({exc.strerror})") from None
    token = None
    if "token_file" in data:
        from service.config import parse_bearer_token

        token = parse_bearer_token(data["token_file"], f"--token-file / DNIRECON_CLIENT_TOKEN_FILE {args.token_file}")
    return ReconClient(args.server, token=token, root_cert=data.get("ca_file"), client_cert=data.get("cert_file"),
                       client_key=data.get("key_file"), keepalive_s=args.keepalive_seconds)


def _rpc_errors(handler):
    """A failed RPC prints 'dnirecon client: error: CODE: details' and exits 1, without a traceback."""
    import functools

    @functools.wraps(handler)
    def run(args) -> int:
        import grpc

        try:
            return handler(args)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            print(f"dnirecon client: error: {code.name if code else 'UNKNOWN'}: {details}", file=sys.stderr)
            return 1

    return run


@_rpc_errors
def _reconstruct(args) -> int:
    from service.client import reconstruct_file, write_outputs

    with _client(args) as client:
        result = reconstruct_file(client, args.file, accel=args.accel, alpha=args.alpha, model=args.model,
                                  timeout=args.timeout, progress=True, resumes=args.resumes,
                                  re_undersample=args.re_undersample, on_plan=lambda plan: print(plan.text, flush=True))
    h5, pngs = write_outputs(result, args.file, args.out)
    print(f"{h5} ({len(pngs)} PNGs in {pngs[0].parent if pngs else args.out}); model {result.model}, alpha {result.alpha}, "
          f"{result.bytes_sent} k-space bytes sent")
    for index, reason in sorted(result.errors.items()):
        print(f"slice {index}: {reason}", file=sys.stderr)
    return 1 if result.errors else 0


@_rpc_errors
def _info(args) -> int:
    with _client(args) as client:
        info = client.server_info(timeout=args.timeout)
        models = client.list_models(timeout=args.timeout)
        health = client.health(timeout=args.timeout)
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
