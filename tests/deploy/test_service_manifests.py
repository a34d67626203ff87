"""Acceptance 2: what the service manifests mean, not only their schema."""

from __future__ import annotations

import re

import pytest

from deploy_helpers import configmap_env, only, pod_templates

SERVICE_OVERLAYS = ["service/overlays/gpu", "service/overlays/cpu", "service/overlays/gpu-tls"]
PLAINTEXT_OVERLAYS = ["service/overlays/gpu", "service/overlays/cpu"]
ENDPOINT_PROPAGATION_MARGIN_S = 5  # process exit and signal delivery after the drain


def service_container(objs):
    spec = only(objs, "Deployment", "dnirecon-service")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["service"]
    return spec, spec["containers"][0]


def port(container, name):
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


@pytest.mark.parametrize("overlay", PLAINTEXT_OVERLAYS)
def test_probes_are_native_grpc_on_the_served_port(rendered, overlay):
    objs = rendered[overlay]
    _, c = service_container(objs)
    env = configmap_env(objs, c)
    served = int(env["DNIRECON_GRPC_PORT"])
    assert port(c, "grpc") == served
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == served, probe
    assert c["readinessProbe"]["grpc"]["service"] == "dnirecon.v1.Reconstruction"
    assert c["startupProbe"]["grpc"]["service"] == "dnirecon.v1.Reconstruction"


@pytest.mark.parametrize("overlay", PLAINTEXT_OVERLAYS)
def test_startup_probe_allows_model_download_and_warm_up(rendered, overlay):
    _, c = service_container(rendered[overlay])
    startup = c["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 300, f"startup budget {budget} s, need minutes for download + warm-up"
    assert "initialDelaySeconds" not in c["livenessProbe"]  # the startup probe gates liveness


def test_tls_overlay_probes_health_over_tls_with_the_mounted_files(rendered):
    objs = rendered["service/overlays/gpu-tls"]
    spec, c = service_container(objs)
    env = configmap_env(objs, c)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "dnirecon-tls"
    for key in ("DNIRECON_TLS_CERT_FILE", "DNIRECON_TLS_KEY_FILE", "DNIRECON_TLS_CLIENT_CA_FILE"):
        assert env[key].startswith(mounts["tls"] + "/"), key
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in c[probe], "kubelet gRPC probes cannot speak TLS"
        script = c[probe]["exec"]["command"][-1]
        assert "grpc_health.v1" in script and "secure_channel" in script and "DNIRECON_GRPC_PORT" in script
        compile(script, probe, "exec")


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_prestop_plus_drain_fits_in_termination_grace_period(rendered, overlay):
    objs = rendered[overlay]
    spec, c = service_container(objs)
    drain = float(configmap_env(objs, c)["DNIRECON_DRAIN_SECONDS"])
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Endpoint removal needs readiness to fail while the pod still serves: about two readiness periods.
    assert pre_stop >= c["readinessProbe"]["periodSeconds"]
    assert pre_stop + drain + ENDPOINT_PROPAGATION_MARGIN_S <= spec["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_runs_non_root_with_read_only_root_and_writable_cache(rendered, overlay):
    objs = rendered[overlay]
    spec, c = service_container(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    cache = configmap_env(objs, c)["DNIRECON_CACHE_DIR"]
    assert "emptyDir" in volumes[mounts[cache]], "model cache must be a writable volume"
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_gpu_overlay_requests_exactly_one_gpu_on_gpu_nodes(rendered):
    objs = rendered["service/overlays/gpu"]
    spec, c = service_container(objs)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(c["resources"]["requests"].get("nvidia.com/gpu", "1")) == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert configmap_env(objs, c)["DNIRECON_PROVIDERS"] == "cuda,cpu"


def test_cpu_overlay_requests_no_gpu_and_uses_the_cpu_provider(rendered):
    objs = rendered["service/overlays/cpu"]
    spec, c = service_container(objs)
    resources = c["resources"]
    assert not any("gpu" in k for part in resources.values() for k in part)
    assert "nodeSelector" not in spec and "tolerations" not in spec
    env = configmap_env(objs, c)
    assert env["DNIRECON_PROVIDERS"] == "cpu"
    assert int(env["DNIRECON_INTRA_OP_THREADS"]) <= int(resources["limits"]["cpu"])


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_network_policy_admits_only_grpc_mrd_and_metrics(rendered, overlay):
    objs = rendered[overlay]
    _, c = service_container(objs)
    policy = only(objs, "NetworkPolicy", "dnirecon-service")
    pod_labels = only(objs, "Deployment", "dnirecon-service")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    admitted = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), "an ingress rule without ports admits every port"
        admitted |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert admitted == {("TCP", port(c, "grpc")), ("TCP", port(c, "mrd")), ("TCP", port(c, "metrics"))}


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_service_pdb_hpa_and_scrape_config_point_at_the_pods(rendered, overlay):
    objs = rendered[overlay]
    deployment = only(objs, "Deployment", "dnirecon-service")
    _, c = service_container(objs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    svc = only(objs, "Service", "dnirecon")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics", "mrd": "mrd"}
    pdb = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = only(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dnirecon-service"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Every metric the HPA uses on CPU needs a CPU request to compute utilisation.
    assert "cpu" in c["resources"]["requests"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    env = configmap_env(objs, c)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == int(env["DNIRECON_METRICS_PORT"]) == port(c, "metrics")


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_configmap_settings_are_accepted_by_the_service(rendered, overlay):
    config = pytest.importorskip("service.config")
    objs = rendered[overlay]
    _, c = service_container(objs)
    env = configmap_env(objs, c)
    settings = config.settings_from(None, environ=env)
    assert settings.grpc_port == 50051 and settings.metrics_port == 9090
    assert settings.model_uri == "models:/interpsn@production"
    known = {opt[1] for opt in getattr(config, "_OPTIONS", [])}
    if known:  # the TLS health check's server name is read by the probe, not the server
        unknown = {k for k in env if k.startswith("DNIRECON_")} - known - {"DNIRECON_TLS_SERVER_NAME"}
        assert not unknown, f"settings the service does not read: {sorted(unknown)}"


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_connections_age_out_so_replicas_the_hpa_adds_get_traffic(rendered, overlay):
    """A Service balances connections; gRPC keeps one per client. Without a maximum age, scanners
    connected before a scale-out never reach the new replicas (docs/deploy.md)."""
    config = pytest.importorskip("service.config")
    objs = rendered[overlay]
    _, c = service_container(objs)
    assert any(o["kind"] == "HorizontalPodAutoscaler" for o in objs)
    s = config.settings_from(None, environ=configmap_env(objs, c))
    assert 0 < s.max_connection_age_seconds <= 900
    assert s.max_connection_age_grace_seconds == 0  # a volume's stream is never cut by the rebalancing
    assert 0 < s.keepalive_seconds and s.keepalive_seconds + s.keepalive_timeout_seconds <= 120
    from dnirecon import wire

    assert s.min_client_ping_seconds <= wire.CLIENT_KEEPALIVE_S  # the client's default pings are accepted


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert m, f"memory quantity {quantity!r}"
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_slice_memory_budget_leaves_most_of_the_pod_memory_limit_to_the_sessions(rendered, overlay):
    """Slices being assembled may hold at most DNIRECON_SLICE_MEMORY_BYTES; with the sessions, the batch in
    compute and the runtime beside them, the pod stays under its limit (docs/service.md)."""
    config = pytest.importorskip("service.config")
    objs = rendered[overlay]
    _, c = service_container(objs)
    settings = config.settings_from(None, environ=configmap_env(objs, c))
    limit = _bytes(c["resources"]["limits"]["memory"])
    assert settings.slice_memory_bytes <= limit // 2
    assert settings.max_slice_bytes <= settings.slice_memory_bytes  # the largest slice allowed fits the budget
    assert settings.max_workers >= settings.max_streams + config.CONTROL_THREADS
