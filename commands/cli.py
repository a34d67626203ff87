"""The `dnirecon` console script: a thin layer over library functions.

Each area registers its own subcommands; registration imports no torch, so `dnirecon client ...`
and `dnirecon serve ...` start without it. Handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dnirecon.errors import DniReconError, Interrupted

# (subcommand, module, function that adds the subcommand's parser to the subparsers)
_COMMANDS = [
    ("data", "training.cli_data", "register"),
    ("train", "training.cli_train", "register"),
    ("eval", "training.cli_eval", "register"),
    ("registry", "registry.cli", "register"),
    ("serve", "service.cli", "register_serve"),
    ("client", "service.cli", "register_client"),
    ("demo", "commands.demo", "register"),
    ("bench", "commands.bench", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnirecon",
        description="Deep network interpolation MRI reconstruction: data, training, registry, serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, func in _COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # an area not installed in this image (e.g. training in the service image)
            if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
                continue
            raise
        getattr(mod, func)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except DniReconError as exc:
        print(f"dnirecon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # stopped cleanly on a signal, with what it had done saved
        print(f"dnirecon {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
