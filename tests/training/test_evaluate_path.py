"""One evaluation path: validation, the bake's metrics, `dnirecon eval` and the report score alike."""

import numpy as np
import torch

from dnirecon.fastmri_io import list_volumes
from training.evaluate import (evaluate, held_out_volumes, load_held_out, magnitude, mean_metrics, score,
                               table_rows, torch_recon)
from training.train import new_model, validate


def test_magnitude_is_torch_abs_bit_for_bit_and_folds_negative_real_outputs():
    rng = np.random.default_rng(0)
    z = ((rng.standard_normal((2, 40, 30)) + 1j * rng.standard_normal((2, 40, 30))) * 1e3).astype(np.complex64)
    assert np.array_equal(magnitude(z), torch.from_numpy(z).abs().numpy())
    assert np.array_equal(magnitude(np.array([[-1.5, 2.0]], np.float32)), np.array([[1.5, 2.0]], np.float32))


def test_precomputed_images_score_as_the_evaluation_loop_does(tiny_data):
    """The bake scores its ONNX images with `score`; `dnirecon eval` and the report run `evaluate`:
    the same slices and images give the same numbers."""
    torch.manual_seed(0)
    model = new_model("sn", {"cascades": 1, "width": 4, "blocks": 1}).eval()
    val = tiny_data / "val"
    held_out = load_held_out(val, slices=None, accels=(4.0, 8.0))
    with torch.no_grad():
        images = [model(torch.from_numpy(s.kspace[None]), torch.from_numpy(s.mask[None]))[0].numpy()
                  for s in held_out]
    baked = score(held_out, images, "SN")
    looped = evaluate({"SN": torch_recon(model)}, held_out_volumes(list_volumes(val), (4.0, 8.0)), batch=1)
    assert [(r["file"], r["accel"], r["metrics"]) for r in baked] == \
        [(r["file"], r["accel"], r["metrics"]) for r in looped]
    rows = table_rows(looped)
    assert [(r["data"], r["accel"], r["n"]) for r in rows] == [
        ("CORPD", 4.0, 1), ("CORPD", 8.0, 1), ("CORPDFS", 4.0, 1), ("CORPDFS", 8.0, 1), ("ALL", 4.0, 2), ("ALL", 8.0, 2)]
    assert rows[-1]["metrics"]["psnr"][0] == np.mean([r["metrics"]["psnr"] for r in looped if r["accel"] == 8.0])

    summary, records, examples = validate("sn", model, list_volumes(val), (4.0, 8.0), torch.device("cpu"))
    assert summary["val_psnr"] == mean_metrics(looped)["psnr"]
    assert summary["val_ssim_4x"] == mean_metrics([r for r in looped if r["accel"] == 4.0])["ssim"]
    assert [e["accel"] for e in examples] == [4.0, 8.0] and examples[0]["zf"].shape == examples[0]["target"].shape
