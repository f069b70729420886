import pytest
import torch
import yaml

from bayessparse.config import FIELD_NAMES, TrainConfig, dump_yaml, read_yaml, resolve
from bayessparse.errors import ConfigError


def test_precedence_defaults_yaml_flags():
    cfg = resolve({"lr": 0.5, "epochs": 3}, {"epochs": "7"})
    assert cfg.lr == 0.5 and cfg.epochs == 7 and cfg.batch_size == TrainConfig().batch_size


def test_yaml_round_trip(tmp_path):
    cfg = resolve({"sparsity": 0.8, "step_milestones": [0.3, 0.6], "method": "dense"})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert resolve(read_yaml(path)) == cfg
    assert set(yaml.safe_load(path.read_text())) == set(FIELD_NAMES)


@pytest.mark.parametrize(
    "field,value",
    [("sparsity", 1.0), ("sparsity", -0.1), ("epochs", 0), ("lr", 0.0), ("drop_rate", 1.0),
     ("label_noise", 1.5), ("layer_density", "gaussian"), ("lr_schedule", "linear"), ("batch_size", 0)],
)
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        resolve({field: value})


def test_type_errors_name_the_field():
    with pytest.raises(ConfigError, match="epochs"):
        resolve({"epochs": "ten"})
    with pytest.raises(ConfigError, match="epochs"):
        resolve({"epochs": 2.5})
    with pytest.raises(ConfigError, match="nesterov"):
        resolve({"nesterov": "maybe"})
    with pytest.raises(ConfigError, match="nesterov"):
        resolve({"nesterov": 2})
    with pytest.raises(ConfigError, match="lr"):
        resolve({"lr": True})
    assert resolve({"nesterov": "no", "epochs": 3.0, "n_samples": None}).nesterov is False


def test_unknown_field_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config field 'learning_rate'"):
        resolve({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(listing)


def test_dense_has_zero_effective_sparsity():
    assert resolve({"method": "dense", "sparsity": 0.9}).effective_sparsity == 0.0
    assert resolve({"method": "rigl", "sparsity": 0.9}).effective_sparsity == 0.9


def test_shipped_experiment_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("study"):  # study specifications: tests/test_study.py
            continue
        data = read_yaml(path)
        fields = {k: v for k, v in data.items() if k in FIELD_NAMES}
        assert resolve(fields).data == data["data"], path


@pytest.mark.parametrize("width", [0, -1, float("nan"), float("inf")])
def test_width_must_be_positive_and_finite(width):
    with pytest.raises(ConfigError, match="width"):
        resolve({"width": width})


def test_width_reaches_the_model():
    from bayessparse.train import build_run

    run = build_run(resolve({"data": "digits", "model": "mlp", "width": 0.5}))
    assert [m.out_features for m in run.model.modules() if isinstance(m, torch.nn.Linear)] == [128, 128, 10]
