import numpy as np

from dnirecon.fastmri_io import FastMRIVolume
from dnirecon.foreground import foreground_mask


def test_foreground_covers_the_knee_not_the_air(tiny_dir):
    for name in ("synth_pd_000.h5", "synth_pdfs_000.h5"):
        with FastMRIVolume(tiny_dir / name) as vol:
            target = np.stack([vol.target(i) for i in range(vol.num_slices)])
        fg = foreground_mask(target)
        assert fg.shape == target.shape and fg.dtype == bool
        bright = target > 0.2 * target.max()
        assert fg[bright].mean() > 0.99  # all of the tissue
        # the synthetic leg leaves air at the left and right edges of the 64-wide crop
        assert not fg[:, :, :2].any() and not fg[:, :, -2:].any()
        assert 0.4 < fg.mean() < 0.95


def test_foreground_is_one_filled_component():
    img = np.zeros((40, 40))
    img[10:30, 10:30] = 1.0
    img[18:22, 18:22] = 0.0  # a dark hole inside: filled
    img[2:4, 2:4] = 1.0      # a small island: dropped
    fg = foreground_mask(img, dilation=0)
    assert fg[18:22, 18:22].all() and not fg[2:4, 2:4].any()
    assert fg[10:30, 10:30].all() and 400 <= fg.sum() <= 22 * 22  # blur widens it by <= 1 pixel
