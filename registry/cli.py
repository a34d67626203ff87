"""`dnirecon registry bake|list|describe|promote|rollback`: a thin layer over registry.bake and registry.store.

Nothing heavy at import: handlers import torch (bake) or mlflow (the rest) when they run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dnirecon.argtypes import positive_float, positive_int, unit_interval


def register(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("registry", help="bake interpSN to ONNX and manage it in the MLflow registry")
    rsub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    b = rsub.add_parser("bake", help="interpolate SN and SN-GAN at alphas, export to ONNX, check, register")
    b.add_argument("--sn", default="sn@champion", help="SN as NAME@ALIAS or NAME/VERSION (default sn@champion)")
    b.add_argument("--gan", default="sn-gan@champion", help="SN-GAN as NAME@ALIAS or NAME/VERSION "
                   "(default sn-gan@champion)")
    b.add_argument("--alphas", type=unit_interval, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="interpolation coefficients in [0, 1] (default 0 0.25 0.5 0.75 1)")
    b.add_argument("--continuous", action="store_true", help="also bake the continuous model (alpha as input)")
    b.add_argument("--data", type=Path, required=True, help="directory of held-out fastMRI-layout volumes")
    b.add_argument("--slices", type=positive_int, default=2, help="central slices per volume (default 2)")
    b.add_argument("--accel", type=positive_float, nargs="+", default=[4.0, 8.0], help="accelerations (default 4 8)")
    b.add_argument("--out", type=Path, default=None, help="keep the baked set here (new or empty directory)")
    b.add_argument("--no-register", action="store_true", help="bake and check only; do not register")
    b.add_argument("--plot", type=Path, default=None, help="also write the PSNR vs HF-ratio figure (PNG)")
    b.add_argument("--model", default="interpsn", help="registered model name (default interpsn)")
    b.add_argument("--threads", type=positive_int, default=None, help="torch/onnxruntime threads")
    b.set_defaults(func=_bake)

    ls = rsub.add_parser("list", help="registered models, versions, aliases and key tags")
    ls.add_argument("--model", default=None, help="only this registered model")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.set_defaults(func=_list)

    d = rsub.add_parser("describe", help="one version: source, aliases, tags, alias history")
    d.add_argument("name", help="registered model name, e.g. interpsn")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--version", help="version number (default: the newest)")
    g.add_argument("--alias", help="alias, e.g. production")
    d.set_defaults(func=_describe)

    p = rsub.add_parser("promote", help="point an alias at a version that passes the gates")
    p.add_argument("--alias", required=True, help="alias to move, e.g. production or staging ('latest' and "
                   "'v<number>' are reserved by MLflow)")
    p.add_argument("--version", required=True, help="version to promote")
    p.add_argument("--model", default="interpsn", help="registered model name (default interpsn)")
    p.add_argument("--force", action="store_true", help="promote despite failed gates (needs --reason)")
    p.add_argument("--reason", default=None, help="why; recorded on the version and in the alias history "
                   "(stored up to 1000 characters, longer text is cut)")
    p.set_defaults(func=_promote)

    r = rsub.add_parser("rollback", help="point an alias back at the version it held before")
    r.add_argument("--alias", required=True, help="alias to roll back, e.g. production")
    r.add_argument("--model", default="interpsn", help="registered model name (default interpsn)")
    r.add_argument("--reason", default=None, help="why; recorded on the restored version (stored up to "
                   "1000 characters)")
    r.set_defaults(func=_rollback)


def _bake(args) -> int:
    from registry.bake import bake
    from training.report import manifest_points, tradeoff_claims

    result = bake(args.sn, args.gan, args.alphas, args.data, slices=args.slices, accels=args.accel,
                  continuous=args.continuous, out_dir=args.out, register=not args.no_register,
                  name=args.model, threads=args.threads)
    for e in result.manifest["alphas"]:
        m = e["metrics"]
        print(f"alpha {e['alpha']:.2f}  parity {e['parity_max_err']:.2e}  PSNR {m['psnr']:.2f}  "
              f"SSIM {m['ssim']:.4f}  NMSE {m['nmse']:.4f}  HFEN {m['hfen']:.3f}  HF ratio {m['hf_ratio']:.3f}")
    if "continuous" in result.manifest:
        print(f"continuous: max error vs baked {result.manifest['continuous']['max_err_vs_baked']:.2e}")
    points = manifest_points(result.manifest)
    sn_psnr = next((p["psnr"] for p in points if p["alpha"] == 0.0), None)  # alpha 0 is SN
    accels = " and ".join(f"{a:g}x" for a in result.manifest["held_out"]["accels"])
    for claim in tradeoff_claims(points, sn_psnr, accels):
        print(f"{claim.status}  {claim.claim}: {claim.detail}")
    if args.plot:
        from training.report_figures import perception_distortion

        print(f"figure: {perception_distortion(points, args.plot, 'interpSN: distortion vs perception over alpha')}")
    where = f"registered {args.model} version {result.version}" if result.version else "not registered"
    print(f"baked set in {result.directory}; {where}")
    return 0


def _list(args) -> int:
    from registry.store import format_table, get_client, list_versions

    client = get_client()
    rows = list_versions(client, args.model)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:  # say where we looked: an empty list is most often the wrong working directory
        print(f"(no registered models in {client.tracking_uri}; set MLFLOW_TRACKING_URI or run from the "
              "directory holding mlflow.db)")
    else:
        print(format_table(rows))
    return 0


def _describe(args) -> int:
    from registry.store import describe, get_client

    print(json.dumps(describe(get_client(), args.name, args.version, args.alias), indent=2))
    return 0


def _promote(args) -> int:
    from registry.store import get_client, promote

    res = promote(get_client(), args.alias, args.version, name=args.model, force=args.force, reason=args.reason)
    was = f"(was version {res.previous_version})" if res.previous_version else "(first holder)"
    print(f"{res.name}@{res.alias} -> version {res.version} {was}; reason: {res.reason}")
    return 0


def _rollback(args) -> int:
    from registry.store import get_client, rollback

    res = rollback(get_client(), args.alias, name=args.model, reason=args.reason)
    print(f"{res.name}@{res.alias} -> version {res.version} (rolled back from version {res.previous_version})")
    return 0
