"""The compressed-sensing weight and iteration count, chosen on tuning data only.

    python experiments/cs_tuning.py --out /tmp/cs_tuning

Tuning data: synthetic volumes of another seed (100) than the demo's train (0) and held-out (1) sets,
at the demo's cpu sizes (8 coils, 96 x 96, 4 slices, one volume per contrast), and the tuning items of
the outside sources (training.outside.ITEMS, role "tuning"). Nothing reported is read. ESPIRiT maps are
computed once per slice and shared by every setting. Prints mean PSNR / SSIM per (set, accel, setting)
and the setting with the best mean PSNR over every set and acceleration, settings within 0.1 dB of
it counting as ties broken by mean SSIM; training/baselines.py keeps it as CS_LAMBDA / CS_ITERS.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

LAMBDAS = (0.0003, 0.001, 0.003, 0.01)
ITERS = (30, 60)
TIE_DB = 0.1  # PSNR differences below this are within the slice-to-slice spread


def main() -> int:
    import numpy as np

    from dnirecon.fastmri_io import center_crop
    from dnirecon.metrics import evaluate_volume
    from training.baselines import cs_l1_wavelet, espirit_maps
    from training.evaluate import load_held_out, magnitude
    from training.outside import ITEMS, TUNING, build_outside
    from training.synth import SynthConfig, synthesize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where the tuning data go")
    p.add_argument("--slices", type=int, default=2, help="central slices per volume")
    args = p.parse_args()

    synth_dir = args.out / "synth"
    if not synth_dir.exists():
        synthesize(synth_dir, SynthConfig(volumes_per_contrast=1, slices=4, coils=8, recon_size=(96, 96), seed=100))
    outside = build_outside(args.out / "outside", [i for i in ITEMS if i.role == TUNING])
    sets = {"synthetic seed 100": synth_dir, **{f"{src} tuning": d for (src, _), d in outside.items()}}

    settings = list(itertools.product(LAMBDAS, ITERS))
    scores: dict[tuple[str, float, tuple], list[tuple[float, float]]] = {}
    for name, directory in sets.items():
        for s in load_held_out(directory, slices=args.slices, accels=(4.0, 8.0)):
            maps = espirit_maps(s.kspace, s.mask)[None]
            for lam, iters in settings:
                x = cs_l1_wavelet(s.kspace[None], s.mask[None], lam=lam, iters=iters, maps=maps)[0]
                pred = center_crop(magnitude(x), s.target.shape)
                m = evaluate_volume(s.target[None], pred[None], s.foreground[None])
                scores.setdefault((name, s.accel, (lam, iters)), []).append((m["psnr"], m["ssim"]))
            print(f"  {name} {s.volume} slice {s.slice_index} {s.accel:g}x done", flush=True)

    print("\n| Set | AF | lam | iters | PSNR | SSIM |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, accel, (lam, iters)), v in scores.items():
        psnr, ssim = np.mean(v, axis=0)
        print(f"| {name} | {accel:g}x | {lam:g} | {iters} | {psnr:.2f} | {ssim:.4f} |")
    overall = {}
    for setting in settings:
        per = [np.mean(v, axis=0) for (_, _, st), v in scores.items() if st == setting]
        overall[setting] = tuple(np.mean(per, axis=0))
    print("\n| lam | iters | mean PSNR | mean SSIM |\n| ---: | ---: | ---: | ---: |")
    for (lam, iters), (psnr, ssim) in overall.items():
        print(f"| {lam:g} | {iters} | {psnr:.2f} | {ssim:.4f} |")
    top = max(psnr for psnr, _ in overall.values())
    best = max((st for st in overall if overall[st][0] >= top - TIE_DB), key=lambda st: overall[st][1])
    print(f"\nkept: lam {best[0]:g}, {best[1]} iterations (mean PSNR {overall[best][0]:.2f} dB, SSIM {overall[best][1]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
