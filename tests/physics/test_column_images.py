"""The SN's input stage (`column_images`): coil images of weighted k-space through the sampled columns
only, with the readout crop folded into the transform along H. Equal to torch.fft (and the crop) in
eager and in the exported graph, at primes, odd sizes and scanner sizes, with no Transpose."""

import numpy as np
import pytest
import torch

from dnirecon.subsample import mask_for
from physics_helpers import export_onnx, random_kspace, rel_err
from training.physics.columns import ColumnDomain
from training.physics.fft import TORCH_FFT, column_images, sampled_columns
from training.physics.sense import expand_mask

# (C, H, W, readout oversampling): primes, odd sizes, the paper and the small bench sizes
SIZES = [(1, 13, 17, 1), (2, 21, 45, 1), (1, 97, 101, 2), (1, 640, 368, 2), (1, 320, 320, 1), (8, 192, 110, 1),
         (2, 33, 16, 2)]


def _weights(kind: str, b: int, w: int) -> torch.Tensor:
    """(B, W) column weights: a fastMRI 4x mask; the same with float weights; every column (the full
    transform); a batch of two samples with different masks (4x and 8x)."""
    if kind == "4x":
        return torch.from_numpy(mask_for(4, seed=w, width=w))[None].expand(b, w).clone()
    if kind == "float":
        return _weights("4x", b, w) * torch.linspace(0.2, 1.5, w)
    if kind == "all":
        return torch.ones(b, w)
    return torch.from_numpy(np.stack([mask_for(4, seed=w, width=w), mask_for(8, seed=w + 1, width=w)]))


def _reference(k: torch.Tensor, weight: torch.Tensor, oversampling: int) -> torch.Tensor:
    """torch.fft's inverse 2-D transform of the weighted k-space, then the central H // f rows."""
    full = TORCH_FFT.ifft(k * expand_mask(weight))
    h = k.shape[-2] // oversampling
    top = (k.shape[-2] - h) // 2
    return full[..., top: top + h, :]


@pytest.mark.parametrize("kind", ["4x", "float", "all", "two-samples"])
@pytest.mark.parametrize("c, h, w, f", SIZES)
def test_column_images_match_torch_fft_and_the_crop_within_1e5(c, h, w, f, kind):
    b = 2 if kind == "two-samples" else 1
    weights = _weights(kind, b, w)
    k = random_kspace(b, c, h, w, seed=h + w)
    got = ColumnDomain(k, weights, f).images(weights, weights * weights)
    assert got[0].shape == (b, c, h // f, w)
    for image, weight in zip(got, (weights, weights * weights)):
        assert rel_err(image, _reference(k, weight, f)) < 1e-5


def test_the_columns_taken_are_the_union_over_the_batch_and_each_sample_keeps_its_own_weights():
    weights = _weights("two-samples", 2, 64)
    cols = sampled_columns(weights[None])
    assert cols.tolist() == torch.nonzero((weights != 0).any(0)).flatten().tolist()
    assert len(cols) > int((weights[0] != 0).sum())  # the 8x sample's own columns are not all in the 4x one's
    k = random_kspace(2, 2, 8, 64)
    both = ColumnDomain(k, weights).images(weights)[0]
    for i in range(2):
        alone = ColumnDomain(k[i:i + 1], weights[i:i + 1]).images(weights[i:i + 1])[0]
        assert rel_err(both[i:i + 1], alone) < 1e-5


def test_flop_count_is_the_two_products_over_the_sampled_columns():
    from torch.utils.flop_counter import FlopCounterMode

    weights = _weights("two-samples", 2, 110)
    r = int(((weights != 0).any(0)).sum())
    x = torch.view_as_real(random_kspace(2, 3, 16, 110)).contiguous()
    counter = FlopCounterMode(display=False)
    with counter:
        column_images(x, torch.stack([weights, weights]), 2)
    b, c, h_full, w, h = 2, 3, 16, 110, 8
    assert counter.get_total_flops() == 8 * b * c * h * h_full * r + 8 * 2 * b * c * h * r * w


class _Images(torch.nn.Module):
    """kspace (B, C, H, W, 2), mask -> the real views of the images of the mask and of mask^2, stacked."""

    def __init__(self, oversampling: int):
        super().__init__()
        self.oversampling = oversampling

    def forward(self, kspace, mask):
        images = ColumnDomain(torch.view_as_complex(kspace), mask, self.oversampling).images(mask, mask * mask)
        return torch.stack([torch.view_as_real(i) for i in images])


@pytest.fixture(scope="module", params=[1, 2], ids=["f1", "f2"])
def images_graph(request, tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("images") / "images.onnx"
    mask = _weights("two-samples", 2, 16)
    session, _ = export_onnx(_Images(request.param), torch.view_as_real(random_kspace(2, 3, 10, 16)).contiguous(),
                             mask, path)
    return session, [node.op_type for node in onnx.load(str(path)).graph.node], request.param


def test_the_exported_input_stage_is_two_matmuls_and_one_gather_without_transpose_or_dft(images_graph):
    _, ops, _ = images_graph
    assert ops.count("MatMul") == 2 and ops.count("Gather") == 2  # the k-space columns, the weights' columns
    assert "Transpose" not in ops and "DFT" not in ops


@pytest.mark.parametrize("kind", ["4x", "all", "two-samples"])
@pytest.mark.parametrize("c, h, w, f", SIZES)
def test_the_exported_input_stage_matches_torch_fft_within_1e5(images_graph, c, h, w, f, kind):
    session, _, oversampling = images_graph
    b = 2 if kind == "two-samples" else 1
    weights = _weights(kind, b, w)
    k = random_kspace(b, c, h, w, seed=h + w + 1)
    got = session.run(None, {"kspace": torch.view_as_real(k).contiguous().numpy(), "mask": weights.numpy()})[0]
    for i, weight in enumerate((weights, weights * weights)):
        want = _reference(k, weight, oversampling)
        out = got[i][..., 0] + 1j * got[i][..., 1]
        assert out.shape == tuple(want.shape)
        assert np.abs(out - want.numpy()).max() / want.abs().max().item() < 1e-5
