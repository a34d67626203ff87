"""The two centred FFTs agree with each other, with numpy's dnirecon.fftc, and are unitary."""

import numpy as np
import pytest
import torch

from physics_helpers import random_kspace, rel_err
from training.physics.fft import MATMUL_FFT, TORCH_FFT

SIZES = [(8, 6), (7, 5), (9, 12), (64, 37)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matmul_fft_matches_torch_fft_within_1e5(h, w):
    x = random_kspace(2, 3, h, w)
    assert rel_err(MATMUL_FFT.fft(x), TORCH_FFT.fft(x)) < 1e-5
    assert rel_err(MATMUL_FFT.ifft(x), TORCH_FFT.ifft(x)) < 1e-5


def test_matmul_fft_matches_at_fastmri_size():
    x = random_kspace(1, 1, 640, 368)
    assert rel_err(MATMUL_FFT.fft(x), TORCH_FFT.fft(x)) < 1e-5


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
@pytest.mark.parametrize("h,w", SIZES)
def test_fft_matches_numpy_fftc(fourier, h, w):
    fftc = pytest.importorskip("dnirecon.fftc")
    x = random_kspace(1, 2, h, w)
    ref = fftc.fft2c(x.numpy().astype(np.complex128))
    assert np.abs(fourier.fft(x).numpy() - ref).max() / np.abs(ref).max() < 1e-5
    ref_inv = fftc.ifft2c(x.numpy().astype(np.complex128))
    assert np.abs(fourier.ifft(x).numpy() - ref_inv).max() / np.abs(ref_inv).max() < 1e-5


def test_fft_matches_fastmri_oracle():
    fastmri = pytest.importorskip("fastmri")
    x = random_kspace(1, 2, 10, 8)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x)).contiguous())
    assert rel_err(TORCH_FFT.fft(x), ref) < 1e-6
    assert rel_err(MATMUL_FFT.fft(x), ref) < 1e-5


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
def test_fft_is_unitary_and_inverted_by_ifft(fourier):
    x = random_kspace(1, 1, 9, 7)
    k = fourier.fft(x)
    assert torch.allclose(k.abs().square().sum(), x.abs().square().sum(), rtol=1e-5)
    assert rel_err(fourier.ifft(k), x) < 1e-5


def test_image_centre_maps_to_flat_kspace():
    # A delta at index n // 2 is the image origin in the centred convention: flat, zero-phase k-space.
    x = torch.zeros(1, 1, 7, 6, dtype=torch.complex64)
    x[..., 3, 3] = 1.0
    k = MATMUL_FFT.fft(x)
    assert torch.allclose(k, torch.full_like(k, 1 / np.sqrt(42)), atol=1e-6)


@pytest.mark.parametrize("n, split", [(368, (16, 23)), (640, (20, 32)), (320, (16, 20)), (110, (10, 11)),
                                      (101, (1, 101)), (1, (1, 1)), (49, (7, 7))])
def test_transform_lengths_split_at_their_largest_divisor_up_to_the_square_root(n, split):
    from training.physics.fft import split_length

    assert split_length(n) == split


class _Fourier2d(torch.nn.Module):
    """kspace (B, C, H, W, 2) -> the real and imaginary parts of fft2c then ifft2c of each (MATMUL_FFT)."""

    def forward(self, kspace, mask):
        x = torch.complex(kspace[..., 0], kspace[..., 1]) * mask[:, None, None, :]
        k, i = MATMUL_FFT.fft(x), MATMUL_FFT.ifft(x)
        return torch.stack([k.real, k.imag, i.real, i.imag], dim=-1)


@pytest.fixture(scope="module")
def fourier_graph(tmp_path_factory):
    from physics_helpers import export_onnx

    k = torch.view_as_real(random_kspace(2, 3, 10, 8)).contiguous()
    return export_onnx(_Fourier2d(), k, torch.ones(2, 8), tmp_path_factory.mktemp("fft") / "fft.onnx")


def test_the_exported_transforms_are_matrix_products_without_a_dft_node(fourier_graph):
    _, ops = fourier_graph
    assert "DFT" not in ops and "MatMul" in ops and "Transpose" in ops


@pytest.mark.parametrize("c, h, w", [(1, 13, 17), (2, 97, 101), (1, 7, 1), (2, 21, 45), (1, 640, 368),
                                     (1, 320, 320), (8, 192, 110)])
def test_the_exported_graph_matches_torch_fft_within_1e5_at_primes_odd_and_scanner_sizes(fourier_graph, c, h, w):
    session, _ = fourier_graph
    x = random_kspace(1, c, h, w, seed=h + w)
    got = session.run(None, {"kspace": torch.view_as_real(x).contiguous().numpy(), "mask": np.ones((1, w), np.float32)})[0]
    for i, want in enumerate((TORCH_FFT.fft(x), TORCH_FFT.ifft(x))):
        out = got[..., 2 * i] + 1j * got[..., 2 * i + 1]
        assert np.abs(out - want.numpy()).max() / want.abs().max().item() < 1e-5


def test_a_complex_matrix_product_is_one_real_product_with_the_matrix_in_real_form():
    from training.physics.fft import _real_form

    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.complex64, generator=g)
    m = torch.randn(4, 3, dtype=torch.complex64, generator=g)
    got = torch.view_as_real(x).reshape(5, 8) @ _real_form(m.real, m.imag)
    assert torch.allclose(got, torch.view_as_real(x @ m).reshape(5, 6), atol=1e-6)


class _OneTransform(torch.nn.Module):
    """kspace (B, C, H, W, 2) -> the real view of dft_last of it (mask unused)."""

    def forward(self, kspace, mask):
        from training.physics.fft import dft_last

        return torch.view_as_real(dft_last(torch.view_as_complex(kspace)))


def test_one_exported_transform_is_two_matmuls_and_three_transposes_on_the_real_view(tmp_path):
    import onnx

    from physics_helpers import export_onnx

    x = random_kspace(2, 3, 10, 8)
    session, _ = export_onnx(_OneTransform(), torch.view_as_real(x).contiguous(), torch.ones(2, 8),
                             tmp_path / "one.onnx")
    nodes = onnx.load(str(tmp_path / "one.onnx")).graph.node
    ops = [node.op_type for node in nodes]
    assert ops.count("MatMul") == 2 and ops.count("Transpose") == 3
    assert {n.op_type for n in nodes if "kspace" in n.input} == {"Shape", "Reshape"}  # no split into re and im
    y = random_kspace(1, 2, 12, 368, seed=3)
    got = session.run(None, {"kspace": torch.view_as_real(y).contiguous().numpy(),
                             "mask": np.ones((1, 368), np.float32)})[0]
    want = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(y, dim=-1), dim=-1, norm="ortho"), dim=-1)
    assert np.abs(got - torch.view_as_real(want).numpy()).max() / want.abs().max().item() < 1e-5
