"""Acceptance 2 and 5 on a tiny SN: every baked alpha matches torch within 1e-4 of the image maximum,
the registered interpsn version and its manifest show it; the continuous model equals the baked ones."""

import json

import numpy as np
import pytest
import torch

from dnirecon.errors import ConfigError, ModelError
from registry import store
from registry.bake import held_out_fingerprint, load_held_out, parse_model_ref
from dnirecon.files import sha256_file
from registry.export import check_onnx_file, check_parity, ort_session, relative_max_error, run_onnx, \
    run_torch
from registry.interpolate import interpolate_pair

from .conftest import ALPHAS, TINY_SN, register_tiny

TOL = 1e-4


def _theta(tiny_pair, alpha):
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    sn, gan, *_ = tiny_pair
    model = SensitivityNetwork(SNConfig(**TINY_SN)).eval()
    model.load_state_dict(interpolate_pair(sn.state_dict(), gan.state_dict(), alpha))
    return model


def test_every_baked_alpha_matches_torch_on_held_out_slices(baked, tiny_pair, held_out_dir):
    held_out = load_held_out(held_out_dir, slices=1, accels=(4.0, 8.0))
    entries = baked.manifest["alphas"]
    assert [e["alpha"] for e in entries] == ALPHAS
    for e in entries:
        assert 0.0 <= e["parity_max_err"] <= TOL
        # independent re-check: the file on disk against theta(alpha) in torch (TORCH_FFT)
        err = check_parity(_theta(tiny_pair, e["alpha"]), baked.directory / e["graphs"][0]["file"], held_out)
        assert err <= TOL and err == pytest.approx(e["parity_max_err"], rel=1e-3, abs=1e-9)


def test_alphas_give_different_models(baked, held_out_dir):
    held_out = load_held_out(held_out_dir, slices=1, accels=(4.0,))
    s = held_out[0]
    out = {e["alpha"]: run_onnx(ort_session(baked.directory / e["graphs"][0]["file"]), s.kspace, s.mask)[0]
           for e in baked.manifest["alphas"]}
    assert relative_max_error(out[0.0], out[1.0]) > 100 * TOL  # the grid is not one model five times


def test_registered_version_tags_and_manifest_show_lineage(baked, tiny_pair, client):
    _, _, v_sn, v_gan = tiny_pair
    mv = client.get_model_version("interpsn", baked.version)
    tags = mv.tags
    assert tags["alphas"] == "0,0.25,0.5,0.75,1"
    assert (tags["sn_version"], tags["sn_gan_version"]) == (v_sn, v_gan)
    assert baked.manifest["sources"] == {"sn": {"name": "sn", "version": v_sn},
                                         "sn-gan": {"name": "sn-gan", "version": v_gan}}
    assert float(tags["parity_max_err"]) <= TOL
    assert float(tags["parity_max_err"]) == pytest.approx(max(e["parity_max_err"] for e in baked.manifest["alphas"]),
                                                          rel=1e-3)
    assert float(tags["continuous_max_err_vs_baked"]) <= TOL
    on_disk = json.loads((baked.directory / "manifest.json").read_text())
    assert on_disk["format"] == "dnirecon.interpsn/2" and on_disk["preset"] == "cpu"
    assert on_disk["cascade_sets"] == [{"accel": None, "serves": [1.0, None]}]  # one set serves every slice
    for e in on_disk["alphas"]:
        [graph] = e["graphs"]
        assert graph["file"] == f"alpha_{e['alpha']:.2f}.onnx"
        assert tags[f"sha256.alpha_{e['alpha']:.2f}"] == graph["sha256"] == sha256_file(baked.directory / graph["file"])
        assert set(e["metrics"]) >= {"nmse", "psnr", "ssim", "hfen", "hf_ratio"}
        assert json.loads(tags[f"metrics.alpha_{e['alpha']:.2f}"])["psnr"] == pytest.approx(e["metrics"]["psnr"])
        assert 0 < e["metrics"]["ssim"] <= 1 and np.isfinite(e["metrics"]["psnr"])
    assert mv.source.endswith("/interpsn") and mv.run_id == baked.run_id


def test_registered_artifacts_are_the_baked_set(baked, client):
    import mlflow.artifacts

    mv = client.get_model_version("interpsn", baked.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=client.tracking_uri)
    from pathlib import Path

    names = sorted(p.name for p in Path(local).iterdir())
    assert names == sorted(["manifest.json", "continuous.onnx"] + [f"alpha_{a:.2f}.onnx" for a in ALPHAS])


def test_onnx_contract_inputs_outputs_no_dft(baked):
    import onnx

    path = baked.directory / "alpha_0.50.onnx"
    check_onnx_file(path)
    model = onnx.load(str(path))
    assert not [n for n in model.graph.node if n.op_type == "DFT"]
    assert not (baked.directory / "alpha_0.50.onnx.data").exists()
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in [*model.graph.input, *model.graph.output]}
    assert shapes == {"kspace": ["B", "C", "H", "W", 2], "mask": ["B", "W"], "image": ["B", "H", "W"],
                      "dc_residual": ["B"]}
    assert model.opset_import[0].version >= 18


def test_dynamic_batch_coils_height_width(baked, tiny_pair):
    rng = np.random.default_rng(5)
    b, c, h, w = 2, 4, 26, 21
    k = (rng.standard_normal((b, c, h, w)) + 1j * rng.standard_normal((b, c, h, w))).astype(np.complex64)
    mask = np.zeros((b, w), np.float32)
    mask[:, w // 2 - 3: w // 2 + 3] = 1
    mask[:, ::3] = 1
    k *= mask[:, None, None, :]
    img, res = run_onnx(ort_session(baked.directory / "alpha_0.25.onnx"), k, mask)
    ref, ref_res = run_torch(_theta(tiny_pair, 0.25), k, mask)
    assert img.shape == (b, h, w) and res.shape == (b,)
    assert relative_max_error(ref, img) <= TOL
    np.testing.assert_allclose(res, ref_res, rtol=1e-3)


def test_dc_residual_is_the_relative_data_consistency_error(baked, held_out_dir, tiny_pair):
    # ||M F S x - y|| / ||y|| with the model's own ACS maps, recomputed with the numpy FFT definition
    from dnirecon.fftc import fft2c

    s = load_held_out(held_out_dir, slices=1, accels=(4.0,))[0]
    with torch.no_grad():
        x, maps = tiny_pair[0].reconstruct(torch.from_numpy(s.kspace)[None], torch.from_numpy(s.mask)[None])
    x, maps = x[0].numpy(), maps[0].numpy()
    predicted = s.mask[None, None, :] * fft2c(maps * x[None])
    expected = np.linalg.norm(predicted - s.kspace) / np.linalg.norm(s.kspace)
    _, res = run_onnx(ort_session(baked.directory / "alpha_0.00.onnx"), s.kspace, s.mask)
    assert 0 < expected < 1
    assert res == pytest.approx(expected, rel=1e-3)


def test_continuous_equals_baked_at_grid_alphas(baked, held_out_dir, tiny_pair):
    assert baked.manifest["continuous"]["max_err_vs_baked"] <= TOL
    held_out = load_held_out(held_out_dir, slices=1, accels=(8.0,))
    cont = ort_session(baked.directory / "continuous.onnx")
    for e in baked.manifest["alphas"]:
        grid = ort_session(baked.directory / e["graphs"][0]["file"])
        for s in held_out:
            a = run_onnx(grid, s.kspace, s.mask)[0]
            b = run_onnx(cont, s.kspace, s.mask, alpha=e["alpha"])[0]
            assert relative_max_error(a, b) <= TOL
    # between grid points it is theta(alpha) too
    s = held_out[0]
    assert relative_max_error(run_torch(_theta(tiny_pair, 0.3), s.kspace, s.mask)[0],
                              run_onnx(cont, s.kspace, s.mask, alpha=0.3)[0]) <= TOL


def test_bake_that_fails_parity_is_not_registered(tiny_pair, held_out_dir, client, tmp_path):
    from registry.bake import bake

    before = len(client.search_model_versions("name='interpsn'"))
    with pytest.raises(ModelError, match=r"bake failed parity .*alpha 0\.5: .*nothing registered"):
        bake("sn@champion", "sn-gan/" + tiny_pair[3], [0.5], held_out_dir, slices=1, accels=(4.0,),
             out_dir=tmp_path / "bad", tolerance=1e-12)
    assert len(client.search_model_versions("name='interpsn'")) == before


def test_bake_refuses_models_of_different_architectures(tiny_pair, held_out_dir, tmp_path):
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    wider = dict(TINY_SN, width=6)
    v = register_tiny("sn-gan", SensitivityNetwork(SNConfig(**wider)).state_dict(), wider, "sn-gan", champion=False)
    from registry.bake import bake

    with pytest.raises(ModelError, match="different model_config"):
        bake("sn/" + tiny_pair[2], f"sn-gan/{v}", [0.5], held_out_dir, slices=1, out_dir=tmp_path / "x")


def test_model_refs_and_alpha_options():
    assert parse_model_ref("sn@champion") == ("sn", "champion")
    assert parse_model_ref("sn-gan/12") == ("sn-gan", "12")
    with pytest.raises(ConfigError, match="NAME@ALIAS"):
        parse_model_ref("sn")
    from registry.bake import check_alphas

    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        check_alphas([0.5, 1.2])


def test_baked_version_promotes_and_rollback_needs_history(baked, client):
    res = store.promote(client, "staging", baked.version)
    assert res.version == baked.version and "gates passed" in res.reason
    with pytest.raises(ModelError, match="no previous target"):
        store.rollback(client, "staging")


def test_perception_distortion_plot_of_a_baked_set(baked, tmp_path):
    from training.report import manifest_points
    from training.report_figures import perception_distortion

    points = manifest_points(baked.manifest)
    assert [p["alpha"] for p in points] == list(ALPHAS) and all("hf_ratio" in p for p in points)
    out = perception_distortion(points, tmp_path / "pd.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    with pytest.raises(Exception, match="hf_ratio"):
        perception_distortion([{"accel": None, "method": "a", "alpha": 0.0, "psnr": 30.0}], tmp_path / "bad.png")


def test_check_onnx_refuses_a_dft_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8, 2])
    graph = helper.make_graph([helper.make_node("DFT", ["x"], ["y"], axis=1)], "g", [x], [y])
    path = tmp_path / "dft.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ModelError, match="DFT node"):
        check_onnx_file(path)


def test_cli_list_and_promote_refusal(baked, capsys):
    from commands.cli import main

    assert main(["registry", "list", "--model", "interpsn"]) == 0
    out = capsys.readouterr().out
    assert "interpsn" in out and "alphas=0,0.25,0.5,0.75,1" in out
    assert main(["registry", "promote", "--alias", "production", "--version", "999"]) == 2
    assert "has no version 999" in capsys.readouterr().err


def test_an_sn_with_two_cascade_sets_bakes_one_graph_per_set_and_each_slice_is_checked_on_its_own(
        held_out_dir, tmp_path):
    from dnirecon.routing import nearest_set, sampled_fraction
    from registry.bake import bake_models
    from service.model_store import read_baked_set
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    # the tiny held-out grid samples 1/9 of its columns at 4x and 1/18 at 8x (padded columns count)
    config = SNConfig(**TINY_SN, accel_branches=(8.0, 16.0))
    torch.manual_seed(3)
    sn, gan = SensitivityNetwork(config).eval(), SensitivityNetwork(config).eval()
    held_out = load_held_out(held_out_dir, slices=1, accels=(4.0, 8.0))
    routes = [int(nearest_set(sampled_fraction(s.mask), [8.0, 16.0])) for s in held_out]
    assert sorted(set(routes)) == [0, 1]  # both sets are exercised
    manifest = bake_models(sn, gan, [0.0, 1.0], held_out, tmp_path / "set", continuous=True, threads=1)
    assert manifest["cascade_sets"] == [{"accel": 8.0, "serves": [1.0, pytest.approx(128 ** 0.5)]},
                                        {"accel": 16.0, "serves": [pytest.approx(128 ** 0.5), None]}]
    assert [g["file"] for g in manifest["alphas"][1]["graphs"]] == ["alpha_1.00_8x.onnx", "alpha_1.00_16x.onnx"]
    assert [g["file"] for g in manifest["continuous"]["graphs"]] == ["continuous_8x.onnx", "continuous_16x.onnx"]
    assert all(e["parity_max_err"] <= TOL for e in manifest["alphas"]) and manifest["continuous"]["max_err_vs_baked"] <= TOL
    for s, route in zip(held_out, routes):  # the other set's graph is another model: routing matters
        ours = run_onnx(ort_session(tmp_path / "set" / manifest["alphas"][0]["graphs"][route]["file"]), s.kspace, s.mask)[0]
        other = run_onnx(ort_session(tmp_path / "set" / manifest["alphas"][0]["graphs"][1 - route]["file"]), s.kspace, s.mask)[0]
        ref = run_torch(sn, s.kspace, s.mask)[0]
        assert relative_max_error(ref, ours) <= TOL < relative_max_error(ref, other)
    served = read_baked_set(tmp_path / "set")
    assert [a for a, _p in served.continuous] == [8.0, 16.0] and len(served.baked) == 2


def test_cli_bake_without_registering_writes_set_and_plot(baked, held_out_dir, tmp_path, client, capsys):
    from commands.cli import main

    before = len(client.search_model_versions("name='interpsn'"))
    out = tmp_path / "cli-set"
    rc = main(["registry", "bake", "--alphas", "0", "1", "--data", str(held_out_dir), "--slices", "1",
               "--accel", "4", "--out", str(out), "--no-register", "--plot", str(tmp_path / "pd.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "alpha 0.00  parity" in text and "not registered" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["alpha"] for e in manifest["alphas"]] == [0.0, 1.0]
    assert (tmp_path / "pd.png").stat().st_size > 0
    assert len(client.search_model_versions("name='interpsn'")) == before
    assert main(["registry", "bake", "--data", str(held_out_dir), "--out", str(out)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["registry", "describe", "interpsn", "--version", baked.version]) == 0
    assert json.loads(capsys.readouterr().out)["tags"]["alphas"] == "0,0.25,0.5,0.75,1"


# ---------------------------------------------------------------- held-out fingerprint, NaN parity, roles
def test_the_held_out_fingerprint_is_recorded_and_names_the_data(baked, held_out_dir, client):
    same = load_held_out(held_out_dir, slices=1, accels=(4.0, 8.0))
    fp = baked.manifest["held_out"]["fingerprint"]
    assert fp == held_out_fingerprint(same) == held_out_fingerprint(list(reversed(same)))
    assert client.get_model_version("interpsn", baked.version).tags["held_out_fingerprint"] == fp
    others = [load_held_out(held_out_dir, slices=1, accels=(4.0,)),
              load_held_out(held_out_dir, slices=2, accels=(4.0, 8.0)),
              load_held_out(held_out_dir, slices=1, accels=(4.0, 8.0), mask_kind="equispaced")]
    changed = same[0]._replace(target=same[0].target * np.float32(1.001))  # the same file name, other content
    others.append([changed, *same[1:]])
    assert len({fp, *(held_out_fingerprint(o) for o in others)}) == 1 + len(others)


def test_relative_max_error_of_a_non_finite_output_is_infinite():
    ref = np.ones((4, 4), np.float32)
    out = ref.copy()
    out[1, 2] = np.nan
    assert relative_max_error(ref, out) == np.inf
    assert relative_max_error(out, ref) == np.inf
    out[1, 2] = np.inf
    assert relative_max_error(ref, out) == np.inf
    assert relative_max_error(ref, ref + np.float32(1e-3)) == pytest.approx(1e-3, rel=1e-3)
    assert not relative_max_error(ref, out) <= TOL


def test_bake_with_a_nan_onnx_output_fails_parity_naming_the_alpha(tiny_pair, held_out_dir, client, tmp_path,
                                                                   monkeypatch):
    from registry import export
    from registry.bake import bake

    real = export.run_onnx

    def nan_image(*args, **kwargs):
        image, residual = real(*args, **kwargs)
        image = image.copy()
        image.flat[0] = np.nan
        return image, residual

    monkeypatch.setattr(export, "run_onnx", nan_image)
    before = len(client.search_model_versions("name='interpsn'"))
    with pytest.raises(ModelError, match=r"bake failed parity .*alpha 0\.5: inf.*nothing registered"):
        bake("sn@champion", "sn-gan/" + tiny_pair[3], [0.5], held_out_dir, slices=1, accels=(4.0,),
             out_dir=tmp_path / "nan")
    assert len(client.search_model_versions("name='interpsn'")) == before
    assert json.loads((tmp_path / "nan" / "manifest.json").read_text())["alphas"][0]["parity_max_err"] == np.inf


def test_bake_refuses_wrong_roles_and_the_same_version_on_both_sides(tiny_pair, held_out_dir, tmp_path, capsys):
    from commands.cli import main
    from registry.bake import bake

    sn, gan, v_sn, v_gan = tiny_pair
    other_sn = register_tiny("sn", gan.state_dict(), TINY_SN, "sn", champion=False)  # an sn-kind version
    with pytest.raises(ConfigError, match=rf"--sn sn/{v_sn} and --gan sn/{v_sn} are the same version \(sn/{v_sn}\)"):
        bake(f"sn/{v_sn}", f"sn/{v_sn}", [0.5], held_out_dir, slices=1, out_dir=tmp_path / "a")
    with pytest.raises(ModelError, match=rf"--gan sn/{other_sn} is a 'sn' model; --gan must be an 'sn-gan' model"):
        bake(f"sn/{v_sn}", f"sn/{other_sn}", [0.5], held_out_dir, slices=1, out_dir=tmp_path / "b")
    with pytest.raises(ModelError, match=rf"--sn sn-gan/{v_gan} is a 'sn-gan' model; --sn must be an 'sn' model"):
        bake(f"sn-gan/{v_gan}", f"sn/{v_sn}", [0.5], held_out_dir, slices=1, out_dir=tmp_path / "c")
    rc = main(["registry", "bake", "--sn", f"sn/{v_sn}", "--gan", "sn@champion", "--data", str(held_out_dir),
               "--out", str(tmp_path / "d")])
    assert rc == 2 and "the same version" in capsys.readouterr().err


def test_cli_list_on_an_empty_store_names_the_tracking_uri(tmp_path, monkeypatch, capsys):
    from commands.cli import main

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    assert main(["registry", "list"]) == 0
    assert f"(no registered models in {uri};" in capsys.readouterr().out


def test_cli_describe_and_promote_reserved_alias(baked, capsys):
    from commands.cli import main

    assert main(["registry", "promote", "--alias", "latest", "--version", baked.version]) == 2
    assert "--alias 'latest' is reserved by MLflow" in capsys.readouterr().err
    assert main(["registry", "promote", "--alias", "canary", "--version", baked.version]) == 0
    capsys.readouterr()
    assert main(["registry", "describe", "interpsn"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["version"] == baked.version and "canary" in described["aliases"]


@pytest.mark.parametrize("interrupt, status", [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED")])
def test_an_upload_cut_short_ends_its_run_and_registers_nothing(baked, client, monkeypatch, interrupt, status):
    """Ctrl-C during `registry bake`'s upload left the run RUNNING for ever in MLflow's UI."""
    from mlflow.tracking import MlflowClient

    from registry.bake import register_baked_set

    def cut(*args, **kwargs):
        raise interrupt("cut during the upload")

    monkeypatch.setattr(MlflowClient, "log_artifacts", cut)
    before = len(client.search_model_versions("name='interpsn'"))
    runs_before = {r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    with pytest.raises(interrupt):
        register_baked_set(baked.directory, baked.manifest)
    new = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
           if r.info.run_id not in runs_before]
    assert [(r.info.run_name, r.info.status) for r in new] == [("bake-interpsn", status)]
    assert len(client.search_model_versions("name='interpsn'")) == before
