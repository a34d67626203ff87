"""Acceptance 4: promote gates, recorded promotions and rollback against a real MLflow (sqlite) store."""

import json

import pytest

from dnirecon.errors import ConfigError, ModelError
from registry import store


HELD_OUT = "a" * 64  # the held-out fingerprint of the sets below unless a test says otherwise


def _manifest(psnr0: float, ssim0: float, parity: float = 2e-6, alphas=(0.0, 0.5, 1.0),
              held_out: str | None = HELD_OUT, continuous: bool = False) -> dict:
    entries = []
    for i, a in enumerate(alphas):
        entries.append({"alpha": a, "graphs": [{"file": f"{store.alpha_key(a)}.onnx", "sha256": f"{i:064x}"}],
                        "parity_max_err": parity,
                        "metrics": {"psnr": psnr0 - 0.5 * i, "ssim": ssim0 - 0.01 * i, "nmse": 0.01,
                                    "hfen": 0.2, "hf_ratio": 0.8 + 0.05 * i}})
    m = {"format": store.MANIFEST_FORMAT, "preset": "cpu",
         "sources": {"sn": {"name": "sn", "version": "1"}, "sn-gan": {"name": "sn-gan", "version": "2"}},
         "cascade_sets": [{"accel": None, "serves": [1.0, None]}], "alphas": entries}
    if held_out is not None:
        m["held_out"] = {"volumes": ["file1000.h5"], "slices": 4, "accels": [4.0, 8.0], "fingerprint": held_out}
    if continuous:
        m["continuous"] = {"graphs": [{"file": "continuous.onnx", "sha256": "c" * 64}], "max_err_vs_baked": 1e-7}
    return m


def _version(client, name, psnr0=30.0, ssim0=0.9, parity=2e-6, **manifest) -> str:
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    mv = client.create_model_version(name, source="file:///nowhere", tags=store.manifest_tags(
        _manifest(psnr0, ssim0, parity, **manifest)))
    return str(mv.version)


def _holder(client, name, alias="production") -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def test_manifest_tags_make_each_alpha_traceable():
    tags = store.manifest_tags(_manifest(30.0, 0.9))
    assert tags["alphas"] == "0,0.5,1"
    assert tags["sn_version"] == "1" and tags["sn_gan_version"] == "2"
    assert float(tags["parity_max_err"]) == pytest.approx(2e-6)
    assert tags["sha256.alpha_0.50"] == f"{1:064x}"
    assert json.loads(tags["metrics.alpha_1.00"])["psnr"] == pytest.approx(29.0)
    summary = json.loads(tags["metrics_summary"])
    assert summary["psnr_mean"] == pytest.approx(29.5) and summary["psnr_alpha0"] == pytest.approx(30.0)
    assert tags["parity_tolerance"] == "0.0001"  # a manifest without one: the default
    assert store.manifest_tags({**_manifest(30.0, 0.9), "parity_tolerance": 1e-3})["parity_tolerance"] == "0.001"


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


def test_a_rollback_interrupted_after_the_alias_move_is_completed_by_the_next_one(client, model_name):
    """The alias moves first; if tags and history were never written, rolling back again finishes them
    (it does not refuse, and it does not go a second step back)."""
    v1, v2, v3 = (_version(client, model_name) for _ in range(3))
    for v in (v1, v2, v3):
        store.promote(client, "production", v, name=model_name)
    client.set_registered_model_alias(model_name, "production", v2)  # what a rollback cut after its first call left
    res = store.rollback(client, "production", name=model_name, reason="finish it")
    assert (res.version, res.previous_version) == (v2, v3)
    assert str(client.get_model_version_by_alias(model_name, "production").version) == v2
    tags = client.get_model_version(model_name, v2).tags
    assert tags["rolled_back_from"] == v3 and tags["rollback_reason"] == "finish it"
    history = store.describe(client, model_name, alias="production")["alias_history"]["production"]
    assert [h["version"] for h in history] == [v1, v2]
    store.rollback(client, "production", name=model_name)  # and the next one goes one step further
    assert str(client.get_model_version_by_alias(model_name, "production").version) == v1


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


# ---------------------------------------------------------------- gates: like with like, coverage, finiteness
def test_manifest_tags_record_the_held_out_fingerprint():
    tags = store.manifest_tags(_manifest(30.0, 0.9))
    assert tags["held_out_fingerprint"] == HELD_OUT
    assert tags["held_out"] == "1 volumes, 4 slices, accels 4,8"
    assert "held_out_fingerprint" not in store.manifest_tags(_manifest(30.0, 0.9, held_out=None))


def test_metrics_gate_refuses_metrics_from_other_held_out_data(client, model_name):
    first = _version(client, model_name, psnr0=30.0)
    elsewhere = _version(client, model_name, psnr0=35.0, held_out="b" * 64)  # "better", on other slices
    store.promote(client, "production", first, name=model_name)
    with pytest.raises(ModelError, match=r"not measured on the same held-out data: candidate "
                                         r"held_out_fingerprint bbbbbbbbbbbb .* differs from the current "
                                         r"version's aaaaaaaaaaaa") as err:
        store.promote(client, "production", elsewhere, name=model_name)
    assert "psnr" not in str(err.value)  # no comparison of incomparable numbers
    assert _holder(client, model_name) == first
    res = store.promote(client, "production", elsewhere, name=model_name, force=True, reason="new held-out set")
    tags = client.get_model_version(model_name, elsewhere).tags
    assert res.forced and tags["promotion_forced"] == "True"
    assert "same held-out data" in tags["promotion_reason"] and "new held-out set" in tags["promotion_reason"]


def test_metrics_gate_refuses_an_incumbent_without_a_fingerprint(client, model_name):
    old = _version(client, model_name, held_out=None)
    new = _version(client, model_name)
    store.promote(client, "production", old, name=model_name)
    with pytest.raises(ModelError, match="the current version has no held_out_fingerprint tag"):
        store.promote(client, "production", new, name=model_name)
    assert _holder(client, model_name) == old


def test_candidate_must_cover_the_alphas_and_continuous_model_it_replaces(client, model_name):
    full = _version(client, model_name, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), continuous=True)
    only0 = _version(client, model_name, alphas=(0.0,))
    same_grid = _version(client, model_name, alphas=(0.0, 0.25, 0.5, 0.75, 1.0))
    store.promote(client, "production", full, name=model_name)
    with pytest.raises(ModelError) as err:
        store.promote(client, "production", only0, name=model_name)
    assert "lacks alpha(s) 0.25, 0.5, 0.75, 1 that the current version serves" in str(err.value)
    assert "no continuous model" in str(err.value)
    with pytest.raises(ModelError, match="coverage gate: the candidate has no continuous model") as err:
        store.promote(client, "production", same_grid, name=model_name)
    assert "lacks alpha" not in str(err.value)
    assert _holder(client, model_name) == full
    superset = _version(client, model_name, psnr0=31.0, ssim0=0.91, alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                        continuous=True)
    assert store.promote(client, "production", superset, name=model_name).previous_version == full


def test_non_finite_metrics_are_refused_even_for_the_first_holder(client, model_name):
    m = _manifest(float("nan"), 0.9)
    m["alphas"][1]["metrics"]["ssim"] = float("inf")
    client.create_registered_model(model_name)
    v = str(client.create_model_version(model_name, "file:///nowhere", tags=store.manifest_tags(m)).version)
    with pytest.raises(ModelError, match=r"non-finite metrics \(alpha 0 psnr=nan, alpha 0\.5 psnr=nan, "
                                         r"alpha 0\.5 ssim=inf"):
        store.promote(client, "production", v, name=model_name)
    with pytest.raises(Exception):
        client.get_model_version_by_alias(model_name, "production")


def test_parity_gate_fails_on_a_non_finite_parity_tag(client, model_name):
    m = _manifest(30.0, 0.9)
    m["alphas"][2]["parity_max_err"] = float("nan")  # last: max() alone would have skipped it
    tags = store.manifest_tags(m)
    assert tags["parity_max_err"] == "inf" and tags["parity.alpha_1.00"] == "nan"
    res = store.check_gates(tags, None)
    assert not res.passed
    assert any("parity_max_err = inf exceeds" in f and "non-finite" in f for f in res.failures)
    assert any("parity.alpha_1.00 = nan exceeds" in f for f in res.failures)
    tags["parity_max_err"] = "2.000e-06"  # an older tag written by the NaN-skipping max()
    assert any("parity.alpha_1.00" in f for f in store.check_gates(tags, None).failures)


def test_force_on_a_passing_promotion_is_not_recorded_as_forced(client, model_name):
    v = _version(client, model_name)
    res = store.promote(client, "production", v, name=model_name, force=True, reason="routine")
    tags = client.get_model_version(model_name, v).tags
    assert not res.forced and tags["promotion_forced"] == "False" and tags["promotion_reason"] == "routine"
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert history[-1]["forced"] is False


# ---------------------------------------------------------------- aliases, history, rollback
def test_reserved_alias_names_are_refused_by_name(client, model_name):
    v = _version(client, model_name)
    for alias in ("latest", "LATEST", "v1", "V12"):
        with pytest.raises(ConfigError, match=rf"--alias '{alias}' is reserved by MLflow"):
            store.promote(client, alias, v, name=model_name)
        with pytest.raises(ConfigError, match="--alias"):
            store.rollback(client, alias, name=model_name)
    assert client.get_registered_model(model_name).aliases == {}
    store.promote(client, "v1-candidates", v, name=model_name)  # only the exact patterns are reserved


def test_long_reason_is_capped_and_rollback_still_works(client, model_name):
    v1, v2 = _version(client, model_name), _version(client, model_name)
    store.promote(client, "production", v1, name=model_name)
    res = store.promote(client, "production", v2, name=model_name, reason="x" * 6000)
    stored = client.get_model_version(model_name, v2).tags["promotion_reason"]
    assert len(stored) == store.MAX_REASON_CHARS == len(res.reason)
    assert stored.endswith("[... cut to 1000 of 6000 characters]")
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [(h["version"], h["previous"]) for h in history] == [(v1, None), (v2, v1)]
    assert store.rollback(client, "production", name=model_name).version == v1
    assert _holder(client, model_name) == v1


def test_rollback_after_the_history_was_trimmed(client, model_name):
    versions = [_version(client, model_name) for _ in range(8)]
    for v in versions:
        store.promote(client, "production", v, name=model_name, reason="r" * 900)
    raw = client.get_registered_model(model_name).tags["alias_history.production"]
    kept = [h["version"] for h in json.loads(raw)]
    assert len(raw) <= 4500 and kept == versions[-len(kept):] and len(kept) < 8  # trimmed to the newest
    for expected in reversed(versions[-len(kept) - 1:-1]):  # every kept entry rolls back, down to one entry
        assert store.rollback(client, "production", name=model_name).version == expected
    assert _holder(client, model_name) == versions[-len(kept) - 1]
    with pytest.raises(ModelError, match="entry was trimmed"):
        store.rollback(client, "production", name=model_name)


def test_a_failed_history_write_leaves_the_alias_where_it_was(client, model_name, monkeypatch):
    v1, v2 = _version(client, model_name), _version(client, model_name)
    store.promote(client, "production", v1, name=model_name)

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(client, "set_registered_model_tag", broken)
    with pytest.raises(RuntimeError):
        store.promote(client, "production", v2, name=model_name)
    monkeypatch.undo()
    assert _holder(client, model_name) == v1  # the alias did not move without its history
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [h["version"] for h in history] == [v1]


def test_describe_without_version_or_alias_shows_the_aliases(client, model_name):
    v1, v2 = _version(client, model_name), _version(client, model_name)
    store.promote(client, "production", v1, name=model_name)
    store.promote(client, "staging", v2, name=model_name)
    store.promote(client, "canary", v2, name=model_name)
    assert store.describe(client, model_name)["aliases"] == ["canary", "staging"]  # the newest, v2
    assert store.describe(client, model_name, version=v1)["aliases"] == ["production"]
    assert store.describe(client, model_name, alias="staging")["aliases"] == ["canary", "staging"]


def test_an_unreadable_store_is_an_error_not_an_empty_alias(client, model_name, monkeypatch):
    """Read as "no holder", a locked store would let a worse version skip the comparison gates."""
    from mlflow.exceptions import MlflowException

    good, worse = _version(client, model_name, psnr0=30.0), _version(client, model_name, psnr0=25.0)
    store.promote(client, "production", good, name=model_name)

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(client, "get_registered_model", locked)
    with pytest.raises(ModelError, match="could not be read .*database is locked.*nothing was changed"):
        store.promote(client, "production", worse, name=model_name)
    monkeypatch.undo()
    assert _holder(client, model_name) == good
    assert "promoted_alias" not in client.get_model_version(model_name, worse).tags
    with pytest.raises(ModelError, match="refusing to promote"):  # and with the store back, the gates apply
        store.promote(client, "production", worse, name=model_name)


def _cut(monkeypatch, target, attr, after=0):
    """Makes target.attr raise after `after` successful calls (a command cut between two MLflow calls)."""
    real, calls = getattr(target, attr), []

    def cut(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, cut)


def test_a_promotion_cut_before_its_alias_move_is_dropped_and_rollback_still_steps_back(client, model_name, monkeypatch):
    v1, v2, v3 = (_version(client, model_name) for _ in range(3))
    for v in (v1, v2):
        store.promote(client, "production", v, name=model_name)
    _cut(monkeypatch, client, "set_registered_model_alias")
    with pytest.raises(KeyboardInterrupt):
        store.promote(client, "production", v3, name=model_name)
    monkeypatch.undo()
    assert _holder(client, model_name) == v2 and "promoted_alias" not in client.get_model_version(model_name, v3).tags
    res = store.rollback(client, "production", name=model_name)  # drops v3's record, then v2 -> v1
    assert (res.previous_version, res.version, _holder(client, model_name)) == (v2, v1, v1)
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [(h["version"], h.get("state")) for h in history] == [(v1, None)]


def test_a_promotion_cut_after_its_alias_move_is_finished_by_the_next_command(client, model_name, monkeypatch):
    v1, v2 = _version(client, model_name), _version(client, model_name)
    store.promote(client, "production", v1, name=model_name)
    _cut(monkeypatch, client, "set_model_version_tag")  # the first tag after the alias move
    with pytest.raises(KeyboardInterrupt):
        store.promote(client, "production", v2, name=model_name, reason="why")
    monkeypatch.undo()
    assert _holder(client, model_name) == v2
    with pytest.raises(ModelError, match="already points at version"):  # finishes v2's record, then refuses
        store.promote(client, "production", v2, name=model_name)
    tags = client.get_model_version(model_name, v2).tags
    assert (tags["promoted_alias"], tags["previous_version"], tags["promotion_reason"]) == ("production", v1, "why")
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [(h["version"], h["previous"], h.get("state")) for h in history] == [(v1, None, None), (v2, v1, None)]
    assert store.rollback(client, "production", name=model_name).version == v1


def test_a_rollback_cut_after_its_alias_move_then_a_promotion_keeps_the_history_true(client, model_name, monkeypatch):
    """Without the mark, the promotion after the cut rollback recorded v2 -> v4 on top of v3's stale
    entry, and the second rollback after it did nothing (review finding, 2026-11-22)."""
    v1, v2, v3, v4 = (_version(client, model_name) for _ in range(4))
    for v in (v1, v2, v3):
        store.promote(client, "production", v, name=model_name)
    _cut(monkeypatch, store, "_record_rollback")
    with pytest.raises(KeyboardInterrupt):
        store.rollback(client, "production", name=model_name)
    monkeypatch.undo()
    assert _holder(client, model_name) == v2
    store.promote(client, "production", v4, name=model_name)  # finishes the rollback first
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [(h["version"], h["previous"]) for h in history] == [(v1, None), (v2, v1), (v4, v2)]
    assert client.get_model_version(model_name, v2).tags["rolled_back_from"] == v3
    assert [store.rollback(client, "production", name=model_name).version for _ in range(2)] == [v2, v1]
    assert _holder(client, model_name) == v1


def test_a_promotion_refuses_when_the_alias_moved_while_it_ran(client, model_name, monkeypatch):
    v1, v2, v3 = (_version(client, model_name) for _ in range(3))
    store.promote(client, "production", v1, name=model_name)
    real = client.set_registered_model_tag

    def and_someone_else_promotes(name, key, value):  # the pending entry's write, then another user's move
        real(name, key, value)
        monkeypatch.setattr(client, "set_registered_model_tag", real)
        store.promote(client, "production", v3, name=model_name)

    monkeypatch.setattr(client, "set_registered_model_tag", and_someone_else_promotes)
    with pytest.raises(ModelError, match=f"moved to version {v3} while this promotion ran .*read version {v1}"):
        store.promote(client, "production", v2, name=model_name)
    assert _holder(client, model_name) == v3
    assert "promoted_alias" not in client.get_model_version(model_name, v2).tags
    history = store.describe(client, model_name)["alias_history"]["production"]
    assert [h["version"] for h in history][-1] == v3 and all(h.get("state") is None for h in history)


def test_a_forced_promotion_keeps_the_users_reason_whatever_the_failures(client, model_name):
    good = _version(client, model_name, psnr0=30.0, alphas=tuple(i / 10 for i in range(11)), continuous=True)
    bad = _version(client, model_name, psnr0=20.0, alphas=(0.0, 0.5), held_out="b" * 64)
    store.promote(client, "production", good, name=model_name)
    why = "radiology asked for this set for the study of 2026-11; " * 15  # 840 characters
    store.promote(client, "production", bad, name=model_name, force=True, reason=why)
    stored = client.get_model_version(model_name, bad).tags["promotion_reason"]
    assert stored.startswith("FORCED: " + why.strip()) and len(stored) <= store.MAX_REASON_CHARS
