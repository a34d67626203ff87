"""Every pod meets the restricted Pod Security Standard; no secret value sits in a ConfigMap or env."""

from __future__ import annotations

import re

from deploy_helpers import pod_templates

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY)", re.I)
URI_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.I)


def looks_secret(key: str, value: str) -> bool:
    """A credential by its name (unless the value is a file path) or by its shape."""
    value = str(value)
    if "-----BEGIN" in value or URI_WITH_PASSWORD.search(value) or re.fullmatch(r"AKIA[0-9A-Z]{16}", value):
        return True
    return bool(SECRET_NAME.search(key)) and not value.startswith("/")


def test_secret_detector_flags_credentials_and_passes_paths():
    assert looks_secret("MLFLOW_TRACKING_PASSWORD", "hunter2")
    assert looks_secret("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:hunter2@db:5432/mlflow")
    assert looks_secret("ca", "-----BEGIN CERTIFICATE-----")
    assert not looks_secret("DNIRECON_AUTH_TOKEN_FILE", "/var/run/secrets/dnirecon/token/token")
    assert not looks_secret("MLFLOW_TRACKING_URI", "http://mlflow.dnirecon.svc.cluster.local:5000")


def all_objects(rendered):
    for name, objs in rendered.items():
        for obj in objs:
            yield name, obj


def test_no_secret_values_in_configmaps(rendered):
    leaks = [f"{name}: ConfigMap/{o['metadata']['name']}.{k}" for name, o in all_objects(rendered)
             if o["kind"] == "ConfigMap" for k, v in (o.get("data") or {}).items() if looks_secret(k, v)]
    assert not leaks


def test_no_secret_objects_or_literal_credentials_in_manifests(rendered):
    # Secrets are created out of band (docs/deploy.md); manifests only reference them.
    assert not [n for n, o in all_objects(rendered) if o["kind"] == "Secret"]
    leaks = []
    for name, obj in all_objects(rendered):
        for template in pod_templates(obj):
            for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
                for item in c.get("env", []):
                    if "value" in item and looks_secret(item["name"], item["value"]):
                        leaks.append(f"{name}: {obj['kind']}/{obj['metadata']['name']} {c['name']}.{item['name']}")
    assert not leaks


def test_credentials_come_from_secret_key_refs(rendered):
    for name, obj in all_objects(rendered):
        for template in pod_templates(obj):
            for c in template["spec"]["containers"]:
                for item in c.get("env", []):
                    if SECRET_NAME.search(item["name"]) and "value" not in item:
                        assert "secretKeyRef" in item["valueFrom"], f"{name}: {c['name']}.{item['name']}"


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    checked = 0
    for name, obj in all_objects(rendered):
        for template in pod_templates(obj):
            spec = template["spec"]
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"].get("runAsUser", 1) != 0, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            assert spec.get("automountServiceAccountToken") is False, where
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, f"{where} {c['name']}"
                assert sc["capabilities"]["drop"] == ["ALL"], f"{where} {c['name']}"
                assert sc.get("readOnlyRootFilesystem") is True, f"{where} {c['name']}"
                assert not sc.get("privileged"), f"{where} {c['name']}"
                assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], f"{where} {c['name']}"
                checked += 1
    assert checked >= 8


def test_images_are_pinned(rendered):
    for name, obj in all_objects(rendered):
        for template in pod_templates(obj):
            for c in template["spec"]["containers"]:
                image = c["image"]
                tag = image.rsplit("/", 1)[-1].partition(":")[2]
                assert tag and tag != "latest", f"{name}: {c['name']} image {image} is not pinned"


def test_namespace_enforces_the_restricted_profile(rendered):
    ns = rendered["namespace"][0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
