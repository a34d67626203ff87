"""The MRD port in the service manifests: the setting, the container port, the Service and the policy agree."""

from __future__ import annotations

import pytest

from deploy_helpers import configmap_env, only

SERVICE_OVERLAYS = ["service/overlays/gpu", "service/overlays/cpu", "service/overlays/gpu-tls"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_the_mrd_port_setting_container_port_service_and_policy_agree(rendered, overlay):
    objs = rendered[overlay]
    c = only(objs, "Deployment", "dnirecon-service")["spec"]["template"]["spec"]["containers"][0]
    served = int(configmap_env(objs, c)["DNIRECON_MRD_PORT"])
    assert served == 9002  # the MRD convention scanners are configured with
    assert {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}["mrd"] == (served, "TCP")
    svc = {p["name"]: p for p in only(objs, "Service", "dnirecon")["spec"]["ports"]}["mrd"]
    assert (svc["port"], svc["targetPort"], svc["protocol"]) == (served, "mrd", "TCP")
    assert "appProtocol" not in svc  # raw TCP, not HTTP/2
    policy = only(objs, "NetworkPolicy", "dnirecon-service")
    assert ("TCP", served) in {(p["protocol"], p["port"]) for r in policy["spec"]["ingress"] for p in r["ports"]}


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_the_service_reads_the_mrd_port_from_the_configmap(rendered, overlay):
    config = pytest.importorskip("service.config")
    objs = rendered[overlay]
    c = only(objs, "Deployment", "dnirecon-service")["spec"]["template"]["spec"]["containers"][0]
    assert config.settings_from(None, environ=configmap_env(objs, c)).mrd_port == 9002
