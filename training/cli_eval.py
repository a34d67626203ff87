"""`dnirecon eval baselines|model`: Table-1-style metrics per contrast and acceleration."""

from __future__ import annotations

import argparse
from pathlib import Path

from dnirecon.argtypes import non_negative_float, positive_float, positive_int
from dnirecon.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="directory of fastMRI-layout .h5 volumes")
    p.add_argument("--accel", type=positive_float, nargs="+", default=[4.0, 8.0],
                   help="acceleration factors (default: 4 8)")
    p.add_argument("--mask", choices=["random", "equispaced"], default="random",
                   help="Cartesian mask type, fastMRI semantics (default: random)")
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="directory for the table (markdown, CSV, JSON); default: results/")
    p.add_argument("--limit-volumes", type=positive_int, default=None, help="evaluate the first N volumes only")
    p.add_argument("--cg-lambda", type=non_negative_float, default=None,
                   help="Tikhonov weight of CG-SENSE (a finite number >= 0)")
    p.add_argument("--cg-iters", type=positive_int, default=None, help="conjugate-gradient iterations of CG-SENSE")
    p.add_argument("--cs-lambda", type=non_negative_float, default=None,
                   help="l1-wavelet weight of CS, relative to the zero-filled SENSE image's peak (a finite number >= 0)")
    p.add_argument("--cs-iters", type=positive_int, default=None, help="FISTA iterations of CS")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate baselines and trained models (Table-1 metrics)")
    evsub = ev.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    b = evsub.add_parser("baselines", help="zero-filled RSS, CG-SENSE and CS (l1-wavelet) on a dataset")
    _common(b)
    b.set_defaults(func=_run_baselines)

    m = evsub.add_parser("model", help="a trained model (MLflow version or local checkpoint) next to the baselines")
    _common(m)
    m.add_argument("--model", choices=["sn", "sn-gan", "unet"], default=None, help="registered model name")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--version", help="registered model version")
    src.add_argument("--alias", help="registered model alias (e.g. champion)")
    src.add_argument("--checkpoint", type=Path, help="local checkpoint file instead of MLflow")
    m.add_argument("--no-baselines", action="store_true", help="skip the baseline rows")
    m.set_defaults(func=_run_model)


def _run_baselines(args: argparse.Namespace) -> int:
    from training.evaluate import eval_baselines_command

    return eval_baselines_command(args)


def _run_model(args: argparse.Namespace) -> int:
    if args.checkpoint is None and args.model is None:
        raise ConfigError("eval model needs --model NAME (with --version or --alias) or --checkpoint PATH")
    from training.evaluate import eval_model_command

    return eval_model_command(args)
