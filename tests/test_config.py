"""Configs: defaults from the schema, overrides, and errors that name the key and the value."""

import subprocess
import sys

import pytest
import yaml

from sequifier import config
from sequifier.errors import ConfigError


def test_defaults_fill_every_key_of_the_schema():
    resolved = config.resolve("preprocess", {"data_path": "x.csv"}, "c.yaml")
    schema = config.load_schema("preprocess")
    assert set(resolved) == set(schema["properties"])
    assert resolved["split_ratios"] == [0.8, 0.1, 0.1] and resolved["write_format"] == "parquet"


def test_every_schema_field_has_type_default_and_description():
    for stage in config.STAGES:
        for key, field in config.load_schema(stage)["properties"].items():
            assert "description" in field, key
            assert "type" in field or "enum" in field, key
            assert "default" in field or key in config.load_schema(stage).get("required", []), key


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"data_path": "a.csv", "seed": 1}))
    resolved = config.load("preprocess", path, {"seed": 5, "data_path": "b.csv"})
    assert (resolved["seed"], resolved["data_path"]) == (5, "b.csv")


def test_set_dotted_creates_nested_keys():
    target = {"model_spec": {"dim_model": 8}}
    config.set_dotted(target, "model_spec.n_head", 2)
    config.set_dotted(target, "training_spec.learning_rate", 0.1)
    assert target == {"model_spec": {"dim_model": 8, "n_head": 2}, "training_spec": {"learning_rate": 0.1}}


@pytest.mark.parametrize(
    "values, expected",
    [
        (
            {"data_path": "a.csv", "seq_lenght": 8},
            ["c.yaml", "seq_lenght: unknown key", "did you mean 'seq_length'"],
        ),
        (
            {"data_path": "a.csv", "seq_length": "abc"},
            ["c.yaml", "seq_length", "'abc'", "not of type 'integer'"],
        ),
        (
            {"data_path": "a.csv", "write_format": "xml"},
            ["write_format", "'xml'", "'parquet'", "'csv'", "'pt'"],
        ),
        ({"data_path": "a.csv", "split_ratios": [0.5, -0.5]}, ["split_ratios.1", "-0.5"]),
        ({}, ["data_path: required key is missing"]),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(values, expected):
    with pytest.raises(ConfigError) as error:
        config.resolve("preprocess", values, "c.yaml")
    for text in expected:
        assert text in str(error.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seq_length: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.load("preprocess", bad)
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        config.load("preprocess", tmp_path / "nope.yaml")


def test_help_answers_without_importing_heavy_modules():
    heavy = "{'torch', 'pandas', 'pyarrow', 'numpy'}"
    code = "import sys; "
    code += f"from sequifier import cli; cli.build_parser(); print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for command in ([], ["make"], ["preprocess"]):
        result = subprocess.run(
            [sys.executable, "-m", "sequifier", *command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage: sequifier" in result.stdout
