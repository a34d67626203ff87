"""Acceptance 1: every kustomization renders and every object passes Kubernetes 1.30 strict schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from deploy_helpers import K8S, is_component, kustomizations, pod_templates

K8S_VERSION = "1.30"
# Custom resources have no schema in kubernetes-validate; their pod templates are validated as core
# PodTemplates below instead.
CRD_KINDS = {("kubeflow.org/v1", "PyTorchJob")}
EXPECTED = {"namespace", "service/base", "service/overlays/gpu", "service/overlays/cpu",
            "service/overlays/gpu-tls", "mlflow", "training/base", "training/job", "training/pytorchjob"}


def strict_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}"]
    return []


def test_every_kustomization_is_rendered():
    found = set(kustomizations())
    components = {n for n, d in kustomizations().items() if is_component(d)}
    assert found - components == EXPECTED
    # A component is only exercised through an overlay that includes it.
    used = set()
    for name in found - components:
        k = yaml.safe_load((K8S / name / "kustomization.yaml").read_text())
        used |= {str((K8S / name / c).resolve().relative_to(K8S)) for c in k.get("components", [])}
    assert components <= used


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_objects_validate_strictly_against_1_30(rendered, name):
    objs = rendered[name]
    assert objs, f"{name} rendered nothing"
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            for i, template in enumerate(pod_templates(obj)):
                as_core = {"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": f"{obj['metadata']['name']}-{i}"}, "template": template}
                errors += strict_errors(as_core)
            continue
        errors += strict_errors(obj)
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_unknown_fields(rendered):
    deployment = next(o for o in rendered["service/overlays/gpu"] if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert strict_errors(broken)


def test_only_known_custom_resources(rendered):
    core_prefixes = ("v1", "apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/")
    custom = {(o["apiVersion"], o["kind"]) for objs in rendered.values() for o in objs
              if not o["apiVersion"].startswith(core_prefixes)}
    assert custom <= CRD_KINDS


def test_every_object_is_namespaced_to_dnirecon(rendered):
    for name, objs in rendered.items():
        if name == "service/base":
            continue  # overlays set the namespace
        for o in objs:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == "dnirecon", f"{name}: {o['kind']}/{o['metadata']['name']}"
