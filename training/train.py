"""Training loops for SN, SN-GAN and the U-Net baseline, with checkpoints, validation and MLflow.

`train_model(kind, data_dir, preset, accels, ...)` is the library entry point the CLI and the demo call.
One loop serves the three kinds; what differs is the reconstruction (`reconstruct`) and the step
(`_sn_step`, `_gan_step`, `_unet_step`). Distributed data parallel runs under torchrun
(WORLD_SIZE > 1): a DistributedSampler shards the data and only rank 0 validates, logs and registers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from dnirecon.errors import ConfigError, Interrupted, ModelError
from training import losses, tracking
from training.branches import branch_stages, frozen_in, stage_at, start_branch
from training.data import Sample, SliceDataset, collate, describe_dataset, split_dirs
from training.models.discriminator import PatchDiscriminator
from training.models.signature import arch_signature, weights_digest
from training.presets import Preset, Schedule, get_preset
from training.stopping import StopOnSignal

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "dnirecon.checkpoint/1"
AUTO_RESUME = "auto"  # --resume auto: find_unfinished() under --out


class TrainResult(NamedTuple):
    run_id: str | None
    version: str | None
    checkpoint_path: Path
    metrics: dict
    truncated: bool = False  # stopped (--max-steps) before the schedule's last step: champion not moved


def lr_at(sched: Schedule, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based) out of `total_steps` (Schedule.lr_floor)."""
    if sched.lr_floor >= 1.0 or total_steps <= 1:
        return sched.lr
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return sched.lr * (sched.lr_floor + (1.0 - sched.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def schedule_for(preset: Preset, kind: str, finetune: bool = False, **overrides: Any) -> Schedule:
    """The preset's schedule for `kind` (Preset.schedule) with the non-None `overrides` applied."""
    sched = preset.schedule(kind, finetune)
    names = {f.name for f in fields(Schedule)}
    unknown = {k for k, v in overrides.items() if v is not None} - names
    if unknown:
        raise ConfigError(f"unknown schedule option(s) {sorted(unknown)}; expected some of {sorted(names)}")
    return replace(sched, **{k: v for k, v in overrides.items() if v is not None})


def check_branch_adv_weights(sched: Schedule, model_config: Mapping[str, Any], preset: str) -> None:
    """ConfigError unless `sched.branch_adv_weights` is empty or one finite factor >= 0 per SN branch."""
    weights = sched.branch_adv_weights
    if not weights:
        return
    branches = tuple(model_config.get("accel_branches") or ())
    wanted = max(1, len(branches))
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf for w in weights):
        raise ConfigError(f"branch_adv_weights: expected finite factors >= 0, got {list(weights)}")
    if len(weights) != wanted:
        has = f"one per acceleration {list(branches)}" if branches else "one set of cascades (no accel_branches)"
        raise ConfigError(f"branch_adv_weights: {len(weights)} factor(s) {list(weights)} (preset {preset!r} or "
                          f"--branch-adv-weights) for an SN with {wanted} branch(es), {has}; give {wanted} with "
                          f"--branch-adv-weights")


def model_config_for(preset: Preset, kind: str) -> dict:
    return asdict(preset.unet if kind == "unet" else preset.sn)


# ---------------------------------------------------------------------------------------------
# reconstruction


def reconstruct(model: torch.nn.Module, kspace: torch.Tensor, mask: torch.Tensor,
                recon_size: Sequence[int]) -> torch.Tensor:
    """Magnitude `(B, h, w)` at the recon size from masked k-space `(B, C, H, W)` and mask `(B, W)`
    (the SN gives a complex image, the U-Net a magnitude; both full field of view)."""
    from dnirecon.fastmri_io import center_crop

    return center_crop(model(kspace, mask), tuple(recon_size)).abs()


# ---------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


class _ResumeSampler(Sampler):
    """The wrapped sampler's order for this epoch without its first `skip` indices (mid-epoch resume)."""

    def __init__(self, inner: DistributedSampler, skip: int = 0):
        self.inner, self.skip = inner, skip

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------------------------------------
# models and checkpoints


def new_model(kind: str, model_config: Mapping) -> torch.nn.Module:
    return tracking.build_model({"kind": kind, "model_config": dict(model_config)})


def config_document(kind: str, preset_name: str, model_config: Mapping, model: torch.nn.Module,
                    extra: Mapping | None = None) -> dict:
    return tracking.model_config_document(kind, preset_name, model_config, arch_signature(model.state_dict()),
                                          extra)


def save_checkpoint(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint
    return path


def _load_training_checkpoint(path: Path, kind: str) -> dict:
    if not Path(path).is_file():
        raise ModelError(f"--resume {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"--resume {path} is not a dnirecon training checkpoint (format {CHECKPOINT_FORMAT})")
    if ckpt["kind"] != kind:
        raise ModelError(f"--resume {path} is a {ckpt['kind']} checkpoint, but this run trains {kind}")
    return dict(ckpt)


def find_unfinished(out_dir: str | Path, kind: str, seed: int, preset: str, accels: Sequence[float],
                    parent: str | None) -> Path | None:
    """`--resume auto`: the newest checkpoint under `out_dir` of a run that neither finished its schedule
    nor was registered, with this kind, seed, preset, accelerations and parent: the weights digest of the
    sn it fine-tunes (`weights_digest`, whether it came from the registry or a local path), None for a
    run from scratch. A Job whose pod was evicted runs the same command again and continues where it
    stopped; None: start afresh. A fine-tuning checkpoint written before the digest was recorded matches
    nothing."""
    want = (kind, int(seed), str(preset), [float(a) for a in accels], parent)
    found = []
    for path in Path(out_dir).glob("*/last.pt"):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            config = json.loads(ck["config"])
            # a fine-tuning run's config names its sn (sn_preset) by its weights (sn_weights)
            from_sn = (config.get("sn_weights") or "unrecorded") if "sn_preset" in config else None
            have = (ck["kind"], ck["seed"], ck["preset"], [float(a) for a in ck["accels"]], from_sn)
            unfinished = ck["epoch"] < ck["epochs_planned"] and not ck.get("registered_version")
        except Exception as exc:  # not ours, or an older format without epochs_planned
            log.debug("--resume auto: skipping %s (%s)", path, exc)
            continue
        if unfinished and have == want:
            found.append((path.stat().st_mtime, path))
        elif unfinished:
            log.info("--resume auto: %s is unfinished but was %s seed %s preset %s accel %s from sn weights %s; "
                     "skipped", path, *have)
    return max(found)[1] if found else None


def _resume_auto(out_dir, kind, seed, preset, accels, parent: str | None, ddp: Dist) -> Path | None:
    chosen: list[Path | None] = [None]
    if ddp.main:
        chosen = [find_unfinished(out_dir, kind, seed, preset, accels, parent)]
    if ddp.world > 1:  # every rank continues the same file
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        log.info("--resume auto: no unfinished %s checkpoint under %s; starting a new run", kind, out_dir)
    else:
        log.info("--resume auto: continuing %s", chosen[0])
    return chosen[0]


def _check_resume_matches(path: Path, ckpt: Mapping, seed: int, preset: str, accels: Sequence[float]) -> None:
    """A resumed run continues the same data order, masks and schedule: refuse other seed/preset/accels."""
    given = {"--seed": (ckpt.get("seed"), int(seed)),
             "--preset": (ckpt.get("preset"), str(preset)),
             "--accel": ([float(a) for a in ckpt["accels"]] if ckpt.get("accels") is not None else None,
                         [float(a) for a in accels])}
    for flag, (saved, now) in given.items():
        if saved is not None and saved != now:
            show = (lambda v: " ".join(f"{a:g}" for a in v)) if flag == "--accel" else str
            raise ConfigError(f"{flag}: --resume {path} was trained with {flag} {show(saved)}, but {flag} "
                              f"{show(now)} was given; resume with the checkpoint's value (or start a new run)")


def _sn_ref(init_from: str | Path | None) -> str:
    """--init-from as given: a local path, or an `sn` version/alias with any `sn@` / `sn:` prefix removed."""
    ref = "champion" if init_from is None else str(init_from)
    return ref if Path(ref).exists() else ref.removeprefix("sn@").removeprefix("sn:")


def _init_from_sn(init_from: str | Path | None, kind: str) -> tuple[torch.nn.Module, dict, str | None]:
    """A fine-tuning run (SN-GAN, or SN with --init-from) starts from trained SN weights: a local
    checkpoint/model dir, or an `sn` version/alias."""
    ref = _sn_ref(init_from)
    if Path(ref).exists():
        loaded = tracking.load_checkpoint(ref)
    else:
        loaded = tracking.load_registered_model("sn", ref)
    if loaded.config.get("kind") != "sn":
        raise ModelError(f"--init-from {ref} is a {loaded.config.get('kind')} model; {kind} fine-tunes an sn model")
    return loaded.model, loaded.config, loaded.version


# ---------------------------------------------------------------------------------------------
# steps


@dataclass
class Trainer:
    kind: str
    model: torch.nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    device: torch.device
    amp: bool
    discriminator: torch.nn.Module | None = None
    disc_optimizer: torch.optim.Optimizer | None = None
    history: list = field(default_factory=list)
    frozen: tuple = ()  # generator weights whose gradients are dropped before each step (training.branches)

    @property
    def bare(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _recon(self, batch: Sample) -> torch.Tensor:
        with self._autocast():
            out = reconstruct(self.model, batch.kspace, batch.mask, tuple(batch.target.shape[-2:]))
        return out.float()

    def _apply(self, loss: torch.Tensor, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer is self.optimizer:
            for p in self.frozen:
                p.grad = None
        optimizer.step()

    def step(self, batch: Sample) -> dict:
        s = self.schedule
        pred = self._recon(batch)
        if self.kind == "sn":
            loss = losses.sn_loss(pred, batch.target, batch.foreground, s.l1_weight)
            self._apply(loss, self.optimizer)
            return {"loss": loss.item()}
        if self.kind == "unet":
            loss = losses.l1_loss(pred, batch.target)
            self._apply(loss, self.optimizer)
            return {"loss": loss.item()}
        return self._gan_step(batch, pred)

    def _gan_step(self, batch: Sample, pred: torch.Tensor) -> dict:
        s, disc = self.schedule, self.discriminator
        dr = losses.data_range_of(batch.target)
        real = losses.normalize_for_discriminator(batch.target, batch.foreground, dr)
        fake = losses.normalize_for_discriminator(pred, batch.foreground, dr)
        # each image's factor on the LSGAN term: that of the SN branch that made it (None: 1 for all)
        weight = None
        if s.branch_adv_weights:
            branch = self.bare.branch_of(batch.mask)
            weight = torch.tensor(s.branch_adv_weights, device=branch.device)[branch]
        d_loss = torch.zeros(())
        for _ in range(s.critic_steps):
            d_loss = losses.lsgan_discriminator_loss(disc(real), disc(fake.detach()))
            self._apply(d_loss, self.disc_optimizer)
        for p in disc.parameters():  # D's gradients are not needed for the generator update
            p.requires_grad_(False)
        try:
            sn_term = losses.sn_loss(pred, batch.target, batch.foreground, s.l1_weight)
            adv = losses.lsgan_generator_loss(disc(fake), weight)
            g_loss = s.gamma * sn_term + s.adv_weight * adv
            self._apply(g_loss, self.optimizer)
        finally:
            for p in disc.parameters():
                p.requires_grad_(True)
        return {"loss": g_loss.item(), "l_sn": sn_term.item(), "g_adv": adv.item(), "d_loss": d_loss.item()}


def _to(batch: Sample, device: torch.device) -> Sample:
    return batch._replace(kspace=batch.kspace.to(device), mask=batch.mask.to(device),
                          target=batch.target.to(device), foreground=batch.foreground.to(device))


# ---------------------------------------------------------------------------------------------
# validation


def validate(kind: str, model: torch.nn.Module, files: Sequence[Path], accels: Sequence[float], device: torch.device,
             mask_kind: str = "random", keep_examples: int = 2) -> tuple[dict, list[dict], list]:
    """Metrics of every validation slice (training.evaluate): their means per acceleration and over all,
    the per-volume records, and a few (target, zero-filled, reconstruction) examples for the figure."""
    from dnirecon.fastmri_io import center_crop
    from training.baselines import zero_filled_rss
    from training.evaluate import evaluate, held_out_volumes, mean_metrics, torch_recon

    model.eval()
    examples = []
    example_file = Path(sorted(files)[0]).name

    def keep_example(rec: dict) -> None:
        if rec["file"] == example_file and len(examples) < keep_examples:
            mid = len(rec["slices"]) // 2
            s = rec["slices"][mid]
            with torch.no_grad():
                zf = zero_filled_rss(torch.from_numpy(s.kspace[None]), torch.from_numpy(s.mask[None]))
            examples.append({"accel": s.accel, "target": s.target, "pred": rec["pred"][mid],
                             "zf": center_crop(zf, tuple(s.target.shape))[0].abs().numpy()})

    # one slice per call, as the model trains
    records = evaluate({kind: torch_recon(model, device)}, held_out_volumes(sorted(files), accels, mask_kind),
                       batch=1, on_volume=keep_example)
    summary = {}
    for accel in sorted({r["accel"] for r in records}):
        summary.update({f"val_{k}_{accel:g}x": float(v)
                        for k, v in mean_metrics([r for r in records if r["accel"] == accel]).items()})
    summary.update({f"val_{k}": float(v) for k, v in mean_metrics(records).items()})
    return summary, records, examples


def validation_figure(kind: str, examples: list[dict], epoch: int):
    """Rows: one acceleration each; columns: zero-filled RSS, reconstruction, SENSE target, |error|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    for row, ex in zip(axes, examples):
        vmax = float(ex["target"].max()) or 1.0
        panels = [("zero-filled", ex["zf"]), (kind, ex["pred"]), ("SENSE target", ex["target"]),
                  ("|error| x5", np.abs(ex["pred"] - ex["target"]) * 5)]
        for ax, (title, img) in zip(row, panels):
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{title} {ex['accel']:g}x", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{kind} validation, epoch {epoch}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# the loop


def train_model(kind: str, data_dir: str | Path, preset: str | Preset = "cpu", accels: Sequence[float] = (4.0, 8.0),
                epochs: int | None = None, seed: int = 0, resume: str | Path | None = None,
                register: bool = True, *, val_dir: str | Path | None = None, init_from: str | Path | None = None,
                out_dir: str | Path = "checkpoints", batch_size: int | None = None, lr: float | None = None,
                max_steps: int | None = None, device: str | None = None, amp: bool | None = None,
                progress: bool = True, log_mlflow: bool = True, run_name: str | None = None,
                schedule_overrides: Mapping[str, Any] | None = None, mask_kind: str = "random") -> TrainResult:
    """Train `kind` ("sn", "sn-gan", "unet") on the volumes in `data_dir` and (rank 0) log/register it.

    `preset`: a name in training.presets.PRESETS, or a Preset (an experiment's variant).
    `init_from`: the trained SN to fine-tune, an sn version/alias ("3", "champion") or a local
    checkpoint. SN-GAN always starts from one (default champion); SN starts from scratch unless given
    one, and is then fine-tuned with L_SN alone on the fine-tuning schedule, the paper's twin of SN-GAN.
    `resume`: a checkpoint of this kind to continue (step, epoch, optimiser state), or "auto" for the
    newest unfinished one under `out_dir` that matches (`find_unfinished`). `max_steps` stops
    early (tests).
    """
    if kind not in tracking.KINDS:
        raise ConfigError(f"model kind {kind!r} is not one of {', '.join(tracking.KINDS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ddp = init_distributed(dev)
    if dev.type == "cuda" and ddp.world > 1:
        dev = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(dev)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
    seed_everything(seed)
    preset_obj = preset if isinstance(preset, Preset) else get_preset(preset)
    preset = preset_obj.name
    finetune = kind == "sn-gan" or (kind == "sn" and init_from is not None)
    if kind == "unet" and init_from is not None:
        raise ConfigError("--init-from: the U-Net trains from scratch; only sn and sn-gan fine-tune an sn model")
    sched = schedule_for(preset_obj, kind, finetune=finetune, epochs=epochs, batch_size=batch_size, lr=lr,
                         **dict(schedule_overrides or {}))

    auto = resume is not None and str(resume) == AUTO_RESUME
    # a fine-tuning run loads its sn first: --resume auto tells runs apart by the sn's weights
    parent = _init_from_sn(init_from, kind) if finetune and (resume is None or auto) else None
    parent_weights = weights_digest(parent[0].state_dict()) if parent else None
    if auto:
        resume = _resume_auto(out_dir, kind, seed, preset, accels, parent_weights, ddp)
    ckpt = _load_training_checkpoint(Path(resume), kind) if resume else None
    if ckpt is not None:
        _check_resume_matches(Path(resume), ckpt, seed, preset, accels)
    sn_version = None
    if ckpt is not None:
        config = json.loads(ckpt["config"])
        model = tracking.check_and_load_state(new_model(kind, config["model_config"]), ckpt["model"], config,
                                              str(resume))
        sn_version = config.get("sn_version")
    elif finetune:
        model, sn_config, sn_version = parent
        config = config_document(kind, preset, sn_config["model_config"], model,
                                 {"sn_version": sn_version, "sn_preset": sn_config.get("preset"),
                                  "sn_weights": parent_weights})
    else:
        model = new_model(kind, model_config_for(preset_obj, kind))
        config = config_document(kind, preset, model_config_for(preset_obj, kind), model)
    model.to(dev).train()

    train_files, val_files = split_dirs(Path(data_dir), Path(val_dir) if val_dir else None)
    train_ds = SliceDataset(train_files, accels, train=True, seed=seed, mask_kind=mask_kind,
                            slices_per_volume=sched.slices_per_volume)
    # an SN with a branch per acceleration, from scratch: one stage per branch (training.branches)
    stages = branch_stages(config["model_config"], accels, sched.epochs) if kind == "sn" and not finetune else None
    stage_data = {st.branch: SliceDataset(train_files, st.accels, train=True, seed=seed, mask_kind=mask_kind,
                                          slices_per_volume=sched.slices_per_volume) for st in stages or ()}
    if stages:
        branches = config["model_config"]["accel_branches"]
        config["training_stages"] = [st.describe(branches) for st in stages]
        if ddp.main:
            log.info("sn stages: %s", "; ".join(config["training_stages"]))
    sampler = DistributedSampler(train_ds, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=seed)

    wrapped = model
    if ddp.world > 1:
        # an SN with branches runs some of its weights only on the slices routed to them
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=bool(config["model_config"].get("accel_branches")))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=sched.lr)
    trainer = Trainer(kind, wrapped, optimizer, sched, dev, use_amp)
    if kind == "sn-gan":
        disc = PatchDiscriminator(preset_obj.discriminator).to(dev).train()
        check_branch_adv_weights(sched, config["model_config"], preset)
        trainer.discriminator = torch.nn.parallel.DistributedDataParallel(disc) if ddp.world > 1 else disc
        trainer.disc_optimizer = torch.optim.RMSprop(disc.parameters(), lr=sched.disc_lr or sched.lr)

    start_epoch, skip_batches, step, run_id = 0, 0, 0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if kind == "sn-gan":
            _bare(trainer.discriminator).load_state_dict(ckpt["discriminator"])
            trainer.disc_optimizer.load_state_dict(ckpt["disc_optimizer"])
        start_epoch, skip_batches, step = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]), int(ckpt["step"])
        run_id = ckpt.get("run_id") or None
        trainer.history = json.loads(ckpt.get("history", "[]"))

    logged = log_mlflow and ddp.main
    if logged:
        run_id = _start_run(run_id, kind, preset, preset_obj, sched, config, accels, seed, train_files,
                            val_files, run_name)
    # A signal stops the loop after its current step, with a checkpoint there (training.stopping);
    # any error ends the MLflow run FAILED rather than leaving it RUNNING.
    with tracking.run_ends_on_error(run_id if logged else None), StopOnSignal() as stop:
        # a resumed run goes on writing the checkpoint it continues; a new one gets <kind>-<MLflow run id>,
        # or without MLflow a time stamp and a random tail (two runs started in one second never share it)
        ckpt_dir = Path(resume).parent if resume else \
            Path(out_dir) / f"{kind}-{run_id or time.strftime('%Y%m%d-%H%M%S-') + os.urandom(3).hex()}"
        if ddp.world > 1:  # rank 0 alone writes it (and alone knows the run id): every rank names its file
            shared = [str(ckpt_dir)]
            dist.broadcast_object_list(shared, src=0)
            ckpt_dir = Path(shared[0])
        ckpt_path = ckpt_dir / "last.pt"

        def checkpoint(epoch: int, batch_in_epoch: int) -> None:
            if not ddp.main:
                return
            state = {"format": CHECKPOINT_FORMAT, "kind": kind, "config": json.dumps(config),
                     "model": trainer.bare.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "seed": seed,
                     "preset": preset, "accels": [float(a) for a in accels], "run_id": run_id or "",
                     "epochs_planned": sched.epochs,
                     "history": json.dumps(trainer.history)}
            if kind == "sn-gan":
                state["discriminator"] = _bare(trainer.discriminator).state_dict()
                state["disc_optimizer"] = trainer.disc_optimizer.state_dict()
            save_checkpoint(ckpt_path, state)

        bs = sched.batch_size
        steps_per_epoch = math.ceil(len(sampler) / bs)
        total_steps = steps_per_epoch * sched.epochs
        stopped = False
        interrupted_by = None
        epochs_done = start_epoch
        last_metrics: dict = trainer.history[-1] if trainer.history else {}
        for epoch in range(start_epoch, sched.epochs):
            sampler.set_epoch(epoch)
            skip = skip_batches if epoch == start_epoch else 0
            stage = stage_at(stages, epoch) if stages else None
            epoch_ds = stage_data[stage.branch] if stage else train_ds
            epoch_ds.set_epoch(epoch)
            # the learning rate decays over each stage (all of them: the whole run)
            lr_span = (stage.first_epoch, stage.end_epoch) if stage else (0, sched.epochs)
            if stage and stage.source is not None and epoch == stage.first_epoch and skip == 0:
                start_branch(trainer.bare, optimizer, stage)  # a checkpoint at this epoch's start predates it
            trainer.frozen = frozen_in(trainer.bare, stage)
            loader = DataLoader(epoch_ds, batch_size=bs, sampler=_ResumeSampler(sampler, skip * bs),
                                collate_fn=collate, num_workers=0)
            trainer.model.train()
            bar = _progress(progress and ddp.main, total=steps_per_epoch, initial=skip,
                            desc=f"{kind} epoch {epoch + 1}/{sched.epochs}")
            t0, seen, running = time.perf_counter(), 0, []
            batch_in_epoch = skip
            for batch in loader:
                factor = lr_at(sched, step - lr_span[0] * steps_per_epoch,
                               (lr_span[1] - lr_span[0]) * steps_per_epoch) / sched.lr
                for opt in (optimizer, trainer.disc_optimizer):
                    for group in (opt.param_groups if opt is not None else []):
                        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
                out = trainer.step(_to(batch, dev))
                step += 1
                batch_in_epoch += 1
                seen += batch.kspace.shape[0]
                running.append(out["loss"])
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.set_postfix(loss=f"{out['loss']:.4f}", slices_s=f"{rate:.2f}")
                    bar.update(1)
                if logged:
                    tracking.client().log_metric(run_id, "train_loss_step", out["loss"], step=step)
                if max_steps is not None and step >= max_steps:
                    stopped = True
                    break
                interrupted_by = stop.requested(ddp.world, dev)
                if interrupted_by:
                    stopped = True
                    break
            if bar is not None:
                bar.close()
            epoch_done = not stopped or batch_in_epoch >= steps_per_epoch
            if stopped and not epoch_done:
                checkpoint(epoch, batch_in_epoch)
                break
            epochs_done = epoch + 1
            metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(running)) if running else float("nan"),
                       "slices_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
            if ddp.main:
                val, _records, examples = validate(kind, trainer.bare, val_files, accels, dev, mask_kind)
                metrics.update(val)
                trainer.history.append(metrics)
                last_metrics = metrics
                log.info("%s epoch %d: %s", kind, epoch + 1,
                         ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
                if logged:
                    c = tracking.client()
                    for k, v in metrics.items():
                        if k != "epoch" and math.isfinite(v):
                            c.log_metric(run_id, k, float(v), step=epoch + 1)
                    if epoch + 1 == sched.epochs or stopped:
                        tracking.log_figure(run_id, validation_figure(kind, examples, epoch + 1),
                                            f"figures/validation_epoch{epoch + 1:03d}.png")
            checkpoint(epoch + 1, 0)
            if ddp.world > 1:
                dist.barrier()
            interrupted_by = interrupted_by or stop.requested(ddp.world, dev)  # a signal during validation
            if stopped or interrupted_by:
                break
        # every path out of the loop ends on this agreement (a no-op after one that found a signal): it is
        # the ranks' last collective, and it returns only once gloo has let go of its tensor (see
        # training.stopping.all_reduce_released)
        interrupted_by = interrupted_by or stop.requested(ddp.world, dev)

        if not ckpt_path.exists() and ddp.main:  # resumed a finished run, or zero epochs
            checkpoint(max(start_epoch, sched.epochs), 0)
        # A run stopped before the schedule's last step (--max-steps, mid-epoch or between epochs) is
        # still logged and registered, tagged truncated, but never becomes the champion.
        truncated = step < total_steps
        if interrupted_by and truncated:
            _interrupted(interrupted_by, kind, step, total_steps, epochs_done, ckpt_path, run_id if logged else None)
        progress_done = {"truncated": "true" if truncated else "false", "steps_done": step,
                         "steps_planned": total_steps, "epochs_done": epochs_done, "epochs_planned": sched.epochs}
        version = None
        if logged:
            version = _finish_run(run_id, kind, trainer.bare, config, accels, train_files, register, progress_done)
            if version is not None:
                state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                state["registered_version"] = version
                save_checkpoint(ckpt_path, state)
                if truncated:
                    log.warning("registered %s version %s as truncated (step %d of %d, %d of %d epochs done); "
                                "alias %s not moved", kind, version, step, total_steps, epochs_done, sched.epochs,
                                tracking.CHAMPION)
                else:
                    log.info("registered %s version %s; alias %s moved to it", kind, version, tracking.CHAMPION)
        return TrainResult(run_id, version, ckpt_path, last_metrics, truncated)


def _interrupted(signum: int, kind: str, step: int, total_steps: int, epochs_done: int, ckpt_path: Path,
                 run_id: str | None) -> None:
    """Tag the run with where a signal stopped it and raise Interrupted (the run then ends KILLED)."""
    import signal

    name = signal.Signals(signum).name
    if run_id:
        c = tracking.client()
        c.set_tag(run_id, "interrupted_by", name)
        c.set_tag(run_id, "interrupted_at_step", str(step))
    where = f"at step {step} of {total_steps} ({epochs_done} epochs done)"
    run = f"; MLflow run {run_id} ended KILLED, nothing registered" if run_id else ""
    raise Interrupted(f"{kind} stopped by {name} {where}; checkpoint {ckpt_path}{run}", signum, ckpt_path,
                      hint=f"To continue, run the same command with --resume {ckpt_path}")


def _bare(m: torch.nn.Module) -> torch.nn.Module:
    return getattr(m, "module", m)


def _progress(enabled: bool, **kw):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="step", dynamic_ncols=True, leave=True, **kw)


def _start_run(run_id, kind, preset, preset_obj, sched, config, accels, seed, train_files, val_files, run_name):
    c = tracking.client()
    if run_id:
        try:
            c.get_run(run_id)
            c.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # the checkpoint's run lives in another store: start afresh
            log.warning("run %s from the checkpoint is not in %s; starting a new run", run_id, tracking.tracking_uri())
    exp = tracking.experiment_id()
    train_desc, val_desc = describe_dataset(train_files), describe_dataset(val_files)
    run = c.create_run(exp, run_name=run_name or f"{kind}-{preset}",
                       tags={"kind": kind, "preset": preset, "dataset_id": train_desc.dataset_id})
    rid = run.info.run_id
    params = {"kind": kind, "preset": preset, "seed": seed, "accels": ",".join(f"{a:g}" for a in accels),
              "dataset_id": train_desc.dataset_id, "contrasts": ",".join(train_desc.contrasts),
              "train_volumes": train_desc.volumes, "train_slices": train_desc.slices,
              "val_dataset_id": val_desc.dataset_id, "val_volumes": val_desc.volumes,
              "val_slices": val_desc.slices, "arch_signature": config["arch_signature"],
              # CPU kernels split their sums by thread: a bit-for-bit rerun needs the same count
              "torch_threads": torch.get_num_threads()}
    params.update(tracking.flatten_params("schedule", asdict(sched)))
    params.update(tracking.flatten_params("model", config["model_config"]))
    if config.get("sn_version"):
        params["sn_version"] = config["sn_version"]
    from mlflow.entities import Param

    c.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
    tracking.log_dict_artifact(rid, {"name": preset, "schedule": asdict(sched),
                                     "preset": _jsonable(preset_obj)}, "preset.json")
    tracking.log_dict_artifact(rid, {"train": train_desc.as_dict(), "val": val_desc.as_dict()}, "data.json")
    return rid


def _finish_run(run_id, kind, model, config, accels, train_files, register: bool,
                progress_done: Mapping[str, Any]) -> str | None:
    c = tracking.client()
    source = tracking.log_model_artifact(run_id, model.state_dict(), config)
    for key, value in progress_done.items():
        c.set_tag(run_id, key, str(value))
    truncated = progress_done.get("truncated") == "true"
    version = None
    if register:
        desc = describe_dataset(train_files)
        tags = {"acceleration": ",".join(f"{a:g}" for a in accels), "contrasts": ",".join(desc.contrasts),
                "preset": config["preset"], "arch_signature": config["arch_signature"],
                "dataset_id": desc.dataset_id, **progress_done}
        if kind == "sn-gan" or config.get("sn_version"):
            tags["sn_version"] = config.get("sn_version") or ""  # the sn it was fine-tuned from
        version = tracking.register_version(kind, source, run_id, tags, champion=not truncated)
        c.set_tag(run_id, "registered_version", version)
    c.set_terminated(run_id, "FINISHED")
    return version


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return _jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
