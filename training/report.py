"""The evaluation report: Table 1 for every method, the perception-distortion curve over alpha,
Fig. 1 of the paper, the data-consistency residual and automatic checks of the paper's claims.

Two steps, both called at the end of `dnirecon demo`:

- `collect_report_data(val_dir, accels, methods, alphas)` reconstructs every held-out slice with every
  method and computes the foreground metrics (`dnirecon.metrics`) per volume -> `ReportData`.
  A method is a `training.evaluate.Recon`.
- `write_report(data, docs_dir, run_info)` writes docs/report.md, its tables and figures
  (training/report_figures.py) atomically and logs them to MLflow (run "report", experiment
  "dnirecon-report").
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dnirecon.errors import ConfigError
from training.evaluate import Recon

log = logging.getLogger(__name__)

EXPERIMENT = "dnirecon-report"
RUN_NAME = "report"
BASELINES = ("U-Net", "CG-SENSE", "Zero-filled")  # the order of the claim text
FIG1_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
METHODS_FIGURE = ("Zero-filled", "CG-SENSE", "CS (l1-wavelet)", "U-Net", "SN", "SN-GAN", "interpSN a=0.50")
FILES = {
    "report": "report.md",
    "table": "report_table1",  # .md .csv .json via dnirecon.tables.write_table
    "data": "report_data.json",
    "pd": "figures/report_perception_distortion.png",
    "fig1": "figures/report_fig1.png",
    "methods": "figures/report_methods.png",
    "dc": "figures/report_dc_residual.png",
}
OUTSIDE_TABLE = "report_outside"  # .md .csv .json: every method on the outside sources' reported items
OUTSIDE_FIGURE = "figures/report_outside_{source}.png"


def interp_name(alpha: float) -> str:
    """The method name of interpSN at one alpha, e.g. "interpSN a=0.25"."""
    return f"interpSN a={float(alpha):.2f}"


# ---------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class ExampleSlice:
    """One slice shown in the figures: every method's centre-cropped magnitude image."""

    file: str
    slice: int
    accel: float
    target: np.ndarray  # float32 (h, w)
    foreground: np.ndarray  # bool (h, w)
    images: dict[str, np.ndarray]  # method -> float32 (h, w)


@dataclasses.dataclass
class ReportData:
    """What the report needs; rows are dnirecon.tables rows (data, accel, method, metrics)."""

    accels: list[float]
    methods: list[str]
    alphas: list[float]
    rows: list[dict]
    volumes: list[dict]  # per (file, accel, method): metrics of the volume
    dc_residual: dict[str, dict[float, list[float]]]  # method -> accel -> per-slice residuals
    dc_computed: list[str]  # methods whose residual the report computed (magnitude + zero-filled phase)
    seconds_per_slice: dict[str, float]
    example: ExampleSlice | None
    val_dir: str
    files: list[str]

    def row(self, data: str, accel: float, method: str) -> dict | None:
        for r in self.rows:
            if r["data"] == data and float(r["accel"]) == float(accel) and r["method"] == method:
                return r
        return None


def _zero_filled_sense(kspace: np.ndarray, mask: np.ndarray):
    """ACS maps and the zero-filled SENSE image S^H F^H M y: torch complex (B,C,H,W), (B,H,W)."""
    import torch

    from training.physics.fft import TORCH_FFT
    from training.physics.sense import SenseOp
    from training.physics.sensitivity import acs_maps

    k = torch.from_numpy(kspace)
    m = torch.from_numpy(mask)
    with torch.no_grad():
        maps = acs_maps(k, m, TORCH_FFT)
        return maps, SenseOp(maps, m, TORCH_FFT).adjoint(k)


def computed_residual(image: np.ndarray, kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """DC residual (B,) of an image a method gave without one, with ACS maps (the model's definition).

    A magnitude image gets the phase of the zero-filled SENSE image (and, when it is already cropped,
    that image's values outside the crop) so that only the method's magnitude is judged.
    """
    import torch

    from training.physics.fft import TORCH_FFT
    from training.physics.sense import data_residual

    maps, zf = _zero_filled_sense(kspace, mask)
    if np.iscomplexobj(image):
        x = torch.from_numpy(image.astype(np.complex64))
    else:
        mag = torch.from_numpy(image.astype(np.float32))
        if tuple(mag.shape[-2:]) != tuple(zf.shape[-2:]):
            h, w = mag.shape[-2:]
            top, left = (zf.shape[-2] - h) // 2, (zf.shape[-1] - w) // 2
            full = zf.abs().clone()
            full[..., top:top + h, left:left + w] = mag
            mag = full
        x = mag * torch.exp(1j * torch.angle(zf))
    with torch.no_grad():
        return data_residual(x.to(torch.complex64), maps, torch.from_numpy(kspace),
                           torch.from_numpy(mask), TORCH_FFT).numpy()


class _Recorder:
    """What the report keeps beside the table, from training.evaluate's per-volume records: DC
    residuals per slice, time per slice, per-volume scores with the HF split, the example slice."""

    def __init__(self, names: Sequence[str], accels: Sequence[float], example: tuple[str, int | None, float]):
        self.dc = {m: {a: [] for a in accels} for m in names}
        self.computed: set[str] = set()
        self.seconds = {m: 0.0 for m in names}
        self.slices = {m: 0 for m in names}
        self.volumes: list[dict] = []
        self.example_key = example
        self.example: ExampleSlice | None = None

    def on_volume(self, rec: dict) -> None:
        from dnirecon.metrics import hf_split

        name, accel = rec["method"], float(rec["accel"])
        self.seconds[name] += rec["seconds"]
        self.slices[name] += len(rec["slices"])
        residuals = rec["residuals"]
        if any(r is None for r in residuals):  # the method gives none: computed from its image
            residuals = computed_residual(np.stack(rec["images"]), np.stack([s.kspace for s in rec["slices"]]),
                                          np.stack([s.mask for s in rec["slices"]]))
            self.computed.add(name)
        self.dc[name][accel].extend(float(r) for r in residuals)
        detail, excess = hf_split(rec["target"], rec["pred"], rec["foreground"])
        self.volumes.append(dict(file=rec["file"], data=rec["data"], accel=accel, method=name,
                                 metrics=dict(rec["metrics"], hf_detail=detail, hf_excess=excess)))
        ex_file, ex_slice, ex_accel = self.example_key
        if rec["file"] == ex_file and accel == ex_accel:
            n = rec["target"].shape[0]
            idx = n // 2 if ex_slice is None else int(ex_slice)
            if not 0 <= idx < n:
                raise ConfigError(f"report example slice {idx} out of range for {ex_file} ({n} slices)")
            if self.example is None:
                self.example = ExampleSlice(ex_file, rec["slices"][idx].slice_index, accel, rec["target"][idx],
                                            rec["foreground"][idx], {})
            self.example.images[name] = np.asarray(rec["pred"][idx], dtype=np.float32)


def _pick_example(volumes: Sequence[Path], accels: Sequence[float], example) -> tuple[str, int | None, float]:
    """(file name, slice or None for the middle one, accel); default: first PD volume, highest accel."""
    if example is not None:
        name, slc, accel = example
        return Path(name).name, slc, float(accel)
    from dnirecon.fastmri_io import read_header
    from training.evaluate import contrast_name

    pd = [p for p in volumes if contrast_name(read_header(p).acquisition) == "CORPD"]
    return (pd or list(volumes))[0].name, None, float(max(accels))


def collect_report_data(val_dir: str | os.PathLike, accels: Sequence[float], methods: Mapping[str, Recon],
                        alphas: Sequence[float], example: tuple[str, int, float] | None = None,
                        progress: bool = True, mask_kind: str = "random", batch: int = 8) -> ReportData:
    """Reconstruct every held-out slice with every method at each acceleration and compute the metrics
    (training.evaluate: fastMRI's validation mask per volume, foreground metrics per volume against the
    SENSE target, mean +- std over volumes per contrast and over all volumes, "ALL").
    `example`: (file name, slice index, accel) of the figures' slice; default the middle slice of the
    first PD volume at the highest acceleration.
    """
    from dnirecon.fastmri_io import list_volumes
    from dnirecon.subsample import check_accel
    from training.evaluate import evaluate, held_out_volumes, table_rows

    if not methods:
        raise ConfigError("collect_report_data: methods is empty, expected name -> reconstruction callable")
    accels = [check_accel(a, "accels") for a in accels]
    if not accels:
        raise ConfigError("collect_report_data: accels is empty, expected e.g. [4, 8]")
    files = list_volumes(val_dir)
    ex = _pick_example(files, accels, example)
    if ex[0] not in {p.name for p in files}:
        raise ConfigError(f"report example volume {ex[0]!r} is not in {val_dir}")
    if ex[2] not in accels:
        raise ConfigError(f"report example accel {ex[2]:g} is not one of the accels {accels}")

    names = list(methods)
    rec = _Recorder(names, accels, ex)
    records = evaluate(methods, held_out_volumes(files, accels, mask_kind), batch=batch, progress=progress,
                       on_volume=rec.on_volume)
    return ReportData(accels=list(accels), methods=names, alphas=[float(a) for a in alphas],
                      rows=table_rows(records, accels, names), volumes=rec.volumes, dc_residual=rec.dc,
                      dc_computed=sorted(rec.computed),
                      seconds_per_slice={m: rec.seconds[m] / max(1, rec.slices[m]) for m in names},
                      example=rec.example, val_dir=str(val_dir), files=[p.name for p in files])


# ---------------------------------------------------------------------------------------------
# the paper's claims, checked on the numbers


class Claim(NamedTuple):
    claim: str
    status: str  # PASS, FAIL or SKIP (a method or alpha the claim needs is missing)
    detail: str


def _metric(data: ReportData, method: str, accel: float, key: str, contrast: str = "ALL") -> float | None:
    r = data.row(contrast, accel, method)
    return None if r is None else float(r["metrics"][key][0])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check_claims(data: ReportData, contrast: str = "ALL") -> list[Claim]:
    """The paper's claims on the mean over volumes of `contrast`, per acceleration, each PASS/FAIL/SKIP."""
    claims: list[Claim] = []
    alphas = sorted(a for a in data.alphas if data.row(contrast, data.accels[0], interp_name(a)) is not None)
    for accel in data.accels:
        af = f"{accel:g}x"
        m = lambda method, key: _metric(data, method, accel, key, contrast)  # noqa: E731
        sn_psnr, sn_ssim = m("SN", "psnr"), m("SN", "ssim")
        for key, label, unit in (("psnr", "PSNR", " dB"), ("ssim", "SSIM", "")):
            sn = sn_psnr if key == "psnr" else sn_ssim
            others = [(b, m(b, key)) for b in BASELINES]
            text = f"{af}: SN above U-Net, CG-SENSE and zero-filled in {label}"
            missing = [b for b, v in others if v is None] + (["SN"] if sn is None else [])
            if missing:
                claims.append(Claim(text, "SKIP", f"no rows for {', '.join(missing)}"))
                continue
            fmt = "{:.2f}" if key == "psnr" else "{:.4f}"
            detail = f"SN {fmt.format(sn)}{unit} vs " + ", ".join(f"{b} {fmt.format(v)}" for b, v in others)
            claims.append(Claim(text, _verdict(all(sn > v for _, v in others)), detail))

        gan_psnr = m("SN-GAN", "psnr")
        text = f"{af}: SN-GAN PSNR below SN"
        if sn_psnr is None or gan_psnr is None:
            claims.append(Claim(text, "SKIP", "needs SN and SN-GAN rows"))
        else:
            claims.append(Claim(text, _verdict(gan_psnr < sn_psnr),
                                f"SN-GAN {gan_psnr:.2f} dB vs SN {sn_psnr:.2f} dB ({gan_psnr - sn_psnr:+.2f} dB)"))

        inner = [a for a in alphas if 0.0 < a < 1.0]
        for key, label, fmt in (("psnr", "PSNR", "{:.2f}"), ("hf_ratio", "HF ratio", "{:.3f}")):
            text = f"{af}: interpSN (0 < alpha < 1) between SN and SN-GAN on {label}"
            lo_hi = (m("SN", key), m("SN-GAN", key))
            if None in lo_hi or not inner:
                claims.append(Claim(text, "SKIP", "needs SN, SN-GAN and an interior alpha"))
                continue
            lo, hi = min(lo_hi), max(lo_hi)
            vals = [(a, m(interp_name(a), key)) for a in inner]
            outside = [f"a={a:.2f}" for a, v in vals if not lo <= v <= hi]
            detail = (f"SN {fmt.format(lo_hi[0])}, SN-GAN {fmt.format(lo_hi[1])}; "
                      + ", ".join(f"a={a:.2f} {fmt.format(v)}" for a, v in vals)
                      + (f"; outside: {', '.join(outside)}" if outside else ""))
            claims.append(Claim(text, _verdict(not outside), detail))

        curve = [dict(alpha=a, psnr=m(interp_name(a), "psnr"), hf_ratio=m(interp_name(a), "hf_ratio"))
                 for a in alphas]
        claims += tradeoff_claims(curve, sn_psnr, af)
    return claims


def tradeoff_claims(curve: Sequence[Mapping[str, float]], sn_psnr: float | None, af: str) -> list[Claim]:
    """The paper's claims on interpSN's curve over alpha: `curve` holds alpha, psnr and hf_ratio per
    baked alpha (increasing); `sn_psnr` is SN's PSNR (alpha 0); `af` labels the acceleration(s)."""
    claims: list[Claim] = []
    curve = sorted(curve, key=lambda p: p["alpha"])
    text = f"{af}: HF ratio moves toward 1 as alpha grows"
    if len(curve) < 2:
        claims.append(Claim(text, "SKIP", "needs interpSN at two or more alphas"))
    else:
        dist = [abs(p["hf_ratio"] - 1.0) for p in curve]
        bad = [f"a={curve[i]['alpha']:.2f}->{curve[i + 1]['alpha']:.2f}" for i in range(len(dist) - 1)
               if dist[i + 1] > dist[i]]
        detail = "distance of the HF ratio from 1: " + ", ".join(
            f"a={p['alpha']:.2f} {d:.3f}" for p, d in zip(curve, dist))
        claims.append(Claim(text, _verdict(not bad), detail + (f"; moves away at {', '.join(bad)}" if bad else "")))

    for key, label, fmt in (("psnr", "PSNR", "{:.3f}"), ("hf_ratio", "HF ratio", "{:.4f}")):
        text = f"{af}: no jump in {label} between neighbouring alphas larger than twice the mean step"
        vals = [p[key] for p in curve]
        if len(vals) < 3:
            claims.append(Claim(text, "SKIP", "needs interpSN at three or more alphas"))
            continue
        steps = np.abs(np.diff(vals))
        mean = float(steps.mean())
        worst = float(steps.max())
        claims.append(Claim(text, _verdict(worst <= 2 * mean),
                            f"steps {', '.join(fmt.format(s) for s in steps)}; largest {fmt.format(worst)} "
                            f"vs 2 x mean {fmt.format(2 * mean)}"))

    text = f"{af}: interpSN alpha 0.5 within 0.3 dB of SN"
    half = next((p["psnr"] for p in curve if round(p["alpha"], 6) == 0.5), None)
    if half is None or sn_psnr is None:
        claims.append(Claim(text, "SKIP", "needs SN and interpSN a=0.50"))
    else:
        claims.append(Claim(text, _verdict(abs(half - sn_psnr) <= 0.3),
                            f"a=0.50 {half:.2f} dB vs SN {sn_psnr:.2f} dB ({half - sn_psnr:+.2f} dB)"))
    return claims


def manifest_points(manifest: Mapping) -> list[dict]:
    """A baked set's alpha curve (manifest.json's metrics: all held-out volumes and accelerations)."""
    return [dict(accel=None, method=interp_name(e["alpha"]), alpha=float(e["alpha"]), **e["metrics"])
            for e in manifest["alphas"]]


# ---------------------------------------------------------------------------------------------
# writing


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            out += _flatten(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, str(value))]


def _text(value: Any) -> str:
    """One table cell: floats to 4 significant digits, lists joined, mappings as JSON."""
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    flat = _flatten("", value)
    return flat[0][1] if flat else ""


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" * len(head)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    # a bare "|" inside a cell would end it
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def perception_distortion_points(data: ReportData, contrast: str = "ALL") -> list[dict]:
    """Per accel and alpha (plus SN and SN-GAN): PSNR, SSIM and HF ratio of `contrast`."""
    points = []
    for accel in data.accels:
        for label in [interp_name(a) for a in sorted(data.alphas)] + ["SN", "SN-GAN"]:
            r = data.row(contrast, accel, label)
            if r is None:
                continue
            alpha = float(label.split("=")[1]) if label.startswith("interpSN") else None
            points.append(dict(accel=accel, method=label, alpha=alpha,
                               psnr=r["metrics"]["psnr"][0], ssim=r["metrics"]["ssim"][0],
                               hf_ratio=r["metrics"]["hf_ratio"][0], hfen=r["metrics"]["hfen"][0]))
    return points


def hf_split_rows(data: ReportData) -> list[dict]:
    """Mean HF detail / excess / ratio over all volumes per (accel, method), for volumes that carry them."""
    rows = []
    for accel in data.accels:
        for method in data.methods:
            vals = [v["metrics"] for v in data.volumes if v["accel"] == accel and v["method"] == method
                    and "hf_detail" in v["metrics"]]
            if vals:
                rows.append(dict(accel=accel, method=method,
                                 detail=float(np.mean([m["hf_detail"] for m in vals])),
                                 excess=float(np.mean([m["hf_excess"] for m in vals])),
                                 hf_ratio=float(np.mean([m["hf_ratio"] for m in vals]))))
    return rows


def dc_summary(data: ReportData) -> list[dict]:
    """Per method and accel: mean, std and max of the per-slice DC residual."""
    out = []
    for name in data.methods:
        for accel in data.accels:
            v = np.asarray(data.dc_residual[name][accel], dtype=np.float64)
            if v.size:
                out.append(dict(method=name, accel=accel, mean=float(v.mean()),
                                std=float(v.std(ddof=1)) if v.size > 1 else 0.0, max=float(v.max()),
                                computed=name in data.dc_computed))
    return out


def render_markdown(data: ReportData, run_info: Mapping[str, Any], claims: Sequence[Claim],
                    figures: Mapping[str, str], extra_sections: Sequence[str] = ()) -> str:
    """The text of docs/report.md; `figures` maps figure keys to paths relative to the report;
    `extra_sections` (markdown) go before "How this was produced"."""
    from dnirecon.tables import table1

    n_pass = sum(c.status == "PASS" for c in claims)
    n_fail = sum(c.status == "FAIL" for c in claims)
    counts = {}
    for v in data.volumes:
        counts.setdefault(v["data"], set()).add(v["file"])
    vol_text = ", ".join(f"{len(fs)} {c}" for c, fs in sorted(counts.items()))
    accel_text = " and ".join(f"{a:g}x" for a in data.accels)
    out = [
        "# dnirecon evaluation report",
        "",
        f"Deep network interpolation (Qin et al., ISMRM 2020) on the held-out synthetic volumes "
        f"({vol_text}; {accel_text}; fastMRI validation masks seeded by file name). "
        f"Generated {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} by `make demo`; every "
        f"number below comes from that run.",
        "",
        f"**Claims of the paper checked on these data: {n_pass} pass, {n_fail} fail"
        + (f", {len(claims) - n_pass - n_fail} skipped" if len(claims) > n_pass + n_fail else "")
        + "** (details in [What the synthetic data show](#what-the-synthetic-data-show)).",
        "",
        "## Table 1",
        "",
        "Foreground metrics against the SENSE target (`reconstruction_sense`), mean ± std over volumes, as in "
        "the paper's Table 1. NMSE, PSNR (dB) and SSIM on the foreground mask of the target; HFEN is the "
        "high-frequency error norm (Laplacian of Gaussian, sigma 1.5 px) and the HF ratio the energy of the "
        "reconstruction's LoG over the target's (< 1: blurred, > 1: added texture). "
        "Also as CSV and JSON: `report_table1.csv`, `report_table1.json`.",
        "",
        table1(data.rows),
        "## Perception-distortion trade-off over alpha",
        "",
        f"![perception-distortion]({figures['pd']})",
        "",
        "PSNR against the high-frequency energy ratio (all volumes). Moving alpha from 0 (SN) to 1 (SN-GAN) "
        "should trade distortion (PSNR) for texture (HF ratio towards 1).",
        "",
    ]
    pts = perception_distortion_points(data)
    out.append(_md_table(["AF", "Method", "alpha", "PSNR", "SSIM", "HF ratio", "HFEN"],
                         [[f"{p['accel']:g}x", p["method"], "-" if p["alpha"] is None else f"{p['alpha']:.2f}",
                           f"{p['psnr']:.2f}", f"{p['ssim']:.4f}", f"{p['hf_ratio']:.3f}", f"{p['hfen']:.4f}"]
                          for p in pts], "lllrrrr"))
    split = hf_split_rows(data)
    if split:
        out += ["", "### The HF ratio taken apart", "",
                "LoG(reconstruction) = detail x LoG(target) + r with r orthogonal to LoG(target); excess = "
                "||r||^2 / ||LoG(target)||^2, so HF ratio = detail^2 + excess per volume (means over all "
                "volumes below). detail < 1 is true detail lost to blur; excess is high-frequency energy "
                "that does not follow the target (leftover aliasing, noise, invented texture). A ratio "
                "above 1 can come from a network that keeps all the detail and adds some excess.", "",
                _md_table(["AF", "Method", "detail", "excess", "HF ratio"],
                          [[f"{r['accel']:g}x", r["method"], f"{r['detail']:.3f}", f"{r['excess']:.3f}",
                            f"{r['hf_ratio']:.3f}"] for r in split], "llrrr"), ""]
    ex = data.example
    ex_text = (f"`{ex.file}` slice {ex.slice} at {ex.accel:g}x" if ex is not None else "no example slice")
    out += [
        "## Fig. 1: one slice across alpha",
        "",
        f"{ex_text}. Top: reconstructions at alpha 0, 0.25, 0.5, 0.75, 1 and the target, with the zoomed "
        "region boxed; middle: the zoomed region (the most textured window of the target's foreground); "
        "bottom: |reconstruction - target| on one colour scale for all panels. PSNR/SSIM of the slice "
        "(foreground) on each panel.",
        "",
        f"![fig1]({figures['fig1']})",
        "",
        "## The same slice for every method",
        "",
        f"![methods]({figures['methods']})",
        "",
        "## Data consistency",
        "",
        "Residual ||M F S x - y|| / ||y|| of each reconstruction x against the measured k-space y, with the "
        "ACS sensitivity maps S the model uses (per slice, mean ± std and max over all held-out slices). "
        "The ONNX models report it themselves. "
        + ("For methods marked *, which return a magnitude image (or none), the report computes it: the "
           "magnitude given the phase of the zero-filled SENSE image, with the same ACS maps. "
           if data.dc_computed else "")
        + "Measurement noise keeps it above 0 for any image that does not copy the data; a network with "
        "hard data consistency gets close to the noise level, one that drifts from the data does not.",
        "",
        f"![dc residual]({figures['dc']})",
        "",
    ]
    dcs = dc_summary(data)
    out.append(_md_table(["Method", "AF", "DC residual", "max", "seconds / slice (all AF)"],
                         [[d["method"] + (" *" if d["computed"] else ""), f"{d['accel']:g}x",
                           f"{d['mean']:.4f} ± {d['std']:.4f}", f"{d['max']:.4f}",
                           f"{data.seconds_per_slice.get(d['method'], float('nan')):.3f}"] for d in dcs],
                         "llrrr"))
    out += ["## What the synthetic data show", "",
            "Automatic checks of the paper's claims on the all-volume means above. A FAIL means these "
            "synthetic data and this (cpu-preset) training do not reproduce that part of the paper; it is "
            "reported as measured, not hidden.", ""]
    out.append(_md_table(["Result", "Claim", "Numbers"],
                         [[f"**{c.status}**", c.claim, c.detail] for c in claims]))
    failed = [c for c in claims if c.status == "FAIL"]
    if failed:
        out += ["", f"Not shown by these data ({len(failed)}): "
                + "; ".join(c.claim for c in failed) + ".", ""]
    else:
        out += ["", "Every checked claim holds on these data.", ""]
    out += list(extra_sections)
    preset = run_info.get("preset", "cpu")
    out += ["## How this was produced", "",
            f"Command: `make demo` (runs `dnirecon demo --preset {preset}`"
            + ("" if preset == "cpu" else f"; `make demo DEMO_ARGS=\"--preset {preset}\"`") + ").", ""]
    # lists of records (e.g. the streamed passes) read better as their own tables
    records = {k: v for k, v in run_info.items()
               if isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v)}
    flat = _flatten("", {k: v for k, v in run_info.items() if k not in records})
    if flat:
        out.append(_md_table(["Item", "Value"], [[k, v] for k, v in flat]))
    for title, items in records.items():
        cols = list(dict.fromkeys(c for x in items for c in x))
        out += ["", f"{title}:", "",
                _md_table(cols, [[_text(x.get(c, "-")) for c in cols] for x in items])]
    out += ["", f"Held-out data: `{data.val_dir}` ({len(data.files)} volumes). Methods: "
            + ", ".join(data.methods) + ".", ""]
    return "\n".join(out)


def _report_data_json(data: ReportData, claims: Sequence[Claim]) -> str:
    payload = dict(accels=data.accels, methods=data.methods, alphas=data.alphas, files=data.files,
                   volumes=data.volumes, dc_residual=dc_summary(data), dc_computed=data.dc_computed,
                   seconds_per_slice=data.seconds_per_slice,
                   perception_distortion=perception_distortion_points(data),
                   claims=[c._asdict() for c in claims],
                   example=None if data.example is None else dict(file=data.example.file, slice=data.example.slice,
                                                                  accel=data.example.accel))
    return json.dumps(payload, indent=2, default=float) + "\n"


def write_report(data: ReportData, docs_dir: str | os.PathLike, run_info: Mapping[str, Any] | None = None,
                 log_to_mlflow: bool = True, outside: "OutsideResults | None" = None) -> Path:
    """Write docs_dir/report.md, report_table1.{md,csv,json}, report_data.json and the figures under
    docs_dir/figures/, each atomically; log them to MLflow (run "report" in "dnirecon-report").
    `outside`: the section on data the generator did not make (its table and one figure per source).

    Returns the path of report.md.
    """
    from dnirecon.tables import write_table
    from training import report_figures

    run_info = dict(run_info or {})
    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    claims = check_claims(data)
    paths = {k: docs / v for k, v in FILES.items() if k not in ("table",)}
    report_figures.perception_distortion(perception_distortion_points(data), paths["pd"])
    report_figures.dc_residual(data, paths["dc"])
    if data.example is not None:
        report_figures.fig1(data, paths["fig1"])
        report_figures.methods(data, paths["methods"])
    tables = write_table(data.rows, docs, FILES["table"])
    from dnirecon.tables import atomic_write_text

    atomic_write_text(paths["data"], _report_data_json(data, claims))
    rel = {k: paths[k].relative_to(docs).as_posix() for k in ("pd", "fig1", "methods", "dc")}
    extra, outside_files = [], []
    if outside is not None and outside.sources:
        text, outside_files = write_outside(outside, docs)
        extra.append(text)
    report = atomic_write_text(paths["report"], render_markdown(data, run_info, claims, rel, extra))
    if log_to_mlflow:
        written = [p for p in list(paths.values()) + list(tables.values()) + outside_files if p.exists()]
        run_id = log_report(written, docs, run_info, data, claims)
        log.info("report logged to MLflow run %s", run_id)
    return report


def log_report(files: Sequence[Path], docs: Path, run_info: Mapping[str, Any], data: ReportData,
               claims: Sequence[Claim]) -> str:
    """Log the report files as artifacts (same layout as under docs/) of a new run "report"."""
    from training import tracking

    from mlflow.entities import Metric, Param

    c = tracking.client()
    run = c.create_run(tracking.experiment_id(EXPERIMENT), run_name=RUN_NAME,
                       tags={"dnirecon.kind": "report"})
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        params = [Param(k[:250], v[:6000]) for k, v in _flatten("", _index_records(run_info))[:100]]
        metrics = [Metric("claims_pass", float(sum(x.status == "PASS" for x in claims)), now, 0),
                   Metric("claims_fail", float(sum(x.status == "FAIL" for x in claims)), now, 0)]
        for r in data.rows:
            if r["data"] != "ALL":
                continue
            for key in ("psnr", "ssim", "nmse", "hf_ratio"):
                value = float(r["metrics"][key][0])
                if math.isfinite(value):
                    metrics.append(Metric(_metric_key(f"{float(r['accel']):g}x.{r['method']}.{key}"), value, now, 0))
        # one call per batch: a call per metric costs a database round trip each
        for i in range(0, max(len(metrics), len(params)), 100):
            c.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        by_dir: dict[str, list[Path]] = {}
        for p in files:
            by_dir.setdefault(p.parent.relative_to(docs).as_posix(), []).append(p)
        for sub, paths in by_dir.items():
            for p in paths:
                c.log_artifact(run_id, str(p), None if sub in ("", ".") else sub)
        status = "FINISHED"
    finally:
        c.set_terminated(run_id, status)
    return run_id


def _index_records(value: Any) -> Any:
    """Lists of mappings -> {"0": ..., "1": ...} so each field becomes its own MLflow param."""
    if isinstance(value, Mapping):
        return {k: _index_records(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, Mapping) for x in value):
        return {str(i): _index_records(x) for i, x in enumerate(value)}
    return value


def _metric_key(text: str) -> str:
    # MLflow keys allow alphanumerics, _ - . / and space; "a=0.25" has "="
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in text)


# ---------------------------------------------------------------------------------------------
# data the generator did not make


@dataclasses.dataclass
class OutsideResults:
    """Every method on each outside source's reported items, and what the items were."""

    sources: dict[str, ReportData]  # source -> its reported items' evaluation
    items: list[dict]  # one per built item: source, role, name, coils, noise_level, content, generator
    cs_setting: str = ""  # how the CS weight was chosen, for the text


def collect_outside_data(dirs: Mapping[str, str | os.PathLike], accels: Sequence[float],
                         methods: Mapping[str, Recon], alphas: Sequence[float], progress: bool = True) -> dict[str, ReportData]:
    """collect_report_data on each source's directory of reported items."""
    return {source: collect_report_data(d, accels, methods, alphas, progress=progress) for source, d in dirs.items()}


def outside_rows(outside: OutsideResults) -> list[dict]:
    """Table rows (data = source, accel, method, metrics) over the sources, without the ALL repeats."""
    return [r for data in outside.sources.values() for r in data.rows if r["data"] != "ALL"]


def sn_against_cs(outside: OutsideResults, baseline: str = "CS (l1-wavelet)") -> list[dict]:
    """Per source and accel: SN's PSNR and SSIM next to the baseline's, and the differences."""
    out = []
    for source, data in outside.sources.items():
        name = data.rows[0]["data"] if data.rows else source
        for accel in data.accels:
            sn, cs = data.row(name, accel, "SN"), data.row(name, accel, baseline)
            if sn is None or cs is None:
                continue
            sp, ss = float(sn["metrics"]["psnr"][0]), float(sn["metrics"]["ssim"][0])
            cp, cs_ = float(cs["metrics"]["psnr"][0]), float(cs["metrics"]["ssim"][0])
            out.append(dict(source=name, accel=accel, sn_psnr=sp, cs_psnr=cp, sn_ssim=ss, cs_ssim=cs_,
                            ahead=sp > cp and ss > cs_))
    return out


def render_outside(outside: OutsideResults, figures: Mapping[str, str]) -> str:
    """The markdown of the section; `figures` maps source -> figure path relative to the report."""
    from dnirecon.tables import table1

    generators = sorted({i["generator"] for i in outside.items if i["source"] == "phantom"})
    out = ["## Data the generator did not make", "",
           "Every number above comes from the project's own synthetic generator. Here the same models and baselines "
           "run on multi-coil data made another way (`training/outside.py`, offline, reproducible from the seeds "
           "below), scored like Table 1 against a SENSE target (the noise-free image through the acquired band):",
           "",
           "- **BRAIN**: real MR slices, the EPI head volume `example4d.nii.gz` that nibabel ships (nibabel's "
           "MIT licence), given simulated loop-coil arrays (coil count and rotation per item) and a smooth "
           "random phase.",
           "- **PHANTOM**: a Shepp-Logan acquisition from " + (" and ".join(f"`{g}`" for g in generators) or "-")
           + (" (Debian's ismrmrd-tools; its birdcage coils)" if any("ismrmrd" in g for g in generators)
              else " with simulated coils (ismrmrd-tools' generator was not installed on this machine)") + ".",
           "",
           "Noise: complex Gaussian, sd per k-space sample = the stated level x the mean of the clean image over "
           "its foreground (2 %, 3 %, 5 %: image SNR 50, 33, 20). Tuning items chose the CS weight "
           + (f"({outside.cs_setting}) " if outside.cs_setting else "")
           + "and, with synthetic volumes of a seed of their own, the training data the demo uses "
           "(`experiments/train_tuning.py`, docs/experiments/training-data.md); they are never scored here, only "
           "reported items are. No network was trained on any of them.",
           "",
           _md_table(["Source", "Role", "Item", "Coils", "Noise", "Content", "Generator"],
                     [[i["source"].upper(), i["role"], i["name"], i["coils"], f"{100 * i['noise_level']:g} %",
                       i["content"], i["generator"]] for i in outside.items]),
           "", "Reported items, every method (mean ± std over the source's reported volumes):", "",
           table1(outside_rows(outside)),
           "SN against CS (l1-wavelet), as measured:", ""]
    out.append(_md_table(["Source", "AF", "SN PSNR", "CS PSNR", "SN SSIM", "CS SSIM", "SN ahead in both"],
                         [[r["source"], f"{r['accel']:g}x", f"{r['sn_psnr']:.2f}", f"{r['cs_psnr']:.2f}",
                           f"{r['sn_ssim']:.4f}", f"{r['cs_ssim']:.4f}", "yes" if r["ahead"] else "no"]
                          for r in sn_against_cs(outside)], "llrrrrl"))
    for source, path in figures.items():
        ex = outside.sources[source].example
        where = f"`{ex.file}` slice {ex.slice} at {ex.accel:g}x" if ex is not None else ""
        out += ["", f"{source.upper()}: {where}, every method and the target.", "", f"![outside {source}]({path})"]
    out.append("")
    return "\n".join(out)


def write_outside(outside: OutsideResults, docs: Path) -> tuple[str, list[Path]]:
    """The section's table (report_outside.{md,csv,json}) and figures; returns its markdown and the files."""
    from dnirecon.tables import write_table
    from training import report_figures

    files = list(write_table(outside_rows(outside), docs, OUTSIDE_TABLE).values())
    figures = {}
    for source, data in outside.sources.items():
        if data.example is None:
            continue
        path = docs / OUTSIDE_FIGURE.format(source=source)
        report_figures.slice_grid(data, data.methods, data.methods, path, f"{source}: every method")
        files.append(path)
        figures[source] = path.relative_to(docs).as_posix()
    return render_outside(outside, figures), files
