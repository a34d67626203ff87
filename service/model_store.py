"""Where baked sets come from: a local directory or the MLflow registry, with a sha256-checked disk
cache and an alias follower. Knows MLflow and files; nothing of onnxruntime or gRPC."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dnirecon.errors import ConfigError, ModelError
from dnirecon.files import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SERVED_PREFIX = ".served-"  # cache_dir/NAME/.served-ALIAS.json: the version last served for that alias
FORMAT = "dnirecon.interpsn/2"


@dataclass(frozen=True)
class BakedSet:
    directory: Path
    name: str
    version: str
    uri: str
    manifest: dict
    manifest_sha256: str
    # (alpha, ((acceleration of the set of cascades or None for a one-set model, onnx file), ...))
    baked: tuple[tuple[float, tuple[tuple[float | None, Path], ...]], ...]
    continuous: tuple[tuple[float | None, Path], ...] | None

    @property
    def preset(self) -> str:
        return str(self.manifest.get("preset", ""))


def _check_file_fields(mpath: Path, where: str, entry) -> None:
    if not isinstance(entry, dict) or not {"file", "sha256"} <= entry.keys():
        raise ModelError(f"{mpath}: {where} needs 'file' and 'sha256'")
    for key in ("file", "sha256"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise ModelError(f"{mpath}: {where}.{key} is {entry[key]!r}, expected a non-empty string")


def _set_accels(mpath: Path, manifest: dict) -> list[float | None]:
    """The acceleration of each set of cascades ('cascade_sets'): one null (one set serves all), or
    two or more increasing numbers >= 1 (each slice runs the set dnirecon.routing.nearest_set picks)."""
    sets = manifest.get("cascade_sets")
    if not isinstance(sets, list) or not sets or not all(isinstance(e, dict) and "accel" in e for e in sets):
        raise ModelError(f"{mpath}: field 'cascade_sets' is {sets!r:.200}, expected a non-empty list of "
                         "{accel, serves}")
    accels = [e["accel"] for e in sets]
    if accels == [None]:
        return accels
    numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) and a >= 1 for a in accels)
    if len(accels) < 2 or not numbers or accels != sorted(set(accels)):
        raise ModelError(f"{mpath}: cascade_sets accelerations are {accels!r:.200}, expected [null] or two or "
                         "more increasing numbers >= 1")
    return [float(a) for a in accels]


def read_baked_set(directory: str | os.PathLike, *, name: str = "", version: str = "", uri: str = "") -> BakedSet:
    """Reads manifest.json and checks every listed file's sha256 (ModelError on any mismatch).

    Each alpha (and the continuous model) lists one graph per set of cascades, in 'cascade_sets' order."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ModelError(f"{mpath}: missing; a baked set directory holds manifest.json and its ONNX files")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{mpath}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        older = " (an older layout with one graph for all accelerations: bake the set again)" \
            if got == "dnirecon.interpsn/1" else ""
        raise ModelError(f"{mpath}: field 'format' is {got!r:.100}, expected {FORMAT!r}{older}")
    accels = _set_accels(mpath, manifest)
    entries = manifest.get("alphas") or []
    if not isinstance(entries, list):
        raise ModelError(f"{mpath}: field 'alphas' must be a list of {{alpha, graphs}}")

    def graphs_of(where: str, entry: dict) -> list[dict]:
        graphs = entry.get("graphs")
        if not isinstance(graphs, list) or len(graphs) != len(accels):
            raise ModelError(f"{mpath}: {where}.graphs is {graphs!r:.200}, expected a list of {len(accels)} "
                             "{file, sha256}, one per entry of cascade_sets")
        for j, g in enumerate(graphs):
            _check_file_fields(mpath, f"{where}.graphs[{j}]", g)
        return graphs

    files: list[tuple[float | None, list[dict]]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"alpha", "graphs"} <= entry.keys():
            raise ModelError(f"{mpath}: alphas[{i}] needs 'alpha' and 'graphs'")
        value = entry["alpha"]
        alpha = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
        if not 0.0 <= alpha <= 1.0:  # also false for NaN, null, strings and booleans
            raise ModelError(f"{mpath}: alphas[{i}].alpha is {value!r:.100}, expected a number in [0, 1]")
        files.append((alpha, graphs_of(f"alphas[{i}]", entry)))
    cont = manifest.get("continuous")
    if cont:
        if not isinstance(cont, dict):
            raise ModelError(f"{mpath}: 'continuous' needs 'graphs'")
        files.append((None, graphs_of("continuous", cont)))
    if not files:
        raise ModelError(f"{mpath}: lists no ONNX file (empty 'alphas' and no 'continuous')")
    baked, continuous = [], None
    for alpha, graphs in files:
        paths = []
        for accel, entry in zip(accels, graphs):
            path = directory / entry["file"]
            if Path(entry["file"]).name != entry["file"] or not path.is_file():
                raise ModelError(f"{mpath}: file {entry['file']!r:.200} is not a file in {directory}")
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ModelError(f"{path}: sha256 {digest} does not match manifest.json ({entry['sha256']!r:.100})")
            paths.append((accel, path))
        if alpha is None:
            continuous = tuple(paths)
        else:
            baked.append((alpha, tuple(paths)))
    return BakedSet(
        directory=directory,
        name=name or str(manifest.get("name", directory.name)),
        version=version or str(manifest.get("version", "local")),
        uri=uri or str(directory),
        manifest=manifest,
        manifest_sha256=sha256_file(mpath),
        baked=tuple(sorted(baked, key=lambda e: e[0])),
        continuous=continuous,
    )


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS -> (NAME, ALIAS, None); models:/NAME/VERSION -> (NAME, None, VERSION)."""
    if not uri.startswith("models:/"):
        raise ConfigError(f"DNIRECON_MODEL_URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in name:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise ConfigError(f"DNIRECON_MODEL_URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


TMP_PREFIX = ".tmp-"
STAGING_PREFIX = ".new-"
# A staging directory exists unlocked only between its mkdir and its flock (microseconds): one unlocked
# for this long belongs to a process killed in between.
STAGING_GRACE_S = 60.0


def claim_download_dir(parent: Path, version: str) -> tuple[Path, int]:
    """A new `.tmp-` directory under parent for one download, with an exclusive flock on it held through the
    returned descriptor. The lock goes with the process however it ends (SIGKILL, os._exit), which is how
    sweep_abandoned tells an abandoned directory from one still being written, on a cache shared by
    processes, pods or container restarts alike (a pid would not: a restarted container is pid 1 again)."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"  # locked before it is renamed to .tmp-
    staging.mkdir()
    fd = os.open(staging, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp = parent / f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:12]}"
        os.rename(staging, tmp)
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return tmp, fd


def sweep_abandoned(parent: Path) -> list[Path]:
    """Removes the `.tmp-` download directories under parent whose lock is free (their process is gone),
    and `.new-` staging directories unlocked for over STAGING_GRACE_S; returns them. Directories still
    locked are another download in progress, and are left."""
    removed = []
    prefixes = (TMP_PREFIX, STAGING_PREFIX) if parent.is_dir() else ()
    for d in [d for prefix in prefixes for d in sorted(parent.glob(f"{prefix}*"))]:
        try:
            if d.name.startswith(STAGING_PREFIX) and time.time() - d.stat().st_mtime < STAGING_GRACE_S:
                continue  # may be between its mkdir and its flock
            fd = os.open(d, os.O_RDONLY)
        except OSError:  # removed meanwhile, or not a directory we can open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live download
        else:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d abandoned download director%s under %s: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", parent, ", ".join(d.name for d in removed))
    return removed


class MlflowStore:
    """Resolves registered versions and downloads their artifacts into cache_dir/NAME/VERSION."""

    def __init__(self, tracking_uri: str | None, cache_dir: Path):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the service log to log lines
        from mlflow.tracking import MlflowClient  # heavy import, only when MLflow is used

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.cache_dir = Path(cache_dir).expanduser()

    def resolve(self, name: str, alias: str | None, version: str | None, timeout: float | None = None) -> tuple[str, str]:
        """-> (version, source) of models:/name@alias or models:/name/version. With a timeout, a registry that has
        not answered within it is a ModelError (the call, retrying inside MLflow, is left to end on its own)."""
        if timeout is not None:
            return _within(lambda: self.resolve(name, alias, version), timeout,
                           f"MLflow model {name}@{alias or version} at {self.tracking_uri}: no answer within {timeout:g} s")
        try:
            mv = self.client.get_model_version_by_alias(name, alias) if alias else self.client.get_model_version(name, version)
        except Exception as exc:  # MlflowException and connection errors alike
            what = f"{name}@{alias}" if alias else f"{name}/{version}"
            raise ModelError(f"MLflow model {what} at {self.tracking_uri}: cannot resolve ({exc})") from None
        return str(mv.version), str(mv.source)

    def fetch(self, name: str, version: str, source: str, uri: str, timings: dict[str, float] | None = None) -> BakedSet:
        """The baked set of name/version: from the cache when it verifies, else downloaded and verified.
        timings, if given, gets the seconds spent in "download" and "verify"."""
        timings = {} if timings is None else timings
        target = self.cache_dir / name / version
        if target.is_dir():
            try:
                t0 = time.monotonic()
                cached = read_baked_set(target, name=name, version=version, uri=uri)
                timings.update(download=0.0, verify=time.monotonic() - t0)
                return cached
            except ModelError as exc:
                log.warning("cached %s/%s fails verification (%s); downloading again", name, version, exc)
                shutil.rmtree(target, ignore_errors=True)
        import mlflow.artifacts

        sweep_abandoned(self.cache_dir / name)  # left by a download its process never finished (killed)
        tmp, lock = claim_download_dir(self.cache_dir / name, version)
        try:
            t0 = time.monotonic()
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=self.tracking_uri))
            timings["download"] = time.monotonic() - t0
            if not (local / MANIFEST).is_file():  # a source pointing at the run root holding one folder
                found = list(local.rglob(MANIFEST))
                if len(found) != 1:
                    raise ModelError(f"MLflow {name}/{version} source {source}: expected one {MANIFEST}, found {len(found)}")
                local = found[0].parent
            t0 = time.monotonic()
            read_baked_set(local, name=name, version=version, uri=uri)  # refuse before caching
            if not target.exists():  # another process may have cached it meanwhile
                os.replace(local, target)
            verified = read_baked_set(target, name=name, version=version, uri=uri)
            timings["verify"] = time.monotonic() - t0
        except ModelError:
            raise
        except Exception as exc:  # download failures
            raise ModelError(f"MLflow {name}/{version}: cannot download {source} ({exc})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(lock)
        return verified

    def load(self, uri: str, timeout: float | None = None) -> BakedSet:
        """The set uri names, from the registry; timeout bounds the registry's first answer (resolve)."""
        name, alias, version = parse_model_uri(uri)
        version, source = self.resolve(name, alias, version, timeout=timeout)
        return self.fetch(name, version, source, uri)

    def _served_record(self, name: str, alias: str) -> Path:
        return self.cache_dir / name / f"{SERVED_PREFIX}{alias}.json"

    def remember_served(self, uri: str, version: str) -> None:
        """Records that uri's alias resolved to version and was served, for a start with the registry unreachable."""
        name, alias, _v = parse_model_uri(uri)
        if not alias:
            return
        record = self._served_record(name, alias)
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": version, "time": time.time()}))
            os.replace(tmp, record)
        except OSError as exc:  # a read-only cache still serves; the fallback then picks the highest version
            log.warning("cannot record the served version in %s: %s", record, exc)

    def newest_cached(self, uri: str) -> BakedSet | None:
        """The set to serve while the registry cannot be reached: the version last served for uri's alias if it
        still verifies, else the highest-numbered cached version of its model that verifies; None if none."""
        name, alias, version = parse_model_uri(uri)
        folder = self.cache_dir / name
        if version is not None:
            candidates = [version]
        else:
            found = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")] if folder.is_dir() else []
            candidates = sorted(found, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v), reverse=True)
            try:
                last = json.loads(self._served_record(name, alias).read_text()).get("version")
            except (OSError, ValueError, AttributeError):
                last = None
            if isinstance(last, str) and last in candidates:
                candidates.remove(last)
                candidates.insert(0, last)
        for v in candidates:
            try:
                return read_baked_set(folder / v, name=name, version=v, uri=uri)
            except ModelError as exc:
                log.warning("cached %s/%s fails verification, not served: %s", name, v, exc)
        return None


def _within(call: Callable, timeout: float, message: str):
    """call() in a daemon thread; its result or exception, or ModelError(message) once timeout has passed."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="registry-call", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise ModelError(message)
    if "error" in box:
        raise box["error"]
    return box["value"]


PHASES = ("poll", "resolve", "download", "verify", "load", "warmup")


class AliasFollower:
    """Polls models:/NAME@ALIAS; a new version is handed to on_new (load + warm + swap), which raises to
    refuse it and may return the seconds of its own phases ({"load": ..., "warmup": ...}); a refused version
    is not retried until the alias moves. on_confirmed(version) follows every answer of the registry, and
    on_phases(phases) every version installed, with the seconds of each phase in PHASES that was measured."""

    def __init__(self, store: MlflowStore, uri: str, current_version: str | None, poll_s: float,
                 on_new: Callable[[BakedSet], dict | None], on_refused: Callable[[str, Exception], None] | None = None,
                 on_confirmed: Callable[[str], None] | None = None,
                 on_phases: Callable[[dict[str, float]], None] | None = None):
        self.store, self.uri, self.poll_s = store, uri, poll_s
        self.name, self.alias, _v = parse_model_uri(uri)
        self.current, self.refused = current_version, None
        self.on_new, self.on_refused = on_new, on_refused
        self.on_confirmed, self.on_phases = on_confirmed, on_phases
        self._answered_at: float | None = None  # monotonic time of the registry's last answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alias-follower", daemon=True)

    def start(self) -> "AliasFollower":
        if self.alias:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> None:
        t0 = time.monotonic()
        version, source = self.store.resolve(self.name, self.alias, None)
        phases = {"resolve": time.monotonic() - t0}
        # the registry does not date an alias move: the move fell somewhere in the wait since the last answer
        if self._answered_at is not None:
            phases["poll"] = t0 - self._answered_at
        self._answered_at = time.monotonic()
        if self.on_confirmed:
            self.on_confirmed(version)
        if version in (self.current, self.refused):
            return
        log.info("alias %s@%s moved to version %s; loading beside version %s", self.name, self.alias, version, self.current)
        try:
            fetched = self.store.fetch(self.name, version, source, self.uri, timings=phases)
            phases.update(self.on_new(fetched) or {})
        except Exception as exc:  # refusing keeps the old set serving
            self.refused = version
            log.error("version %s of %s refused, version %s keeps serving: %s", version, self.name, self.current, exc)
            if self.on_refused:
                self.on_refused(version, exc)
            return
        self.current, self.refused = version, None
        self.store.remember_served(self.uri, version)
        log.info("alias %s@%s: version %s serves new streams %s", self.name, self.alias, version, format_phases(phases))
        if self.on_phases:
            self.on_phases(phases)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception as exc:  # a registry outage must not stop following
                log.warning("alias check of %s failed: %s", self.uri, exc)


def format_phases(phases: dict[str, float]) -> str:
    """'12.3 s after the move (poll 1.2 s, resolve 0.1 s, ...)': the phases measured, in PHASES order."""
    known = [p for p in PHASES if p in phases]
    parts = ", ".join(f"{p} {phases[p]:.2f} s" for p in known)
    total = sum(phases[p] for p in known)
    return f"{total:.2f} s at most after the move ({parts})" if "poll" in phases else f"{total:.2f} s after the check that saw the move ({parts})"
