"""The Table-1 evaluation loop and `dnirecon eval baselines` on a tiny synthetic set."""

import argparse

import pytest

from training.evaluate import baseline_methods, eval_baselines_command, evaluate_dataset


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from training.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(volumes_per_contrast=1, slices=2, coils=6, recon_size=(48, 48), seed=3))
    return out


@pytest.fixture(scope="module")
def rows(tiny_set):
    return evaluate_dataset(baseline_methods(), tiny_set, [4, 8], progress=False)


def test_rows_cover_each_contrast_acceleration_and_method(rows):
    keys = [(r["data"], r["accel"], r["method"]) for r in rows]
    assert keys == [(d, a, m) for d in ("CORPD", "CORPDFS", "ALL") for a in (4.0, 8.0)
                    for m in ("Zero-filled", "CG-SENSE", "CS (l1-wavelet)")]
    assert set(rows[0]["metrics"]) >= {"nmse", "psnr", "ssim", "hfen", "hf_ratio"}


def test_cg_sense_beats_zero_filled_in_psnr_and_ssim(rows):
    table = {(r["data"], r["accel"], r["method"]): r["metrics"] for r in rows}
    for accel in (4.0, 8.0):
        zf, cg = table[("ALL", accel, "Zero-filled")], table[("ALL", accel, "CG-SENSE")]
        assert cg["psnr"][0] > zf["psnr"][0]
        assert cg["ssim"][0] > zf["ssim"][0]
        assert cg["nmse"][0] < zf["nmse"][0]


def test_cs_beats_zero_filled_in_psnr_and_ssim(rows):
    table = {(r["data"], r["accel"], r["method"]): r["metrics"] for r in rows}
    for accel in (4.0, 8.0):
        zf, cs = table[("ALL", accel, "Zero-filled")], table[("ALL", accel, "CS (l1-wavelet)")]
        assert cs["psnr"][0] > zf["psnr"][0]
        assert cs["ssim"][0] > zf["ssim"][0]


def test_eval_baselines_command_prints_and_saves_the_table(tiny_set, tmp_path, capsys):
    args = argparse.Namespace(data=tiny_set, accel=[4.0], mask="equispaced", out=tmp_path,
                              limit_volumes=1, cg_lambda=0.01, cg_iters=5)
    assert eval_baselines_command(args) == 0
    printed = capsys.readouterr().out
    assert "| CORPD | 4x | CG-SENSE |" in printed and "CORPDFS" not in printed
    assert {p.name for p in tmp_path.iterdir()} == {"baselines.md", "baselines.csv", "baselines.json"}


@pytest.mark.parametrize("field,value,option", [("cg_iters", 0, "--cg-iters"), ("cg_lambda", -1.0, "--cg-lambda"),
                                                ("limit_volumes", 0, "--limit-volumes"),
                                                ("cs_iters", 0, "--cs-iters"), ("cs_lambda", -1.0, "--cs-lambda")])
def test_bad_options_raise_config_errors_naming_the_option(tiny_set, tmp_path, field, value, option):
    from dnirecon.errors import ConfigError

    args = argparse.Namespace(data=tiny_set, accel=[4.0], mask="random", out=tmp_path, limit_volumes=None,
                              cg_lambda=None, cg_iters=None, cs_lambda=None, cs_iters=None)
    setattr(args, field, value)
    with pytest.raises(ConfigError, match=option):
        eval_baselines_command(args)
