"""Acceptance 4: promote gates, recorded promotions and rollback against a real MLflow (sqlite) store."""

import json

import pytest

from dnirecon.errors import ConfigError, ModelError
from registry import store


def _manifest(psnr0: float, ssim0: float, parity: float = 2e-6) -> dict:
    alphas = []
    for i, a in enumerate((0.0, 0.5, 1.0)):
        alphas.append({"alpha": a, "file": f"{store.alpha_key(a)}.onnx", "sha256": f"{i:064x}",
                       "parity_max_err": parity,
                       "metrics": {"psnr": psnr0 - 0.5 * i, "ssim": ssim0 - 0.01 * i, "nmse": 0.01,
                                   "hfen": 0.2, "hf_ratio": 0.8 + 0.05 * i}})
    return {"format": store.MANIFEST_FORMAT, "preset": "cpu",
            "sources": {"sn": {"name": "sn", "version": "1"}, "sn-gan": {"name": "sn-gan", "version": "2"}},
            "alphas": alphas}


def _version(client, name, psnr0=30.0, ssim0=0.9, parity=2e-6) -> str:
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    mv = client.create_model_version(name, source="file:///nowhere", tags=store.manifest_tags(
        _manifest(psnr0, ssim0, parity)))
    return str(mv.version)


def test_manifest_tags_make_each_alpha_traceable():
    tags = store.manifest_tags(_manifest(30.0, 0.9))
    assert tags["alphas"] == "0,0.5,1"
    assert tags["sn_version"] == "1" and tags["sn_gan_version"] == "2"
    assert float(tags["parity_max_err"]) == pytest.approx(2e-6)
    assert tags["sha256.alpha_0.50"] == f"{1:064x}"
    assert json.loads(tags["metrics.alpha_1.00"])["psnr"] == pytest.approx(29.0)
    summary = json.loads(tags["metrics_summary"])
    assert summary["psnr_mean"] == pytest.approx(29.5) and summary["psnr_alpha0"] == pytest.approx(30.0)


def test_first_promotion_records_who_when_why(client, model_name, monkeypatch):
    monkeypatch.setenv("USER", "radiographer1")
    v = _version(client, model_name)
    res = store.promote(client, "production", v, name=model_name)
    assert res.previous_version is None
    assert str(client.get_model_version_by_alias(model_name, "production").version) == v
    tags = client.get_model_version(model_name, v).tags
    assert tags["promoted_by"] == "radiographer1"
    assert tags["promoted_at"].endswith("+00:00") and tags["previous_version"] == "none"
    assert "gates passed" in tags["promotion_reason"]


def test_promote_refuses_worse_metrics_with_the_reason(client, model_name):
    good = _version(client, model_name, psnr0=30.0)
    worse = _version(client, model_name, psnr0=29.0)
    store.promote(client, "production", good, name=model_name)
    with pytest.raises(ModelError) as err:
        store.promote(client, "production", worse, name=model_name)
    msg = str(err.value)
    assert "metrics gate" in msg and "psnr" in msg and "29.5000" in msg and "28.5000" in msg
    assert str(client.get_model_version_by_alias(model_name, "production").version) == good


def test_promote_refuses_parity_failure(client, model_name):
    v = _version(client, model_name, parity=3e-3)
    with pytest.raises(ModelError, match=r"parity gate: parity_max_err = 3.000e-03 exceeds the tolerance 0.0001"):
        store.promote(client, "production", v, name=model_name)
    with pytest.raises(Exception):
        client.get_model_version_by_alias(model_name, "production")


def test_within_tolerance_and_better_versions_pass(client, model_name):
    a = _version(client, model_name, psnr0=30.0, ssim0=0.9)
    b = _version(client, model_name, psnr0=29.95, ssim0=0.899)  # within 0.1 dB / 0.002
    store.promote(client, "production", a, name=model_name)
    assert store.promote(client, "production", b, name=model_name).previous_version == a


def test_force_needs_a_reason_and_records_it(client, model_name):
    good = _version(client, model_name, psnr0=30.0)
    worse = _version(client, model_name, psnr0=28.0)
    store.promote(client, "production", good, name=model_name)
    with pytest.raises(ConfigError, match="--reason"):
        store.promote(client, "production", worse, name=model_name, force=True)
    store.promote(client, "production", worse, name=model_name, force=True, reason="sharper images requested")
    tags = client.get_model_version(model_name, worse).tags
    assert tags["promotion_forced"] == "True" and tags["previous_version"] == good
    assert "FORCED" in tags["promotion_reason"] and "sharper images requested" in tags["promotion_reason"]


def test_rollback_restores_previous_target_step_by_step(client, model_name):
    v1, v2, v3 = (_version(client, model_name, psnr0=30.0 + i) for i in range(3))
    for v in (v1, v2, v3):
        store.promote(client, "production", v, name=model_name)
    res = store.rollback(client, "production", name=model_name)
    assert (res.version, res.previous_version) == (v2, v3)
    assert str(client.get_model_version_by_alias(model_name, "production").version) == v2
    assert client.get_model_version(model_name, v2).tags["rolled_back_from"] == v3
    store.rollback(client, "production", name=model_name)
    assert str(client.get_model_version_by_alias(model_name, "production").version) == v1
    with pytest.raises(ModelError, match="no previous target"):
        store.rollback(client, "production", name=model_name)
    history = store.describe(client, model_name, alias="production")["alias_history"]["production"]
    assert [h["version"] for h in history] == [v1]


def test_rollback_without_any_promotion_is_refused(client, model_name):
    _version(client, model_name)
    with pytest.raises(ModelError, match="no version holds it"):
        store.rollback(client, "staging", name=model_name)


def test_list_and_describe(client, model_name):
    v = _version(client, model_name)
    store.promote(client, "staging", v, name=model_name)
    rows = [r for r in store.list_versions(client) if r["model"] == model_name]
    assert rows == [dict(rows[0], version=v, aliases="staging")]
    assert "alphas=0,0.5,1" in rows[0]["tags"] and "parity=2.000e-06" in rows[0]["tags"]
    table = store.format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["MODEL", "VERSION", "ALIASES", "CREATED"]
    d = store.describe(client, model_name, version=v)
    assert d["aliases"] == ["staging"] and d["tags"]["sn_gan_version"] == "2"
    with pytest.raises(ModelError, match="no alias 'production'"):
        store.describe(client, model_name, alias="production")


def test_unknown_registered_model_is_a_clear_error(client):
    for call in (lambda: store.rollback(client, "production", name="nope"),
                 lambda: store.list_versions(client, "nope"),
                 lambda: store.promote(client, "production", "1", name="nope")):
        with pytest.raises(ModelError, match="'nope'"):
            call()
