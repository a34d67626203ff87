"""Training loops: the loss goes down, resume continues exactly, runs register versions with tags."""

import json
import re

import pytest
import torch

from dnirecon.errors import ConfigError, ModelError
from training import tracking
from training.data import SliceDataset, collate, split_dirs
from training.train import Trainer, new_model, schedule_for, train_model
from training.presets import get_preset


def _batch(tiny_data):
    train_files, _ = split_dirs(tiny_data)
    ds = SliceDataset(train_files, (4.0,), train=True, seed=0)
    return collate([ds[0], ds[1]])


def test_dataset_samples_have_the_documented_layout(tiny_data):
    train_files, val_files = split_dirs(tiny_data)
    train = SliceDataset(train_files, (4.0, 8.0), train=True, seed=3)
    val = SliceDataset(val_files, (4.0, 8.0), train=False)
    s = train[0]
    assert s.kspace.dtype == torch.complex64 and s.kspace.dim() == 3 and s.kspace.shape[0] == 4
    assert s.mask.shape == (s.kspace.shape[-1],) and s.target.shape == (32, 32)
    assert torch.all(s.kspace[..., s.mask == 0] == 0)  # unacquired columns are zero
    assert 0 < s.foreground.mean() < 1
    assert len(val) == 2 * len(val.refs)  # every slice at 4x and at 8x
    # validation masks are fixed per file; training masks are reproducible per (seed, epoch, index)
    assert torch.equal(val[0].mask, SliceDataset(val_files, (4.0, 8.0), train=False)[0].mask)
    again = SliceDataset(train_files, (4.0, 8.0), train=True, seed=3)
    assert torch.equal(again[0].mask, s.mask)
    train.set_epoch(1)
    assert not all(torch.equal(train[i].mask, again[i].mask) for i in range(len(train)))


def test_two_sn_steps_decrease_the_loss(tiny_data):
    torch.manual_seed(0)
    preset = get_preset("cpu")
    model = new_model("sn", {"cascades": 2, "width": 8, "blocks": 1, "dc_weight_init": 1.0})
    sched = schedule_for(preset, "sn", lr=1e-3)
    trainer = Trainer("sn", model, torch.optim.RMSprop(model.parameters(), lr=sched.lr), sched,
                      torch.device("cpu"), amp=False)
    batch = _batch(tiny_data)
    first = trainer.step(batch)["loss"]
    second = trainer.step(batch)["loss"]
    third = trainer.step(batch)["loss"]
    assert second < first and third < second


def test_resume_continues_from_the_saved_step(tiny_data, tmp_path):
    kw = dict(preset="cpu", accels=(4.0, 8.0), epochs=2, seed=5, log_mlflow=False, progress=False,
              batch_size=1)
    straight = train_model("sn", tiny_data, max_steps=3, out_dir=tmp_path / "a", **kw)
    first = train_model("sn", tiny_data, max_steps=1, out_dir=tmp_path / "b", **kw)
    ck1 = torch.load(first.checkpoint_path, weights_only=True)
    assert (ck1["step"], ck1["epoch"], ck1["batch_in_epoch"]) == (1, 0, 1)
    resumed = train_model("sn", tiny_data, max_steps=3, resume=first.checkpoint_path, out_dir=tmp_path / "c", **kw)
    ck = torch.load(resumed.checkpoint_path, weights_only=True)
    ref = torch.load(straight.checkpoint_path, weights_only=True)
    assert ck["step"] == 3 and (ck["epoch"], ck["batch_in_epoch"]) == (ref["epoch"], ref["batch_in_epoch"])
    for k, v in ref["model"].items():  # same data order, masks and optimiser state: same weights
        torch.testing.assert_close(ck["model"][k], v, rtol=1e-5, atol=1e-6)
    for a, b in zip(ck["optimizer"]["state"].values(), ref["optimizer"]["state"].values()):
        torch.testing.assert_close(a["square_avg"], b["square_avg"], rtol=1e-5, atol=1e-9)


def test_runs_register_new_versions_with_lineage_tags(tiny_data, tmp_path, mlflow_store):
    kw = dict(preset="cpu", accels=(4.0, 8.0), epochs=1, progress=False, out_dir=tmp_path / "ck")
    with pytest.raises(ModelError, match="registered model 'sn' has no version or alias 'champion'"):
        train_model("sn-gan", tiny_data, init_from="champion", **kw)  # nothing to fine-tune yet
    first = train_model("sn", tiny_data, **kw)  # one whole epoch: validation metrics and figure
    second = train_model("sn", tiny_data, max_steps=1, seed=1, **kw)  # truncated: registered, not champion
    assert (first.version, second.version) == ("1", "2") and (first.truncated, second.truncated) == (False, True)
    gan = train_model("sn-gan", tiny_data, max_steps=1, init_from="champion", **kw)
    assert gan.version == "1"

    c = tracking.client()
    sn2 = c.get_model_version("sn", "2")
    for tag in ("acceleration", "contrasts", "preset", "arch_signature", "dataset_id"):
        assert sn2.tags[tag], tag
    assert sn2.tags["acceleration"] == "4,8" and sn2.tags["contrasts"] == "CORPDFS_FBK,CORPD_FBK"
    gv = c.get_model_version("sn-gan", "1")
    assert gv.tags["sn_version"] == "1" and gv.tags["arch_signature"] == sn2.tags["arch_signature"]
    assert str(c.get_model_version_by_alias("sn", "champion").version) == "1"

    run = c.get_run(first.run_id)
    assert "val_psnr_4x" in run.data.metrics and "val_ssim_8x" in run.data.metrics
    assert run.data.params["preset"] == "cpu" and run.data.params["train_volumes"] == "2"
    names = {a.path for a in c.list_artifacts(first.run_id)}
    assert {"model", "figures", "preset.json", "data.json"} <= names
    model_files = {a.path for a in c.list_artifacts(first.run_id, "model")}
    assert model_files == {"model/weights.pt", "model/config.json"}

    loaded = tracking.load_registered_model("sn-gan", "1")
    assert loaded.config["kind"] == "sn-gan" and loaded.config["sn_version"] == "1"
    assert json.loads(json.dumps(loaded.config))["arch_signature"] == sn2.tags["arch_signature"]


def test_a_run_stopped_early_is_tagged_truncated_and_never_becomes_champion(tiny_data, tmp_path, mlflow_store,
                                                                            caplog):
    kw = dict(preset="cpu", accels=(4.0,), epochs=2, progress=False, out_dir=tmp_path / "ck")
    with caplog.at_level("WARNING", logger="training.train"):
        early = train_model("unet", tiny_data, max_steps=1, **kw)  # mid-epoch
    assert early.truncated and early.version == "1"
    assert "version 1 as truncated (step 1 of 8, 0 of 2 epochs done); alias champion not moved" in caplog.text
    c = tracking.client()
    tags = c.get_model_version("unet", "1").tags
    assert (tags["truncated"], tags["steps_done"], tags["steps_planned"], tags["epochs_done"],
            tags["epochs_planned"]) == ("true", "1", "8", "0", "2")
    assert c.get_run(early.run_id).data.tags["truncated"] == "true"
    assert "champion" not in c.get_registered_model("unet").aliases  # the first version, and still none

    one_epoch = train_model("unet", tiny_data, max_steps=4, **kw)  # a whole epoch, but not the schedule
    assert one_epoch.truncated and c.get_model_version("unet", "2").tags["epochs_done"] == "1"
    full = train_model("unet", tiny_data, max_steps=8, **kw)  # stopped exactly at the last step: complete
    assert not full.truncated and c.get_model_version("unet", "3").tags["truncated"] == "false"
    assert {k: str(v) for k, v in c.get_registered_model("unet").aliases.items()} == {"champion": "3"}
    train_model("unet", tiny_data, max_steps=1, **kw)
    assert str(c.get_model_version_by_alias("unet", "champion").version) == "3"  # not moved by version 4


def test_resume_refuses_another_seed_preset_or_acceleration(tiny_data, tmp_path):
    kw = dict(preset="cpu", accels=(4.0, 8.0), epochs=2, seed=5, log_mlflow=False, progress=False, batch_size=1)
    first = train_model("sn", tiny_data, max_steps=1, out_dir=tmp_path / "a", **kw)
    path = first.checkpoint_path
    seed_message = re.escape(f"--seed: --resume {path} was trained with --seed 5, but --seed 6 was given")
    for change, message in ((dict(seed=6), seed_message),
                            (dict(preset="paper"), "--preset: .* with --preset cpu, but --preset paper was given"),
                            (dict(accels=(4.0,)), "--accel: .* with --accel 4 8, but --accel 4 was given")):
        with pytest.raises(ConfigError, match=message):
            train_model("sn", tiny_data, max_steps=2, resume=path, out_dir=tmp_path / "b", **{**kw, **change})


def test_sn_fine_tuned_from_a_version_is_the_paper_twin_of_sn_gan(tiny_data, tmp_path, mlflow_store):
    """`train sn --init-from`: starts from that SN, uses the fine-tuning schedule, records its lineage."""
    kw = dict(preset="cpu", accels=(4.0, 8.0), progress=False, out_dir=tmp_path / "ck")
    base = train_model("sn", tiny_data, max_steps=2, **kw)
    with pytest.raises(ConfigError, match="U-Net trains from scratch"):
        train_model("unet", tiny_data, max_steps=1, init_from=base.version, **kw)
    tuned = train_model("sn", tiny_data, max_steps=1, init_from=base.version, **kw)
    gan = train_model("sn-gan", tiny_data, max_steps=1, init_from=base.version, **kw)
    assert (base.version, tuned.version, gan.version) == ("1", "2", "1")

    c = tracking.client()
    ft = get_preset("cpu").finetune_schedule
    for run_id in (tuned.run_id, gan.run_id):  # one schedule for both fine-tuned models
        params = c.get_run(run_id).data.params
        assert (params["schedule.epochs"], float(params["schedule.lr"])) == (str(ft.epochs), ft.lr)
        assert params["sn_version"] == "1"
    assert float(c.get_run(base.run_id).data.params["schedule.lr"]) == get_preset("cpu").sn_schedule.lr
    assert c.get_model_version("sn", "2").tags["sn_version"] == "1"
    assert "sn_version" not in c.get_model_version("sn", "1").tags

    # one step at the fine-tuning rate moves the weights a little from the source, not from a fresh init
    src = tracking.load_registered_model("sn", "1").model.state_dict()
    out = tracking.load_registered_model("sn", "2").model.state_dict()
    fresh = new_model("sn", tracking.load_registered_model("sn", "1").config["model_config"]).state_dict()
    dist = lambda a, b: sum(float((a[k].float() - b[k].float()).norm()) for k in a)  # noqa: E731
    assert dist(out, src) < 0.2 * dist(fresh, src)


def test_a_routed_sn_trains_its_8x_branch_from_the_trained_4x_branch(tiny_data, tmp_path):
    """cpu preset (accel_branches 4 8): the first half of the epochs trains the 4x branch on 4x slices, the
    second starts the 8x branch from it and trains it on 8x slices; the stage boundary survives a resume."""
    kw = dict(preset="cpu", accels=(4.0, 8.0), epochs=2, seed=5, log_mlflow=False, progress=False,
              batch_size=1, out_dir=tmp_path / "ck")
    n = get_preset("cpu").sn.cascades
    first = train_model("sn", tiny_data, max_steps=4, **kw)  # the 4x stage: one epoch of 4 slices
    a = torch.load(first.checkpoint_path, weights_only=True)
    assert (a["epoch"], a["batch_in_epoch"]) == (1, 0)
    assert json.loads(a["config"])["training_stages"] == [
        "4x branch: epochs 1-1 on --accel 4", "8x branch: epochs 2-2 on --accel 8, starting from the 4x branch"]
    keys = [k for k in a["model"] if int(k.split(".")[1]) < n]  # one branch's keys: cascades.i.*, dc.i.*, i < n

    def branch(state, b):  # set b's weights, in the order of set 0's keys (cascades.(b n + i).*)
        split = [k.split(".", 2) for k in keys]
        return torch.cat([state[f"{group}.{b * n + int(i)}.{rest}"].flatten() for group, i, rest in split])

    one_more = train_model("sn", tiny_data, max_steps=5, resume=first.checkpoint_path, **kw)
    b = torch.load(one_more.checkpoint_path, weights_only=True)
    # one step into the 8x stage: the 8x branch is the trained 4x branch moved by one step
    moved = (branch(b["model"], 1) - branch(a["model"], 0)).norm()
    assert 0 < moved < 0.2 * (branch(a["model"], 1) - branch(a["model"], 0)).norm()


def test_a_stage_moves_only_its_own_branch_whatever_the_masks_route_to(tiny_data):
    """An 8x mask that sampled more columns than most runs the 4x branch; in the 8x stage it must not
    train it (it did before frozen_in: the 4x branch lost 1.6 dB of validation PSNR in one demo run)."""
    from training.branches import Stage, branch_parameters, frozen_in

    torch.manual_seed(0)
    model = new_model("sn", {"cascades": 2, "width": 4, "blocks": 1, "accel_branches": [4.0, 8.0]})
    sched = schedule_for(get_preset("cpu"), "sn", lr=1e-3)
    batch = _batch(tiny_data)  # 4x masks: they run the 4x branch
    assert set(model.branch_of(batch.mask).tolist()) == {0}
    eight = Stage(branch=1, accels=(8.0,), first_epoch=1, end_epoch=2, source=0)
    for frozen, moves in ((frozen_in(model, eight), False), ((), True)):
        trainer = Trainer("sn", model, torch.optim.RMSprop(model.parameters(), lr=sched.lr), sched,
                          torch.device("cpu"), amp=False, frozen=frozen)
        before = [p.detach().clone() for p in branch_parameters(model, 0)]
        trainer.step(batch)
        assert any(not torch.equal(a, p) for a, p in zip(before, branch_parameters(model, 0))) == moves


def test_branch_adv_weights_scale_the_lsgan_term_of_each_branch_alone(tiny_data):
    """One SN-GAN step with factors (w4, w8) on a batch of a 4x and an 8x slice moves the 4x branch as a
    step with adv_weight w4 does and the 8x branch as one with w8: each branch gets the adversarial
    term of its own images only, scaled by its own factor."""
    from training.branches import branch_parameters
    from training.models.discriminator import PatchDiscriminator

    train_files, _ = split_dirs(tiny_data)
    batch = collate([SliceDataset(train_files, (4.0,), train=True, seed=0)[0],
                     SliceDataset(train_files, (8.0,), train=True, seed=0)[1]])
    preset = get_preset("cpu")

    def one_step(**overrides):
        torch.manual_seed(0)
        model = new_model("sn", {"cascades": 2, "width": 4, "blocks": 1, "accel_branches": [4.0, 8.0]})
        disc = PatchDiscriminator(preset.discriminator)
        sched = schedule_for(preset, "sn-gan", lr=1e-3, **overrides)
        trainer = Trainer("sn-gan", model, torch.optim.RMSprop(model.parameters(), lr=sched.lr), sched,
                          torch.device("cpu"), amp=False, discriminator=disc,
                          disc_optimizer=torch.optim.RMSprop(disc.parameters(), lr=sched.lr))
        assert model.branch_of(batch.mask).tolist() == [0, 1]
        trainer.step(batch)
        return [[p.detach().clone() for p in branch_parameters(model, b)] for b in (0, 1)]

    def gap(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a, b))

    split = one_step(branch_adv_weights=(0.25, 3.0))
    low, high = one_step(branch_adv_weights=(), adv_weight=0.25), one_step(branch_adv_weights=(), adv_weight=3.0)
    assert gap(split[0], low[0]) < 1e-7 and gap(split[1], high[1]) < 1e-7
    assert gap(split[0], high[0]) > 1e-5 and gap(split[1], low[1]) > 1e-5  # the factors do change the step
    assert get_preset("cpu").finetune_schedule.branch_adv_weights == (0.25, 2.0)
    assert schedule_for(preset, "sn-gan").branch_adv_weights == (0.25, 2.0)
    assert schedule_for(preset, "sn", finetune=True).branch_adv_weights == ()  # no LSGAN term there


def test_branch_adv_weights_must_give_one_factor_per_branch(tiny_data, tmp_path, monkeypatch):
    import dataclasses

    from training import presets

    kw = dict(accels=(4.0, 8.0), seed=5, log_mlflow=False, progress=False, batch_size=1, out_dir=tmp_path / "ck")
    base = presets.PRESETS["cpu"]
    monkeypatch.setitem(presets.PRESETS, "cpu-one", dataclasses.replace(
        base, name="cpu-one", sn=dataclasses.replace(base.sn, accel_branches=())))
    one = train_model("sn", tiny_data, preset="cpu-one", epochs=1, max_steps=1, **kw)
    # the cpu fine-tuning schedule's two factors do not fit an SN with one set of cascades
    with pytest.raises(ConfigError, match=r"branch_adv_weights: 2 factor\(s\) \[0.25, 2.0\].*1 branch"):
        train_model("sn-gan", tiny_data, preset="cpu-one", init_from=one.checkpoint_path, max_steps=1, **kw)
    with pytest.raises(ConfigError, match="expected finite factors >= 0"):
        train_model("sn-gan", tiny_data, preset="cpu-one", init_from=one.checkpoint_path, max_steps=1,
                    schedule_overrides={"branch_adv_weights": (float("nan"),)}, **kw)
    done = train_model("sn-gan", tiny_data, preset="cpu-one", init_from=one.checkpoint_path, max_steps=1,
                       schedule_overrides={"branch_adv_weights": (0.5,)}, **kw)
    assert torch.load(done.checkpoint_path, weights_only=True)["step"] == 1


def test_sn_gan_with_a_critic_per_branch_trains_and_checkpoints_both_critics(tiny_data, tmp_path, monkeypatch):
    import dataclasses

    from training import presets

    base = presets.PRESETS["cpu"]
    monkeypatch.setitem(presets.PRESETS, "cpu-critics", dataclasses.replace(
        base, name="cpu-critics", discriminator=dataclasses.replace(base.discriminator, per_branch=True)))
    kw = dict(accels=(4.0, 8.0), seed=5, log_mlflow=False, progress=False, batch_size=1, out_dir=tmp_path / "ck")
    sn = train_model("sn", tiny_data, preset="cpu", epochs=2, max_steps=1, **kw)
    gan = train_model("sn-gan", tiny_data, preset="cpu-critics", init_from=sn.checkpoint_path, max_steps=4, **kw)
    ck = torch.load(gan.checkpoint_path, weights_only=True)
    assert {k.split(".")[1] for k in ck["discriminator"]} == {"0", "1"}  # critics.0.*, critics.1.*
    assert ck["step"] == 4
    with pytest.raises(ConfigError, match="needs an SN with accel_branches"):
        monkeypatch.setitem(presets.PRESETS, "cpu-one", dataclasses.replace(
            presets.PRESETS["cpu-critics"], name="cpu-one", sn=dataclasses.replace(base.sn, accel_branches=())))
        one = train_model("sn", tiny_data, preset="cpu-one", epochs=1, max_steps=1, **kw)
        train_model("sn-gan", tiny_data, preset="cpu-one", init_from=one.checkpoint_path, max_steps=1, **kw)
