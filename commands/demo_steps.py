"""The steps of `dnirecon demo` after the data: each records what it made in `state` and is skipped
when that is still valid. Torch-side imports stay inside the functions."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from dnirecon.errors import Interrupted, ModelError
from dnirecon.fastmri_io import list_volumes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return f"{_cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _versions_key(state: dict, *names: str) -> str:
    return "|".join(f"{n}={state.get('versions', {}).get(n)}" for n in names)


def serve_step(steps, state: dict, work: Path, val_dir: Path, alphas) -> None:
    """Start `dnirecon serve` on models:/interpsn@production, stream one held-out volume at 4x and 8x
    at every alpha through the client library, then stop the server with SIGTERM (its drain path)."""
    from commands.procs import ServerProcess
    from service.client import ReconClient, reconstruct_file, write_outputs

    t = steps.start("serve the promoted alias over gRPC and stream a held-out volume at each alpha")
    key = _versions_key(state, "interpsn-production")
    if state.get("serve", {}).get("key") == key:
        steps.done(t, "reused the streamed images of the same interpsn version")
        return
    volume = list_volumes(val_dir)[0]
    env = {"DNIRECON_MODEL_URI": "models:/interpsn@production", "DNIRECON_PROVIDERS": "cuda,cpu",
           "DNIRECON_CACHE_DIR": str((work / "model-cache").resolve()), "DNIRECON_DRAIN_SECONDS": "10"}
    server = ServerProcess([], env=env, log_path=work / "server.log", ready_timeout=600)
    runs = []
    server.start()
    try:
        with ReconClient(server.address) as client:
            info = client.server_info()
            for accel in (4, 8):
                for alpha in alphas:
                    t0 = time.perf_counter()
                    result = reconstruct_file(client, volume, accel=accel, alpha=alpha, timeout=600)
                    seconds = time.perf_counter() - t0
                    out_dir = work / "client" / f"x{accel}_alpha{alpha:.2f}"
                    h5_path, _ = write_outputs(result, volume, out_dir)
                    runs.append({"accel": accel, "alpha_requested": alpha, "alpha_used": result.alpha,
                                 "model": result.model, "slices": int(result.images.shape[0]),
                                 "failed": len(result.errors), "seconds": round(seconds, 3),
                                 "bytes_sent": result.bytes_sent, "h5": str(h5_path),
                                 "dc_residual_mean": float(result.dc_residual.mean())})
                    print(f"      x{accel} alpha {alpha:.2f}: {result.images.shape[0]} slices in {seconds:.1f} s "
                          f"from {result.model} (alpha used {result.alpha:.2f}), {len(result.errors)} failed",
                          flush=True)
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"the server exited with code {code} after SIGTERM (see {work / 'server.log'})")
    state["serve"] = {"key": key, "volume": volume.name, "runs": runs,
                      "providers": list(info.providers) if hasattr(info, "providers") else [],
                      "exit_code": code}
    steps.done(t, f"streamed {len(runs)} volume passes, server stopped cleanly (exit {code})")


def _registered(name: str, version: str | None) -> bool:
    """True when `name` version `version` is still in the registry (the store may have been wiped)."""
    if not version:
        return False
    from training.tracking import client

    try:
        client().get_model_version(name, str(version))
        return True
    except Exception:  # noqa: BLE001 - mlflow raises its own RestException / MlflowException
        return False


def baselines_step(steps, state: dict, work: Path, val_dir: Path) -> None:
    """Zero-filled RSS, CG-SENSE and CS on the held-out volumes: the floor every model must beat."""
    from dnirecon.tables import table1, write_table
    from training.evaluate import baseline_methods, evaluate_dataset

    t = steps.start("classical baselines on the held-out volumes (zero-filled RSS, CG-SENSE, CS)")
    if state.get("baselines_rows"):
        steps.done(t, "reused the baselines table")
        return
    rows = evaluate_dataset(baseline_methods(), val_dir, (4.0, 8.0), progress=True)
    write_table(rows, work / "tables", "baselines")
    print(table1(rows), flush=True)
    state["baselines_rows"] = True
    steps.done(t, "evaluated")


def train_step(steps, state: dict, work: Path, preset: str, train_dir: Path, val_dir: Path) -> None:
    """The paper's schedule: SN from scratch, then both SN (L_SN alone) and SN-GAN fine-tuned from it on
    the same fine-tuning schedule, then the U-Net. Each is registered; the interpolation pairs the two
    fine-tuned models, which differ only in the adversarial term."""
    from training.train import train_model

    versions = state.setdefault("versions", {})
    timings = state.setdefault("train_seconds", {})
    plan = [("sn-pretrained", "sn", "train sn from scratch"),
            ("sn", "sn", "fine-tune sn with L_SN (the paper's twin of SN-GAN)"),
            ("sn-gan", "sn-gan", "fine-tune sn-gan with LSGAN + 0.1 L_SN"),
            ("unet", "unet", "train the U-Net baseline")]
    for key, kind, what in plan:
        t = steps.start(f"{what} ({preset} preset) and register it in MLflow")
        base = versions.get("sn-pretrained") if key in ("sn", "sn-gan") else None
        if _registered(kind, versions.get(key)) and state.get("finetuned_from", {}).get(key) == base:
            steps.done(t, f"reused {kind} version {versions[key]}")
            continue
        t0 = time.perf_counter()
        # a signal stopped this model's training on an earlier run: continue from its checkpoint
        stopped = state.setdefault("interrupted", {}).pop(key, None)
        if stopped and (stopped["base"] != base or not Path(stopped["checkpoint"]).is_file()):
            stopped = None
        if stopped:
            print(f"  continuing from {stopped['checkpoint']}, where a signal stopped it", flush=True)
        earlier = stopped["seconds"] if stopped else 0.0
        try:
            result = train_model(kind, train_dir, preset=preset, accels=(4.0, 8.0), val_dir=val_dir,
                                 out_dir=work / "checkpoints", register=True, seed=0, init_from=base, resume=stopped["checkpoint"] if stopped else None)
        except Interrupted as exc:
            state["interrupted"][key] = {"checkpoint": str(exc.saved), "base": base,
                                         "seconds": round(earlier + time.perf_counter() - t0, 1)}
            raise Interrupted(exc.what, exc.signum, exc.saved, hint="Run the demo again to continue from it") from None
        versions[key] = result.version
        timings[key] = round(earlier + time.perf_counter() - t0, 1)  # training time, both runs together
        state.setdefault("finetuned_from", {})[key] = base
        state.pop("bake", None)  # new weights: what follows must be redone
        steps.done(t, f"registered {kind} version {result.version}"
                      + (f" (fine-tuned from sn version {base})" if base else ""))


def bake_step(steps, state: dict, work: Path, preset: str, val_dir: Path, alphas) -> None:
    """interpSN at the alpha grid plus the continuous model, parity-checked, registered as one version."""
    import shutil

    from registry.bake import bake
    from training.report import manifest_points
    from training.report_figures import perception_distortion

    t = steps.start(f"bake interpSN at alphas {', '.join(f'{a:g}' for a in alphas)} (+ continuous) to ONNX")
    key = _versions_key(state, "sn", "sn-gan")
    done = state.get("bake", {})
    if done.get("key") == key and _registered("interpsn", done.get("version")) and Path(done["dir"]).exists():
        steps.done(t, f"reused interpsn version {done['version']}")
        return
    out_dir = work / "baked" / key.replace("|", "_").replace("=", "")
    shutil.rmtree(out_dir, ignore_errors=True)
    v = state["versions"]
    result = bake(f"sn/{v['sn']}", f"sn-gan/{v['sn-gan']}", alphas, val_dir,
                  continuous=True, out_dir=out_dir, slices=2)
    state["bake"] = {"key": key, "version": result.version, "dir": str(out_dir), "run_id": result.run_id}
    state["versions"]["interpsn"] = result.version
    perception_distortion(manifest_points(result.manifest), work / "perception_distortion_bake.png")
    worst = max(a["parity_max_err"] for a in result.manifest["alphas"])
    steps.done(t, f"registered interpsn version {result.version}, worst parity {worst:.1e} of the image max")


def promote_step(steps, state: dict, work: Path) -> None:
    """Move alias production to the baked set through the gates (staging first)."""
    from registry.store import get_client, promote

    t = steps.start("promote the baked set: staging, then production (gated)")
    version = state["versions"]["interpsn"]
    c = get_client()
    notes = []
    for alias in ("staging", "production"):
        try:
            holder = c.get_model_version_by_alias("interpsn", alias)
        except Exception:  # noqa: BLE001 - no holder yet
            holder = None
        if holder is not None and str(holder.version) == str(version):
            notes.append(f"{alias} already at {version}")
            continue
        try:
            r = promote(c, alias, version, name="interpsn")
        except ModelError as exc:  # a gate refused: the alias keeps its version, and the demo says so
            notes.append(f"{alias}: refused ({exc})")
            print(f"      {alias}: promotion refused by the gates: {exc}", flush=True)
            continue
        notes.append(f"{alias}: {r.previous_version or 'none'} -> {r.version}")
    state["versions"]["interpsn-production"] = str(c.get_model_version_by_alias("interpsn", "production").version)
    steps.done(t, "; ".join(notes))


def report_methods(state: dict, alphas) -> dict:
    """Every method of the report as a training.evaluate.Recon."""
    from registry.bake import alpha_runner
    from registry.export import run_torch
    from training.evaluate import baseline_methods, torch_recon
    from training.report import interp_name
    from training.tracking import load_registered_model

    v = state["versions"]
    unet = load_registered_model("unet", v["unet"]).model.eval()
    sn = load_registered_model("sn", v["sn"]).model.eval()
    gan = load_registered_model("sn-gan", v["sn-gan"]).model.eval()
    manifest = json.loads((Path(state["bake"]["dir"]) / "manifest.json").read_text())
    methods = {
        **baseline_methods(),
        "U-Net": torch_recon(unet),
        "SN": lambda k, m: run_torch(sn, k, m),
        "SN-GAN": lambda k, m: run_torch(gan, k, m),
    }
    for alpha in alphas:
        methods[interp_name(alpha)] = alpha_runner(state["bake"]["dir"], manifest, alpha)
    return methods


def report_step(steps, state: dict, work: Path, val_dir: Path, docs: Path, alphas, preset: str) -> None:
    """Table 1, the perception-distortion curve, the Fig.-1-like figure and the DC residuals."""
    from training.report import collect_report_data, write_report

    t = steps.start("evaluation report (docs/report.md, figures, logged to MLflow)")
    methods = report_methods(state, alphas)
    t0 = time.perf_counter()
    data = collect_report_data(val_dir, (4.0, 8.0), methods, alphas, progress=True)
    held_out_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    outside = outside_results(work, methods, alphas)
    outside_seconds = time.perf_counter() - t0
    run_info = {
        "command": f"make demo (dnirecon demo --preset {preset})",
        "preset": preset,
        "machine": machine(),
        "held-out volumes": len(list_volumes(val_dir)),
        "model versions": {k: v for k, v in state.get("versions", {}).items()},
        "training seconds": state.get("train_seconds", {}),
        "served": {k: state.get("serve", {}).get(k) for k in ("volume", "providers", "exit_code")},
        "streamed passes": [
            {k: r[k] for k in ("accel", "alpha_requested", "alpha_used", "model", "slices", "failed", "seconds")}
            for r in state.get("serve", {}).get("runs", [])],
        "evaluation seconds": {"held-out": round(held_out_seconds, 1), "outside sources": round(outside_seconds, 1)},
    }
    path = write_report(data, docs, run_info, outside=outside)
    state["report"] = str(path)
    steps.done(t, f"wrote {path}")


def outside_results(work: Path, methods: dict, alphas):
    """Build the outside sources (training.outside, offline, from fixed seeds) under work/outside and
    score every report method on their reported items; the tuning items are built for the record only."""
    from training.baselines import CS_ITERS, CS_LAMBDA
    from training.outside import ITEMS, REPORTED, build_outside, phantom_generator
    from training.report import OutsideResults, collect_outside_data

    generator = phantom_generator()
    print(f"      outside sources: nibabel's MR slices and a phantom from {generator}", flush=True)
    dirs = build_outside(work / "outside", ITEMS, generator=generator)
    reported = {source: d for (source, role), d in dirs.items() if role == REPORTED}
    items = [dict(source=i.source, role=i.role, name=i.name, coils=i.coils, noise_level=i.noise_level,
                  content=(f"EPI volume {i.timepoint}, slices {', '.join(map(str, i.slices))}" if i.source == "brain"
                           else f"{i.matrix} x {i.matrix}, {i.repeats} noise draws"),
                  generator="nibabel example4d.nii.gz" if i.source == "brain" else generator) for i in ITEMS]
    sources = collect_outside_data(reported, (4.0, 8.0), methods, alphas, progress=True)
    return OutsideResults(sources, items, cs_setting=f"lam {CS_LAMBDA:g}, {CS_ITERS} iterations, "
                                                      "experiments/cs_tuning.py")
