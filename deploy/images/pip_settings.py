"""The package-index settings of pip on this host, as a pip.conf for image builds.

Reads `pip config list` (files and PIP_* variables) and writes the settings that choose where packages
come from (index, mirrors, local wheels, constraints, CA bundle) into one [global] section. The CA
bundle becomes the build secret `ca-bundle` (mounted at /run/secrets/ca-bundle in RUN steps), and
every local path the settings name is printed, so that the build can mount it read-only at the same
path. Prints lines `ca-bundle PATH` and `mount PATH`. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

SECRET_CA = "/run/secrets/ca-bundle"
# Settings that say where packages come from; everything else (caches, verbosity, user installs) stays out.
KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "constraint", "cert", "no-index",
        "default-timeout", "timeout", "retries")
PATH_KEYS = ("index-url", "extra-index-url", "find-links", "constraint")
# pip's own precedence: later scopes override earlier ones, PIP_* variables override every file.
SCOPES = ("global", "install", ":env:")
LINE = re.compile(r"^(?P<scope>[^.]+|:env:)\.(?P<key>[a-z0-9-]+)=(?P<value>.*)$")


def parse_config_list(text: str) -> dict[str, str]:
    """{key: value} of the KEYS in `pip config list` output, the highest-precedence scope winning."""
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if not m or m["key"] not in KEYS or m["scope"] not in SCOPES:
            continue
        value = m["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found.setdefault(m["key"], {})[m["scope"]] = value
    return {key: next(by[s] for s in reversed(SCOPES) if s in by) for key, by in found.items()}


def local_paths(settings: dict[str, str]) -> list[str]:
    """Existing local files and directories the settings name (absolute paths and file:// URLs). A local
    index is mounted with its parent: a PEP 503 `simple/` tree links to files beside it (`../../files/`)."""
    paths = []
    for key in PATH_KEYS:
        for item in settings.get(key, "").split():
            path = unquote(urlparse(item).path) if item.startswith("file:") else item
            if key.endswith("index-url"):
                path = str(Path(path.rstrip("/")).parent)
            if path.startswith("/") and path != "/" and Path(path).exists() and path not in paths:
                paths.append(path)
    return paths


def container_settings(settings: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """(settings for pip.conf, the host CA bundle to pass as a secret or None)."""
    out = dict(settings)
    ca = out.pop("cert", None)
    if ca:
        if not Path(ca).is_file():
            raise SystemExit(f"pip_settings: cert = {ca} (pip config) is not a readable file; fix pip's config "
                             f"or pass CA_BUNDLE=PEM to the build")
        out["cert"] = SECRET_CA
    return out, ca


def render(settings: dict[str, str]) -> str:
    lines = ["[global]"] + [f"{key} = {settings[key]}" for key in KEYS if key in settings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pip.conf to write")
    p.add_argument("--pip", default=f"{shlex.quote(sys.executable)} -m pip",
                   help="pip command whose configuration is read (default: this Python's)")
    p.add_argument("--from-file", type=Path, help="read `pip config list` output from this file instead")
    args = p.parse_args(argv)
    if args.from_file:
        text = args.from_file.read_text()
    else:
        proc = subprocess.run(shlex.split(args.pip) + ["config", "list"], capture_output=True, text=True)
        text = proc.stdout if proc.returncode == 0 else ""
    settings, ca = container_settings(parse_config_list(text))
    args.out.write_text(render(settings))
    if ca:
        print(f"ca-bundle {ca}")
    for path in local_paths(settings):
        print(f"mount {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
