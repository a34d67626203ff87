import numpy as np
import pytest

from fastmri.data import subsample as fm

from dnirecon import subsample as ds
from dnirecon.errors import ConfigError


@pytest.mark.parametrize("ours,theirs", [(ds.RandomMaskFunc, fm.RandomMaskFunc),
                                         (ds.EquispacedMaskFractionFunc, fm.EquispacedMaskFractionFunc)])
@pytest.mark.parametrize("shape", [(1, 640, 368, 2), (4, 32, 75, 2)])
@pytest.mark.parametrize("seed", [0, 123, (ord("a"), ord("b"))])
def test_masks_equal_fastmri(ours, theirs, shape, seed):
    a = ours([0.08, 0.04], [4, 8], seed=5)
    b = theirs([0.08, 0.04], [4, 8], seed=5)
    for _ in range(3):  # successive calls: generator states advance identically
        (ma, na), (mb, nb) = a(shape, seed=seed), b(shape, seed=seed)
        assert na == nb and ma.dtype == np.float32
        np.testing.assert_array_equal(ma, mb.numpy())
        (ma, _), (mb, _) = a(shape), b(shape)
        np.testing.assert_array_equal(ma, mb.numpy())


def test_mask_for_uses_fastmri_validation_seed_and_centre_fractions():
    fname = "file1000001.h5"
    for accel, cf in ((4, 0.08), (8, 0.04)):
        ref, nlow = fm.RandomMaskFunc([cf], [accel])((1, 640, 368, 2), seed=tuple(map(ord, fname)))
        ours = ds.mask_for(accel, "random", seed=fname, width=368)
        np.testing.assert_array_equal(ours, ref.numpy().reshape(-1))
        assert nlow == round(368 * cf)
        np.testing.assert_array_equal(ours, ds.mask_for(accel, seed=fname, width=368))  # deterministic


def test_mask_for_acceleration_and_padding():
    m = ds.mask_for(4, "equispaced", seed=0, width=368, padding=(17, 351))
    assert m.shape == (368,) and m.dtype == np.float32
    assert not m[:17].any() and not m[351:].any()
    assert m[184 - 14:184 + 15].all()  # centre block of round(0.08 * 368) = 29 columns
    rand = np.mean([ds.mask_for(8, seed=s, width=368).sum() for s in range(50)])
    assert rand == pytest.approx(368 / 8, rel=0.1)


@pytest.mark.parametrize("bad", [0, -4, "four", float("nan"), float("inf"), None])
def test_accel_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match="accel must be a positive number"):
        ds.mask_for(bad, width=64)


def test_unknown_kind_is_named():
    with pytest.raises(ConfigError, match="mask kind 'poisson' unknown"):
        ds.mask_for(4, "poisson", width=64)
