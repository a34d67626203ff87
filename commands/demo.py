"""`dnirecon demo`: the main job end to end, on embedded defaults.

synthesize -> baselines -> train SN, SN-GAN, U-Net (registered) -> bake interpSN (+ continuous) ->
promote -> serve the promoted alias -> stream a held-out volume at each alpha -> stop -> report.

Each step is skipped when its result is already there (same data, same preset), so a second run
reuses the first one's work. Heavy imports happen inside the steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("commands.demo")

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class DemoSizes:
    """Synthetic data sizes per preset (the cpu preset's demo fits 2 cores in under 40 minutes)."""

    train_volumes_per_contrast: int
    val_volumes_per_contrast: int
    slices: int
    coils: int  # ignored under `vary`, where each volume draws its own
    recon_size: tuple[int, int]  # under `vary`, the centre of each volume's drawn size
    vary: bool = False  # training.synth's varied acquisitions (noise, coils, geometry, matrix, orientation, content)


SIZES = {
    # varied acquisitions: the setting experiments/train_tuning.py chose on tuning data
    "cpu": DemoSizes(train_volumes_per_contrast=10, val_volumes_per_contrast=2, slices=8, coils=8,
                     recon_size=(96, 96), vary=True),
    "paper": DemoSizes(train_volumes_per_contrast=40, val_volumes_per_contrast=4, slices=16, coils=15,
                       recon_size=(320, 320)),
}


class Steps:
    """Prints each step with its elapsed time; the whole demo shows progress throughout."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def start(self, title: str) -> float:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {title}  (t = {self._elapsed()})", flush=True)
        return time.perf_counter()

    def done(self, t_start: float, what: str) -> None:
        print(f"      {what} in {time.perf_counter() - t_start:.0f} s", flush=True)

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}m{s % 60:02d}s"


def _state_path(work: Path) -> Path:
    return work / "state.json"


def _load_state(work: Path) -> dict:
    p = _state_path(work)
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(work: Path, state: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = _state_path(work).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, _state_path(work))


def run_demo(preset: str = "cpu", data_root: Path = Path("data/demo"), work: Path = Path("runs/demo"),
             docs: Path = Path("docs"), fresh: bool = False) -> dict:
    from dnirecon.fastmri_io import list_volumes
    from training.synth import SynthConfig, synthesize

    sizes = SIZES[preset]
    data_root = data_root / preset
    work = work / preset
    state = {} if fresh else _load_state(work)
    steps = Steps(total=10)

    # 1. data
    t = steps.start("synthetic fastMRI-layout data (train and held-out)")
    data_key = json.dumps(asdict(sizes), sort_keys=True, default=str)
    if state.get("data_key") != data_key or not (data_root / "val").exists():
        common = dict(slices=sizes.slices, coils=sizes.coils, recon_size=sizes.recon_size, vary=sizes.vary)
        synthesize(data_root / "train", SynthConfig(volumes_per_contrast=sizes.train_volumes_per_contrast,
                                                    seed=0, **common), progress=True)
        synthesize(data_root / "val", SynthConfig(volumes_per_contrast=sizes.val_volumes_per_contrast,
                                                  seed=1, **common), progress=True)
        state = {"data_key": data_key}
        _save_state(work, state)
        steps.done(t, "synthesized")
    else:
        steps.done(t, f"reused {len(list_volumes(data_root / 'train'))} + {len(list_volumes(data_root / 'val'))} volumes")
    train_dir, val_dir = data_root / "train", data_root / "val"

    from commands.demo_steps import baselines_step, bake_step, promote_step, report_step, serve_step, train_step

    baselines_step(steps, state, work, val_dir)
    _save_state(work, state)
    try:
        train_step(steps, state, work, preset, train_dir, val_dir)
    finally:  # a signal mid-training leaves a checkpoint; the state says where, for the next run
        _save_state(work, state)
    bake_step(steps, state, work, preset, val_dir, ALPHAS)
    _save_state(work, state)
    promote_step(steps, state, work)
    _save_state(work, state)
    serve_step(steps, state, work, val_dir, ALPHAS)
    _save_state(work, state)
    report_step(steps, state, work, val_dir, docs, ALPHAS, preset)
    _save_state(work, state)
    print(f"\ndemo finished in {steps._elapsed()}: report in {docs / 'report.md'}, registry in "
          f"{os.environ.get('MLFLOW_TRACKING_URI', 'mlflow.db')}, images in {work / 'client'}", flush=True)
    return state


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job end to end on synthetic data (what `make demo` runs)")
    p.add_argument("--preset", choices=sorted(SIZES), default="cpu",
                   help="cpu: 2 cores, small volumes; paper: full size, for a GPU machine")
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="where the synthetic data go")
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="checkpoints, client outputs, state")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where the report and figures go")
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    run_demo(args.preset, args.data, args.work, args.docs, args.fresh)
    return 0
