"""The download cache: a download its process never finished (SIGKILL, the hard exit of a server stuck in
start-up) leaves a `.tmp-` directory; the next download in that cache removes it, and only it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.model_store import MlflowStore, claim_download_dir, sweep_abandoned

from .conftest import ROOT, register, write_baked_set

DOWNLOADER = ("import sys, time; from pathlib import Path; from service.model_store import claim_download_dir; "
              "tmp, fd = claim_download_dir(Path(sys.argv[1]), sys.argv[2]); (tmp / 'alpha_0.00.onnx').write_bytes(b'x' * 1000); "
              "print(tmp, flush=True); time.sleep(120)")


def downloader(parent: Path, version: str) -> tuple[subprocess.Popen, Path]:
    """Another process in the middle of a download into parent; -> (process, its directory)."""
    proc = subprocess.Popen([sys.executable, "-c", DOWNLOADER, str(parent), version], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_sweep_removes_the_directories_of_dead_downloads_only(tmp_path):
    parent = tmp_path / "interpsn"
    killed, dead_dir = downloader(parent, "7")
    live, live_dir = downloader(parent, "8")
    try:
        killed.kill()
        killed.wait()
        mine, fd = claim_download_dir(parent, "9")  # this process's own, other thread or not
        try:
            assert sweep_abandoned(parent) == [dead_dir]
            assert live_dir.is_dir() and mine.is_dir() and not dead_dir.exists()
        finally:
            os.close(fd)
        assert sweep_abandoned(parent) == [mine]  # the lock is gone with its descriptor
        assert live_dir.is_dir()
    finally:
        live.kill()
        live.wait()
    assert sweep_abandoned(parent) == [live_dir]
    assert sorted(p.name for p in parent.iterdir()) == []


def test_sweep_removes_staging_directories_left_unlocked_past_the_grace_only(tmp_path):
    """A process killed between a staging directory's mkdir and its flock leaves an empty `.new-` directory."""
    import fcntl

    from service.model_store import STAGING_GRACE_S, STAGING_PREFIX

    parent = tmp_path / "interpsn"
    parent.mkdir()
    old, young, held = (parent / f"{STAGING_PREFIX}{n}" for n in ("old", "young", "held"))
    for d in (old, young, held):
        d.mkdir()
    past = os.stat(old).st_mtime - STAGING_GRACE_S - 5
    for d in (old, held):
        os.utime(d, (past, past))
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a staging directory in use, however old
    try:
        assert sweep_abandoned(parent) == [old]
        assert young.is_dir() and held.is_dir()  # young: maybe between its mkdir and its flock
    finally:
        os.close(fd)


def test_a_fetch_removes_what_a_killed_download_left_and_leaves_only_the_version(tmp_path, onnx_models):
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = mc.create_experiment("bake", artifact_location=(tmp_path / "artifacts").as_uri())
    mc.create_registered_model("interpsn")
    v1 = register(mc, exp, write_baked_set(tmp_path / "v1", {a: p for a, p in onnx_models.items() if a is not None}))
    cache = tmp_path / "cache"
    killed, dead_dir = downloader(cache / "interpsn", v1)
    killed.kill()
    killed.wait()
    baked = MlflowStore(uri, cache).load("models:/interpsn/" + v1)
    assert baked.version == v1 and not dead_dir.exists()
    assert [p.name for p in (cache / "interpsn").iterdir()] == [v1]
