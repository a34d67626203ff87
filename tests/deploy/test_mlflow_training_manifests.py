"""The MLflow server stack and the training jobs: wiring between the objects, not only their schema."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import urlparse

from deploy_helpers import configmap_env, only, pod_templates


def container(obj, name=None):
    containers = pod_templates(obj)[0]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def secret_ref(c, env_name):
    item = next(e for e in c["env"] if e["name"] == env_name)
    ref = item["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_mlflow_server_runs_basic_auth_with_proxied_s3_artifacts_and_postgres(rendered):
    objs = rendered["mlflow"]
    c = container(only(objs, "Deployment", "mlflow"))
    script = c["args"][0]
    assert "exec mlflow server" in script
    assert "--app-name basic-auth" in script and "--serve-artifacts" in script
    env = configmap_env(objs, c)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://" + env["MLFLOW_BUCKET"]
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    s3 = urlparse(env["MLFLOW_S3_ENDPOINT_URL"])
    minio_svc = only(objs, "Service", s3.hostname)
    assert s3.port in [p["port"] for p in minio_svc["spec"]["ports"]]
    assert secret_ref(c, "MLFLOW_BACKEND_STORE_URI") == ("mlflow-db", "uri")
    assert secret_ref(c, "MLFLOW_AUTH_ADMIN_PASSWORD")[0] == "mlflow-auth"
    assert secret_ref(c, "MLFLOW_FLASK_SERVER_SECRET_KEY")[0] == "mlflow-auth"
    # The auth config (it holds the DB URI) is written into the scratch volume, never a ConfigMap.
    auth_path = next(e["value"] for e in c["env"] if e["name"] == "MLFLOW_AUTH_CONFIG_PATH")
    assert any(auth_path.startswith(m["mountPath"] + "/") for m in c["volumeMounts"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_postgres_and_minio_keep_data_on_persistent_volumes(rendered):
    objs = rendered["mlflow"]
    for name, mount in (("mlflow-postgres", "/var/lib/postgresql/data"), ("mlflow-minio", "/data")):
        sts = only(objs, "StatefulSet", name)
        claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
        mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
        assert mounts[mount] in claims, name
    pg = container(only(objs, "StatefulSet", "mlflow-postgres"))
    pgdata = next(e["value"] for e in pg["env"] if e["name"] == "PGDATA")
    assert pgdata.startswith("/var/lib/postgresql/data/")


def test_database_and_object_store_admit_only_mlflow(rendered):
    objs = rendered["mlflow"]
    mlflow_labels = only(objs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    for name, port in (("mlflow-postgres", 5432), ("mlflow-minio", 9000)):
        policy = only(objs, "NetworkPolicy", name)
        (rule,) = policy["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [port]
        selectors = [f["podSelector"]["matchLabels"] for f in rule["from"]]
        assert any(s.items() <= mlflow_labels.items() for s in selectors)


def test_service_and_training_reach_mlflow_through_an_allowed_host(rendered):
    objs = rendered["mlflow"]
    mlflow_env = configmap_env(objs, container(only(objs, "Deployment", "mlflow")))
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    svc = only(objs, "Service", "mlflow")
    for name, kind, obj_name in (("service/overlays/gpu", "Deployment", "dnirecon-service"),
                                 ("training/job", "Job", "dnirecon-train-sn")):
        c = container(only(rendered[name], kind, obj_name))
        uri = urlparse(configmap_env(rendered[name], c)["MLFLOW_TRACKING_URI"])
        assert uri.hostname.split(".")[0] == svc["metadata"]["name"]
        assert uri.hostname.split(".")[1] == svc["metadata"]["namespace"]
        assert uri.port == svc["spec"]["ports"][0]["port"]
        host_header = f"{uri.hostname}:{uri.port}"
        assert any(fnmatch.fnmatch(host_header, a) if "*" in a else host_header == a for a in allowed), host_header
        assert secret_ref(c, "MLFLOW_TRACKING_PASSWORD") == ("dnirecon-mlflow-credentials", "password")


def torchrun_flags(c):
    assert c["command"] == ["torchrun"]
    return dict(a[2:].split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)


def test_indexed_job_runs_torchrun_over_all_nodes_and_gpus(rendered):
    objs = rendered["training/job"]
    job = only(objs, "Job", "dnirecon-train-sn")
    c = container(job)
    flags = torchrun_flags(c)
    assert job["spec"]["completionMode"] == "Indexed"
    assert int(flags["nnodes"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert int(flags["nproc-per-node"]) == int(c["resources"]["limits"]["nvidia.com/gpu"])
    rank = next(e for e in c["env"] if e["name"] == "NODE_RANK")
    assert flags["node-rank"] == "$(NODE_RANK)"
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    # Rank 0's stable DNS name: <job>-0.<subdomain>, served by a headless Service that publishes
    # not-ready pods (the workers look it up before pod 0 is ready).
    spec = job["spec"]["template"]["spec"]
    headless = only(objs, "Service", spec["subdomain"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert flags["master-addr"] == f"{job['metadata']['name']}-0.{spec['subdomain']}"
    assert int(flags["master-port"]) in [p["port"] for p in headless["spec"]["ports"]]
    assert c["args"][c["args"].index("--no-python") + 1:][:3] == ["dnirecon", "train", "sn"]


def test_training_pods_mount_data_read_only_and_a_large_shm(rendered):
    for name, kind in (("training/job", "Job"), ("training/pytorchjob", "PyTorchJob")):
        objs = rendered[name]
        obj = only(objs, kind, "dnirecon-train-sn")
        only(objs, "PersistentVolumeClaim", "dnirecon-data")
        for template in pod_templates(obj):
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            mounts = {m["mountPath"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
            assert mounts["/data"]["readOnly"] is True
            assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "dnirecon-data"
            assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_training_keeps_checkpoints_on_a_claim_and_an_evicted_job_continues_from_them(rendered):
    """SIGTERM saves last.pt at the step (training/stopping.py): it must land on storage that outlives the
    pod, in time, and the restarted pods must look for it (--resume auto under the same --out)."""
    for name, kind in (("training/job", "Job"), ("training/pytorchjob", "PyTorchJob")):
        objs = rendered[name]
        claim = only(objs, "PersistentVolumeClaim", "dnirecon-checkpoints")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # rank 0 writes, every node reads
        for template in pod_templates(only(objs, kind, "dnirecon-train-sn")):
            spec = template["spec"]
            args = spec["containers"][0]["args"]
            out = args[args.index("--out") + 1]
            assert args[args.index("--resume") + 1] == "auto"
            mounts = spec["containers"][0]["volumeMounts"]
            mount = max((m for m in mounts if out.startswith(m["mountPath"].rstrip("/") + "/")),
                        key=lambda m: len(m["mountPath"]))
            assert not mount.get("readOnly")
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            assert volume["persistentVolumeClaim"]["claimName"] == "dnirecon-checkpoints", f"{name}: {out}"
            # a step and a checkpoint write, after torchrun's own 30 s for its workers
            assert spec["terminationGracePeriodSeconds"] >= 60
    job = only(rendered["training/job"], "Job", "dnirecon-train-sn")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # what podFailurePolicy requires


def test_pytorchjob_leaves_rendezvous_to_the_operator(rendered):
    job = only(rendered["training/pytorchjob"], "PyTorchJob", "dnirecon-train-sn")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    for role, spec in replicas.items():
        c = spec["template"]["spec"]["containers"][0]
        assert c["name"] == "pytorch", "the training operator injects PET_* env into this container only"
        assert not torchrun_flags(c), f"{role}: node count and rank come from PET_* env"
        assert int(job["spec"]["nprocPerNode"]) == int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert re.search(r"dnirecon-train:", c["image"])
