"""Experiment files -> validated configurations: shorthands, overrides, sweeps, errors."""

from __future__ import annotations

import pytest

import jaxmem
from jaxmem import Experiment
from jaxmem.errors import ConfigError
from jaxmem.models import CNNConfig, CustomConfig, EncoderConfig, GPTConfig, MLPConfig


def test_defaults_are_a_small_gpt():
    config = jaxmem.Config()
    assert isinstance(config.model, GPTConfig)
    assert (config.remat.policy, config.precision.policy) == ("none", "fp32")
    assert config.measure.mode == "compile"


@pytest.mark.parametrize("kind, cls", [
    ("gpt", GPTConfig), ("encoder", EncoderConfig), ("mlp", MLPConfig), ("cnn", CNNConfig),
])
def test_model_kind_selects_its_section(kind, cls):
    exp = Experiment.from_dict({"model": {"kind": kind}})
    assert type(exp.config.model) is cls


def test_shorthand_scalar_sections():
    exp = Experiment.from_dict({"remat": "full", "precision": "bf16-mixed", "optimizer": "sgd",
                                "measure": "run"})
    c = exp.config
    assert (c.remat.policy, c.precision.policy, c.optimizer.name, c.measure.mode) == (
        "full", "bf16-mixed", "sgd", "run")


def test_yaml_file_and_name_default(tmp_path):
    path = tmp_path / "my_exp.yaml"
    path.write_text("model: {kind: mlp, hidden: [32, 16]}\ndata: {batch_size: 4}\n")
    exp = Experiment.from_yaml(path)
    assert exp.name == "my_exp"
    assert exp.config.model.hidden == (32, 16)
    assert exp.config.data.batch_size == 4


def test_overrides_are_parsed_to_the_field_type():
    exp = Experiment.from_dict({}, ["model.num_layers=6", "optimizer.learning_rate=3e-4",
                                    "model.stack=scan", "remat=full"])
    assert exp.config.model.num_layers == 6
    assert exp.config.optimizer.learning_rate == pytest.approx(3e-4)
    assert exp.config.model.stack == "scan"
    assert exp.config.remat.policy == "full"


def test_override_of_long_form_pins_a_shorthand_sweep(quickstart):
    exp = Experiment.from_dict(quickstart.to_dict(), ["remat.policy=dots"])
    assert "remat" not in exp.sweep
    assert {p.config.remat.policy for p in exp.grid()} == {"dots"}
    assert [p.name for p in exp.grid()] == ["precision=fp32", "precision=bf16-mixed"]


def test_sweep_override_replaces_values():
    exp = Experiment.from_dict({"sweep": {"remat": ["none"]}}, ["sweep.remat=[dots, full]"])
    assert [p.name for p in exp.grid()] == ["remat=dots", "remat=full"]


def test_grid_is_the_cartesian_product_with_readable_names(quickstart):
    points = quickstart.grid()
    assert len(points) == 8
    assert points[0].name == "remat=none,precision=fp32"
    assert "remat=full,precision=bf16-mixed" in [p.name for p in points]
    assert [p.index for p in points] == list(range(8))
    full_bf16 = next(p for p in points if p.name == "remat=full,precision=bf16-mixed")
    assert full_bf16.config.remat.policy == "full"
    assert full_bf16.config.precision.policy == "bf16-mixed"


def test_to_dict_round_trips(quickstart):
    again = Experiment.from_dict(quickstart.to_dict())
    assert again == quickstart


def test_custom_model_section():
    exp = Experiment.from_dict({"model": {"kind": "custom", "factory": "pkg.mod:fn",
                                          "options": {"width": 8}}})
    assert isinstance(exp.config.model, CustomConfig)
    assert exp.config.model.options == {"width": 8}


BAD = [
    ({"model": {"kind": "gpt", "d_modle": 64}}, (), "model", "d_modle"),
    ({"model": {"kind": "gpt", "d_model": "wide"}}, (), "model.d_model", "wide"),
    ({"model": {"kind": "gpt", "d_model": 64.5}}, (), "model.d_model", "64.5"),
    ({"model": {"kind": "gtp"}}, (), "model.kind", "gtp"),
    ({"model": {"kind": "gpt", "num_layers": 0}}, (), "model.num_layers", "0"),
    ({"model": {"kind": "gpt", "d_model": 128, "num_heads": 3}}, (), "model.num_heads", "3"),
    ({"model": {"kind": "mlp", "hidden": [64, -1]}}, (), "model.hidden[1]", "-1"),
    ({"model": {"kind": "cnn", "image_size": 30}}, (), "model.image_size", "30"),
    ({"model": {"kind": "custom", "factory": "no_colon"}}, (), "model.factory", "no_colon"),
    ({"data": {"batch_size": -4}}, (), "data.batch_size", "-4"),
    ({"remat": "fulll"}, (), "remat.policy", "fulll"),
    ({"precision": "fp8"}, (), "precision.policy", "fp8"),
    ({"optimizer": {"name": "adam", "lr": 1}}, (), "optimizer", "lr"),
    ({"measure": "profile"}, (), "measure.mode", "profile"),
    ({"mesh": {"data": 0}}, (), "mesh.data", "0"),
    ({"target": "tpu:v9:2x2"}, (), "target.name", "tpu:v9:2x2"),
    ({"modle": {}}, (), "<top>", "modle"),
    ({"sweep": {"remat": "full"}}, (), "sweep.remat", "full"),
    ({"sweep": {"remat": ["none", "bogus"]}}, (), "remat.policy", "bogus"),
    ({"sweep": {"model.depth": [1, 2]}}, (), "sweep.model.depth", "depth"),
    ({}, ("remat",), "--set", "remat"),
    ({}, ("model.num_heads=3",), "model.num_heads", "3"),
    ({}, ("model.nope=3",), "model", "nope"),
    ({"data": {"batch_size": 6}, "mesh": {"data": 4}}, (), "data.batch_size", "6"),
]


@pytest.mark.parametrize("raw, overrides, path, value", BAD,
                         ids=[f"{b[2]}={b[3]}" for b in BAD])
def test_bad_input_names_field_and_value(raw, overrides, path, value):
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict(raw, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}:") or message.startswith(f"{path} "), message
    assert value in message
    assert "\n" not in message


def test_unknown_choice_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict({"remat": "fulll"})
    assert info.value.choices == jaxmem.remat.choices()
    assert "dots, dots_no_batch, dots_saveable" in str(info.value)
    assert "save:<name>+<name>" in str(info.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict({"model": {"kind": "gpt", "d_modle": 64}})
    assert "d_model" in info.value.choices and "num_heads" in info.value.choices


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {kind: gpt\nremat: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line"):
        Experiment.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"missing.yaml: no such experiment file"):
        Experiment.from_yaml(tmp_path / "missing.yaml")
