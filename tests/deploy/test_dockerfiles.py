"""Acceptance 3 and 4: the images install the right requirement sets, and hadolint passes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deploy_helpers import DOCKER, REPO, tool

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SECRET_WORD = re.compile(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in logical]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def run_mounts(args: str) -> tuple[list[str], str]:
    """(the --mount=... flags, the command) of a RUN instruction's arguments."""
    words = args.split()
    flags = [w for w in words if w.startswith("--mount=")]
    while words and words[0].startswith("--"):
        words.pop(0)
    return flags, " ".join(words)


def pip_installs(path: Path, venv: str) -> list[list[str]]:
    """Argument lists of every `<venv>/bin/pip install` in RUN instructions."""
    found = []
    for kind, args in instructions(path):
        if kind != "RUN":
            continue
        for command in re.split(r"&&|;", run_mounts(args)[1]):
            words = command.split()
            if words[:2] == [f"{venv}/bin/pip", "install"]:
                found.append([w for w in words[2:] if w != "--no-cache-dir"])
    return found


def requirement_names(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Distribution names in a requirements file, following -r includes."""
    seen = seen or set()
    seen.add(path)
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            include = (path.parent / line.split(None, 1)[1]).resolve()
            if include not in seen:
                names |= requirement_names(include, seen)
            continue
        names.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_run_mount_flags_are_split_from_the_command():
    flags, command = run_mounts("--mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle "
                                "python3 -m venv /opt/venv && /opt/venv/bin/pip install -r r.txt")
    assert flags == ["--mount=type=secret,id=pip.conf,target=/etc/pip.conf", "--mount=type=secret,id=ca-bundle"]
    assert command.startswith("python3 -m venv /opt/venv &&")


def test_requirement_parser_follows_includes():
    train = requirement_names(REPO / "requirements" / "train.txt")
    assert {"torch", "onnxruntime-gpu", "grpcio"} <= train


def test_service_image_installs_exactly_the_service_requirements_and_the_package():
    dockerfile = DOCKER / "service.Dockerfile"
    installs = pip_installs(dockerfile, "/opt/venv")
    assert sorted(installs) == sorted([["-r", "requirements/service.txt"], ["--no-deps", "/wheels/dnirecon-*.whl"]])
    # Only the runtime venv reaches the final stage; the build venv holds setuptools alone.
    final = stages(dockerfile)[-1]
    copies = [args for kind, args in final if kind == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert pip_installs(dockerfile, "/opt/build") == [["setuptools==84.2.1"]]


def test_service_runtime_venv_loses_pip_and_setuptools():
    commands = [c.strip() for kind, args in instructions(DOCKER / "service.Dockerfile") if kind == "RUN"
                for c in run_mounts(args)[1].split("&&")]
    uninstall = [c for c in commands if c.startswith("/opt/venv/bin/python -m pip uninstall")]
    assert uninstall and {"pip", "setuptools", "--yes"} <= set(uninstall[0].split())
    # after the last install into the runtime venv
    last_install = max(i for i, c in enumerate(commands) if c.startswith("/opt/venv/bin/pip install"))
    assert commands.index(uninstall[0]) > last_install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_sees_the_index_settings_as_build_secrets(dockerfile):
    """A mirror's pip.conf and a proxy's CA bundle reach every step that downloads, and no layer."""
    for kind, args in instructions(dockerfile):
        flags, command = run_mounts(args) if kind == "RUN" else ([], "")
        downloads = [c for c in re.split(r"&&|;", command) if "bin/pip install" in c and "--no-deps /wheels/" not in c]
        if downloads:
            assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in flags, args
            assert "--mount=type=secret,id=ca-bundle" in flags, args
        if kind in ("COPY", "ADD", "ENV", "ARG"):
            assert "pip.conf" not in args and "ca-bundle" not in args and "PIP_CERT" not in args, args


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_stage_builds_on_the_base_image_argument(dockerfile):
    declared = [a.split("=", 1)[0] for k, a in instructions(dockerfile) if k == "ARG" and "_IMAGE=" in a]
    assert len(declared) == 1, declared
    froms = [a.split()[0] for k, a in instructions(dockerfile) if k == "FROM"]
    assert froms and all(f == "${%s}" % declared[0] for f in froms), froms


def test_service_requirements_have_no_torch_or_training_stack():
    names = requirement_names(REPO / "requirements" / "service.txt")
    assert "onnxruntime-gpu" in names
    assert not names & {"torch", "torchvision", "onnx", "onnxscript", "mlflow", "fastmri"}, names


def test_service_image_copies_no_training_code():
    dockerfile = DOCKER / "service.Dockerfile"
    sources = {args.split()[0] for kind, args in instructions(dockerfile)
               if kind == "COPY" and not args.startswith("--from")}
    assert sources == {"requirements/service.txt", "pyproject.toml", "dnirecon/", "commands/", "service/", "protos/"}
    ignore = (DOCKER / "service.Dockerfile.dockerignore").read_text()
    assert "!training/" not in ignore and "!registry/" not in ignore


def test_training_image_installs_the_training_requirements():
    assert ["-r", "requirements/train.txt"] in pip_installs(DOCKER / "train.Dockerfile", "/opt/venv")
    assert "torch" in requirement_names(REPO / "requirements" / "train.txt")


def test_mlflow_image_pins_the_server_and_its_drivers():
    reqs = (DOCKER / "mlflow-requirements.txt").read_text()
    assert re.search(r"^mlflow\[auth\]==3\.17\.2$", reqs, re.M)
    for name in ("psycopg2-binary", "boto3"):
        assert re.search(rf"^{name}==[0-9.]+$", reqs, re.M), name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_labelled_non_root_and_free_of_secrets(dockerfile):
    final = stages(dockerfile)[-1]
    kinds = [k for k, _ in final]
    assert "ARG" in kinds and any(k == "ARG" and a.startswith("GIT_REVISION") for k, a in final)
    labels = " ".join(a for k, a in final if k == "LABEL")
    assert 'org.opencontainers.image.revision="${GIT_REVISION}"' in labels
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    for kind, args in instructions(dockerfile):
        if kind in ("ENV", "ARG"):
            assert not SECRET_WORD.search(args), f"{dockerfile.name}: {kind} {args}"
        if kind == "FROM":
            image = args.split()[0]
            assert image.startswith("${") or (":" in image and not image.endswith(":latest")), image
    for kind, args in instructions(dockerfile):
        if kind == "ARG" and "_IMAGE=" in args:  # base images chosen by build arg: pinned defaults
            default = args.split("=", 1)[1]
            assert ":" in default and not default.endswith(":latest"), args


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_is_an_allowlist(dockerfile):
    lines = [l.strip() for l in (DOCKER / f"{dockerfile.name}.dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "exclude everything, then allow what the image needs"
    allowed = [l[1:].rstrip("/") for l in lines if l.startswith("!")]
    for kind, args in instructions(dockerfile):
        if kind == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nUSER root\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
