"""Table-1 evaluation: reconstruct every slice of a dataset, score volumes on the foreground, aggregate.

`evaluate_dataset(methods, data_dir, accels)` is the reusable loop: it takes reconstruction callables
(zero-filled, CG-SENSE, a trained model, ...) and returns Table-1 rows for `dnirecon.tables`.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

# A reconstruction: zero-filled k-space complex (S, C, H, W), mask float (S, W) -> image (S, H, W),
# complex or magnitude, full field of view.
ReconFn = Callable[[Tensor, Tensor], Tensor]

# Table-1 data names for the fastMRI acquisitions; anything else keeps its own name.
CONTRASTS = {"CORPD_FBK": "CORPD", "CORPDFS_FBK": "CORPDFS"}
ALL = "ALL"


def contrast_name(acquisition: str) -> str:
    return CONTRASTS.get(acquisition, acquisition or "unknown")


def baseline_methods(cg_lambda: float | None = None, cg_iters: int | None = None) -> dict[str, ReconFn]:
    """The classical baselines as named reconstruction callables."""
    from training.baselines import CG_ITERS, CG_LAMBDA, cg_sense, zero_filled_rss

    lam = CG_LAMBDA if cg_lambda is None else cg_lambda
    iters = CG_ITERS if cg_iters is None else cg_iters
    return {
        "Zero-filled": zero_filled_rss,
        "CG-SENSE": lambda kspace, mask: cg_sense(kspace, mask, lam=lam, iters=iters),
    }


def _volume_target(vol, recon_size: tuple[int, int]) -> np.ndarray:
    """(slices, h, w) SENSE target: the stored one (synthetic), else from the full k-space (fastMRI)."""
    if vol.has_target("sense"):
        return np.stack([vol.target(i, "sense") for i in range(vol.num_slices)]).astype(np.float32)
    from training.data import sense_target_from_full

    return np.stack([sense_target_from_full(vol.kspace(i), recon_size, vol.name)
                     for i in range(vol.num_slices)])


def _reconstruct_volume(fn: ReconFn, kspace: Tensor, mask: Tensor, recon_size: tuple[int, int],
                        batch: int) -> np.ndarray:
    from dnirecon.fastmri_io import center_crop

    out = []
    with torch.no_grad():
        for start in range(0, kspace.shape[0], batch):
            k, m = kspace[start:start + batch], mask[start:start + batch]
            out.append(fn(k, m).abs().float().cpu().numpy())
    return center_crop(np.concatenate(out), recon_size)


def evaluate_dataset(methods: Mapping[str, ReconFn], data_dir: str | Path, accels: Sequence[float],
                     mask_kind: str = "random", limit_volumes: int | None = None, batch: int = 4,
                     progress: bool = True, device: str | torch.device = "cpu",
                     on_volume: Callable[[dict], None] | None = None) -> list[dict]:
    """Table-1 rows: one per (data in CORPD / CORPDFS / ALL, acceleration, method).

    Each volume gets fastMRI's deterministic validation mask for its file name at each acceleration
    (the same mask for all its slices); masked k-space goes to every method; the magnitude is
    centre-cropped to the header's recon size and scored with `metrics.evaluate_volume` against the
    SENSE target on the target's foreground. Rows hold `metrics.aggregate` (mean, std over volumes).
    `on_volume`, when given, gets each volume's dict(file, data, accel, method, pred, target,
    foreground, metrics) as soon as it is scored.
    """
    from tqdm import tqdm

    from dnirecon.fastmri_io import FastMRIVolume, list_volumes
    from dnirecon.foreground import foreground_mask
    from dnirecon.metrics import evaluate_volume
    from dnirecon.subsample import check_accel, mask_for

    accels = [check_accel(a, "--accel") for a in accels]
    files = list_volumes(data_dir)[:limit_volumes]
    results: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    bar = tqdm(total=len(files) * len(accels) * len(methods), desc="eval", unit="recon", disable=not progress)
    for path in files:
        with FastMRIVolume(path) as vol:
            header = vol.header
            contrast = contrast_name(header.acquisition)
            kspace = torch.from_numpy(np.stack([vol.kspace(i) for i in range(vol.num_slices)])).to(device)
            target = _volume_target(vol, header.recon_size)
        fg = foreground_mask(target)
        width = kspace.shape[-1]
        for accel in accels:
            mask_1d = mask_for(accel, kind=mask_kind, seed=path.name, width=width,
                               padding=(header.padding_left, header.padding_right))
            mask = torch.from_numpy(mask_1d).to(device).expand(kspace.shape[0], width)
            measured = kspace * mask[:, None, None, :]
            for name, fn in methods.items():
                bar.set_postfix_str(f"{path.name} {accel:g}x {name}")
                pred = _reconstruct_volume(fn, measured, mask, header.recon_size, batch)
                scores = evaluate_volume(target, pred, fg)
                results[(contrast, accel, name)].append(scores)
                results[(ALL, accel, name)].append(scores)
                if on_volume is not None:  # the report keeps per-volume scores and an example slice
                    on_volume(dict(file=path.name, data=contrast, accel=accel, method=name, pred=pred,
                                   target=target, foreground=fg, metrics=scores))
                bar.update()
    bar.close()
    return rows_from_results(results, accels, list(methods))


def rows_from_results(results: Mapping[tuple[str, float, str], Iterable[dict]], accels: Sequence[float],
                      methods: Sequence[str]) -> list[dict]:
    """Per-volume scores keyed by (data, accel, method) -> Table-1 rows in the paper's order."""
    from dnirecon.metrics import aggregate

    data_names = sorted({d for d, _, _ in results if d != ALL}) + [ALL]
    rows = []
    for data in data_names:
        for accel in accels:
            for method in methods:
                scores = list(results.get((data, accel, method), []))
                if scores:
                    rows.append(dict(data=data, accel=accel, method=method, metrics=aggregate(scores)))
    return rows


def eval_baselines_command(args: argparse.Namespace) -> int:
    """`dnirecon eval baselines`: print the Table-1 rows of zero-filled and CG-SENSE; save md/csv/json."""
    from dnirecon.errors import ConfigError
    from dnirecon.tables import table1, write_table

    if args.cg_iters is not None and args.cg_iters < 1:
        raise ConfigError(f"--cg-iters must be a positive integer, got {args.cg_iters}")
    if args.cg_lambda is not None and not args.cg_lambda >= 0:
        raise ConfigError(f"--cg-lambda must be a non-negative number, got {args.cg_lambda}")
    if args.limit_volumes is not None and args.limit_volumes < 1:
        raise ConfigError(f"--limit-volumes must be a positive integer, got {args.limit_volumes}")
    rows = evaluate_dataset(baseline_methods(args.cg_lambda, args.cg_iters), args.data, args.accel,
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
    model = loaded.model
    methods: dict[str, ReconFn] = {} if args.no_baselines else baseline_methods(args.cg_lambda, args.cg_iters)
    methods[label] = lambda kspace, mask: model(kspace, mask)
    rows = evaluate_dataset(methods, args.data, args.accel, mask_kind=args.mask, limit_volumes=args.limit_volumes)
    print(table1(rows), end="")
    stem = f"eval_{loaded.config['kind']}" + (f"_v{loaded.version}" if loaded.version else "")
    paths = write_table(rows, args.out, stem)
    print(f"saved {paths['md']}, {paths['csv']}, {paths['json']}")
    return 0
