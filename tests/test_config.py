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
            {"data_path": "a.csv", "seq_length": "12"},
            ["seq_length", "'12'", "it is quoted, so it is text: write the number without quotes"],
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
    with pytest.raises(ConfigError, match="is a folder; expected a config file"):
        config.load("preprocess", tmp_path)


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


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sequifier", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize(
    "content, args, expected",
    [
        (
            "data_path: data/t.csv\n# caf\xe9\n".encode("latin-1"),
            [],
            ["configs/p.yaml: not UTF-8 text", "line 2", "0xe9", "save the config as UTF-8"],
        ),
        (
            b"data_path: data/t.csv\nsplit_ratios: [0.8, 0.2]\nseed: 1\nsplit_ratios: [0.5, 0.5]\n",
            [],
            ["configs/p.yaml: key 'split_ratios' is given twice, on line 2 and on line 4"],
        ),
        (b"data_path: data/t.csv\n\x01\n", [], ["configs/p.yaml: not valid YAML", "special characters"]),
    ],
)
def test_config_files_that_cannot_be_read_are_one_clear_line(tmp_path, content, args, expected):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "p.yaml").write_bytes(content)
    result = _cli("preprocess", "--config-path", "configs/p.yaml", *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for piece in expected:
        assert piece in result.stderr


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "training_spec.epochs=[1,",
            ["--set 'training_spec.epochs=[1,'", "not valid YAML", "line 1, column 4"],
        ),
        ("model_name=a: b: c", ["--set 'model_name=a: b: c'", "not valid YAML", "quote text"]),
        ("training_spec.optimizer={name: AdamW, name: SGD}", ["key 'name' is given twice"]),
    ],
)
def test_set_values_that_are_not_yaml_are_refused(tmp_path, value, expected):
    result = _cli("train", "--config-path", "nope.yaml", "--set", value, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for piece in expected:
        assert piece in result.stderr


def test_numbers_with_an_exponent_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 as text; sequifier's configs read it as a number, as YAML 1.2 does."""
    path = tmp_path / "t.yaml"
    path.write_text("training_spec: {learning_rate: 1e-3, epochs: 2}\nseed: 1E3\nmodel_name: 1e\n")
    assert config.read_yaml(path) == {
        "training_spec": {"learning_rate": 0.001, "epochs": 2},
        "seed": 1000.0,
        "model_name": "1e",
    }
    search = tmp_path / "s.yaml"
    search.write_text(
        "strategy: sample\nn_samples: 2\nspace:\n  training_spec.learning_rate: {low: 1e-4, high: 1e-2}\n"
    )
    resolved = config.load("hyperparameter-search", search)
    assert resolved["space"]["training_spec.learning_rate"] == {"low": 1e-4, "high": 1e-2}
