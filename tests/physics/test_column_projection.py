"""The data-consistency projector F_W^H diag(m) F_W as two thin products (`column_projection`): equal to
the factorised transform pair and to torch.fft, in eager and in the exported graph, with no Transpose."""

import numpy as np
import pytest
import torch

from dnirecon.subsample import mask_for
from physics_helpers import export_onnx, random_kspace, rel_err
from training.physics.columns import ColumnDomain
from training.physics.fft import dft_last

WIDTHS = [7, 11, 64, 110, 368]
MASKS = ["one-column", "4x", "8x", "float-weighted", "two-samples"]


def _mask(kind: str, w: int) -> torch.Tensor:
    """(B, W) column weights: one column; Cartesian 4x / 8x (fastMRI random); a 4x mask with float weights;
    a batch of two samples with different masks (4x and 8x, so the 8x one is padded to the 4x r)."""
    if kind == "one-column":
        mask = torch.zeros(1, w)
        mask[0, w // 3] = 1.0
        return mask
    if kind in ("4x", "8x"):
        return torch.from_numpy(mask_for(int(kind[0]), seed=w, width=w))[None]
    if kind == "float-weighted":
        mask = torch.from_numpy(mask_for(4, seed=w, width=w))[None]
        return mask * torch.linspace(0.2, 1.5, w)
    return torch.from_numpy(np.stack([mask_for(4, seed=w, width=w), mask_for(8, seed=w + 1, width=w)]))


def _torch_fft_projection(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    def centred(y, transform):
        return torch.fft.fftshift(transform(torch.fft.ifftshift(y, dim=-1), dim=-1, norm="ortho"), dim=-1)

    return centred(centred(x, torch.fft.fft) * mask[:, None, None, :], torch.fft.ifft)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("w", WIDTHS)
def test_thin_projector_equals_the_factorised_pair_and_torch_fft_within_1e5(w, kind):
    mask = _mask(kind, w)
    x = random_kspace(mask.shape[0], 3, 5, w, seed=w)
    got = ColumnDomain(torch.zeros_like(x), mask).project(x)
    factorised = dft_last(dft_last(x) * mask[:, None, None, :], inverse=True)
    assert rel_err(got, factorised) < 1e-5
    assert rel_err(got, _torch_fft_projection(x, mask)) < 1e-5


def test_each_sample_of_a_batch_is_projected_with_its_own_mask():
    mask = _mask("two-samples", 64)
    x = random_kspace(2, 2, 4, 64)
    both = ColumnDomain(torch.zeros_like(x), mask).project(x)
    for i in range(2):
        alone = ColumnDomain(torch.zeros_like(x[i:i + 1]), mask[i:i + 1]).project(x[i:i + 1])
        assert rel_err(both[i:i + 1], alone) < 1e-5
    # the 8x sample keeps only its measured columns: its k-space is zero elsewhere
    k = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(both[1], dim=-1), dim=-1, norm="ortho"), dim=-1)
    assert k[..., mask[1] == 0].abs().max() < 1e-5 * k.abs().max()


def test_flop_count_is_16_r_a_complex_point_with_r_the_most_sampled_columns_of_the_batch():
    from torch.utils.flop_counter import FlopCounterMode

    from training.physics.fft import column_projection

    mask = _mask("two-samples", 110)
    r = int((mask != 0).sum(-1).max())
    x = torch.view_as_real(random_kspace(2, 3, 8, 110)).contiguous()
    counter = FlopCounterMode(display=False)
    with counter:
        column_projection(x, mask)
    assert r == int((mask[0] != 0).sum()) and r > int((mask[1] != 0).sum())
    assert counter.get_total_flops() == 16 * 2 * 3 * 8 * 110 * r


class _Projection(torch.nn.Module):
    """kspace (B, C, H, W, 2) taken as coil images -> the real view of ColumnDomain.project of them."""

    def forward(self, kspace, mask):
        images = torch.view_as_complex(kspace)
        return torch.view_as_real(ColumnDomain(images, mask).project(images))


@pytest.fixture(scope="module")
def projection_graph(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("projection") / "projection.onnx"
    mask = _mask("two-samples", 16)
    session, _ = export_onnx(_Projection(), torch.view_as_real(random_kspace(2, 3, 10, 16)).contiguous(), mask,
                             path)
    return session, [node.op_type for node in onnx.load(str(path)).graph.node]


def test_the_exported_projector_is_two_matmuls_without_transpose_or_dft(projection_graph):
    _, ops = projection_graph
    assert ops.count("MatMul") == 2
    assert "Transpose" not in ops and "DFT" not in ops


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("w", WIDTHS)
def test_the_exported_projector_matches_torch_fft_within_1e5(projection_graph, w, kind):
    session, _ = projection_graph
    mask = _mask(kind, w)
    x = random_kspace(mask.shape[0], 2, 6, w, seed=w + 1)
    got = session.run(None, {"kspace": torch.view_as_real(x).contiguous().numpy(), "mask": mask.numpy()})[0]
    want = _torch_fft_projection(x, mask)
    assert np.abs(got[..., 0] + 1j * got[..., 1] - want.numpy()).max() / want.abs().max().item() < 1e-5


def test_the_exported_sn_moves_no_data_with_transpose_or_depth_to_space(tmp_path):
    import onnx

    from registry.export import export_reconstruction
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    for cascades in (1, 3):
        torch.manual_seed(0)
        model = SensitivityNetwork(SNConfig(cascades=cascades, width=4, blocks=1, readout_oversampling=2)).eval()
        path = export_reconstruction(model, tmp_path / f"sn{cascades}.onnx")
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert "Transpose" not in ops and "DepthToSpace" not in ops
        assert ops.count("ConvTranspose") == 2 * cascades  # each Down-Up block's two pixel shuffles
