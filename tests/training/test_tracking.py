"""MLflow registry against a real SQLite store: versions, tags, aliases, loading and signature checks."""

import json

import pytest
import torch

from dnirecon.errors import ModelError
from training import tracking
from training.models.sn import SensitivityNetwork
from training.models.signature import arch_signature
from training.presets import SNConfig, config_to_dict

TINY = SNConfig(cascades=1, width=4, blocks=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.setenv("MLFLOW_EXPERIMENT_NAME", "test-tracking")
    yield root
    mp.undo()


def _config(model, cfg=TINY, kind="sn"):
    return tracking.model_config_document(kind, "cpu", config_to_dict(cfg), arch_signature(model.state_dict()))


def _logged_run(model, cfg=TINY):
    c = tracking.client()
    run = c.create_run(tracking.experiment_id())
    source = tracking.log_model_artifact(run.info.run_id, model.state_dict(), _config(model, cfg))
    return run.info.run_id, source


def test_experiment_artifacts_live_beside_the_sqlite_store(store):
    exp = tracking.client().get_experiment(tracking.experiment_id())
    assert exp.artifact_location == (store / "mlartifacts").as_uri()


def test_two_registrations_make_versions_1_and_2_with_tags_and_champion(store):
    torch.manual_seed(0)
    tags = {"acceleration": "4,8", "contrasts": "CORPD_FBK", "preset": "cpu", "dataset_id": "abc"}
    versions = []
    for _ in range(2):
        model = SensitivityNetwork(TINY)
        run_id, source = _logged_run(model)
        versions.append(tracking.register_version(
            "sn", source, run_id, {**tags, "arch_signature": arch_signature(model.state_dict())}))
    assert versions == ["1", "2"]
    c = tracking.client()
    mv1 = c.get_model_version("sn", "1")
    assert mv1.tags["acceleration"] == "4,8" and mv1.tags["dataset_id"] == "abc"
    assert mv1.source.endswith("/model")
    assert str(c.get_model_version_by_alias("sn", "champion").version) == "2"

    loaded = tracking.load_registered_model("sn", "champion")
    assert loaded.version == "2" and loaded.config["kind"] == "sn"
    first = tracking.load_registered_model("sn", "1")
    assert first.version == "1"
    w1, w2 = (next(iter(m.model.parameters())) for m in (first, loaded))
    assert w1.shape == w2.shape and not torch.equal(w1, w2)  # two independently initialised versions


def test_unknown_version_or_alias_is_a_model_error(store):
    with pytest.raises(ModelError, match="no version or alias 'staging'"):
        tracking.load_registered_model("sn", "staging")


def test_loading_refuses_weights_of_another_architecture(tmp_path):
    small, wide = SensitivityNetwork(TINY), SensitivityNetwork(SNConfig(cascades=1, width=6, blocks=1))
    # config describes the small model, weights come from the wide one
    tracking.write_model_dir(tmp_path / "model", wide.state_dict(), _config(small))
    with pytest.raises(ModelError) as err:
        tracking.load_checkpoint(tmp_path / "model")
    msg = str(err.value)
    assert arch_signature(wide.state_dict()) in msg and arch_signature(small.state_dict()) in msg


def test_loading_refuses_a_config_whose_signature_disagrees(tmp_path):
    model = SensitivityNetwork(TINY)
    cfg = _config(model)
    cfg["arch_signature"] = "0" * 16
    tracking.write_model_dir(tmp_path / "model", model.state_dict(), cfg)
    with pytest.raises(ModelError, match="0000000000000000"):
        tracking.load_checkpoint(tmp_path / "model")


def test_model_dir_round_trips_weights_and_config(tmp_path):
    model = SensitivityNetwork(TINY)
    tracking.write_model_dir(tmp_path / "model", model.state_dict(), _config(model))
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_config"]["width"] == 4
    loaded = tracking.load_checkpoint(tmp_path / "model")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
