"""`dnirecon data synth|figure`: the synthetic fastMRI-layout dataset and a picture of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from dnirecon.argtypes import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthetic fastMRI-layout datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="WHAT", required=True)

    s = dsub.add_parser("synth", help="write synthetic knee volumes in the fastMRI multi-coil layout")
    s.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    s.add_argument("--volumes-per-contrast", type=positive_int, default=2,
                   help="volumes of each contrast, PD and PD fat-suppressed (default: 2)")
    s.add_argument("--slices", type=positive_int, default=8, help="slices per volume (default: 8)")
    s.add_argument("--coils", type=positive_int, default=8, help="receive coils (default: 8; fastMRI: 15)")
    s.add_argument("--recon-size", type=positive_int, nargs=2, metavar=("H", "W"), default=[96, 96],
                   help="reconstructed matrix; k-space is 2H x enc-width (default: 96 96; fastMRI: 320 320)")
    s.add_argument("--enc-width", type=positive_int, default=None,
                   help="phase-encode width with zero padding (default: W + 15%%, 368 for W=320)")
    s.add_argument("--contrasts", nargs="+", choices=["pd", "pdfs"], default=["pd", "pdfs"])
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--noise-scale", type=float, default=1.0,
                   help="multiply the k-space noise (image SNR about 67 PD / 16 PDFS at 1; 0: noise-free)")
    s.add_argument("--vary", action="store_true",
                   help="draw each volume's acquisition: noise 1-8%% of the mean foreground signal (log-uniform), "
                        "4-16 coils on a cylinder or two plates, recon size within +-1/6 of --recon-size, "
                        "orientation, knee or shape-phantom content (--coils and --enc-width are then drawn)")
    s.add_argument("--noise-measurement", action="store_true",
                   help="also write each volume's `noise` dataset: noise-only samples of its receiver noise, which "
                        "`data to-ismrmrd` sends as noise readouts (the MRD endpoint prewhitens with them)")
    s.set_defaults(func=_run_synth)

    f = dsub.add_parser("figure", help="save a picture of synthetic slices of each contrast")
    f.add_argument("--out", type=Path, default=None,
                   help="PNG to write (default: docs/figures/synthetic_slices.png, with --vary synthetic_varied.png)")
    f.add_argument("--recon-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="recon size (default: 320 320; with --vary 96 96, the centre of the drawn sizes)")
    f.add_argument("--coils", type=positive_int, default=8)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--vary", action="store_true", help="show 12 varied volumes (see data synth --vary) instead")
    f.set_defaults(func=_run_figure)

    from dnirecon.ismrmrd_io import register_data_commands

    register_data_commands(dsub)


def _run_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, synthesize

    cfg = SynthConfig(volumes_per_contrast=args.volumes_per_contrast, slices=args.slices, coils=args.coils,
                      recon_size=tuple(args.recon_size), enc_width=args.enc_width, seed=args.seed,
                      contrasts=tuple(args.contrasts), noise_scale=args.noise_scale, vary=args.vary)
    files = synthesize(args.out, cfg, progress=True, with_noise_measurement=args.noise_measurement)
    print(f"wrote {len(files)} volumes to {args.out}")
    return 0


def _run_figure(args: argparse.Namespace) -> int:
    from training.synth import figure, figure_varied

    if args.vary:
        print(figure_varied(args.out or Path("docs/figures/synthetic_varied.png"),
                            recon_size=tuple(args.recon_size or (96, 96)), seed=args.seed))
    else:
        print(figure(args.out or Path("docs/figures/synthetic_slices.png"),
                     recon_size=tuple(args.recon_size or (320, 320)), coils=args.coils, seed=args.seed))
    return 0
