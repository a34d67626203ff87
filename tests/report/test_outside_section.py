"""The report's section on data the generator did not make: table, SN-vs-CS lines, one figure per source."""

import dataclasses

import numpy as np
import pytest

from .conftest import ACCELS, ALPHAS, RUN_INFO, stand_in_methods
from training.baselines import cs_l1_wavelet
from training.outside import ITEMS, REPORTED, build_outside
from training.report import OutsideResults, collect_outside_data, sn_against_cs, write_report


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    items = [dataclasses.replace(ITEMS[2], coils=4, slices=(12,)),
             dataclasses.replace(ITEMS[5], coils=4, matrix=32, repeats=1)]
    dirs = build_outside(tmp_path_factory.mktemp("outside"), items, generator="skimage.data.shepp_logan_phantom")
    methods = dict(stand_in_methods())
    methods["CS (l1-wavelet)"] = lambda k, m: (cs_l1_wavelet(k, m, iters=10), None)
    sources = collect_outside_data({s: d for (s, r), d in dirs.items() if r == REPORTED}, ACCELS, methods, ALPHAS,
                                   progress=False)
    info = [dict(source=i.source, role=i.role, name=i.name, coils=i.coils, noise_level=i.noise_level,
                 content="test", generator="skimage.data.shepp_logan_phantom") for i in items]
    return OutsideResults(sources, info, cs_setting="test")


def test_every_method_is_scored_on_each_source_at_each_acceleration(outside):
    for source, data in outside.sources.items():
        keys = {(r["data"], r["accel"], r["method"]) for r in data.rows}
        assert keys >= {(source.upper(), a, m) for a in ACCELS for m in data.methods}


def test_sn_against_cs_gives_one_line_per_source_and_acceleration(outside):
    lines = sn_against_cs(outside)
    assert [(r["source"], r["accel"]) for r in lines] == [(s.upper(), a) for s in outside.sources for a in ACCELS]
    for r in lines:
        assert r["ahead"] == (r["sn_psnr"] > r["cs_psnr"] and r["sn_ssim"] > r["cs_ssim"])


def test_the_section_adds_a_table_and_figures_and_leaves_table_1_alone(outside, report_data, tmp_path):
    plain = write_report(report_data, tmp_path / "plain", RUN_INFO, log_to_mlflow=False)
    with_outside = write_report(report_data, tmp_path / "with", RUN_INFO, log_to_mlflow=False, outside=outside)
    assert (tmp_path / "plain" / "report_table1.md").read_text() == (tmp_path / "with" / "report_table1.md").read_text()
    text = with_outside.read_text()
    assert "## Data the generator did not make" in text and "## Data the generator did not make" not in plain.read_text()
    assert "| BRAIN | 8x | CS (l1-wavelet) |" in text and "| PHANTOM | 4x | SN |" in text
    for source in ("brain", "phantom"):
        assert (tmp_path / "with" / "figures" / f"report_outside_{source}.png").stat().st_size > 1000
    assert text.index("## Data the generator did not make") < text.index("## How this was produced")
    assert np.isfinite([r["sn_psnr"] for r in sn_against_cs(outside)]).all()
