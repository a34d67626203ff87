"""The one evaluation path: reconstruct held-out slices, score volumes on the foreground, aggregate.

Training validation, `dnirecon eval`, the bake's metrics and the report all use it:

- `held_out_volumes(files, accels)` yields each volume's slices at each acceleration (`HeldOutSlice`),
  masked with fastMRI's deterministic validation mask for the file name (training.data.SliceDataset in
  validation mode); `load_held_out` is the same as one list.
- `evaluate(methods, volumes)` runs every reconstruction (`Recon`) on them and scores each (volume,
  acceleration, method) with `dnirecon.metrics.evaluate_volume` against the SENSE target;
  `score(held_out, images)` scores images made elsewhere (the bake's ONNX outputs).
- `table_rows(records)` gives the Table-1 rows for `dnirecon.tables`; `mean_metrics(records)` the means.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

# A reconstruction: masked k-space complex64 (B, C, H, W) and mask float32 (B, W) -> (image (B, H, W)
# or already cropped (B, h, w), complex or magnitude; data-consistency residual (B,) or None).
Recon = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]

# Table-1 data names for the fastMRI acquisitions; anything else keeps its own name.
CONTRASTS = {"CORPD_FBK": "CORPD", "CORPDFS_FBK": "CORPDFS"}
ALL = "ALL"


class HeldOutSlice(NamedTuple):
    kspace: np.ndarray  # complex64 (C, H, W), zero where not acquired
    mask: np.ndarray  # float32 (W,)
    target: np.ndarray  # float32 (h, w), recon size
    foreground: np.ndarray  # bool (h, w)
    volume: str  # file name
    slice_index: int
    accel: float
    contrast: str  # Table-1 data name (contrast_name)


def contrast_name(acquisition: str) -> str:
    return CONTRASTS.get(acquisition, acquisition or "unknown")


def torch_recon(fn: Callable, device: str | object = "cpu") -> Recon:
    """A torch reconstruction (model or baseline: (kspace, mask) tensors -> image) as a `Recon`."""
    import torch

    def run(kspace: np.ndarray, mask: np.ndarray):
        with torch.no_grad():
            image = fn(torch.from_numpy(kspace).to(device), torch.from_numpy(mask).to(device))
        return image.float().cpu().numpy() if not image.is_complex() else image.cpu().numpy(), None

    return run


CS_NAME = "CS (l1-wavelet)"


def baseline_methods(cg_lambda: float | None = None, cg_iters: int | None = None,
                     cs_lambda: float | None = None, cs_iters: int | None = None) -> dict[str, Recon]:
    """The classical baselines as named reconstructions: zero-filled, CG-SENSE and compressed sensing."""
    from training.baselines import CG_ITERS, CG_LAMBDA, CS_ITERS, CS_LAMBDA, cg_sense, cs_l1_wavelet, zero_filled_rss

    lam = CG_LAMBDA if cg_lambda is None else cg_lambda
    iters = CG_ITERS if cg_iters is None else cg_iters
    cs_lam = CS_LAMBDA if cs_lambda is None else cs_lambda
    cs_it = CS_ITERS if cs_iters is None else cs_iters
    return {
        "Zero-filled": torch_recon(zero_filled_rss),
        "CG-SENSE": torch_recon(lambda kspace, mask: cg_sense(kspace, mask, lam=lam, iters=iters)),
        # magnitude: ESPIRiT's phase convention is not the ACS maps' that the report's DC residual uses
        CS_NAME: lambda kspace, mask: (np.abs(cs_l1_wavelet(kspace, mask, lam=cs_lam, iters=cs_it)), None),
    }


def held_out_volumes(files: Sequence[Path], accels: Sequence[float], mask_kind: str = "random",
                     slices_per_volume: int | None = None) -> Iterator[list[HeldOutSlice]]:
    """Per volume (one in memory at a time): its central `slices_per_volume` slices (None: all) at each
    acceleration, ordered by slice, then acceleration."""
    from training.data import SliceDataset

    for path in files:
        ds = SliceDataset([path], accels, train=False, mask_kind=mask_kind, slices_per_volume=slices_per_volume,
                          cache=True)
        out = []
        for i in range(len(ds)):
            s = ds[i]
            out.append(HeldOutSlice(s.kspace.numpy(), s.mask.numpy(), s.target.numpy(), s.foreground.numpy() > 0.5,
                                    s.fname, int(s.slice_index), float(s.accel), contrast_name(s.contrast)))
        yield out


def load_held_out(data_dir: Path | str, slices: int | None = 2, accels: Sequence[float] = (4.0, 8.0),
                  mask_kind: str = "random", limit_volumes: int | None = None) -> list[HeldOutSlice]:
    """The central `slices` slices of each volume in `data_dir` at each acceleration, as one list."""
    return [s for vol in held_out_volumes(_volume_files(data_dir, limit_volumes), accels, mask_kind, slices)
            for s in vol]


def _volume_files(data_dir: Path | str, limit_volumes: int | None) -> list[Path]:
    from dnirecon.errors import DataError
    from dnirecon.fastmri_io import list_volumes

    files = list_volumes(data_dir)[:limit_volumes]
    if not files:
        raise DataError(f"--data {data_dir}: no .h5 volumes found (expected held-out fastMRI-layout files)")
    return files


def magnitude(image: np.ndarray) -> np.ndarray:
    """float32 |image|, the complex modulus rounded once from double precision (as torch.abs)."""
    if np.iscomplexobj(image):
        re, im = image.real.astype(np.float64), image.imag.astype(np.float64)
        return np.sqrt(re * re + im * im).astype(np.float32)
    return np.abs(np.asarray(image, dtype=np.float32))  # a real output (the U-Net's) may dip below 0


def score(held_out: Sequence[HeldOutSlice], images: Sequence[np.ndarray], method: str = "") -> list[dict]:
    """Per (volume, acceleration) of `held_out`: the foreground metrics of `images` (one per slice, any
    field of view; magnitude taken and centre-cropped to the target) as records (file, data, accel,
    method, metrics, pred, target, foreground)."""
    from dnirecon.fastmri_io import center_crop
    from dnirecon.metrics import evaluate_volume

    groups: dict[tuple[str, float], list[int]] = {}
    for i, s in enumerate(held_out):
        groups.setdefault((s.volume, s.accel), []).append(i)
    records = []
    for (volume, accel), idx in groups.items():
        target = np.stack([held_out[i].target for i in idx])
        fg = np.stack([held_out[i].foreground for i in idx])
        pred = np.stack([center_crop(magnitude(images[i]), target.shape[-2:]) for i in idx])
        records.append(dict(file=volume, data=held_out[idx[0]].contrast, accel=accel, method=method,
                            metrics=evaluate_volume(target, pred, fg), pred=pred, target=target, foreground=fg))
    return records


def run_method(name: str, method: Recon, slices: Sequence[HeldOutSlice], batch: int) -> tuple[list, list, float]:
    """Images and DC residuals (None where the method gives none) per slice, and the seconds it took."""
    images, residuals, seconds = [], [], 0.0
    for start in range(0, len(slices), batch):
        part = slices[start:start + batch]
        k = np.stack([s.kspace for s in part])
        m = np.stack([s.mask for s in part])
        t0 = time.perf_counter()
        out = method(k, m)
        seconds += time.perf_counter() - t0
        image, residual = _check_output(name, out, k.shape[0])
        images += list(image)
        residuals += [None] * len(part) if residual is None else list(residual)
    return images, residuals, seconds


def _check_output(name: str, out, n: int):
    from dnirecon.errors import DataError

    if not (isinstance(out, tuple) and len(out) == 2):
        raise DataError(f"method {name!r} returned {type(out).__name__}, expected (image (B, H, W), "
                        "dc_residual (B,) or None)")
    image, residual = np.asarray(out[0]), out[1]
    if image.ndim != 3 or image.shape[0] != n:
        raise DataError(f"method {name!r} returned an image of shape {image.shape} for {n} slice(s), "
                        f"expected (B, H, W) with B = {n}")
    if not np.isfinite(image).all():
        raise DataError(f"method {name!r} returned non-finite pixels")
    if residual is not None:
        residual = np.asarray(residual, dtype=np.float64).reshape(-1)
        if residual.shape[0] != n:
            raise DataError(f"method {name!r} returned {residual.shape[0]} DC residuals for {n} slices, "
                            "expected one per slice")
    return image, residual


def evaluate(methods: Mapping[str, Recon], volumes: Iterable[Sequence[HeldOutSlice]], batch: int = 4,
             progress: bool = False, on_volume: Callable[[dict], None] | None = None) -> list[dict]:
    """Every method on every volume at each acceleration: `score` records, in volume, acceleration,
    method order. `on_volume`, when given, gets each record as soon as it is scored, with the method's
    `slices`, uncropped `images`, `residuals` and `seconds` added."""
    from tqdm import tqdm

    records = []
    bar = tqdm(desc="eval", unit="recon", disable=not progress)
    for slices in volumes:
        by_accel: dict[float, list[HeldOutSlice]] = {}
        for s in slices:
            by_accel.setdefault(s.accel, []).append(s)
        for accel, group in by_accel.items():
            for name, method in methods.items():
                bar.set_postfix_str(f"{group[0].volume} {accel:g}x {name}")
                images, residuals, seconds = run_method(name, method, group, batch)
                (record,) = score(group, images, name)
                records.append(record)
                if on_volume is not None:
                    on_volume(dict(record, slices=group, images=images, residuals=residuals, seconds=seconds))
                bar.update()
    bar.close()
    return records


def table_rows(records: Iterable[Mapping], accels: Sequence[float] | None = None,
               methods: Sequence[str] | None = None) -> list[dict]:
    """Table-1 rows (data, accel, method, metrics = `metrics.aggregate` mean and std over volumes): per
    contrast and over all volumes (ALL), in the paper's order; `n` is the number of volumes."""
    from dnirecon.metrics import aggregate

    records = list(records)
    accels = accels if accels is not None else list(dict.fromkeys(r["accel"] for r in records))
    methods = methods if methods is not None else list(dict.fromkeys(r["method"] for r in records))
    results: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for r in records:
        results[(r["data"], r["accel"], r["method"])].append(r["metrics"])
        results[(ALL, r["accel"], r["method"])].append(r["metrics"])
    rows = []
    for data in sorted({d for d, _, _ in results if d != ALL}) + [ALL]:
        for accel in accels:
            for method in methods:
                scores = results.get((data, accel, method), [])
                if scores:
                    rows.append(dict(data=data, accel=accel, method=method, metrics=aggregate(scores),
                                     n=len(scores)))
    return rows


def mean_metrics(records: Iterable[Mapping]) -> dict[str, float]:
    """The mean of each metric over the records (volumes and accelerations together)."""
    from dnirecon.metrics import aggregate

    return {k: mean for k, (mean, _std) in aggregate([r["metrics"] for r in records]).items()}


def evaluate_dataset(methods: Mapping[str, Recon], data_dir: str | Path, accels: Sequence[float],
                     mask_kind: str = "random", limit_volumes: int | None = None, batch: int = 4,
                     progress: bool = True) -> list[dict]:
    """Table-1 rows of `methods` on every slice of every volume in `data_dir` (`dnirecon eval`)."""
    from dnirecon.subsample import check_accel

    accels = [check_accel(a, "--accel") for a in accels]
    volumes = held_out_volumes(_volume_files(data_dir, limit_volumes), accels, mask_kind)
    return table_rows(evaluate(methods, volumes, batch, progress), accels, list(methods))


def _baselines_of(args: argparse.Namespace) -> dict[str, Recon]:
    """The baseline methods with the command's --cg-*/--cs-* overrides (checked: a caller may pass any Namespace)."""
    from dnirecon.errors import ConfigError

    cs_lambda, cs_iters = getattr(args, "cs_lambda", None), getattr(args, "cs_iters", None)
    if cs_iters is not None and cs_iters < 1:
        raise ConfigError(f"--cs-iters must be a positive integer, got {cs_iters}")
    if cs_lambda is not None and not cs_lambda >= 0:
        raise ConfigError(f"--cs-lambda must be a non-negative number, got {cs_lambda}")
    return baseline_methods(args.cg_lambda, args.cg_iters, cs_lambda, cs_iters)


def eval_baselines_command(args: argparse.Namespace) -> int:
    """`dnirecon eval baselines`: print the Table-1 rows of zero-filled, CG-SENSE and CS; save md/csv/json."""
    from dnirecon.errors import ConfigError
    from dnirecon.tables import table1, write_table

    if args.cg_iters is not None and args.cg_iters < 1:
        raise ConfigError(f"--cg-iters must be a positive integer, got {args.cg_iters}")
    if args.cg_lambda is not None and not args.cg_lambda >= 0:
        raise ConfigError(f"--cg-lambda must be a non-negative number, got {args.cg_lambda}")
    if args.limit_volumes is not None and args.limit_volumes < 1:
        raise ConfigError(f"--limit-volumes must be a positive integer, got {args.limit_volumes}")
    rows = evaluate_dataset(_baselines_of(args), args.data, args.accel,
                            mask_kind=args.mask, limit_volumes=args.limit_volumes)
    print(table1(rows), end="")
    paths = write_table(rows, args.out, "baselines")
    print(f"saved {paths['md']}, {paths['csv']}, {paths['json']}")
    return 0


def eval_model_command(args: argparse.Namespace) -> int:
    """`dnirecon eval model`: Table-1 rows of a registered version (or local checkpoint) next to the baselines."""
    from dnirecon.errors import ConfigError
    from dnirecon.tables import table1, write_table
    from training import tracking

    if args.limit_volumes is not None and args.limit_volumes < 1:
        raise ConfigError(f"--limit-volumes must be a positive integer, got {args.limit_volumes}")
    if args.checkpoint is not None:
        loaded = tracking.load_checkpoint(args.checkpoint)
        label = f"{loaded.config['kind']} ({args.checkpoint.name})"
    else:
        ref = args.version or args.alias or tracking.CHAMPION
        loaded = tracking.load_registered_model(args.model, ref)
        label = f"{args.model} v{loaded.version}"
    methods: dict[str, Recon] = {} if args.no_baselines else _baselines_of(args)
    methods[label] = torch_recon(loaded.model.eval())
    rows = evaluate_dataset(methods, args.data, args.accel, mask_kind=args.mask, limit_volumes=args.limit_volumes)
    print(table1(rows), end="")
    stem = f"eval_{loaded.config['kind']}" + (f"_v{loaded.version}" if loaded.version else "")
    paths = write_table(rows, args.out, stem)
    print(f"saved {paths['md']}, {paths['csv']}, {paths['json']}")
    return 0
