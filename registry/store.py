"""MLflow registry operations for baked sets: list, describe, promote with gates, rollback.

No torch here: these commands run wherever the MLflow client runs. Aliases only, never stages.
A promotion is recorded twice: as tags on the promoted version (who, when, why, what it replaced)
and in an alias history on the registered model (a JSON list per alias), which rollback walks back.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dnirecon.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

INTERPSN = "interpsn"
MANIFEST_FORMAT = "dnirecon.interpsn/2"
# Contract: ONNX vs torch within 1e-4 of the image maximum (every baked graph, and the continuous model vs the baked ones).
PARITY_TOLERANCE = 1e-4
# Metric gate: the candidate may be this much worse than the version it replaces (evaluation noise).
PSNR_TOLERANCE_DB = 0.1
SSIM_TOLERANCE = 0.002
HISTORY_TAG = "alias_history.{alias}"
# A promotion or rollback reason is stored up to this many characters (on the version and in the alias
# history), so one history entry always fits MLflow's 5000-character registered-model tag value.
MAX_REASON_CHARS = 1000
HELD_OUT_TAG = "held_out_fingerprint"


def get_client(tracking_uri: str | None = None):
    """An MlflowClient on `tracking_uri`, default training.tracking's (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    from training.tracking import tracking_uri as default_uri  # torch-free at import

    uri = tracking_uri or default_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def current_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def alpha_key(alpha: float) -> str:
    """The per-alpha name used in file names and tags: 0.25 -> 'alpha_0.25'."""
    return f"alpha_{float(alpha):.2f}"


# ---------------------------------------------------------------- lineage tags of a baked set
def manifest_tags(manifest: dict) -> dict[str, str]:
    """Flatten a baked set's manifest into the version tags that make each alpha traceable."""
    alphas = manifest["alphas"]
    tags = {
        "format": manifest["format"],
        "preset": str(manifest.get("preset", "")),
        "alphas": ",".join(f"{a['alpha']:g}" for a in alphas),
        "parity_max_err": f"{worst_error(a['parity_max_err'] for a in alphas):.3e}",
        # the tolerance the bake checked against (its manifest), not the constant: they differ for a set baked
        # with another tolerance (registry.bake.bake(tolerance=))
        "parity_tolerance": f"{float(manifest.get('parity_tolerance', PARITY_TOLERANCE)):g}",
    }
    held_out = manifest.get("held_out") or {}
    if held_out.get("fingerprint"):
        # what the metrics were measured on: the promotion gate compares only like with like
        tags[HELD_OUT_TAG] = str(held_out["fingerprint"])
        tags["held_out"] = (f"{len(held_out.get('volumes', []))} volumes, {held_out.get('slices', '?')} slices, "
                            f"accels {','.join(f'{float(a):g}' for a in held_out.get('accels', []))}")
    for role, src in manifest["sources"].items():
        tags[f"source.{role}"] = f"{src['name']}/{src['version']}"
        tags[f"{role.replace('-', '_')}_version"] = str(src["version"])
    for a in alphas:
        k = alpha_key(a["alpha"])
        tags[f"sha256.{k}"] = ",".join(g["sha256"] for g in a["graphs"])  # in cascade_sets order
        tags[f"parity.{k}"] = f"{a['parity_max_err']:.3e}"
        tags[f"metrics.{k}"] = json.dumps({m: round(float(v), 6) for m, v in a["metrics"].items()},
                                         sort_keys=True)
    summary = metrics_summary(alphas)
    tags["metrics_summary"] = json.dumps(summary, sort_keys=True)
    if manifest.get("continuous"):
        cont = manifest["continuous"]
        tags["sha256.continuous"] = ",".join(g["sha256"] for g in cont["graphs"])
        tags["continuous_max_err_vs_baked"] = f"{cont['max_err_vs_baked']:.3e}"
    return tags


def worst_error(errors) -> float:
    """The largest error, where any non-finite (NaN) error makes the whole set infinitely wrong.

    Python's max() silently skips a NaN that is not first; a parity error must never do that."""
    worst = 0.0
    for e in errors:
        e = float(e)
        if not math.isfinite(e):
            return math.inf
        worst = max(worst, e)
    return worst


def metrics_summary(alphas: list[dict]) -> dict[str, float]:
    """Mean of each metric over the baked alphas, and the alpha-0 (SN end) values."""
    out: dict[str, float] = {}
    names = sorted({m for a in alphas for m in a["metrics"]})
    for m in names:
        vals = [float(a["metrics"][m]) for a in alphas if m in a["metrics"]]
        out[f"{m}_mean"] = round(sum(vals) / len(vals), 6)
    for a in alphas:
        if float(a["alpha"]) == 0.0:
            out.update({f"{m}_alpha0": round(float(v), 6) for m, v in a["metrics"].items()})
    return out


def per_alpha_metrics(tags: dict[str, str]) -> dict[float, dict[str, float]]:
    out = {}
    for key, value in tags.items():
        if key.startswith("metrics.alpha_"):
            out[round(float(key[len("metrics.alpha_"):]), 2)] = json.loads(value)
    return out


# ---------------------------------------------------------------- resolving versions
# What MLflow answers for a name, version or alias that does not exist (sqlite and REST stores). Any
# other MlflowException (a locked database, a server error) is not an answer and must not be read as one.
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _not_found(exc) -> bool:
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES


def _unreadable(client, what: str, exc) -> ModelError:
    return ModelError(f"MLflow at {client.tracking_uri} could not be read ({what}): "
                      f"{exc.message if hasattr(exc, 'message') else exc}; nothing was changed, try again")


def resolve_version(client, name: str, version: str | int | None = None, alias: str | None = None):
    """The ModelVersion for a version number or an alias (ModelError naming what is missing)."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise ConfigError("give exactly one of --version or --alias")
    what = f"alias {alias!r}" if alias is not None else f"version {version}"
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise _unreadable(client, f"{name} {what}", exc) from None
        raise ModelError(f"registered model {name!r} has no {what} in {client.tracking_uri}: "
                         f"{exc.message if hasattr(exc, 'message') else exc}") from None


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise _unreadable(client, f"registered model {name!r}", exc) from None
        raise ModelError(f"no registered model {name!r} in {client.tracking_uri} "
                         "(bake one with `dnirecon registry bake`, or check --model)") from None


def _alias_holder(client, name: str, alias: str):
    """The version `alias` points at, None when it points nowhere. Read from the registered model's
    alias map, so that only a missing alias means None: an unreadable store raises (read as "no
    holder", it would let a promotion skip the gates against the version it replaces)."""
    aliases = dict(getattr(_registered(client, name), "aliases", None) or {})
    if alias not in aliases:
        return None
    return resolve_version(client, name, version=aliases[alias])


# ---------------------------------------------------------------- list / describe
def list_versions(client, name: str | None = None) -> list[dict[str, Any]]:
    """One row per registered version: model, version, aliases, created (UTC), key tags."""
    if name is not None:
        models = [_registered(client, name)]
    else:
        models = list(client.search_registered_models(max_results=1000))
    rows = []
    for rm in sorted(models, key=lambda m: m.name):
        # search_model_versions leaves ModelVersion.aliases empty; the registered model has them
        by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in sorted(client.search_model_versions(f"name='{rm.name}'"), key=lambda v: int(v.version)):
            rows.append({
                "model": rm.name,
                "version": str(mv.version),
                "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                .strftime("%Y-%m-%d %H:%M"),
                "tags": _key_tags(mv.tags or {}),
            })
    return rows


def _key_tags(tags: dict[str, str]) -> str:
    if "alphas" in tags:
        summary = json.loads(tags.get("metrics_summary", "{}"))
        parts = [f"alphas={tags['alphas']}",
                 f"sn={tags.get('sn_version', '?')}", f"sn-gan={tags.get('sn_gan_version', '?')}",
                 f"parity={tags.get('parity_max_err', '?')}"]
        if "psnr_mean" in summary:
            parts.append(f"psnr={summary['psnr_mean']:.2f}")
        if "ssim_mean" in summary:
            parts.append(f"ssim={summary['ssim_mean']:.4f}")
        if "promoted_by" in tags:
            parts.append(f"promoted_by={tags['promoted_by']}")
        return " ".join(parts)
    skip = ("sha256.", "metrics.", "parity.", "mlflow.")
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items()) if not k.startswith(skip) and len(v) <= 40)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no registered models)"
    columns = columns or list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def describe(client, name: str, version: str | int | None = None, alias: str | None = None) -> dict[str, Any]:
    """A version's identity, source, aliases, tags and (for the registered model) alias histories."""
    if version is None and alias is None:
        versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        if not versions:
            raise ModelError(f"registered model {name!r} has no versions in {client.tracking_uri}")
        mv = versions[-1]
    else:
        mv = resolve_version(client, name, version, alias)
    rm = _registered(client, name)
    # search_model_versions (and get_model_version in some stores) leave ModelVersion.aliases empty;
    # the registered model's alias map is the authority
    aliases = sorted({a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version)}
                     | set(mv.aliases or []))
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": aliases,
        "source": mv.source,
        "run_id": mv.run_id,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(),
        "tags": dict(sorted((mv.tags or {}).items())),
        "alias_history": {k.split(".", 1)[1]: json.loads(v) for k, v in (rm.tags or {}).items()
                          if k.startswith("alias_history.")},
    }


# ---------------------------------------------------------------- promotion gates
@dataclass
class GateResult:
    passed: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_gates(candidate_tags: dict[str, str], incumbent_tags: dict[str, str] | None,
                parity_tolerance: float = PARITY_TOLERANCE, psnr_tolerance: float = PSNR_TOLERANCE_DB,
                ssim_tolerance: float = SSIM_TOLERANCE) -> GateResult:
    """The promotion gates; every failure is listed (GateResult.failures), not only the first.

    - parity: parity_max_err, each parity.alpha_X.XX and continuous_max_err_vs_baked finite and within
      the tolerance;
    - metrics: every metrics.alpha_* value finite (with or without a current holder);
    - coverage: the candidate bakes every alpha the current version serves, and the continuous model
      if the current version has one (a promotion must not take away what clients use);
    - metrics comparison: only on the same held-out data (held_out_fingerprint tags equal), mean PSNR
      and SSIM over the current version's alphas no worse than its own beyond a small tolerance.
      Averaging covers the whole trade-off, not only the SN end."""
    res = GateResult(passed=True)
    parity_keys = ["parity_max_err", "continuous_max_err_vs_baked"]
    parity_keys += sorted(k for k in candidate_tags if k.startswith("parity.alpha_"))
    for key in parity_keys:
        if key not in candidate_tags:
            if key == "parity_max_err":
                res.failures.append("parity gate: the version has no parity_max_err tag (not a baked set?)")
            continue
        try:
            err = float(candidate_tags[key])
        except ValueError:
            res.failures.append(f"parity gate: {key} = {candidate_tags[key]!r} is not a number")
            continue
        if not (math.isfinite(err) and err <= parity_tolerance):
            res.failures.append(f"parity gate: {key} = {err:.3e} exceeds the tolerance {parity_tolerance:g}"
                                + ("" if math.isfinite(err) else " (non-finite: the ONNX or torch output "
                                   "was not finite)"))
    cand = per_alpha_metrics(candidate_tags)
    if not cand:
        res.failures.append("metrics gate: the version has no metrics.alpha_* tags")
    bad = [f"alpha {a:g} {m}={v}" for a, ms in sorted(cand.items()) for m, v in sorted(ms.items())
           if not _finite(v)]
    if bad:
        res.failures.append("metrics gate: non-finite metrics (" + ", ".join(bad) + "); every metric of "
                            "every alpha must be a finite number")
    if cand and incumbent_tags is None:
        res.notes.append("metrics gate: no version holds the alias yet; nothing to compare")
    elif cand:
        _compare_with_incumbent(res, candidate_tags, cand, incumbent_tags, psnr_tolerance, ssim_tolerance)
    res.passed = not res.failures
    return res


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _compare_with_incumbent(res: GateResult, candidate_tags: dict[str, str], cand: dict, incumbent_tags: dict,
                            psnr_tolerance: float, ssim_tolerance: float) -> None:
    inc = per_alpha_metrics(incumbent_tags)
    missing = sorted(set(inc) - set(cand))
    if missing:
        res.failures.append(f"coverage gate: the candidate lacks alpha(s) {', '.join(f'{a:g}' for a in missing)} "
                            f"that the current version serves (candidate {sorted(cand)}, current {sorted(inc)})")
    if "sha256.continuous" in incumbent_tags and "sha256.continuous" not in candidate_tags:
        res.failures.append("coverage gate: the candidate has no continuous model (continuous.onnx) and the "
                            "current version has one; bake with --continuous")
    fp_cand, fp_inc = candidate_tags.get(HELD_OUT_TAG), incumbent_tags.get(HELD_OUT_TAG)
    if not fp_cand or not fp_inc or fp_cand != fp_inc:
        if fp_cand and fp_inc:
            why = (f"candidate {HELD_OUT_TAG} {fp_cand[:12]} ({candidate_tags.get('held_out', '?')}) differs "
                   f"from the current version's {fp_inc[:12]} ({incumbent_tags.get('held_out', '?')})")
        else:
            who = ("neither the candidate nor the current version has a" if not (fp_cand or fp_inc)
                   else "the candidate has no" if not fp_cand else "the current version has no")
            why = f"{who} {HELD_OUT_TAG} tag (baked before held-out fingerprints were recorded)"
        res.failures.append(f"metrics gate: the metrics were not measured on the same held-out data: {why}; "
                            "re-bake on the same --data/--slices/--accel to compare them")
        return
    common = sorted(set(cand) & set(inc))
    if not common:
        res.failures.append(f"metrics gate: no alpha in common with the current version "
                            f"(candidate {sorted(cand)}, current {sorted(inc)})")
        return
    for metric, tol, unit in (("psnr", psnr_tolerance, " dB"), ("ssim", ssim_tolerance, "")):
        try:
            c = sum(cand[a][metric] for a in common) / len(common)
            i = sum(inc[a][metric] for a in common) / len(common)
        except KeyError:
            res.failures.append(f"metrics gate: {metric} missing for an alpha in {common}")
            continue
        if not (c >= i - tol):
            res.failures.append(f"metrics gate: mean {metric} over alphas {common} is {c:.4f}{unit}, "
                                f"worse than the current version's {i:.4f}{unit} by more than {tol:g}{unit}")
        else:
            res.notes.append(f"{metric}: {c:.4f} vs current {i:.4f} over alphas {common}")


def _history(client, name: str, alias: str) -> list[dict]:
    rm = _registered(client, name)
    raw = (rm.tags or {}).get(HISTORY_TAG.format(alias=alias))
    return json.loads(raw) if raw else []


def _write_history(client, name: str, alias: str, history: list[dict]) -> None:
    # MLflow tag values are bounded (5000 chars in the SQL store): keep the most recent entries. Reasons
    # are capped (MAX_REASON_CHARS), so the latest entry always fits; JSON escapes could still
    # lengthen one, and then its reason is shortened further rather than the tag write failing.
    def dumps(h):
        return json.dumps(h, ensure_ascii=False)

    while len(dumps(history)) > 4500 and len(history) > 1:
        history = history[1:]
    while history and len(dumps(history)) > 4500 and history[-1].get("reason"):
        history[-1] = dict(history[-1], reason=history[-1]["reason"][:len(history[-1]["reason"]) // 2])
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), dumps(history))


@dataclass
class PromotionResult:
    name: str
    alias: str
    version: str
    previous_version: str | None
    forced: bool
    reason: str
    gates: GateResult


def check_alias(alias: str) -> str:
    """An alias dnirecon may move: a word, and not one MLflow reserves ('latest', 'v<digits>')."""
    if not alias or not alias.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--alias must be a word such as production or staging, got {alias!r}")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"--alias {alias!r} is reserved by MLflow ('latest' and 'v<number>' name versions, "
                          "not aliases); choose a word such as production or staging")
    return alias


def cap_reason(reason: str) -> str:
    """`reason` cut to MAX_REASON_CHARS characters (the cut is marked)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    marker = f" [... cut to {MAX_REASON_CHARS} of {len(reason)} characters]"
    return reason[:MAX_REASON_CHARS - len(marker)] + marker


def promote(client, alias: str, version: str | int, name: str = INTERPSN, force: bool = False,
            reason: str | None = None) -> PromotionResult:
    """Point `alias` at `version` if it passes the gates (or if forced, with a recorded reason)."""
    check_alias(alias)
    if force and not (reason and reason.strip()):
        raise ConfigError("--force needs --reason \"...\": a forced promotion must record why")
    mv = resolve_version(client, name, version=version)
    incumbent = _alias_holder(client, name, alias)
    previous = str(incumbent.version) if incumbent is not None else None
    history, _done = _reconcile(client, name, alias, previous)
    if previous == str(mv.version):
        raise ModelError(f"alias {alias!r} of {name!r} already points at version {mv.version}")
    gates = check_gates(mv.tags or {}, incumbent.tags if incumbent is not None else None)
    if not gates.passed and not force:
        current = f"version {incumbent.version}" if incumbent is not None else "no version"
        raise ModelError(f"refusing to promote {name} version {mv.version} to {alias!r} "
                         f"(currently {current}): " + "; ".join(gates.failures)
                         + " (use --force --reason \"...\" to override)")
    forced = bool(force and not gates.passed)  # --force on a promotion that passed forced nothing
    if not reason:
        reason = "gates passed: " + ("; ".join(gates.notes) or "parity and metrics")
    elif forced:
        # the user's why first: a long list of failures must not push it out of the capped record
        reason = f"FORCED: {cap_reason(reason.strip())} [past: {'; '.join(gates.failures)}]"
    entry = {"version": str(mv.version), "previous": previous, "by": current_user(), "at": utc_now_iso(),
             "reason": cap_reason(reason), "forced": forced, "state": PENDING}
    # The record first (marked pending), then the alias, then the version's tags and the mark cleared.
    # Cut anywhere, the next promote or rollback finds the mark and either finishes this promotion
    # (the alias moved) or drops its record (it did not): the history always matches the alias.
    _write_history(client, name, alias, history + [entry])
    now = _alias_holder(client, name, alias)
    if (str(now.version) if now is not None else None) != previous:
        current = _history(client, name, alias)
        if current and current[-1] == entry:  # withdraw this record, keeping what the other command wrote
            _write_history(client, name, alias, current[:-1])
        raise ModelError(f"alias {alias!r} of {name!r} moved to version {now.version if now else 'none'} while "
                         f"this promotion ran (it read version {previous}): someone else promoted or rolled "
                         "back meanwhile; nothing was changed, check `dnirecon registry describe` and run it again")
    client.set_registered_model_alias(name, alias, str(mv.version))
    _finish_promotion(client, name, alias, history, entry)
    return PromotionResult(name, alias, str(mv.version), previous, forced, entry["reason"], gates)


PENDING, ROLLING_BACK = "pending", "rolling_back"  # marks of a promotion / rollback not yet finished


def _unmarked(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "state"}


def _finish_promotion(client, name: str, alias: str, history: list[dict], entry: dict) -> list[dict]:
    """The version's tags and the cleared mark of a promotion whose alias move is done; the history written."""
    tags = {"promoted_by": entry["by"], "promoted_at": entry["at"], "promotion_reason": entry["reason"],
            "promoted_alias": alias, "previous_version": entry["previous"] or "none",
            "promotion_forced": str(entry["forced"])}
    for key, value in tags.items():
        client.set_model_version_tag(name, entry["version"], key, value)
    history = history + [_unmarked(entry)]
    _write_history(client, name, alias, history)
    return history


def _reconcile(client, name: str, alias: str, holder: str | None) -> tuple[list[dict], PromotionResult | None]:
    """The alias history, after finishing or dropping what an interrupted promote or rollback left
    (its mark on the last entry), and the result of a rollback this finished, if any."""
    history = _history(client, name, alias)
    last = history[-1] if history else {}
    state = last.get("state")
    if state == PENDING:
        if holder == last["version"]:
            log.warning("completing the promotion of %s version %s to %r, interrupted after its alias move",
                        name, last["version"], alias)
            return _finish_promotion(client, name, alias, history[:-1], last), None
        log.warning("dropping the record of a promotion of %s version %s to %r, interrupted before its alias "
                    "moved", name, last["version"], alias)
        history = history[:-1]
        _write_history(client, name, alias, history)
        return history, None
    if state == ROLLING_BACK:
        if holder == last.get("previous"):
            log.warning("alias %r of %r already points at version %s, the target of an interrupted rollback: "
                        "completing that rollback's tags and history", alias, name, holder)
            done = _record_rollback(client, name, alias, history, str(last["version"]), str(holder), None)
            return history[:-1], done
        history[-1] = _unmarked(last)  # the alias never moved back
        _write_history(client, name, alias, history)
        return history, None
    return history, None


def rollback(client, alias: str, name: str = INTERPSN, reason: str | None = None) -> PromotionResult:
    """Point `alias` back at the version it held before its latest promotion (the last history
    entry's `previous`; older entries may have been trimmed, and are not needed)."""
    check_alias(alias)
    holder = _alias_holder(client, name, alias)
    if holder is None:
        raise ModelError(f"cannot roll back alias {alias!r} of {name!r}: no version holds it")
    history, done = _reconcile(client, name, alias, str(holder.version))
    if done is not None:  # this rollback was the one interrupted: finishing it is all there is to do
        return done
    if history and history[-1]["version"] != str(holder.version) and history[-1].get("previous") == str(holder.version):
        # No mark (a history written before marks, or the alias moved back by hand): the alias is already
        # on the previous target of the last promotion, so finish that rollback rather than refuse.
        log.warning("alias %r of %r already points at version %s, the target of the last promotion's "
                    "rollback: completing that rollback's tags and history", alias, name, holder.version)
        return _record_rollback(client, name, alias, history, str(history[-1]["version"]), str(holder.version),
                                reason)
    if not history or history[-1]["version"] != str(holder.version):
        raise ModelError(f"cannot roll back alias {alias!r} of {name!r}: version {holder.version} holds it "
                         "but the alias history does not record that promotion (moved outside dnirecon, or "
                         f"its entry was trimmed: the history keeps the most recent entries that fit MLflow's "
                         f"tag limit)")
    previous = history[-1].get("previous")
    if previous is None:
        raise ModelError(f"cannot roll back alias {alias!r} of {name!r}: version {holder.version} is the "
                         "first version it ever pointed at; there is no previous target")
    resolve_version(client, name, version=previous)  # refuses clearly if it was deleted
    # The mark first, then the alias (what serves), then tags and history; the next promote or
    # rollback finishes one cut in between.
    history[-1] = dict(history[-1], state=ROLLING_BACK)
    _write_history(client, name, alias, history)
    client.set_registered_model_alias(name, alias, previous)
    return _record_rollback(client, name, alias, history, str(holder.version), previous, reason)


def _record_rollback(client, name: str, alias: str, history: list[dict], from_version: str, to_version: str,
                     reason: str | None) -> PromotionResult:
    """The tags and history of a rollback whose alias move is done."""
    who, when = current_user(), utc_now_iso()
    reason = cap_reason(reason or f"rollback from version {from_version}")
    for key, value in {"rolled_back_to_by": who, "rolled_back_to_at": when, "rollback_reason": reason,
                       "rolled_back_from": from_version, "promoted_alias": alias}.items():
        client.set_model_version_tag(name, to_version, key, value)
    client.set_model_version_tag(name, from_version, "rolled_back_at", when)
    # Undo semantics: drop the latest promotion so a second rollback goes one step further back.
    _write_history(client, name, alias, history[:-1])
    return PromotionResult(name, alias, to_version, from_version, False, reason, GateResult(True))
