"""Varied synthetic volumes (`--vary`) go through the training data path and the SN unchanged."""

import h5py
import torch
from torch.utils.data import DataLoader

from training.data import SliceDataset, collate
from training.models.sn import SensitivityNetwork, SNConfig
from training.synth import SynthConfig, synthesize


def test_varied_volumes_load_and_reconstruct_at_their_own_sizes(tmp_path):
    files = synthesize(tmp_path, SynthConfig(volumes_per_contrast=2, slices=1, recon_size=(32, 32), seed=4,
                                             vary=True))
    drawn = {}
    for path in files:
        with h5py.File(path) as f:
            drawn[path.name] = (int(f.attrs["coils"]), tuple(int(v) for v in f.attrs["recon_size"]))
    assert len(set(drawn.values())) > 1  # the files really differ in coils or matrix
    net = SensitivityNetwork(SNConfig(cascades=1, width=4, blocks=1))
    ds = SliceDataset(files, accels=(4.0,), train=False)
    with torch.no_grad():
        for sample in DataLoader(ds, batch_size=1, collate_fn=collate):
            coils, (h, w) = drawn[sample.fname[0]]
            assert sample.kspace.shape[1:3] == (coils, 2 * h) and sample.target.shape[1:] == (h, w)
            assert 0.2 < float(sample.foreground.mean()) < 0.95
            image = net(sample.kspace, sample.mask)
            assert image.shape == (1, 2 * h, sample.kspace.shape[-1]) and torch.isfinite(image.abs()).all()
