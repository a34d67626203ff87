"""`dnirecon train ...` and `dnirecon eval model --checkpoint ...` end to end on tiny data."""

from pathlib import Path

import pytest

from commands.cli import main


def test_train_then_eval_checkpoint(tiny_data, tmp_path, capsys):
    rc = main(["train", "unet", "--data", str(tiny_data), "--epochs", "1", "--no-mlflow", "--no-progress",
               "--max-steps", "1", "--out", str(tmp_path / "ck")])
    assert rc == 0
    ckpts = list(Path(tmp_path / "ck").glob("unet-*/last.pt"))
    assert len(ckpts) == 1
    rc = main(["eval", "model", "--checkpoint", str(ckpts[0]), "--data", str(tiny_data / "val"),
               "--accel", "4", "--no-baselines", "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert rc == 0 and "unet (last.pt)" in out
    assert list((tmp_path / "res").glob("eval_unet*.md"))


def test_missing_data_directory_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "sn", "--data", str(tmp_path / "nope"), "--no-mlflow", "--no-progress"])
    assert rc == 2
    assert "nope is not a directory" in capsys.readouterr().err


def test_loss_weights_reach_the_logged_schedule(tiny_data, tmp_path, mlflow_store, capsys):
    """--l1-weight (lambda) and --gamma are recorded on the run; a negative lambda is refused by name."""
    from training import tracking

    rc = main(["train", "sn", "--data", str(tiny_data), "--no-progress", "--no-register", "--max-steps", "1",
               "--l1-weight", "0.2", "--out", str(tmp_path / "ck")])
    assert rc == 0
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0].rstrip(",")
    params = tracking.client().get_run(run_id).data.params
    assert float(params["schedule.l1_weight"]) == 0.2 and float(params["schedule.gamma"]) == 0.1
    assert params["torch_threads"] == "1"  # the suite's autouse fixture; a bit-for-bit rerun needs it

    with pytest.raises(SystemExit) as exc:
        main(["train", "sn-gan", "--data", str(tiny_data), "--l1-weight", "-1", "--no-mlflow"])
    assert exc.value.code == 2
    assert "--l1-weight: expected a finite number >= 0, got '-1'" in capsys.readouterr().err


def test_branch_adv_weights_reach_the_logged_schedule(tiny_data, tmp_path, mlflow_store, capsys):
    """`train sn-gan --branch-adv-weights` overrides the preset's factors and is recorded on the run."""
    from training import tracking

    common = ["--data", str(tiny_data), "--no-progress", "--no-register", "--max-steps", "1", "--out",
              str(tmp_path / "ck")]
    assert main(["train", "sn", *common]) == 0
    sn = capsys.readouterr().out.split("sn: checkpoint ")[1].split()[0]
    assert main(["train", "sn-gan", *common, "--init-from", sn, "--branch-adv-weights", "0.25", "2"]) == 0
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0].rstrip(",")
    params = tracking.client().get_run(run_id).data.params
    assert params["schedule.branch_adv_weights"] == "[0.25, 2.0]"

    with pytest.raises(SystemExit) as exc:
        main(["train", "sn-gan", *common, "--init-from", sn, "--branch-adv-weights", "0.5", "-1"])
    assert exc.value.code == 2
    assert "--branch-adv-weights: expected a finite number >= 0, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--cg-iters", "0", "expected a positive integer, got '0'"),
    ("--cg-lambda", "-1", "expected a finite number >= 0, got '-1'"),
    ("--cg-lambda", "nan", "expected a finite number >= 0, got 'nan'"),
    ("--limit-volumes", "0", "expected a positive integer, got '0'"),
])
def test_eval_model_validates_cg_options_like_eval_baselines(tmp_path, capsys, flag, value, expected):
    for what in (["model", "--checkpoint", str(tmp_path / "last.pt")], ["baselines"]):
        with pytest.raises(SystemExit) as exc:
            main(["eval", *what, "--data", str(tmp_path), flag, value])
        assert exc.value.code == 2
        assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_cli_says_a_truncated_run_did_not_move_the_champion_and_resume_checks_the_seed(tiny_data, tmp_path,
                                                                                       mlflow_store, capsys):
    rc = main(["train", "unet", "--data", str(tiny_data), "--no-progress", "--max-steps", "1", "--accel", "4",
               "--out", str(tmp_path / "ck")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "version 1 is tagged truncated=true and alias champion was not moved" in out
    ckpt = next(Path(tmp_path / "ck").glob("unet-*/last.pt"))
    rc = main(["train", "unet", "--data", str(tiny_data), "--no-mlflow", "--no-progress", "--accel", "4",
               "--resume", str(ckpt), "--seed", "3", "--out", str(tmp_path / "ck2")])
    assert rc == 2
    assert f"--seed: --resume {ckpt} was trained with --seed 0, but --seed 3 was given" in capsys.readouterr().err
