"""`dnirecon bench` on the stand-in baked set (quick variant) and `dnirecon client info`."""

from __future__ import annotations

import argparse

import pytest

from commands import bench
from service.cli import main as service_main


def test_quick_bench_writes_every_section(baked_dir, tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.register(sub)
    out = tmp_path / "benchmarks.md"
    args = parser.parse_args(["bench", "--model-dir", str(baked_dir), "--sizes", "3x32x24,2x32x24", "--slices", "2",
                              "--streams", "1,2", "--throughput-slices", "4", "--rss-slices", "5,10", "--threads", "1",
                              "--cpu-mem-arena", "false", "--out", str(out)])
    assert args.func(args) == 0
    text = out.read_text()
    assert "| 3x32x24 |" in text and "| 2x32x24 |" in text
    assert "No GPU machine was at hand" in text and "CPUExecutionProvider" in text
    assert "spinning true, CPU memory arena false." in text  # passed to the server and the in-process session
    assert "| 1 |" in text and "| 2 |" in text  # throughput rows
    assert "GFLOP per slice (ONNX MatMul/Conv nodes" in text
    cols = text.split("| 2x32x24 |")[1].split("|")
    coils, h, w = 2, 32, 24
    dft = 2 * (4 * h * h * w + 4 * h * w * w) * coils  # stand-in: two complex matmul DFTs, 4 real products each
    assert float(cols[12]) == pytest.approx(dft / 1e9, rel=0.01)  # the ONNX graph GFLOP column
    assert "| 10 |" in text and "RSS ratio after 10 vs 5 slices" in text
    sent = int(text.split("| 3x32x24 |")[1].split("|")[7].strip().replace(",", ""))
    assert sent < 3 * 32 * 24 * 8  # acquired lines only, under the zero-filled matrix
    mrd = text.split("### MRD (ISMRMRD streaming) next to gRPC")[1].split("| 2x32x24 |")[1].split("|")
    lines = int(bench.test_slice(2, 32, 24)[1].sum())
    assert int(mrd[4].strip().replace(",", "")) == lines * (2 + 340 + 2 * 32 * 8)  # one readout message per line
    assert float(mrd[0]) > 0 and float(mrd[2]) >= float(mrd[0])


def test_cpu_description_names_the_machine():
    model, cores, _peak = bench.cpu_description()
    assert model and cores >= 1


def test_client_info_reports_providers_and_models(server, capsys):
    assert service_main(["client", "info", "--server", server.target]) == 0
    out = capsys.readouterr().out
    assert "health: SERVING" in out and "providers in use: CPUExecutionProvider" in out
    assert "alphas [0.0, 1.0]" in out


def test_graph_gflop_from_the_torch_twin_equals_the_onnx_count(tmp_path):
    """The memory-light count (torch flop_counter on the MATMUL_FFT twin) agrees with counting the
    ONNX graph's MatMul/Conv nodes on the same slice."""
    import numpy as np
    import torch

    from registry.export import export_reconstruction
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    torch.manual_seed(0)
    model = SensitivityNetwork(SNConfig(cascades=2, width=4, blocks=1, readout_oversampling=2)).eval()
    path = export_reconstruction(model, tmp_path / "m.onnx")
    kspace, mask = bench.test_slice(3, 40, 24)
    from_torch = bench.graph_gflop(model, path, kspace, mask)
    from_onnx = bench.graph_gflop(None, path, kspace, mask)
    assert from_torch == pytest.approx(from_onnx, rel=0.03)
    assert from_torch > 0


def test_onnx_and_torch_eager_are_timed_alternately_with_the_torch_flop_count():
    import torch

    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    torch.manual_seed(0)
    model = SensitivityNetwork(SNConfig(cascades=1, width=4, blocks=1)).eval()
    kspace, mask = bench.test_slice(2, 16, 12)
    calls = []
    onnx_ms, torch_ms, gflop = bench.eager_vs_onnx_ms(model, lambda: calls.append(1), kspace, mask, n=3, threads=1)
    assert len(calls) == 4  # one warm-up, then one before each of the 3 timed torch runs
    assert onnx_ms >= 0 and torch_ms > 0 and gflop > 0
