"""The report's figures (matplotlib, Agg): perception-distortion curve, Fig. 1 across alpha, the methods
side by side, the data-consistency residual. Each writes one PNG atomically (tmp + rename)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy import ndimage  # noqa: E402

from training.report import FIG1_ALPHAS, METHODS_FIGURE, ReportData, interp_name  # noqa: E402

DPI = 110
ACCEL_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def perception_distortion(pts: Sequence[dict], path: Path, title: str | None = None) -> Path:
    """PSNR against the HF energy ratio over alpha, one panel per acceleration (each on its own PSNR
    scale: the 4x and 8x curves are 5 dB apart and a few tenths long); SN and SN-GAN marked.

    `pts`: dicts of accel (None: all accelerations together), method, alpha (None for SN and SN-GAN),
    psnr and hf_ratio, e.g. training.report.perception_distortion_points or manifest_points.
    """
    from dnirecon.errors import DataError

    missing = [p.get("method") for p in pts if "psnr" not in p or "hf_ratio" not in p]
    if missing:
        raise DataError(f"perception-distortion plot needs psnr and hf_ratio for every point (missing for {missing})")
    accels = list(dict.fromkeys(p["accel"] for p in pts)) or [None]
    fig, axes = plt.subplots(1, len(accels), figsize=(4.2 * len(accels), 4.4), squeeze=False)
    for i, (accel, ax) in enumerate(zip(accels, axes[0])):
        colour = ACCEL_COLOURS[i % len(ACCEL_COLOURS)]
        curve = sorted((p for p in pts if p["accel"] == accel and p["alpha"] is not None), key=lambda p: p["alpha"])
        if curve:
            ax.plot([p["hf_ratio"] for p in curve], [p["psnr"] for p in curve], "-o", color=colour, ms=4,
                    label="interpSN")
            for k, p in enumerate(curve):  # labels alternate above and below the curve
                ax.annotate(f"{p['alpha']:.2f}", (p["hf_ratio"], p["psnr"]), textcoords="offset points",
                            xytext=(0, 7 if k % 2 == 0 else -12), ha="center", fontsize=7, color=colour)
        for method, marker in (("SN", "*"), ("SN-GAN", "s")):
            p = next((q for q in pts if q["accel"] == accel and q["method"] == method), None)
            if p is not None:
                ax.plot(p["hf_ratio"], p["psnr"], marker, color=colour, ms=11 if marker == "*" else 8,
                        mfc="none", mew=1.5, label=method)
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, 0.99), max(hi, 1.01))  # the target's energy always in view
        ax.margins(y=0.15)
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.text(1.0, ax.get_ylim()[0], " target's HF energy", rotation=90, va="bottom", ha="left",
                fontsize=7, color="grey")
        ax.set_title(f"{accel:g}x" if accel is not None else "", fontsize=10)
        ax.set_xlabel("HF energy ratio ||LoG(recon)||² / ||LoG(target)||²", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("PSNR on the foreground (dB)")
    fig.suptitle(title or "Perception-distortion over alpha (labels: alpha; all volumes; foreground)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def dc_residual(data: ReportData, path: Path) -> Path:
    """Grouped bars: mean DC residual per method and acceleration (std as error bars)."""
    names = data.methods
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.0))
    width = 0.8 / max(1, len(data.accels))
    x = np.arange(len(names))
    for i, accel in enumerate(data.accels):
        vals = [np.asarray(data.dc_residual[n][accel], float) for n in names]
        mean = [v.mean() if v.size else np.nan for v in vals]
        std = [v.std(ddof=1) if v.size > 1 else 0.0 for v in vals]
        bars = ax.bar(x + (i - (len(data.accels) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
                      color=ACCEL_COLOURS[i % len(ACCEL_COLOURS)], label=f"{accel:g}x")
        for bar, n in zip(bars, names):
            if n in data.dc_computed:
                bar.set_hatch("//")
    ax.set_xticks(x, [n + (" *" if n in data.dc_computed else "") for n in names], rotation=35, ha="right",
                  fontsize=8)
    ax.set_ylabel("||M F S x - y|| / ||y||")
    ax.set_title("Data-consistency residual per method (* hatched: computed from magnitude + zero-filled "
                 "phase)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def texture_box(target: np.ndarray, foreground: np.ndarray, size: int | None = None) -> tuple[int, int, int]:
    """(top, left, size) of the square window, mostly inside the foreground, with the most LoG energy:
    the finest texture of the slice (trabecular bone near the joint in the synthetic knee)."""
    h, w = target.shape
    size = size or max(12, min(h, w) // 4)
    size = min(size, h, w)
    energy = ndimage.gaussian_laplace(target.astype(np.float64), 1.0) ** 2
    # box sums by a uniform filter: mean energy and foreground fraction of every window at once
    e = ndimage.uniform_filter(energy, size, mode="constant")
    f = ndimage.uniform_filter(foreground.astype(np.float64), size, mode="constant")
    half = size // 2
    valid = np.zeros_like(e, bool)
    valid[half:h - (size - half) + 1, half:w - (size - half) + 1] = True
    score = np.where(valid & (f >= 0.95), e, -np.inf)
    if not np.isfinite(score).any():
        score = np.where(valid, e, -np.inf)
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(cy - half), int(cx - half), int(size)


def _slice_metrics(target: np.ndarray, image: np.ndarray, fg: np.ndarray) -> dict:
    from dnirecon.metrics import evaluate_volume

    return evaluate_volume(target[None], image[None], fg[None])


def slice_grid(data: ReportData, names: Sequence[str], labels: Sequence[str], path: Path, title: str) -> Path:
    """Rows: image with the zoom box, zoomed region, |error|; one column per method plus the target."""
    ex = data.example
    target, fg = ex.target, ex.foreground
    cols = [(n, lab) for n, lab in zip(names, labels) if n in ex.images]
    top, left, size = texture_box(target, fg)
    vmax = float(np.percentile(target, 99.5))
    scale = float(target.max()) or 1.0
    errors = [np.abs(ex.images[n] - target) / scale for n, _ in cols]
    # one colour scale for every error map, so the alphas compare by eye
    emax = float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)) if errors else 1.0
    emax = emax if emax > 0 else 1.0
    ncol = len(cols) + 1
    fig, axes = plt.subplots(3, ncol, figsize=(2.1 * ncol, 6.9), squeeze=False,
                             gridspec_kw=dict(hspace=0.08, wspace=0.04))
    err_im = None
    for j in range(ncol):
        if j < len(cols):
            name, label = cols[j]
            img = ex.images[name]
            m = _slice_metrics(target, img, fg)
            caption = f"PSNR {m['psnr']:.2f} dB\nSSIM {m['ssim']:.4f}"
        else:
            name, label, img, caption = "target", "target (SENSE)", target, "reference"
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec="yellow", lw=1.2))
        ax.set_title(label, fontsize=9)
        ax.text(0.02, 0.02, caption, transform=ax.transAxes, fontsize=7, color="yellow", va="bottom",
                bbox=dict(facecolor="black", alpha=0.5, lw=0, pad=1.5))
        axes[1, j].imshow(img[top:top + size, left:left + size], cmap="gray", vmin=0, vmax=vmax,
                          interpolation="nearest")
        if j < len(cols):
            err_im = axes[2, j].imshow(errors[j], cmap="inferno", vmin=0, vmax=emax)
        else:
            axes[2, j].imshow(fg, cmap="gray", vmin=0, vmax=1)
            axes[2, j].set_xlabel("foreground mask", fontsize=8)
        for i in range(3):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[1, 0].set_ylabel("zoom", fontsize=9)
    axes[2, 0].set_ylabel("|recon - target|", fontsize=9)
    if err_im is not None:
        cbar = fig.colorbar(err_im, ax=list(axes[2, :]), fraction=0.025, pad=0.01)
        cbar.ax.tick_params(labelsize=7)
        cbar.set_label("|recon - target| / max(target)", fontsize=7)
    fig.suptitle(f"{title}: {ex.file} slice {ex.slice}, {ex.accel:g}x", fontsize=10, y=0.93)
    return _save(fig, path)


def fig1(data: ReportData, path: Path) -> Path:
    """The paper's Fig. 1: the example slice at alpha 0, 0.25, 0.5, 0.75, 1 and the target."""
    alphas = [a for a in FIG1_ALPHAS if interp_name(a) in data.example.images]
    if not alphas:  # other grids: show what was baked
        alphas = sorted(a for a in data.alphas if interp_name(a) in data.example.images)
    names = [interp_name(a) for a in alphas]
    labels = [f"alpha = {a:g}" + (" (SN)" if a == 0 else " (SN-GAN)" if a == 1 else "") for a in alphas]
    return slice_grid(data, names, labels, path, "interpSN across alpha")


def methods(data: ReportData, path: Path) -> Path:
    """Zero-filled, CG-SENSE, U-Net, SN, SN-GAN, interpSN a=0.5 and the target on the example slice."""
    names = [n for n in METHODS_FIGURE if n in data.example.images]
    return slice_grid(data, names, names, path, "Methods")
