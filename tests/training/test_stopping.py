"""A signal stops training after its current step with a checkpoint there, the MLflow run ends KILLED,
and --resume continues to the same end; an error ends the run FAILED. Real processes, a real store."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from commands.cli import main
from dnirecon.errors import Interrupted
from training import tracking
from training.stopping import StopOnSignal
from training.train import Trainer, train_model

EPOCHS = 5  # long enough that the signal always lands mid-run (it comes after the first epoch)


def _wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _steps_logged(run_id: str) -> list[int]:
    return sorted(m.step for m in tracking.client().get_metric_history(run_id, "train_loss_step"))


def test_stop_on_signal_asks_once_then_interrupts_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopOnSignal() as stop:
        assert stop.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested() == signal.SIGTERM  # the process is still alive: the loop decides
        with pytest.raises(KeyboardInterrupt, match="SIGINT again: stopping at once"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_saves_a_checkpoint_ends_the_run_killed_and_resume_finishes_it(tiny_data, tmp_path, mlflow_store,
                                                                               capsys):
    """`dnirecon train` in its own process, stopped the way Kubernetes stops a pod (SIGTERM, exit 143)."""
    sig = signal.SIGTERM
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    cmd = ["train", "sn", "--data", str(tiny_data), "--epochs", str(EPOCHS), "--batch-size", "1",
           "--accel", "4", "--no-progress", "--out", str(tmp_path / "ck")]
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "commands.cli", *cmd], stdout=o, stderr=e, env=env)
        try:
            _wait_for(lambda: "sn epoch 1:" in err.read_text(), what="the first epoch")
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            proc.kill()
    text = err.read_text()
    assert rc == 128 + sig, text
    name = signal.Signals(sig).name
    assert f"{name}: stopping after this step and saving a checkpoint" in text
    ckpt_path = next((tmp_path / "ck").glob("sn-*/last.pt"))
    assert f"To continue, run the same command with --resume {ckpt_path}" in text

    total = EPOCHS * 4  # 4 training slices, batch 1
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert 4 <= ckpt["step"] < total  # stopped after the first epoch, long before the end
    assert f"sn stopped by {name} at step {ckpt['step']} of {total}" in text
    run = tracking.client().get_run(ckpt["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["interrupted_by"] == name and run.data.tags["interrupted_at_step"] == str(ckpt["step"])
    assert _steps_logged(ckpt["run_id"]) == list(range(1, ckpt["step"] + 1))  # nothing lost, nothing ahead
    assert not tracking.client().search_model_versions("name='sn'")  # nothing registered

    # the Job's way: the same command with --resume auto finds that checkpoint and continues the same run
    assert main([*cmd, "--resume", "auto"]) == 0
    assert "registered version 1" in capsys.readouterr().out
    run = tracking.client().get_run(ckpt["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["interrupted_by"] == name
    assert _steps_logged(ckpt["run_id"]) == list(range(1, total + 1))  # each step once: none redone or skipped
    assert torch.load(ckpt_path, weights_only=True)["step"] == total


def test_an_error_mid_run_ends_the_run_failed(tiny_data, tmp_path, mlflow_store, monkeypatch):
    real_step, calls = Trainer.step, []

    def failing_step(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (as a device would say it)")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_model("unet", tiny_data, accels=(4.0,), epochs=1, progress=False, out_dir=tmp_path / "ck")
    (run,) = tracking.client().search_runs([tracking.experiment_id()])
    assert run.info.status == "FAILED"


def test_the_demo_continues_a_training_a_signal_stopped(tiny_data, tmp_path, mlflow_store, monkeypatch):
    """dnirecon demo's training step: Ctrl-C (SIGINT) during SN, then the step run again continues from the
    checkpoint; the CLI's exit code for it is 130."""
    import dataclasses

    from commands.demo import Steps
    from commands.demo_steps import train_step
    from training import presets

    cpu = presets.PRESETS["cpu"]  # the demo's preset with short schedules, for this test only
    monkeypatch.setitem(presets.PRESETS, "cpu", dataclasses.replace(
        cpu, sn_schedule=dataclasses.replace(cpu.sn_schedule, epochs=EPOCHS),
        unet_schedule=dataclasses.replace(cpu.unet_schedule, epochs=1)))
    state, work = {}, tmp_path / "work"

    def signal_after_the_first_checkpoint():
        _wait_for(lambda: any(work.glob("checkpoints/sn-*/last.pt")), what="the first checkpoint")
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=signal_after_the_first_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(Interrupted, match="Run the demo again to continue from it") as exc:
        train_step(Steps(total=1), state, work, "cpu", tiny_data / "train", tiny_data / "val")
    killer.join()
    assert exc.value.signum == signal.SIGINT
    stopped = state["interrupted"]["sn-pretrained"]
    assert stopped["checkpoint"] == str(exc.value.saved) and stopped["base"] is None
    first = torch.load(exc.value.saved, weights_only=True)
    assert 0 < first["step"] < EPOCHS * 4

    train_step(Steps(total=1), state, work, "cpu", tiny_data / "train", tiny_data / "val")
    assert state["interrupted"] == {}
    assert set(state["versions"]) == {"sn-pretrained", "sn", "sn-gan", "unet"}
    sn = tracking.client().get_model_version("sn", state["versions"]["sn-pretrained"])
    assert sn.run_id == first["run_id"]  # the interrupted run, continued, not a new one
    assert _steps_logged(sn.run_id) == list(range(1, EPOCHS * 4 + 1))


def test_resume_auto_continues_the_newest_unfinished_run_with_the_same_settings(tiny_data, tmp_path):
    from training.train import find_unfinished

    out = tmp_path / "ck"
    kw = dict(preset="cpu", accels=(4.0,), epochs=2, log_mlflow=False, progress=False, out_dir=out)
    stopped = train_model("unet", tiny_data, seed=0, max_steps=1, **kw).checkpoint_path
    train_model("unet", tiny_data, seed=1, max_steps=1, **kw)  # unfinished, another seed
    train_model("unet", tiny_data, seed=0, **{**kw, "epochs": 1})  # finished its schedule
    assert len(list(out.glob("unet-*/last.pt"))) == 3  # three runs, three directories (same second or not)
    assert find_unfinished(out, "unet", 0, "cpu", (4.0,), None) == stopped
    assert find_unfinished(out, "unet", 2, "cpu", (4.0,), None) is None  # no run with seed 2
    assert find_unfinished(out, "unet", 0, "cpu", (4.0, 8.0), None) is None  # other accelerations
    assert find_unfinished(out, "sn", 0, "cpu", (4.0,), None) is None  # other model
    assert find_unfinished(out, "unet", 0, "cpu", (4.0,), "3") is None  # not fine-tuned from sn version 3

    resumed = train_model("unet", tiny_data, seed=0, resume="auto", max_steps=3, **kw)
    assert resumed.checkpoint_path == stopped and torch.load(stopped, weights_only=True)["step"] == 3
    fresh = train_model("unet", tiny_data, seed=2, resume="auto", max_steps=1, **kw)  # none to continue
    assert fresh.checkpoint_path != stopped and torch.load(fresh.checkpoint_path, weights_only=True)["step"] == 1


def test_resume_auto_tells_fine_tuning_runs_apart_by_the_weights_of_their_sn(tiny_data, tmp_path):
    """Runs that share an --out continue their own checkpoint: two sn-gan runs fine-tuned from different
    local sn checkpoints, and an sn run from scratch beside an sn fine-tuned from a local checkpoint."""
    kw = dict(preset="cpu", accels=(4.0,), epochs=2, batch_size=1, log_mlflow=False, progress=False, device="cpu")
    sn_a = train_model("sn", tiny_data, seed=0, max_steps=1, out_dir=tmp_path / "a", **kw).checkpoint_path
    sn_b = train_model("sn", tiny_data, seed=1, max_steps=1, out_dir=tmp_path / "b", **kw).checkpoint_path
    out = tmp_path / "ck"
    gan_a = train_model("sn-gan", tiny_data, init_from=sn_a, max_steps=1, out_dir=out, **kw).checkpoint_path
    gan_b = train_model("sn-gan", tiny_data, init_from=sn_b, max_steps=1, out_dir=out, **kw).checkpoint_path
    os.utime(gan_b, (time.time() + 5, time.time() + 5))  # the newest unfinished sn-gan run is b's

    resumed = train_model("sn-gan", tiny_data, init_from=sn_a, resume="auto", max_steps=2, out_dir=out, **kw)
    assert resumed.checkpoint_path == gan_a
    assert [torch.load(p, weights_only=True)["step"] for p in (gan_a, gan_b)] == [2, 1]

    tuned = train_model("sn", tiny_data, init_from=sn_b, max_steps=1, out_dir=out, **kw).checkpoint_path
    scratch = train_model("sn", tiny_data, resume="auto", max_steps=1, out_dir=out, **kw).checkpoint_path
    assert scratch != tuned  # a run from scratch does not continue a fine-tuning run
    assert torch.load(tuned, weights_only=True)["step"] == 1
