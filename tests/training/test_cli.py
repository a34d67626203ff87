"""`dnirecon train ...` and `dnirecon eval model --checkpoint ...` end to end on tiny data."""

from pathlib import Path

from dnirecon.cli import main


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
