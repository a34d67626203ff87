"""The training data of the cpu preset's SN, chosen on tuning data only.

    python experiments/train_tuning.py --config varied --out /tmp/train_tuning
    python experiments/train_tuning.py --config today --checkpoint <a trained SN's last.pt> --out /tmp/train_tuning
    python experiments/train_tuning.py --table --out /tmp/train_tuning

Each configuration (CONFIGS) is a way of making the demo's training set (the demo's sizes: 10 training
and 2 validation volumes per contrast); the SN is trained from scratch on it with the cpu preset's
SN schedule (the demo's first training step, seed 0), then scored with compressed sensing beside it on
the tuning sets only:

- synthetic volumes of seed 100 (neither the demo's training seed 0 nor its held-out seed 1), made by
  today's generator (2 volumes) and by the varied one (`--vary`, 6 volumes);
- the tuning items of the outside sources (training.outside.ITEMS, role "tuning": two brain items,
  one phantom item). The reported items are never built or read here.

Writes <out>/<config>/scores.json; `--table` prints every configuration's scores as one markdown table
(docs/experiments/training-data.md keeps it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

ACCELS = (4.0, 8.0)
SLICES = 2  # central slices per tuning volume

@dataclasses.dataclass(frozen=True)
class Config:
    what: str
    synth: dict = dataclasses.field(default_factory=dict)  # SynthConfig changes for the training set
    constants: dict = dataclasses.field(default_factory=dict)  # training.synth constants changed for it
    epochs: int | None = None  # SN epochs; None: the preset's
    sn: dict = dataclasses.field(default_factory=dict)  # SNConfig changes of the cpu preset


NO_TAPER = dict(maps_support=0.0)  # the configurations run before the coil-map taper became the default

CONFIGS: dict[str, Config] = {
    "today": Config("the knee cartoon, 8 coils, 96 x 96, one orientation, noise 1.2 % of the tissue scale, noisy target",
                    sn=NO_TAPER),
    "varied": Config("--vary: noise 1-8 %, 4-16 coils in two array families, 80-112 matrices, transposes/flips, "
                     "knee or shape phantoms, noise-free target", dict(vary=True), sn=NO_TAPER),
    "varied-knee": Config("as varied, knee content only", dict(vary=True), dict(CONTENTS=("knee",)), sn=NO_TAPER),
    "varied-18ep": Config("as varied, 18 SN epochs instead of 12", dict(vary=True), epochs=18, sn=NO_TAPER),
    "varied-crop": Config("as varied-18ep, coil maps tapered to the object (SNConfig.maps_support 0.05 of the "
                          "low-resolution RSS peak)", dict(vary=True), epochs=18, sn=dict(maps_support=0.05)),
    "varied-wide": Config("as varied, Down-Up width 24 instead of 16", dict(vary=True), sn=dict(width=24, **NO_TAPER)),
}


def tuning_sets(out: Path) -> dict[str, Path]:
    from training.outside import ITEMS, TUNING, build_outside
    from training.synth import SynthConfig, synthesize

    sets = {}
    for name, n, extra in (("synthetic seed 100", 1, {}), ("synthetic varied seed 100", 3, dict(vary=True))):
        d = out / "tuning" / name.replace(" ", "_")
        if not d.exists():
            synthesize(d, SynthConfig(volumes_per_contrast=n, slices=4, coils=8, recon_size=(96, 96), seed=100, **extra))
        sets[name] = d
    outside = build_outside(out / "tuning" / "outside", [i for i in ITEMS if i.role == TUNING])
    sets.update({f"{src} tuning": d for (src, _), d in outside.items()})
    return sets


def train(config: str, out: Path, epochs: int | None) -> Path:
    from commands.demo import SIZES
    from training.synth import SynthConfig, synthesize
    from training.train import train_model

    from training import synth

    from training.presets import get_preset

    sizes = SIZES["cpu"]
    cfg = CONFIGS[config]
    changes = cfg.synth
    for name, value in cfg.constants.items():  # this experiment's variant of the generator, never the library's
        setattr(synth, name, value)
    epochs = epochs or cfg.epochs
    preset = get_preset("cpu")
    if cfg.sn:
        preset = dataclasses.replace(preset, name=f"cpu-{config}", sn=dataclasses.replace(preset.sn, **cfg.sn))
    base = SynthConfig(slices=sizes.slices, coils=sizes.coils, recon_size=sizes.recon_size)
    data = out / config
    for sub, n, seed in (("train", sizes.train_volumes_per_contrast, 0), ("val", sizes.val_volumes_per_contrast, 1)):
        if not (data / sub).exists():
            t0 = time.perf_counter()
            synthesize(data / sub, dataclasses.replace(base, volumes_per_contrast=n, seed=seed, **changes))
            print(f"{config}: {sub} data in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    result = train_model("sn", data / "train", preset=preset, accels=ACCELS, val_dir=data / "val", epochs=epochs,
                         out_dir=data / "checkpoints", register=False, log_mlflow=False, seed=0)
    print(f"{config}: trained in {time.perf_counter() - t0:.0f} s -> {result.checkpoint_path}", flush=True)
    return Path(result.checkpoint_path)


def score(config: str, checkpoint: Path, out: Path) -> dict:
    import numpy as np

    from registry.export import run_torch
    from training.evaluate import CS_NAME, baseline_methods, evaluate
    from dnirecon.fastmri_io import list_volumes
    from training.evaluate import held_out_volumes
    from training.tracking import load_checkpoint

    model = load_checkpoint(checkpoint).model.eval()
    methods = {"SN": lambda k, m: run_torch(model, k, m), "CS": baseline_methods()[CS_NAME]}
    scores = {}
    for name, d in tuning_sets(out).items():
        records = evaluate(methods, held_out_volumes(list_volumes(d), ACCELS, slices_per_volume=SLICES),
                           progress=False)
        for method in methods:
            for accel in ACCELS:
                rs = [r for r in records if r["method"] == method and r["accel"] == accel]
                scores[f"{name}|{accel:g}x|{method}"] = {k: float(np.mean([r["metrics"][k] for r in rs])) for k in ("psnr", "ssim")}
        print(f"{config}: scored {name}", flush=True)
    doc = {"config": config, "what": CONFIGS[config].what, "checkpoint": str(checkpoint), "scores": scores}
    (out / config).mkdir(parents=True, exist_ok=True)
    (out / config / "scores.json").write_text(json.dumps(doc, indent=1))
    return doc


def table(out: Path) -> str:
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*/scores.json"))]
    if not docs:
        return "no scores yet"
    keys = list(docs[0]["scores"])
    sets = list(dict.fromkeys(k.rsplit("|", 1)[0] for k in keys))
    lines = ["| Tuning set | AF | CS | " + " | ".join(f"SN: {d['config']}" for d in docs) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in docs) + " |"]
    for s in sets:
        name, af = s.split("|")
        cs = docs[0]["scores"][f"{s}|CS"]
        cells = [f"{d['scores'][f'{s}|SN']['psnr']:.2f} / {d['scores'][f'{s}|SN']['ssim']:.3f}" for d in docs]
        lines.append(f"| {name} | {af} | {cs['psnr']:.2f} / {cs['ssim']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", choices=sorted(CONFIGS))
    p.add_argument("--checkpoint", type=Path, help="score this trained SN instead of training one")
    p.add_argument("--epochs", type=int, help="override the preset's SN epochs")
    p.add_argument("--table", action="store_true", help="print the scores of every configuration run so far")
    args = p.parse_args()
    if args.table:
        print(table(args.out))
        return 0
    if not args.config:
        p.error("--config is required unless --table")
    ckpt = args.checkpoint or train(args.config, args.out, args.epochs)
    score(args.config, ckpt, args.out)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
