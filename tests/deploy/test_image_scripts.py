"""The image build and check scripts, read statically: `make test` needs no podman and builds no image."""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest

from deploy_helpers import DEPLOY, DOCKER, REPO, tool

IMAGES = DEPLOY / "images"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, IMAGES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pip_settings = load("pip_settings")

HOST_CONFIG = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.cache-dir='/root/.cache/pip'
install.index-url='https://mirror.example/simple'
:env:.index-url='https://proxy.example/simple'
:env:.default-timeout='180'
"""


def test_pip_settings_keep_the_package_sources_with_environment_winning():
    settings = pip_settings.parse_config_list(HOST_CONFIG)
    assert settings["index-url"] == "https://proxy.example/simple"  # PIP_INDEX_URL over the files
    assert settings["extra-index-url"] == "file:///opt/pypi/simple file:///opt/pypi-more/simple"
    assert settings["default-timeout"] == "180"
    assert "cache-dir" not in settings  # where pip caches is not where packages come from


def test_pip_settings_point_cert_at_the_build_secret(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    out, bundle = pip_settings.container_settings({"cert": str(ca), "index-url": "https://m.example/simple"})
    assert bundle == str(ca)
    assert out["cert"] == "/run/secrets/ca-bundle"
    assert pip_settings.render(out).splitlines() == ["[global]", "index-url = https://m.example/simple",
                                                      "cert = /run/secrets/ca-bundle"]


def test_pip_settings_refuse_a_cert_that_is_not_a_file(tmp_path):
    with pytest.raises(SystemExit, match=r"cert = .*missing\.pem.*not a readable file"):
        pip_settings.container_settings({"cert": str(tmp_path / "missing.pem")})


def test_pip_settings_mount_local_indexes_with_their_files(tmp_path):
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "constraints.txt").write_text("torch<=2.14.1\n")
    settings = {"extra-index-url": f"file://{tmp_path}/pypi/simple https://pypi.org/simple",
                "find-links": f"{tmp_path}/wheels {tmp_path}/absent", "constraint": f"{tmp_path}/constraints.txt"}
    # the index's parent: a PEP 503 simple/ tree links to ../../files/
    assert pip_settings.local_paths(settings) == [f"{tmp_path}/pypi", f"{tmp_path}/wheels", f"{tmp_path}/constraints.txt"]


def test_pip_settings_cli_writes_pip_conf_and_lists_secret_and_mounts(tmp_path):
    (tmp_path / "wheels").mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"global.cert='{ca}'\nglobal.find-links='{tmp_path}/wheels'\n")
    proc = subprocess.run(["python3", str(IMAGES / "pip_settings.py"), "--out", str(tmp_path / "pip.conf"),
                           "--from-file", str(listing)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"ca-bundle {ca}", f"mount {tmp_path}/wheels"]
    assert (tmp_path / "pip.conf").read_text() == f"[global]\nfind-links = {tmp_path}/wheels\ncert = /run/secrets/ca-bundle\n"


@pytest.mark.parametrize("script", ["build.sh", "check.sh", "common.sh"])
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(IMAGES / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_build_sets_each_dockerfiles_base_argument():
    build = (IMAGES / "build.sh").read_text()
    calls = dict(re.findall(r"^\s+(\w+)\) build \1 \"\$\w+\" (\w+) ", build, re.M))
    assert set(calls) == {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")}
    for name, arg in calls.items():
        assert re.search(rf"^ARG {arg}=\S+:\S+$", (DOCKER / f"{name}.Dockerfile").read_text(), re.M), (name, arg)
    # the allowlist of each image is its build context filter, and the revision label is set
    assert '--ignorefile "$dockerfile.dockerignore"' in build and '"GIT_REVISION=$REVISION"' in build


def test_check_removes_its_containers_on_exit():
    check = (IMAGES / "check.sh").read_text()
    assert "trap cleanup EXIT" in check
    cleanup = check.split("cleanup() {", 1)[1].split("\n}", 1)[0]
    assert "rm --force" in cleanup and "volume rm" in cleanup
    # every container it starts is recorded for cleanup before it starts
    starts = re.findall(r"^\s*podman_ run -d --name \"([^\"]+)\"", check, re.M)
    assert starts and all(f'containers+=("{name}")' in check for name in starts)


def test_check_runs_the_service_read_only_with_only_its_cache_writable():
    check = (IMAGES / "check.sh").read_text()
    run = check.split("run_service() {", 1)[1].split("\n}", 1)[0]
    assert "--read-only --read-only-tmpfs=false" in run and ":/var/cache/dnirecon" in run
    assert "--user" not in run  # the image's own USER
    assert re.search(r'\[ "\$\{figures\[\$label\.uid\]\}" = 10001 \]', check)


def test_make_test_does_not_build_images():
    makefile = (REPO / "Makefile").read_text()
    targets = dict(re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)*)", makefile, re.M))
    assert "deploy/images/build.sh" in targets["images"] and "deploy/images/check.sh" in targets["image-check"]
    assert "images" not in targets["test"] and "podman" not in targets["test"]


def test_shellcheck_passes_on_the_image_scripts():
    scripts = sorted(str(p) for p in IMAGES.glob("*.sh"))
    proc = subprocess.run([tool("shellcheck"), "-x", *scripts], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_catches_an_unquoted_expansion(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    proc = subprocess.run([tool("shellcheck"), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SC2086" in proc.stdout
