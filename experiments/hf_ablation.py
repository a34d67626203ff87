"""Fine-tune SN and SN-GAN from one parent SN and take their HF ratios apart (docs/experiments/).

The demo's second stage in isolation: from a trained `sn` (the parent), fine-tune SN with L_SN and
SN-GAN with the given adversarial settings on the fine-tuning schedule, then score SN, interpSN at a
few alphas and SN-GAN on the held-out volumes (fastMRI's per-file masks, as in the report) and print
PSNR, SSIM, the HF ratio and its split into detail and excess (`dnirecon.metrics.hf_split`). Nothing is
logged to MLflow or registered; checkpoints go under --out, and a run reuses the fine-tuned
checkpoints it finds there.

    python experiments/hf_ablation.py --data data/demo/cpu/train --val-data data/demo/cpu/val \\
        --parent runs/demo/cpu/checkpoints/sn-<run>/last.pt --critic-steps 3 --out runs/ablation/critic3
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path


def main() -> int:
    from registry.export import run_torch
    from registry.interpolate import interpolate_pair
    from training import tracking
    from training.report import collect_report_data, hf_split_rows, interp_name
    from training.train import train_model

    from experiments.presets import variant

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="training volumes")
    p.add_argument("--val-data", type=Path, required=True, help="held-out volumes to score")
    p.add_argument("--parent", required=True, help="the trained SN both runs start from (checkpoint or model dir)")
    p.add_argument("--sn", default=None, help="an SN already fine-tuned from --parent (skips that run)")
    p.add_argument("--gan", default=None, help="an SN-GAN already fine-tuned from --parent (skips that run)")
    p.add_argument("--out", type=Path, required=True, help="checkpoints and results.json")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate, for both (default: the preset's)")
    p.add_argument("--critic-steps", type=int, default=None)
    p.add_argument("--disc-lr", type=float, default=None)
    p.add_argument("--adv-weight", type=float, default=None)
    p.add_argument("--gamma", type=float, default=None, help="weight of L_SN in the SN-GAN loss")
    p.add_argument("--branch-adv-weights", type=float, nargs="+", default=None,
                   help="factor on the LSGAN term per SN branch (default: the preset's)")
    p.add_argument("--disc-chans", type=int, default=None, help="PatchGAN features in its first layer")
    p.add_argument("--disc-layers", type=int, default=None, help="PatchGAN strided layers")
    p.add_argument("--sampling-input", choices=["yes", "no"], default=None,
                   help="SN whose Down-Up networks see the sampled fraction, or not (the parent must match); "
                        "default: the preset's")
    p.add_argument("--l1-weight", type=float, default=None, help="lambda of L_SN, for both fine-tunings")
    p.add_argument("--alphas", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    p.add_argument("--accel", type=float, nargs="+", default=[4.0, 8.0],
                   help="accelerations to fine-tune on and score (a parent trained on others still loads)")
    a = p.parse_args()

    sn_overrides = {} if a.l1_weight is None else {"l1_weight": a.l1_weight}
    overrides = dict(sn_overrides, **{k: v for k, v in dict(critic_steps=a.critic_steps, disc_lr=a.disc_lr,
                                                             adv_weight=a.adv_weight, gamma=a.gamma,
                                                             branch_adv_weights=None if a.branch_adv_weights is None
                                                             else tuple(a.branch_adv_weights)).items()
                                       if v is not None})
    a.out.mkdir(parents=True, exist_ok=True)
    preset = variant(a.preset, a.disc_chans, a.disc_layers,
                     None if a.sampling_input is None else a.sampling_input == "yes")
    settings = overrides if preset.name == a.preset else dict(overrides, preset=preset.name)
    if a.epochs is not None:
        settings = dict(settings, epochs=a.epochs)
    if a.lr is not None:
        settings = dict(settings, lr=a.lr)

    def fine_tune(kind: str, extra: dict) -> Path:
        done = a.out / f"{kind}.checkpoint"
        if done.exists():
            return Path(done.read_text())
        r = train_model(kind, a.data, preset=preset, accels=a.accel, epochs=a.epochs, lr=a.lr, val_dir=a.val_data,
                        init_from=a.parent, register=False, log_mlflow=False, out_dir=a.out / "checkpoints",
                        schedule_overrides=extra)
        done.write_text(str(r.checkpoint_path))
        return r.checkpoint_path

    sn = tracking.load_checkpoint(a.sn if a.sn else fine_tune("sn", sn_overrides)).model
    gan = tracking.load_checkpoint(a.gan if a.gan else fine_tune("sn-gan", overrides)).model
    models = {"SN": sn}
    for alpha in a.alphas:
        m = copy.deepcopy(sn)
        m.load_state_dict(interpolate_pair(sn.state_dict(), gan.state_dict(), alpha))
        models[interp_name(alpha)] = m
    models["SN-GAN"] = gan

    # the report's own loop and HF split, on torch models (no bake needed)
    data = collect_report_data(a.val_data, a.accel, {n: (lambda k, mk, m=m: run_torch(m, k, mk))
                                                     for n, m in models.items()}, a.alphas)
    means = {(r["accel"], r["method"]): r["metrics"] for r in data.rows if r["data"] == "ALL"}
    table = [dict(row, psnr=means[(row["accel"], row["method"])]["psnr"][0],
                  ssim=means[(row["accel"], row["method"])]["ssim"][0]) for row in hf_split_rows(data)]
    print(f"\nsettings: {settings or 'preset defaults'}\n")
    print("| AF | method | PSNR | SSIM | detail | excess | HF ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['accel']:g}x | {row['method']} | {row['psnr']:.3f} | {row['ssim']:.4f} | {row['detail']:.3f} "
              f"| {row['excess']:.3f} | {row['hf_ratio']:.3f} |")
    (a.out / "results.json").write_text(json.dumps(dict(settings=settings, parent=str(a.parent), rows=table),
                                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
