"""MLflow for training: tracking URI, runs, the `model/` artifact, registered versions and loading them.

The `model/` artifact directory of a run holds `weights.pt` (a state_dict, loaded with
weights_only=True) and `config.json` ({"kind", "preset", "model_config", "arch_signature"}).
Registered models `sn`, `sn-gan`, `unet`: one version per training run, alias `champion` on the newest
run that completed its schedule (a run stopped early by --max-steps is registered with the tag
truncated=true and leaves `champion` where it was).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple
from urllib.parse import urlparse

from dnirecon.errors import ConfigError, Interrupted, ModelError

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

KINDS = ("sn", "sn-gan", "unet")
EXPERIMENT = "dnirecon-training"
CHAMPION = "champion"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
MODEL_DIR = "model"


class LoadedModel(NamedTuple):
    model: Any  # torch.nn.Module in eval mode
    config: dict
    version: str | None  # registered version, None for a local checkpoint


# ---------------------------------------------------------------------------------------------
# tracking store


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a SQLite store `mlflow.db` in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def artifact_root(uri: str | None = None) -> str | None:
    """Where a new experiment keeps artifacts: `mlartifacts/` beside a local SQLite/file store.

    None for a tracking server, which chooses its own (--artifacts-destination).
    """
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else Path.cwd() / "mlflow.db"
        return (db.resolve().parent / "mlartifacts").as_uri()
    if scheme in ("", "file"):
        return None  # a file store puts artifacts beside its runs already
    return None


def client():
    """An MlflowClient on tracking_uri() (the registry URI follows it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def run_ends_on_error(run_id: str | None, c=None) -> Iterator[None]:
    """An error inside ends the run FAILED, Ctrl-C or a signal KILLED: no run left RUNNING for ever in the UI.
    run_id None: nothing to end. c: the MlflowClient to use (default client())."""
    try:
        yield
    except BaseException as exc:
        if run_id:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "FAILED"
            try:
                (c or client()).set_terminated(run_id, status=status)
            except Exception as mark_exc:  # the store itself may be what failed: keep the first error
                log.warning("could not mark MLflow run %s %s: %s", run_id, status, mark_exc)
        raise


def experiment_id(name: str | None = None) -> str:
    """Id of the training experiment, created with the artifact location above if missing."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_root())


# ---------------------------------------------------------------------------------------------
# logging a run


def flatten_params(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts/lists to MLflow params `a.b.c` (values truncated to MLflow's 6000-char limit)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten_params(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:6000]
    return out


def log_dict_artifact(run_id: str, data: Mapping, name: str) -> None:
    client().log_dict(run_id, dict(data), name)


def log_figure(run_id: str, figure, name: str) -> None:
    """Log a matplotlib figure (Agg) as a PNG artifact and close it."""
    import matplotlib.pyplot as plt

    client().log_figure(run_id, figure, name)
    plt.close(figure)


def model_config_document(kind: str, preset: str, model_config: Mapping, signature: str,
                          extra: Mapping | None = None) -> dict:
    if kind not in KINDS:
        raise ConfigError(f"model kind {kind!r} is not one of {', '.join(KINDS)}")
    doc = {"kind": kind, "preset": preset, "model_config": dict(model_config), "arch_signature": signature}
    if extra:
        doc.update(extra)
    return doc


def write_model_dir(directory: Path, state_dict: Mapping, config: Mapping) -> Path:
    """`directory/weights.pt` (torch.save of the state_dict) and `directory/config.json`."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def log_model_artifact(run_id: str, state_dict: Mapping, config: Mapping) -> str:
    """Log `model/` to the run; returns its artifact URI (the source of a registered version)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = write_model_dir(Path(tmp) / MODEL_DIR, state_dict, config)
        client().log_artifacts(run_id, str(d), MODEL_DIR)
    run = client().get_run(run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_DIR}"


def register_version(name: str, source: str, run_id: str, tags: Mapping[str, Any],
                     champion: bool = True) -> str:
    """A new version of registered model `name` (created if missing); returns the version number.

    `champion`: also move alias `champion` to it (train.py passes False for a truncated run)."""
    from mlflow.exceptions import MlflowException

    if name not in KINDS:
        raise ConfigError(f"registered model name {name!r} is not one of {', '.join(KINDS)}")
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=_DESCRIPTIONS[name])
        except MlflowException:  # created meanwhile by another process
            pass
    mv = c.create_model_version(name, source=source, run_id=run_id,
                                tags={k: str(v) for k, v in tags.items()})
    if champion:
        c.set_registered_model_alias(name, CHAMPION, mv.version)
    return str(mv.version)


_DESCRIPTIONS = {
    "sn": "Sensitivity network (unrolled Down-Up + coil-wise DC) trained with 1 - SSIM + 1e-3 L1.",
    "sn-gan": "SN fine-tuned with LSGAN (PatchGAN on foreground magnitudes) + 0.1 L_SN.",
    "unet": "fastMRI-style U-Net baseline on the zero-filled RSS image.",
}


# ---------------------------------------------------------------------------------------------
# loading


def build_model(config: Mapping):
    """An untrained module of the architecture `config` describes (kind + model_config)."""
    kind = config.get("kind")
    model_config = config.get("model_config")
    if kind not in KINDS or not isinstance(model_config, Mapping):
        raise ModelError(f"model config needs kind in {KINDS} and a model_config mapping, got kind={kind!r}")
    return _construct(kind, dict(model_config))


def _construct(kind: str, model_config: dict):
    # model_config is the preset's config dataclass as plain data (config.json's "model_config")
    from training.presets import SNConfig, UNetConfig, config_from_dict

    if kind in ("sn", "sn-gan"):
        from training.models.sn import SensitivityNetwork

        return SensitivityNetwork(config_from_dict(SNConfig, model_config, "config.json model_config"))
    from training.models.unet import UNet

    return UNet(config_from_dict(UNetConfig, model_config, "config.json model_config"))


def check_and_load_state(model, state_dict: Mapping, config: Mapping, origin: str):
    """Load `state_dict` into `model` after comparing architecture signatures; ModelError if they differ."""
    from training.models.signature import arch_signature

    expected = arch_signature(model.state_dict())
    recorded = config.get("arch_signature")
    got = arch_signature(state_dict)
    if recorded is not None and recorded != expected:
        raise ModelError(
            f"{origin}: config.json arch_signature {recorded} does not match the architecture its "
            f"model_config builds ({expected})")
    if got != expected:
        raise ModelError(
            f"{origin}: weights have architecture signature {got}, but the config's architecture "
            f"has {expected}; the state_dict belongs to a different model")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def load_model_dir(directory: Path, version: str | None = None, origin: str | None = None) -> LoadedModel:
    import torch

    origin = origin or str(directory)
    cfg_path, w_path = Path(directory) / CONFIG_FILE, Path(directory) / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelError(f"{origin}: missing {p.name} in the model directory (expected {CONFIG_FILE} "
                             f"and {WEIGHTS_FILE})")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{origin}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    state = torch.load(w_path, map_location="cpu", weights_only=True)
    model = check_and_load_state(build_model(config), state, config, origin)
    return LoadedModel(model, config, version)


def resolve_version(name: str, ref: str | int):
    """A ModelVersion from a version number ("3") or an alias ("champion")."""
    from mlflow.exceptions import MlflowException

    c = client()
    ref = str(ref)
    try:
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise ModelError(f"registered model {name!r} has no version or alias {ref!r} in "
                         f"{tracking_uri()} ({exc.message if hasattr(exc, 'message') else exc})") from None


def download_version(name: str, ref: str | int, dst: Path | None = None) -> tuple[Path, Any]:
    import mlflow

    mv = resolve_version(name, ref)
    dst = Path(dst or tempfile.mkdtemp(prefix=f"dnirecon-{name}-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst),
                                                tracking_uri=tracking_uri())
    return Path(local), mv


def load_registered_model(name: str, ref: str | int = CHAMPION) -> LoadedModel:
    """The registered version `name` / `ref` (number or alias) as a module in eval mode."""
    with tempfile.TemporaryDirectory() as tmp:
        local, mv = download_version(name, ref, Path(tmp))
        return load_model_dir(local, version=str(mv.version), origin=f"models:/{name}/{mv.version}")


def load_checkpoint(path: str | Path) -> LoadedModel:
    """A local training checkpoint (train.py's .pt file) or a `model/` directory, as a module in eval mode."""
    import torch

    path = Path(path)
    if path.is_dir():
        return load_model_dir(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "config" not in ckpt:
        raise ModelError(f"checkpoint {path} has no 'model' state_dict and 'config' (not a dnirecon checkpoint)")
    config = json.loads(ckpt["config"]) if isinstance(ckpt["config"], str) else dict(ckpt["config"])
    model = check_and_load_state(build_model(config), ckpt["model"], config, str(path))
    version = ckpt.get("registered_version")
    return LoadedModel(model, config, None if version in (None, "") else str(version))
