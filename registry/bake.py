"""Bake interpSN: load SN and SN-GAN from MLflow, interpolate at an alpha grid, export each to ONNX,
check ONNX against torch on held-out slices, evaluate the Table-1 metrics, register one `interpsn`
version holding the whole set (so that one alias move promotes a validated set)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dnirecon.errors import ConfigError, DataError, ModelError
from dnirecon.tables import atomic_write_text
from registry.store import INTERPSN, MANIFEST_FORMAT, PARITY_TOLERANCE, alpha_key, manifest_tags
from training.evaluate import HeldOutSlice, load_held_out, mean_metrics, score

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONTINUOUS_STEM = "continuous"
EXPERIMENT = "dnirecon-registry"
ARTIFACT_DIR = "interpsn"


class ModelRef(NamedTuple):
    name: str
    ref: str  # a version number or an alias


class BakeResult(NamedTuple):
    directory: Path
    manifest: dict
    version: str | None  # the registered interpsn version, None when not registered
    run_id: str | None


def parse_model_ref(text: str, option: str = "--sn") -> ModelRef:
    """'sn@champion' (alias) or 'sn/3' / 'sn:3' (version)."""
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:@([A-Za-z0-9_-]+)|[/:](\d+))", text.strip())
    if not m:
        raise ConfigError(f"{option} expects NAME@ALIAS or NAME/VERSION (e.g. sn@champion, sn/3), got {text!r}")
    return ModelRef(m.group(1), m.group(2) or m.group(3))


def check_alphas(alphas: Sequence[float]) -> list[float]:
    out = sorted({round(float(a), 6) for a in alphas})
    if not out:
        raise ConfigError("--alphas needs at least one value in [0, 1]")
    bad = [a for a in out if not 0.0 <= a <= 1.0]
    if bad:
        raise ConfigError(f"--alphas must lie in [0, 1] (baked sets do not extrapolate), got {bad}")
    names = [alpha_key(a) for a in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--alphas {out} collide at two decimals (file names use alpha_X.XX)")
    return out


def held_out_fingerprint(held_out: Sequence[HeldOutSlice]) -> str:
    """sha256 over what the metrics are measured on: each slice's volume file name, slice index and
    acceleration, and the bytes of its masked k-space, mask, target and foreground (so the mask kind,
    the slice selection and the file contents all count). Equal fingerprints: comparable metrics."""
    h = hashlib.sha256(b"dnirecon.held_out/1\n")
    for s in sorted(held_out, key=lambda s: (s.volume, s.slice_index, s.accel)):
        h.update(f"{s.volume}|{s.slice_index}|{s.accel:g}\n".encode())
        for arr in (s.kspace, s.mask, s.target, s.foreground):
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _progress(iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def _ref_text(ref: ModelRef) -> str:
    return f"{ref.name}/{ref.ref}" if ref.ref.isdigit() else f"{ref.name}@{ref.ref}"


def _load_pair(sn: ModelRef, gan: ModelRef):
    from registry.interpolate import check_same_structure
    from training.tracking import load_registered_model

    loaded_sn = load_registered_model(sn.name, sn.ref)
    loaded_gan = load_registered_model(gan.name, gan.ref)
    if (sn.name, loaded_sn.version) == (gan.name, loaded_gan.version):
        raise ConfigError(f"--sn {_ref_text(sn)} and --gan {_ref_text(gan)} are the same version "
                          f"({sn.name}/{loaded_sn.version}); interpSN interpolates two different models")
    # the kind is config.json's "kind" in the version's model/ artifact (training.tracking)
    for role, ref, loaded, want in (("--sn", sn, loaded_sn, "sn"), ("--gan", gan, loaded_gan, "sn-gan")):
        if loaded.config.get("kind") != want:
            raise ModelError(f"{role} {ref.name}/{loaded.version} is a {loaded.config.get('kind')!r} model; "
                             f"{role} must be an {want!r} model (interpSN interpolates SN at alpha 0 and "
                             "SN-GAN at alpha 1)")
    if loaded_sn.config.get("model_config") != loaded_gan.config.get("model_config"):
        raise ModelError(f"{sn.name}/{loaded_sn.version} and {gan.name}/{loaded_gan.version} have different "
                         f"model_config ({loaded_sn.config.get('model_config')} vs "
                         f"{loaded_gan.config.get('model_config')}); interpolation needs one architecture")
    check_same_structure([loaded_sn.model.state_dict(), loaded_gan.model.state_dict()],
                         [f"{sn.name}/{loaded_sn.version}", f"{gan.name}/{loaded_gan.version}"])
    return loaded_sn, loaded_gan


def cascade_sets(config) -> list[dict]:
    """The manifest's `cascade_sets`: for each set of cascades of an SN with `config`, its acceleration
    (None for a one-set SN) and the accelerations 1 / sampled fraction it serves, [low, high) (high None:
    no bound), by the rule of `dnirecon.routing.nearest_set`."""
    from dnirecon.routing import served_range

    accels = [float(a) for a in getattr(config, "accel_branches", ())]
    if not accels:
        return [{"accel": None, "serves": [1.0, None]}]
    return [{"accel": a, "serves": list(served_range(accels, i))} for i, a in enumerate(accels)]


def graph_file(stem: str, accel: float | None) -> str:
    """The ONNX file of one set of cascades: alpha_0.25.onnx for a one-set SN, alpha_0.25_8x.onnx else."""
    return f"{stem}.onnx" if accel is None else f"{stem}_{accel:g}x.onnx"


def set_router(sets: Sequence[Mapping]):
    """masks (..., W) -> the index (...) of the set of cascades that serves each (dnirecon.routing)."""
    from dnirecon.routing import nearest_set, sampled_fraction

    accels = [float(s["accel"]) for s in sets if s["accel"] is not None]
    return lambda mask: nearest_set(sampled_fraction(mask), accels)


def alpha_runner(directory: Path | str, manifest: Mapping, alpha: float, threads: int | None = None):
    """(kspace (C, H, W) or (B, C, H, W), mask (W,) or (B, W)) -> (image, dc_residual) through the baked
    graphs of `alpha`, each slice through the graph of its set of cascades."""
    from registry.export import ort_session, run_onnx

    entry = next(e for e in manifest["alphas"] if round(float(e["alpha"]), 6) == round(float(alpha), 6))
    sessions = [ort_session(Path(directory) / g["file"], threads) for g in entry["graphs"]]
    route = set_router(manifest["cascade_sets"])

    def run(kspace, mask):
        k, m = np.asarray(kspace), np.asarray(mask, np.float32)
        which = route(m)
        if which.ndim == 0:
            return run_onnx(sessions[int(which)], k, m)
        image = residual = None
        for i in np.unique(which):
            rows = which == i
            part, part_res = run_onnx(sessions[int(i)], k[rows], m[rows])
            if image is None:
                image = np.zeros((len(m), *part.shape[1:]), part.dtype)
                residual = np.zeros(len(m), part_res.dtype)
            image[rows], residual[rows] = part, part_res
        return image, residual

    return run


def bake_models(sn_model, gan_model, alphas: Sequence[float], held_out: Sequence[HeldOutSlice],
                out_dir: Path | str, *, continuous: bool = False, preset: str = "",
                sources: Mapping[str, Mapping[str, str]] | None = None,
                tolerance: float = PARITY_TOLERANCE, threads: int | None = None) -> dict:
    """Export theta(alpha) for each alpha (and the continuous model) into `out_dir`, one graph per set of
    cascades; returns the manifest. Each held-out slice is checked on the graph of its set against the
    whole SN in torch (which routes it by the same rule).

    Raises ModelError after writing everything when an ONNX model misses the parity tolerance, so the
    caller never registers such a set (the files stay in out_dir for inspection).
    """
    import torch

    from dnirecon.files import sha256_file
    from registry.export import export_reconstruction, ort_session, relative_max_error, run_onnx, run_torch
    from registry.interpolate import interpolate_pair

    alphas = check_alphas(alphas)
    if not held_out:
        raise DataError("no held-out slices to check parity and metrics on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sn_state = {k: v.detach().clone() for k, v in sn_model.state_dict().items()}
    gan_state = {k: v.detach().clone() for k, v in gan_model.state_dict().items()}
    work = type(sn_model)(sn_model.config).eval()  # theta(alpha) lives here, TORCH_FFT as in training
    sets = cascade_sets(sn_model.config)
    route = set_router(sets)
    routes = [int(route(s.mask)) for s in held_out]

    def export_sets(model, stem: str, gan=None) -> list[dict]:
        graphs = []
        for i, cascade_set in enumerate(sets):
            path = export_reconstruction(model.cascade_set(i), out_dir / graph_file(stem, cascade_set["accel"]),
                                         alpha_input=gan is not None,
                                         gan_state=None if gan is None else gan.cascade_set(i).state_dict())
            graphs.append({"file": path.name, "sha256": sha256_file(path)})
        return graphs

    entries, baked_images = [], {}
    for alpha in _progress(alphas, desc="bake alphas", unit="alpha"):
        work.load_state_dict(interpolate_pair(sn_state, gan_state, alpha))
        graphs = export_sets(work, alpha_key(alpha))
        sessions = [ort_session(out_dir / g["file"], threads) for g in graphs]
        worst, images = 0.0, []  # export.check_parity fused with the evaluation: one ORT run per slice
        for s, i in _progress(list(zip(held_out, routes)), desc=f"alpha {alpha:.2f} parity+metrics", unit="slice",
                              leave=False):
            out, _ = run_onnx(sessions[i], s.kspace, s.mask)
            ref, _ = run_torch(work, s.kspace, s.mask)
            worst = max(worst, relative_max_error(ref, out))  # never NaN: non-finite outputs give inf
            images.append(out)
        baked_images[alpha] = images
        entries.append({"alpha": alpha, "graphs": graphs, "parity_max_err": worst,
                        "metrics": mean_metrics(score(held_out, images))})
        log.info("alpha %.2f: parity %.2e, metrics %s", alpha, worst, entries[-1]["metrics"])

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "preset": preset,
        "sources": {k: dict(v) for k, v in (sources or {}).items()},
        "cascade_sets": sets,
        "alphas": entries,
        "parity_tolerance": tolerance,
        "held_out": {"volumes": sorted({s.volume for s in held_out}), "slices": len(held_out),
                     "accels": sorted({s.accel for s in held_out}),
                     "fingerprint": held_out_fingerprint(held_out)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    if continuous:
        with torch.random.fork_rng(devices=[]):
            sn_cpu, gan_cpu = (type(sn_model)(sn_model.config).eval() for _ in range(2))
        sn_cpu.load_state_dict(sn_state)
        gan_cpu.load_state_dict(gan_state)
        graphs = export_sets(sn_cpu, CONTINUOUS_STEM, gan=gan_cpu)
        sessions = [ort_session(out_dir / g["file"], threads) for g in graphs]
        worst = 0.0
        for alpha in _progress(alphas, desc="continuous vs baked", unit="alpha"):
            for s, i, baked in zip(held_out, routes, baked_images[alpha]):
                out, _ = run_onnx(sessions[i], s.kspace, s.mask, alpha=alpha)
                worst = max(worst, relative_max_error(baked, out))
        manifest["continuous"] = {"graphs": graphs, "max_err_vs_baked": worst}
    _write_json_atomic(out_dir / MANIFEST, manifest)

    failures = [f"alpha {e['alpha']:g}: {e['parity_max_err']:.3e}" for e in entries
                if not e["parity_max_err"] <= tolerance]
    if continuous and not manifest["continuous"]["max_err_vs_baked"] <= tolerance:
        failures.append(f"continuous vs baked: {manifest['continuous']['max_err_vs_baked']:.3e}")
    if failures:
        raise ModelError(f"bake failed parity (tolerance {tolerance:g} of the image maximum): "
                         + "; ".join(failures) + f"; nothing registered, files left in {out_dir}")
    return manifest


def _write_json_atomic(path: Path, data: Mapping) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def register_baked_set(directory: Path, manifest: Mapping, name: str = INTERPSN) -> tuple[str, str]:
    """Log the baked set as artifacts of a new run and register it as one version of `name`.

    Returns (version, run_id). The version's tags carry the lineage (store.manifest_tags).
    """
    from mlflow.exceptions import MlflowException

    from training.tracking import client, experiment_id, run_ends_on_error

    c = client()
    tags = manifest_tags(dict(manifest))
    run = c.create_run(experiment_id(EXPERIMENT), run_name=f"bake-{name}",
                       tags={"dnirecon.kind": "interpsn-bake", "alphas": tags["alphas"]})
    run_id = run.info.run_id
    with run_ends_on_error(run_id, c):  # Ctrl-C during the upload too
        for role, src in manifest["sources"].items():
            c.log_param(run_id, f"source.{role}", f"{src['name']}/{src['version']}")
        c.log_param(run_id, "alphas", tags["alphas"])
        c.log_param(run_id, "preset", manifest.get("preset", ""))
        for step, entry in enumerate(manifest["alphas"]):
            c.log_metric(run_id, "parity_max_err", entry["parity_max_err"], step=step)
            for metric, value in entry["metrics"].items():
                c.log_metric(run_id, f"{metric}.{alpha_key(entry['alpha'])}", float(value))
        c.log_artifacts(run_id, str(directory), ARTIFACT_DIR)
        source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
        try:
            c.get_registered_model(name)
        except MlflowException:
            try:
                c.create_registered_model(name, description="interpSN baked sets: one ONNX file per alpha "
                                          "(+ continuous), manifest.json; theta = (1-a) SN + a SN-GAN")
            except MlflowException:  # created meanwhile
                pass
        mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
        c.set_terminated(run_id)
    return str(mv.version), run_id


def bake(sn: str | ModelRef, gan: str | ModelRef, alphas: Sequence[float], data_dir: Path | str | None = None,
         *, held_out: Sequence[HeldOutSlice] | None = None, slices: int | None = 2,
         accels: Sequence[float] = (4.0, 8.0), continuous: bool = False, out_dir: Path | str | None = None,
         register: bool = True, name: str = INTERPSN, threads: int | None = None,
         tolerance: float = PARITY_TOLERANCE) -> BakeResult:
    """The `dnirecon registry bake` pipeline. Give `data_dir` (held-out volumes) or `held_out` slices."""
    import torch

    sn = sn if isinstance(sn, ModelRef) else parse_model_ref(sn, "--sn")
    gan = gan if isinstance(gan, ModelRef) else parse_model_ref(gan, "--gan")
    alphas = check_alphas(alphas)
    if held_out is None:
        if data_dir is None:
            raise ConfigError("--data DIR (held-out volumes) is required")
        held_out = load_held_out(data_dir, slices, accels)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="dnirecon-bake-"))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} exists and is not empty; give a new or empty directory")
    if threads:
        torch.set_num_threads(threads)

    loaded_sn, loaded_gan = _load_pair(sn, gan)
    sources = {"sn": {"name": sn.name, "version": loaded_sn.version},
               "sn-gan": {"name": gan.name, "version": loaded_gan.version}}
    log.info("baking %s/%s and %s/%s at alphas %s on %d held-out slices", sn.name, loaded_sn.version,
             gan.name, loaded_gan.version, alphas, len(held_out))
    manifest = bake_models(loaded_sn.model, loaded_gan.model, alphas, held_out, out_dir,
                           continuous=continuous, preset=str(loaded_sn.config.get("preset", "")),
                           sources=sources, tolerance=tolerance, threads=threads)
    version = run_id = None
    if register:
        version, run_id = register_baked_set(out_dir, manifest, name)
        log.info("registered %s version %s (run %s)", name, version, run_id)
    return BakeResult(out_dir, manifest, version, run_id)
