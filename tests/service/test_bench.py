"""`dnirecon bench` on the stand-in baked set (quick variant) and `dnirecon client info`."""

from __future__ import annotations

import argparse

import pytest

from dnirecon import bench
from service.cli import main as service_main


def test_quick_bench_writes_every_section(baked_dir, tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.register(sub)
    out = tmp_path / "benchmarks.md"
    args = parser.parse_args(["bench", "--model-dir", str(baked_dir), "--sizes", "3x32x24,2x32x24", "--slices", "2",
                              "--streams", "1,2", "--throughput-slices", "4", "--rss-slices", "5,10", "--threads", "1",
                              "--out", str(out)])
    assert args.func(args) == 0
    text = out.read_text()
    assert "| 3x32x24 |" in text and "| 2x32x24 |" in text
    assert "No GPU machine was at hand" in text and "CPUExecutionProvider" in text
    assert "| 1 |" in text and "| 2 |" in text  # throughput rows
    assert "GFLOP per slice (ONNX MatMul/Conv nodes" in text
    cols = text.split("| 2x32x24 |")[1].split("|")
    coils, h, w = 2, 32, 24
    dft = 2 * (4 * h * h * w + 4 * h * w * w) * coils  # stand-in: two complex matmul DFTs, 4 real products each
    assert float(cols[10]) == pytest.approx(dft / 1e9, rel=0.01)
    assert "| 10 |" in text and "RSS ratio after 10 vs 5 slices" in text
    sent = int(text.split("| 3x32x24 |")[1].split("|")[7].strip().replace(",", ""))
    assert sent < 3 * 32 * 24 * 8  # acquired lines only, under the zero-filled matrix


def test_cpu_description_names_the_machine():
    model, cores, _peak = bench.cpu_description()
    assert model and cores >= 1


def test_client_info_reports_providers_and_models(server, capsys):
    assert service_main(["client", "info", "--server", server.target]) == 0
    out = capsys.readouterr().out
    assert "health: SERVING" in out and "providers in use: CPUExecutionProvider" in out
    assert "alphas [0.0, 1.0]" in out
