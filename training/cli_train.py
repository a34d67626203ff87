"""`dnirecon train sn|sn-gan|unet`: a thin layer over training.train.train_model."""

from __future__ import annotations

import argparse
from pathlib import Path

from dnirecon.argtypes import non_negative_float, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train SN, SN-GAN or the U-Net baseline and register it in MLflow")
    kinds = tr.add_subparsers(dest="kind", metavar="MODEL", required=True)
    helps = {"sn": "sensitivity network with 1 - SSIM + 1e-3 L1 (from scratch, or fine-tuned with --init-from)",
             "sn-gan": "fine-tune a trained SN with LSGAN + 0.1 L_SN",
             "unet": "fastMRI-style U-Net baseline on zero-filled RSS"}
    for kind, text in helps.items():
        p = kinds.add_parser(kind, help=text)
        p.add_argument("--data", type=Path, required=True,
                       help="directory of .h5 volumes (with train/ and val/ subdirectories, or --val-data)")
        p.add_argument("--val-data", type=Path, default=None, help="directory of validation volumes")
        p.add_argument("--preset", default="cpu", help="model and schedule preset: cpu or paper (default cpu)")
        p.add_argument("--accel", type=positive_float, nargs="+", default=[4.0, 8.0],
                       help="accelerations drawn per training sample (default: 4 8)")
        p.add_argument("--mask", choices=["random", "equispaced"], default="random", help="mask type")
        p.add_argument("--epochs", type=positive_int, default=None, help="override the preset's epochs")
        p.add_argument("--batch-size", type=positive_int, default=None, help="override the preset's batch")
        p.add_argument("--lr", type=positive_float, default=None, help="override the preset's learning rate")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--resume", type=Path, default=None, metavar="LAST_PT|auto",
                       help="continue from this checkpoint (last.pt); --seed, --preset and --accel must match it. "
                            "auto: the newest unfinished, unregistered checkpoint under --out with the same "
                            "model, --seed, --preset, --accel and parent sn, or a new run if there is none "
                            "(for a Job that restarts after an eviction)")
        p.add_argument("--out", type=Path, default=Path("checkpoints"), help="checkpoint directory")
        p.add_argument("--max-steps", type=positive_int, default=None,
                       help="stop after N optimiser steps; a run stopped before its schedule ends is registered "
                            "with tag truncated=true and does not move alias champion")
        p.add_argument("--slices-per-volume", type=positive_int, default=None,
                       help="central slices used per training volume (default: all)")
        p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
        p.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
        p.add_argument("--no-register", action="store_true", help="log the run but register no model version")
        p.add_argument("--no-mlflow", action="store_true", help="no MLflow at all (local checkpoint only)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if kind in ("sn", "sn-gan"):
            p.add_argument("--l1-weight", type=non_negative_float, default=None,
                           help="lambda of L_SN = 1 - SSIM + lambda * L1 (default 1e-3, the paper's number; "
                                "about 0.2 reproduces the balance of the paper's code, docs/training.md)")
        if kind == "sn":
            p.add_argument("--init-from", default=None,
                           help="fine-tune this trained SN (sn version, alias, or checkpoint path) with L_SN on "
                                "the preset's fine-tuning schedule, the paper's twin of SN-GAN (default: "
                                "train from scratch)")
        if kind == "sn-gan":
            p.add_argument("--init-from", default="champion",
                           help="the SN to fine-tune: sn version, alias, or a checkpoint path (default champion)")
            p.add_argument("--critic-steps", type=positive_int, default=None,
                           help="discriminator updates per generator update")
            p.add_argument("--gamma", type=positive_float, default=None,
                           help="weight of L_SN (default 0.1, the paper's number; about 5 reproduces the balance "
                                "of the paper's code)")
            p.add_argument("--adv-weight", type=positive_float, default=None, help="weight of the LSGAN term")
            p.add_argument("--branch-adv-weights", type=non_negative_float, nargs="+", default=None,
                           metavar="W", help="a factor on the LSGAN term per SN branch, in accel_branches order "
                                              "(default: the preset's; cpu: 0.25 for 4x, 2 for 8x)")
            p.add_argument("--disc-lr", type=positive_float, default=None, help="discriminator learning rate")
        p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from training.train import train_model

    overrides = {"slices_per_volume": args.slices_per_volume}
    for name in ("critic_steps", "gamma", "adv_weight", "disc_lr", "l1_weight"):
        overrides[name] = getattr(args, name, None)
    if getattr(args, "branch_adv_weights", None):
        overrides["branch_adv_weights"] = tuple(args.branch_adv_weights)
    try:
        result = train_model(
            args.kind, args.data, preset=args.preset, accels=args.accel, epochs=args.epochs, seed=args.seed,
            resume=args.resume, register=not args.no_register, val_dir=args.val_data,
            init_from=getattr(args, "init_from", None), out_dir=args.out, batch_size=args.batch_size,
            lr=args.lr, max_steps=args.max_steps, device=args.device, amp=not args.no_amp,
            progress=not args.no_progress, log_mlflow=not args.no_mlflow, schedule_overrides=overrides,
            mask_kind=args.mask)
    finally:  # under torchrun: leave the process group train_model joined, whatever the outcome
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    shown = {k: v for k, v in result.metrics.items() if k.startswith("val_") and k.count("_") == 1}
    print(f"{args.kind}: checkpoint {result.checkpoint_path}")
    if result.run_id:
        print(f"{args.kind}: MLflow run {result.run_id}" + (f", registered version {result.version}"
                                                          if result.version else ""))
    if result.version and result.truncated:
        print(f"{args.kind}: the run stopped before the end of its schedule (--max-steps): version {result.version} "
              "is tagged truncated=true and alias champion was not moved")
    if shown:
        print(f"{args.kind}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
    return 0
